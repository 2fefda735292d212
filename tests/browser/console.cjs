// Drives the Tend console in Debian's headless Chromium with playwright-core (no browser
// download). Run by tests/all/console.rs, one phase at a time, with the same browser profile
// (so the approver key made in the `key` phase is in IndexedDB for the `main` phase):
//
//   node console.cjs key    -> {"public_key": "ed25519:..."}
//   node console.cjs main   -> {"tti_ms": ..., "dom_interactive_ms": ..., "screenshots": [...]}
//
// Environment: TEND_CHROMIUM, TEND_CONSOLE_PROFILE, TEND_CONSOLE_SHOTS, TEND_CONSOLE_VECTORS,
// TEND_CONSOLE_SCENE (JSON: url, tokens, invocation ids). Any failed check throws: the process
// exits non-zero with the reason on stderr.
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const assert = require('node:assert/strict');
const { chromium } = require('playwright-core');

const scene = JSON.parse(process.env.TEND_CONSOLE_SCENE);
const shots = process.env.TEND_CONSOLE_SHOTS;
const taken = [];

/** What the page shows for a string with hidden characters (the console's `oneLine`). */
function visible(s) {
  return s.replace(/[\u0000-\u001f\u007f-\u009f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]/gu,
    (c) => `\\u{${c.codePointAt(0).toString(16)}}`);
}

async function launch() {
  return chromium.launchPersistentContext(process.env.TEND_CONSOLE_PROFILE, {
    executablePath: process.env.TEND_CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu'],
    viewport: { width: 1280, height: 900 },
  });
}

/** A page that records anything a successful injection would do. */
async function watchedPage(context) {
  const page = await context.newPage();
  page.dialogs = [];
  page.on('dialog', (d) => { page.dialogs.push(d.message()); d.dismiss(); });
  page.errors = [];
  page.on('pageerror', (e) => page.errors.push(String(e)));
  await page.addInitScript(() => {
    window.__csp = [];
    document.addEventListener('securitypolicyviolation', (e) => window.__csp.push(`${e.violatedDirective} ${e.blockedURI}`));
  });
  return page;
}

async function ready(page) {
  await page.waitForSelector('body[data-ready]', { timeout: 30000 });
  const r = await page.getAttribute('body', 'data-ready');
  if (r === 'error') throw new Error(`the page failed: ${await page.textContent('main')}`);
}

async function go(page, hash) {
  await page.evaluate((h) => {
    delete document.body.dataset.ready;
    if (location.hash === h) window.dispatchEvent(new HashChangeEvent('hashchange'));
    else location.hash = h;
  }, hash);
  await ready(page);
}

async function signIn(page, token) {
  await page.goto(`${scene.url}/`);
  await page.waitForSelector('#signin');
  await page.fill('#token', token);
  await page.click('#signin button[type=submit]');
  await ready(page);
}

async function signOut(page) {
  await page.click('#signout');
  await page.waitForSelector('#signin');
}

