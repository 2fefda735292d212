// Attacks on the Tend console in Debian's headless Chromium (playwright-core), run by
// tests/all/attacks_16_console.rs:
//
//   node attacks.cjs router  -> {"hashes": N}
//
// - hostile ids in the hash route (markup, `..%2f`, a malformed escape, a prototype name):
//   each page settles (ready or a named error), nothing is injected, no link leaves the
//   console, no page error;
// - a token revoked mid-session, on the dashboard: the next refresh goes back to sign-in and
//   the token is gone from the tab; it is never in the address, the history or localStorage;
// - sign out clears the token;
// - rewritten responses: an invocation page shows numbers as sent, and an approval whose
//   window has closed is not offered for signing.
//
// Environment: TEND_CHROMIUM, TEND_CONSOLE_PROFILE, TEND_CONSOLE_SCENE (JSON: url, viewer,
// doomed, admin). Any failed check throws: the process exits non-zero with the reason.
'use strict';

const assert = require('node:assert/strict');
const { chromium } = require('playwright-core');

const scene = JSON.parse(process.env.TEND_CONSOLE_SCENE);

async function launch() {
  return chromium.launchPersistentContext(process.env.TEND_CONSOLE_PROFILE, {
    executablePath: process.env.TEND_CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu'],
  });
}

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

/** Wait until the page has settled (rendered, or said why not); its data-ready value. */
async function settled(page, what) {
  try {
    await page.waitForSelector('body[data-ready]', { timeout: 15000 });
  } catch {
    throw new Error(`${what}: the page never settled; it shows ${JSON.stringify(await page.textContent('main'))}; page errors ${JSON.stringify(page.errors)}`);
  }
  return page.getAttribute('body', 'data-ready');
}

async function go(page, hash) {
  await page.evaluate((h) => {
    delete document.body.dataset.ready;
    if (location.hash === h) window.dispatchEvent(new HashChangeEvent('hashchange'));
    else location.hash = h;
  }, hash);
  return settled(page, hash);
}

async function signIn(page, token) {
  await page.goto(`${scene.url}/`);
  await page.waitForSelector('#signin');
  await page.fill('#token', token);
  await page.click('#signin button[type=submit]');
  return settled(page, 'sign-in');
}

/** Nothing a successful injection would leave behind. */
async function clean(page, what) {
  const found = await page.evaluate(() => ({
    pwned: window.__pwned ?? null,
    csp: window.__csp,
    scripts: document.querySelectorAll('script').length,
    injected: document.querySelectorAll('img, iframe, svg, object, embed, base, form[action], meta[http-equiv]').length,
    handlers: [...document.querySelectorAll('*')].flatMap((n) => [...n.attributes].filter((a) => /^on/i.test(a.name)).map((a) => `${n.tagName} ${a.name}`)),
    links: [...document.querySelectorAll('a[href]')].map((a) => a.getAttribute('href')).filter((h) => !h.startsWith('#/')),
  }));
  assert.deepEqual(found, { pwned: null, csp: [], scripts: 1, injected: 0, handlers: [], links: [] }, what);
  assert.deepEqual(page.dialogs, [], `${what}: dialogs`);
  assert.deepEqual(page.errors, [], `${what}: page errors`);
}

const phases = {
  async router() {
    const context = await launch();
    const page = await watchedPage(context);
    assert.equal(await signIn(page, scene.viewer), '#/');
    const hostile = [
      '#/inv/<img src=x onerror=window.__pwned=1>',
      '#/inv/%3Cimg%20src%3Dx%20onerror%3Dwindow.__pwned%3D2%3E',
      '#/inv/..%2f..%2fagents',
      '#/inv/..%2F..%2Ftokens',
      '#/approve/%22%3E%3Csvg%20onload%3Dwindow.__pwned%3D3%3E',
      '#/incident/javascript:window.__pwned=4',
      '#/inv/%E0%A4%A',
      '#/approve/%',
      '#/constructor',
      '#/tostring/x',
    ];
    for (const hash of hostile) {
      const r = await go(page, hash);
      assert.ok(['error', hash].includes(r) || r.startsWith('#/'), `${hash}: ${r}`);
      await clean(page, hash);
    }
    // A malformed escape is named, not left loading.
    await go(page, '#/inv/%E0%A4%A');
    assert.match(await page.textContent('main'), /URI|malformed/i);
    // `..%2f` stays inside the id: the API was asked for an invocation, which does not exist.
    await go(page, '#/inv/..%2f..%2fagents');
    assert.match(await page.textContent('main'), /not_found/);

    // An invocation page shows output, plan and report with numbers as sent (the response is
    // rewritten on its way to the page: no skill needs to print such numbers).
    const fake = '{"id":"inv_00000000000000aa","state":"succeeded","skill":"acme-fix","version":"1.0.0","export":"run",'
      + '"target":"agent:web-1","level":2,"approvals_required":1,"requester":"alice","reason":"r","created_at":"now",'
      + '"plan":{"free_bytes":9007199254740993,"ratio":10.0},'
      + '"result":{"outcome":"ok","output":{"free_bytes":18446744073709551615,"age_days":10.0,"tiny":1e-7},"logs":[]}}';
    await page.route('**/api/v1/invocations/inv_00000000000000aa', (route) => route.fulfill({
      status: 200, contentType: 'application/json', body: fake,
    }));
    assert.equal(await go(page, '#/inv/inv_00000000000000aa'), '#/inv/inv_00000000000000aa');
    const output = await page.textContent('#output');
    assert.match(output, /"free_bytes": 18446744073709551615/, output);
    assert.match(output, /"age_days": 10\.0/, output);
    assert.match(await page.textContent('#plan'), /"free_bytes": 9007199254740993/);
    assert.match(await page.textContent('#report'), /"age_days": 10\.0/);
    await clean(page, 'invocation page');
    await page.unroute('**/api/v1/invocations/inv_00000000000000aa');

    // An approval whose window has closed is not offered for signing, even when everything
    // else agrees (the response is rewritten, with the digest the page itself computes).
    for (const [expires, closed] of [[1000, true], [Date.now() + 3600000, false]]) {
      const inv = `{"id":"inv_00000000000000bb","state":"pending_approval","skill":"acme-echo","version":"1.0.0","export":"run",`
        + `"digest":"sha256:00","manifest_digest":"sha256:11","publisher":"acme","publisher_key":"k1","target":"agent:web-1","hosts":[],`
        + `"requester":"alice","input":{"n":1},"plan":null,"expires_ms":${expires},`
        + '"level":1,"approvals_required":1,"reasons":[],"reason":"r","trigger":"api","created_at":"now","approvals":[]}';
      const digest = await page.evaluate(async (text) => {
        const app = await import('/console/app.js');
        return app.invocationDigest(app.boundOf(app.parseJson(text)));
      }, inv);
      const body = `${inv.slice(0, -1)},"invocation_digest":"${digest}"}`;
      await page.route('**/api/v1/invocations/inv_00000000000000bb', (route) => route.fulfill({
        status: 200, contentType: 'application/json', body,
      }));
      assert.equal(await go(page, '#/approve/inv_00000000000000bb'), '#/approve/inv_00000000000000bb');
      assert.equal(await page.textContent('#digest'), digest);
      const refusal = await page.$('#refusal');
      if (closed) assert.match(await refusal.textContent(), /approval window closed at 1970-01-01T00:00:01/);
      else assert.equal(refusal, null, 'an open window is not refused');
      await page.unroute('**/api/v1/invocations/inv_00000000000000bb');
    }

    // A token revoked while the dashboard is open: its next refresh signs out.
    await page.evaluate(() => sessionStorage.clear());
    const doomed = scene.doomed;
    assert.equal(await signIn(page, doomed), '#/');
    const prefix = doomed.split('_')[1];
    const res = await fetch(`${scene.url}/api/v1/tokens/${prefix}/revoke`, {
      method: 'POST', headers: { Authorization: `Bearer ${scene.admin}` },
    });
    assert.equal(res.status, 200, await res.text());
    assert.equal(await go(page, '#/'), 'signin');
    await page.waitForSelector('#signin');
    assert.match(await page.textContent('#signin-error'), /no longer valid/);
    const kept = await page.evaluate(() => ({
      session: sessionStorage.getItem('tend.token'),
      local: localStorage.length,
      url: location.href,
      history: history.length,
    }));
    assert.equal(kept.session, null, 'the dead token is gone from the tab');
    assert.equal(kept.local, 0, 'nothing in localStorage');
    assert.ok(!kept.url.includes(doomed) && !kept.url.includes(prefix), kept.url);

    // Sign out clears the token.
    assert.equal(await signIn(page, scene.viewer), '#/');
    await page.click('#signout');
    await page.waitForSelector('#signin');
    assert.equal(await page.evaluate(() => sessionStorage.getItem('tend.token')), null);
    await clean(page, 'after sign-out');
    await context.close();
    return { hashes: hostile.length };
  },
};

(async () => {
  const phase = process.argv[2];
  if (!phases[phase]) throw new Error(`no phase ${phase}`);
  console.log(JSON.stringify(await phases[phase]()));
})().catch((e) => {
  console.error(e && e.stack ? e.stack : String(e));
  process.exit(1);
});