async function shot(page, name) {
  const file = path.join(shots, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  taken.push(file);
}

/** Nothing injected ran or was added: no dialog, no flag, no CSP violation, no element that
 * markup in the data would have made. */
async function clean(page, where) {
  const state = await page.evaluate(() => ({
    pwned: window.__pwned,
    csp: window.__csp,
    scripts: document.querySelectorAll('script').length,
    injected: [...document.querySelectorAll('img, iframe, object, embed, svg, math, video, audio, link:not([rel=stylesheet]), meta[http-equiv], base, [onerror], [onload], [onclick], [style]')].map((e) => e.outerHTML.slice(0, 80)),
  }));
  assert.equal(state.pwned, undefined, `${where}: an injected script ran`);
  assert.deepEqual(page.dialogs, [], `${where}: a dialog opened`);
  assert.deepEqual(state.csp, [], `${where}: CSP violations`);
  assert.equal(state.scripts, 1, `${where}: a script element was added`);
  assert.deepEqual(state.injected, [], `${where}: elements were injected`);
  assert.deepEqual(page.errors, [], `${where}: page errors`);
}

async function bodyText(page) {
  return page.evaluate(() => document.body.innerText);
}

async function keyPhase() {
  const context = await launch();
  const page = await watchedPage(context);
  await signIn(page, scene.approver);
  await go(page, '#/key');
  await page.click('#generate');
  await page.waitForSelector('#public-key');
  const publicKey = (await page.textContent('#public-key')).trim();
  // The private key cannot be exported, even by the page itself.
  const exportable = await page.evaluate(async () => {
    const m = await import('/console/app.js');
    const key = await m.loadKey();
    try { await crypto.subtle.exportKey('pkcs8', key.privateKey); return true; } catch { return false; }
  });
  assert.equal(exportable, false, 'the private key is extractable');
  await clean(page, 'key page');
  await shot(page, 'key');
  // Only an admin is offered to register it; the admin registers it for the approver.
  assert.equal(await page.$('#register'), null, 'an approver is offered to register keys');
  await signOut(page);
  await signIn(page, scene.admin);
  await go(page, '#/key');
  assert.equal((await page.textContent('#public-key')).trim(), publicKey);
  await page.fill('#approver-name', 'pat');
  await page.click('#register');
  await page.waitForFunction(() => /Registered for pat/.test(document.querySelector('#key-status')?.textContent || ''));
  await clean(page, 'admin key page');
  await shot(page, 'key-registered');
  await context.close();
  return { public_key: publicKey };
}

async function mainPhase() {
  const context = await launch();
  const page = await watchedPage(context);
  const hostile = visible(scene.hostile);
  const hostileLine = visible(scene.hostile_line);
  // Where a page shows JSON (input, plan, output, audit detail), control characters appear as
  // JSON escapes; the markup must still be text.
  const markup = '<img src=x onerror=window.__pwned=1></script><script>window.__pwned=2</script>';

  // Signing in with a wrong token is refused.
  await page.goto(`${scene.url}/`);
  await page.fill('#token', 'tend_not-a-token');
  await page.click('#signin button[type=submit]');
  await page.waitForSelector('#signin-error');

  await signIn(page, scene.approver);
  // Time to interactive: a reload of the dashboard until it has rendered its data.
  await page.reload();
  await ready(page);
  const timing = await page.evaluate(() => {
    const nav = performance.getEntriesByType('navigation')[0];
    return { dom_interactive_ms: Math.round(nav.domInteractive), now: Math.round(performance.now()) };
  });
  const weight = await page.evaluate(() => performance.getEntriesByType('resource')
    .concat(performance.getEntriesByType('navigation'))
    .filter((r) => !r.name.includes('/api/'))
    .reduce((n, r) => n + (r.decodedBodySize || 0), 0));

  // The dashboard lists the three pending repairs.
  const pending = await page.textContent('#pending');
  for (const id of [scene.good, scene.doomed, scene.guarded]) assert.ok(pending.includes(id), `dashboard misses ${id}`);
  assert.ok((await page.textContent('#agents')).includes('web-1'));
  await clean(page, 'dashboard');
  await shot(page, 'dashboard');

  // The script computes the protocol's digests for the fixed vectors (also checked in Rust).
  const vectors = fs.readFileSync(process.env.TEND_CONSOLE_VECTORS, 'utf8');
  const mismatches = await page.evaluate(async (text) => {
    const m = await import('/console/app.js');
    const bad = [];
    for (const v of m.parseJson(text)) {
      const canonical = m.canonical(v.get('bound'));
      const digest = await m.invocationDigest(v.get('bound'));
      if (canonical !== v.get('canonical') || digest !== v.get('digest')) bad.push(`${v.get('name')}: ${canonical} ${digest}`);
    }
    return bad;
  }, vectors);
  assert.deepEqual(mismatches, [], 'the script disagrees with the fixed digest vectors');
  // The parser refuses what two readers could take differently, and `__proto__` is a key.
  const parsing = await page.evaluate(async () => {
    const m = await import('/console/app.js');
    const refuses = (t) => { try { m.parseJson(t); return false; } catch { return true; } };
    const proto = m.parseJson('{"__proto__":{"x":1},"n":12345678901234567890}');
    return {
      duplicate: refuses('{"a":1,"a":2}'),
      trailing: refuses('{"a":1} x'),
      raw_control: refuses('"a\u0001b"'),
      proto: proto.has('__proto__') && Object.getPrototypeOf({}) === Object.prototype,
      big: m.canonical(proto.get('n')),
    };
  });
  assert.deepEqual(parsing, { duplicate: true, trailing: true, raw_control: true, proto: true, big: '12345678901234567890' });

  // Approve the good repair: its plan is shown, the page's digest is the server's.
  await go(page, `#/approve/${scene.good}`);
  assert.equal((await page.textContent('#digest')).trim(), scene.good_digest);
  assert.equal(await page.$('#refusal'), null);
  const plan = await page.textContent('#plan');
  assert.ok(plan.includes('/bin/echo') && plan.includes('hello'), plan);
  const bound = await page.textContent('#bound');
  assert.ok(bound.includes(markup) && bound.includes('\\u{202e}evil.exe'), `the input is not shown as text: ${bound}`);
  assert.ok((await page.textContent('#context')).includes(`disk full ${hostileLine}`), 'the reason is not shown as text');
  await clean(page, 'approval page');
  await shot(page, 'approval');
  await page.click('#approve');
  await page.waitForFunction((id) => location.hash === `#/inv/${id}`, scene.good);
  await page.waitForFunction(() => document.querySelector('#summary .state')?.textContent === 'succeeded', null, { timeout: 60000 });
  assert.ok((await page.textContent('#outcome')).includes('hello'));
  await clean(page, 'invocation page');
  await shot(page, 'succeeded');

  // The audit trail verifies and holds the approval.
  await go(page, '#/audit');
  assert.ok((await page.textContent('#chain')).includes('The chain verifies'));
  const rows = await page.$$eval('#events tr', (trs) => trs.map((tr) => tr.innerText));
  assert.ok(rows.some((r) => r.includes('approval.grant') && r.includes(scene.good) && r.includes('pat')), 'no approval in the audit page');
  await clean(page, 'audit page');
  await shot(page, 'audit');

  // Reject another, with a comment.
  await go(page, `#/approve/${scene.doomed}`);
  assert.ok((await page.textContent('#plan')).includes(markup), 'the plan output is not shown as text');
  await page.fill('#comment', `not now ${scene.hostile}`);
  await page.click('#reject');
  await page.waitForFunction((id) => location.hash === `#/inv/${id}`, scene.doomed);
  await page.waitForFunction(() => document.querySelector('#summary .state')?.textContent === 'rejected');
  assert.ok((await page.textContent('#summary')).includes(`not now ${hostile}`));
  await clean(page, 'rejected invocation');

  // A tampered invocation: one bound field changed on the way to the page. It refuses to sign.
  // The approval page as an approver sees it (the picture in the README).
  await go(page, `#/approve/${scene.guarded}`);
  assert.equal((await page.textContent('#digest')).trim(), scene.guarded_digest);
  await page.setViewportSize({ width: 1200, height: 1560 });
  await page.screenshot({ path: path.join(shots, 'approval-page.png') });
  await page.setViewportSize({ width: 1280, height: 900 });
  taken.push(path.join(shots, 'approval-page.png'));
  const guardedUrl = `${scene.url}/api/v1/invocations/${scene.guarded}`;
  await page.route(guardedUrl, async (route) => {
    const response = await route.fetch();
    const body = (await response.text()).replace('"reload-workers"', '"tampered"');
    await route.fulfill({ response, body });
  });
  await go(page, `#/approve/${scene.guarded}`);
  const refusal = await page.textContent('#refusal');
  assert.ok(refusal.includes('Refusing to sign') && refusal.includes(scene.guarded_digest), refusal);
  assert.equal(await page.isDisabled('#approve'), true);
  await clean(page, 'tampered approval page');
  await shot(page, 'tampered');
  await page.unroute(guardedUrl);
  // The level is not bound but the grants are: a server that shows this exec repair as L1
  // (and the digest unchanged) gets no signature either.
  await page.route(guardedUrl, async (route) => {
    const response = await route.fetch();
    const body = (await response.text()).replaceAll('"level":2', '"level":1');
    await route.fulfill({ response, body });
  });
  await go(page, `#/approve/${scene.guarded}`);
  const understated = await page.textContent('#refusal');
  assert.ok(understated.includes('shown as L1') && understated.includes('at least L2'), understated);
  assert.equal(await page.isDisabled('#approve'), true);
  await page.unroute(guardedUrl);
  // Signatures over another digest are refused by the orchestrator, whichever digest is named.
  const refused = await page.evaluate(async ({ id, digest, token }) => {
    const m = await import('/console/app.js');
    const key = await m.loadKey();
    const other = digest.replace(/^./, (c) => (c === '0' ? '1' : '0'));
    const sign = async (d) => btoa(String.fromCharCode(...new Uint8Array(
      await crypto.subtle.sign({ name: 'Ed25519' }, key.privateKey, m.approvalMessage(d)))));
    const post = async (body) => (await fetch(`/api/v1/invocations/${id}/approve`, {
      method: 'POST', headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' }, body: JSON.stringify(body),
    })).status;
    return [
      await post({ invocation_digest: digest, signature: await sign(other) }),
      await post({ invocation_digest: other, signature: await sign(other) }),
    ];
  }, { id: scene.guarded, digest: scene.guarded_digest, token: scene.approver });
  for (const status of refused) assert.ok(status >= 400 && status < 500, `a signature over another digest got ${status}`);

  // A viewer sees what an approval binds but has no button, and the API refuses them even
  // with a valid signature by a registered key.
  await signOut(page);
  await signIn(page, scene.viewer);
  await go(page, `#/approve/${scene.guarded}`);
  assert.equal(await page.$('#approve'), null, 'a viewer sees the approve button');
  await page.waitForSelector('#cannot-approve');
  await clean(page, 'viewer approval page');
  await shot(page, 'viewer');
  const viewerStatus = await page.evaluate(async ({ id, digest, token }) => {
    const m = await import('/console/app.js');
    const key = await m.loadKey();
    const sig = btoa(String.fromCharCode(...new Uint8Array(
      await crypto.subtle.sign({ name: 'Ed25519' }, key.privateKey, m.approvalMessage(digest)))));
    return (await fetch(`/api/v1/invocations/${id}/approve`, {
      method: 'POST', headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
      body: JSON.stringify({ invocation_digest: digest, signature: sig }),
    })).status;
  }, { id: scene.guarded, digest: scene.guarded_digest, token: scene.viewer });
  assert.equal(viewerStatus, 403, 'a viewer approved');

  // Every page with the hostile strings in it: they show as text, and nothing ran.
  const pages = [
    ['#/', 'dashboard-hostile', hostileLine],
    [`#/inv/${scene.good}`, 'invocation-good', hostileLine],
    [`#/inv/${scene.doomed}`, 'invocation-rejected', hostile],
    [`#/inv/${scene.doomed_plan}`, 'plan-job', markup],
    [`#/inv/${scene.echo}`, 'invocation-output', markup],
    [`#/approve/${scene.doomed}`, 'approval-rejected', hostileLine],
    ['#/incidents', 'incidents', `DiskFull ${hostile}`],
    [`#/incident/${scene.incident}`, 'incident', hostile],
    ['#/skills', 'skills', 'acme-fix'],
    ['#/audit', 'audit-hostile', markup],
    ['#/key', 'key-viewer', 'Approver key'],
  ];
  for (const [hash, name, expect] of pages) {
    await go(page, hash);
    const txt = await bodyText(page);
    assert.ok(txt.includes(expect), `${hash} does not show ${JSON.stringify(expect)}`);
    await clean(page, hash);
    await shot(page, name);
  }
  await context.close();
  return {
    tti_ms: timing.now,
    dom_interactive_ms: timing.dom_interactive_ms,
    page_bytes: weight,
    screenshots: taken,
  };
}

/** After the test rewrote an audit event: the audit page says the chain is broken, and where. */
async function brokenAuditPhase() {
  const context = await launch();
  const page = await watchedPage(context);
  await signIn(page, scene.viewer);
  await go(page, '#/audit');
  const chain = await page.textContent('#chain');
  assert.ok(chain.includes('does not verify') && chain.includes(`audit event ${scene.altered}`), chain);
  await clean(page, 'broken audit');
  await shot(page, 'audit-broken');
  await context.close();
  return { chain };
}

/** A repair the healing loop submitted: the approval page names its incident, and the
 * incident's timeline reaches the approval. */
async function incidentPhase() {
  const context = await launch();
  const page = await watchedPage(context);
  const hostile = visible(scene.hostile);
  await signIn(page, scene.viewer);
  await go(page, `#/approve/${scene.repair}`);
  assert.equal((await page.textContent('#digest')).trim(), scene.digest);
  assert.equal(await page.$('#refusal'), null);
  const ctx = await page.textContent('#context');
  assert.ok(ctx.includes(scene.incident) && ctx.includes('DiskFull') && ctx.includes(hostile), ctx);
  await clean(page, 'approval of an incident repair');
  await shot(page, 'incident-approval');
  await page.click(`#context a[href="#/incident/${scene.incident}"]`);
  await ready(page);
  const timeline = await page.textContent('#timeline');
  for (const step of ['diagnos', 'approval']) assert.ok(timeline.includes(step), `timeline misses ${step}: ${timeline}`);
  await clean(page, 'incident timeline');
  await shot(page, 'incident-timeline');
  await context.close();
  return {};
}

(async () => {
  const phase = process.argv[2];
  const phases = { key: keyPhase, main: mainPhase, 'broken-audit': brokenAuditPhase, incident: incidentPhase };
  const result = phases[phase] ? await phases[phase]() : null;
  if (!result) throw new Error(`unknown phase ${phase}`);
  process.stdout.write(`${JSON.stringify(result)}\n`);
})().catch((e) => {
  process.stderr.write(`${e.stack || e}\n`);
  process.exit(1);
});
