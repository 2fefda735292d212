// The Tend console: one module, no framework, no build step. It reads /api/v1 with the token
// the person signed in with and renders everything the API says as text: every string from the
// server goes through `text()` into a text node (never markup), with control, invisible and
// direction-changing characters written as \u{..}, as the CLI's `one_line` does.
//
// Approvals: the page recomputes the invocation digest from exactly the fields it shows
// (`boundOf` + `canonical`, the protocol's canonical JSON, checked against fixed vectors shared
// with the Rust tests), refuses to sign when the server's digest differs, and signs
// `tend-approval/v1\n<digest>\n` with an Ed25519 key made in this browser (WebCrypto,
// non-extractable, kept in IndexedDB): the private key never leaves it.

const TOKEN = 'tend.token';

// ---------------------------------------------------------------- untrusted text

// Besides C0/C1 controls and the direction marks and overrides: every other character that
// draws nothing or moves text — the Arabic letter mark (a direction mark too), soft hyphen,
// combining grapheme joiner, Hangul fillers, Mongolian vowel separator and variation
// selectors, line and paragraph separators, deprecated format characters, interlinear
// annotations, musical formatting and tag characters — so that `"dry_run\u{ad}": false` cannot
// pass for `"dry_run"`, nor a hidden tag spell anything.
const INVISIBLE = '\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u2028-\u202e\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufffb\u{1bca0}-\u{1bca3}\u{1d173}-\u{1d17a}\u{e0000}-\u{e0fff}';
const HIDDEN = new RegExp(`[\\u0000-\\u001f\\u007f-\\u009f${INVISIBLE}]`, 'gu');
const HIDDEN_BUT_NEWLINE = new RegExp(`[\\u0000-\\u0009\\u000b-\\u001f\\u007f-\\u009f${INVISIBLE}]`, 'gu');
const shown = (c) => `\\u{${c.codePointAt(0).toString(16)}}`;

/** `s` on one line with every control, invisible or direction character made visible. */
export function oneLine(s) {
  return String(s ?? '').replace(HIDDEN, shown);
}

/** Like `oneLine`, keeping line breaks (logs, output, JSON). */
export function visible(s) {
  return String(s ?? '').replace(HIDDEN_BUT_NEWLINE, shown);
}

/** A text node: the only way server text reaches the page. */
function text(s) {
  return document.createTextNode(oneLine(s));
}

/** An element with attributes we choose and children that are nodes or (untrusted) text. */
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') node.className = v;
    else if (k === 'onclick') node.addEventListener('click', v);
    else if (k === 'onsubmit') node.addEventListener('submit', v);
    else node.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    node.append(c instanceof Node ? c : text(c));
  }
  return node;
}

/** Multi-line untrusted text in a <pre> (`full`: never cut to a scrolling box). */
function pre(s, full = false) {
  const node = document.createElement('pre');
  if (full) node.className = 'full';
  node.append(document.createTextNode(visible(s)));
  return node;
}

/** A link inside the console: the target is ours, only the id is encoded into it. */
function link(route, id, label) {
  return el('a', { href: `#/${route}/${encodeURIComponent(String(id))}` }, label ?? id);
}

function badge(state) {
  const s = String(state ?? '');
  return el('span', { class: `state ${/^[a-z_]+$/.test(s) ? s : ''}` }, s);
}

/** A definition list; rows with nothing to show are left out unless `all` (the fields an
 * approval binds are shown even when empty). */
function fields(rows, all = false) {
  const shown = (v) => v !== null && v !== undefined && v !== '' && !(Array.isArray(v) && !v.length);
  return el('dl', { class: 'fields' }, rows.filter((r) => r && (all || shown(r[1]))).map(([k, v, cls]) => [
    el('dt', {}, k),
    el('dd', { class: cls }, shown(v) ? (v instanceof Node || Array.isArray(v) ? v : String(v)) : el('span', { class: 'muted' }, '(empty)')),
  ]));
}

function table(head, rows) {
  return el('table', {},
    el('thead', {}, el('tr', {}, head.map((h) => el('th', {}, h)))),
    el('tbody', {}, rows.length
      ? rows.map((r) => el('tr', {}, r.map((c) => el('td', {}, c))))
      : el('tr', {}, el('td', { colspan: String(head.length), class: 'muted' }, 'none'))));
}

// ---------------------------------------------------------------- canonical JSON

/** A JSON number kept as the exact text the server sent (a JavaScript number would round
 * integers past 2^53 and respell fractions). */
export class Num {
  constructor(literal) { this.literal = literal; }
  toString() { return this.literal; }
}

/** JSON text into plain values, with objects as `Map`s (no prototype tricks, keys in order)
 * and numbers as `Num`s. Duplicate keys are refused: nobody can tell which one counts. */
export function parseJson(src) {
  let i = 0;
  const fail = (what) => { throw new Error(`malformed JSON at byte ${i}: ${what}`); };
  const ws = () => { while (i < src.length && ' \t\n\r'.includes(src[i])) i++; };
  const NUMBER = /-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?/y;
  function value() {
    ws();
    const c = src[i];
    if (c === '{') {
      i++;
      const map = new Map();
      ws();
      if (src[i] === '}') { i++; return map; }
      for (;;) {
        ws();
        if (src[i] !== '"') fail('expected a key');
        const k = string();
        if (map.has(k)) fail(`duplicate key ${JSON.stringify(k)}`);
        ws();
        if (src[i++] !== ':') fail('expected :');
        map.set(k, value());
        ws();
        if (src[i] === ',') { i++; continue; }
        if (src[i] === '}') { i++; return map; }
        fail('expected , or }');
      }
    }
    if (c === '[') {
      i++;
      const items = [];
      ws();
      if (src[i] === ']') { i++; return items; }
      for (;;) {
        items.push(value());
        ws();
        if (src[i] === ',') { i++; continue; }
        if (src[i] === ']') { i++; return items; }
        fail('expected , or ]');
      }
    }
    if (c === '"') return string();
    for (const [word, v] of [['true', true], ['false', false], ['null', null]]) {
      if (src.startsWith(word, i)) { i += word.length; return v; }
    }
    NUMBER.lastIndex = i;
    const m = NUMBER.exec(src);
    if (!m) fail('expected a value');
    i += m[0].length;
    return new Num(m[0]);
  }
  function string() {
    const start = i++;
    while (i < src.length && src[i] !== '"') i += src[i] === '\\' ? 2 : 1;
    if (i >= src.length) fail('unterminated string');
    i++;
    return JSON.parse(src.slice(start, i));
  }
  const v = value();
  ws();
  if (i !== src.length) fail('trailing text');
  return v;
}

/** Code point order, which is the byte order of UTF-8 (how Rust sorts `String`s); JavaScript's
 * own sort compares UTF-16 units and differs above U+FFFF. */
function byCodePoint(a, b) {
  const x = Array.from(a, (c) => c.codePointAt(0));
  const y = Array.from(b, (c) => c.codePointAt(0));
  for (let k = 0; k < Math.min(x.length, y.length); k++) if (x[k] !== y[k]) return x[k] - y[k];
  return x.length - y.length;
}

/** The protocol's canonical JSON: keys sorted at every depth, no white space, strings escaped
 * as serde_json does (JSON.stringify escapes the same characters the same way). */
export function canonical(v) {
  if (v === null) return 'null';
  if (v === true) return 'true';
  if (v === false) return 'false';
  if (v instanceof Num) return v.literal;
  if (typeof v === 'string') return JSON.stringify(v);
  if (Array.isArray(v)) return `[${v.map(canonical).join(',')}]`;
  if (v instanceof Map) {
    const keys = [...v.keys()].sort(byCodePoint);
    return `{${keys.map((k) => `${JSON.stringify(k)}:${canonical(v.get(k))}`).join(',')}}`;
  }
  throw new Error(`cannot put ${typeof v} in canonical JSON`);
}

/** Indented JSON for reading, numbers as sent. */
export function pretty(v, indent = '') {
  const next = `${indent}  `;
  if (Array.isArray(v)) {
    if (!v.length) return '[]';
    return `[\n${v.map((x) => next + pretty(x, next)).join(',\n')}\n${indent}]`;
  }
  if (v instanceof Map) {
    if (!v.size) return '{}';
    return `{\n${[...v].map(([k, x]) => `${next}${JSON.stringify(k)}: ${pretty(x, next)}`).join(',\n')}\n${indent}}`;
  }
  if (v !== null && typeof v === 'object' && !(v instanceof Num)) {
    return pretty(parseJson(JSON.stringify(v)), indent);
  }
  return canonical(v);
}

const GRANT_KINDS = ['exec', 'fs_read', 'fs_write', 'http', 'service_reload', 'service_restart', 'tcp'];
const LIMIT_KINDS = ['fuel', 'memory_mib', 'output_kib', 'timeout_ms'];

/** What an approval binds, from the invocation as shown (the protocol's `Invocation::bound`,
 * with the same defaults for absent fields). Throws naming a field of the wrong type. */
export function boundOf(inv) {
  const field = (k, fallback) => (inv.has(k) ? inv.get(k) : fallback);
  const str = (k, fallback) => {
    const v = field(k, fallback);
    if (typeof v !== 'string') throw new Error(`the invocation's ${k} is not text`);
    return v;
  };
  const hosts = field('hosts', []);
  if (!Array.isArray(hosts) || hosts.some((h) => typeof h !== 'string')) throw new Error("the invocation's hosts are not a list of names");
  let grants = field('grants', null);
  if (grants === null) grants = new Map(GRANT_KINDS.map((k) => [k, []]));
  if (!(grants instanceof Map)) throw new Error("the invocation's grants are not an object");
  if (Array.isArray(grants.get('dns')) && !grants.get('dns').length) {
    // Rust's `Grants` leaves an empty `dns` out.
    grants = new Map([...grants].filter(([k]) => k !== 'dns'));
  }
  const limits = field('limits', new Map(LIMIT_KINDS.map((k) => [k, null])));
  if (!(limits instanceof Map)) throw new Error("the invocation's limits are not an object");
  const expires = field('expires_ms', new Num('0'));
  if (!(expires instanceof Num) || !/^-?[0-9]+$/.test(expires.literal)) throw new Error("the invocation's expires_ms is not an integer");
  return new Map([
    ['skill', str('skill')],
    ['version', str('version')],
    ['export', str('export', 'run')],
    ['digest', str('digest')],
    ['manifest_digest', str('manifest_digest', '')],
    ['publisher_key', str('publisher_key', '')],
    ['target', str('target')],
    ['hosts', hosts],
    ['requester', str('requester')],
    ['input', field('input', null)],
    ['grants', grants],
    ['limits', limits],
    ['plan', field('plan', null)],
    ['expires_ms', expires],
  ]);
}

/** Why the level or approvals shown are below what the bound grants imply, if they are (the
 * level is the orchestrator's word, the grants are bound). A lower bound of the policy's
 * capability floors: running a program or restarting a service is at least L2. */
export function understated(bound, level, approvalsRequired) {
  const grants = bound.get('grants');
  const runs = bound.get('export') !== 'plan';
  let floor = 0;
  let because = '';
  if (runs && (grants.get('exec') || []).length) [floor, because] = [2, 'it may run programs'];
  else if (runs && (grants.get('service_restart') || []).length) [floor, because] = [2, 'it may restart services'];
  if (!(level >= 0 && level <= 3) || level < floor) return `it is shown as L${level}, but ${because}, which makes it at least L${floor}`;
  const needed = [0, 1, 1, 2][level];
  if (approvalsRequired < needed) return `it is shown as L${level} needing ${approvalsRequired} approval(s), but L${level} needs ${needed}`;
  return null;
}

const hex = (buf) => Array.from(new Uint8Array(buf), (b) => b.toString(16).padStart(2, '0')).join('');
const b64 = (buf) => btoa(String.fromCharCode(...new Uint8Array(buf)));

/** sha256 hex of `tend-invocation/v2\n` + the canonical JSON of the bound fields. */
export async function invocationDigest(bound) {
  const bytes = new TextEncoder().encode(`tend-invocation/v2\n${canonical(bound)}`);
  return hex(await crypto.subtle.digest('SHA-256', bytes));
}

/** The exact bytes an approver signs. */
export function approvalMessage(digest) {
  return new TextEncoder().encode(`tend-approval/v1\n${digest}\n`);
}

// ---------------------------------------------------------------- the approver's key

function idb() {
  return new Promise((resolve, reject) => {
    const open = indexedDB.open('tend-console', 1);
    open.onupgradeneeded = () => open.result.createObjectStore('keys');
    open.onsuccess = () => resolve(open.result);
    open.onerror = () => reject(open.error);
  });
}

async function idbDo(mode, f) {
  const db = await idb();
  return new Promise((resolve, reject) => {
    const tx = db.transaction('keys', mode);
    const req = f(tx.objectStore('keys'));
    tx.oncomplete = () => resolve(req.result);
    tx.onerror = () => reject(tx.error);
  });
}

/** This browser's approver key: `{ privateKey, publicKey, publicText }`, or undefined. */
export function loadKey() {
  return idbDo('readonly', (s) => s.get('approver'));
}

/** A new Ed25519 key pair; the private half cannot be exported, even by this page. */
export async function generateKey() {
  const pair = await crypto.subtle.generateKey({ name: 'Ed25519' }, false, ['sign', 'verify']);
  const publicText = `ed25519:${b64(await crypto.subtle.exportKey('raw', pair.publicKey))}`;
  const key = { privateKey: pair.privateKey, publicKey: pair.publicKey, publicText };
  await idbDo('readwrite', (s) => s.put(key, 'approver'));
  return key;
}

// ---------------------------------------------------------------- API

class ApiFailure extends Error {
  constructor(status, body) {
    const e = body && body.error;
    super(e ? `${e.code}: ${e.message}` : `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

let whoami = null;

/** Call the API with the signed-in token; `raw` answers the body text (for `parseJson`). */
async function api(method, path, body, raw = false) {
  const res = await fetch(path, {
    method,
    headers: {
      Authorization: `Bearer ${sessionStorage.getItem(TOKEN) || ''}`,
      ...(body === undefined ? {} : { 'Content-Type': 'application/json' }),
    },
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: 'omit',
    cache: 'no-store',
    redirect: 'error',
  });
  const txt = await res.text();
  if (res.status === 401 && path !== '/api/v1/whoami') {
    sessionStorage.removeItem(TOKEN);
    whoami = null;
  }
  if (!res.ok) {
    let parsed = null;
    try { parsed = JSON.parse(txt); } catch { /* not JSON */ }
    throw new ApiFailure(res.status, parsed);
  }
  return raw ? txt : JSON.parse(txt);
}

const canApprove = () => whoami && (whoami.role === 'approver' || whoami.role === 'admin');

// ---------------------------------------------------------------- pages

const main = () => document.getElementById('main');
let timer = null;

function show(...nodes) {
  main().replaceChildren(...nodes.flat(Infinity).filter((n) => n !== null && n !== undefined && n !== false));
}

function failure(e) {
  return el('p', { class: 'error' }, e instanceof Error ? e.message : String(e));
}

function signIn(message) {
  document.getElementById('nav').hidden = true;
  document.getElementById('signout').hidden = true;
  document.getElementById('who').replaceChildren();
  const input = el('input', { type: 'password', id: 'token', autocomplete: 'off', placeholder: 'tend_…' });
  show(
    el('h1', {}, 'Sign in'),
    el('form', {
      id: 'signin',
      onsubmit: async (ev) => {
        ev.preventDefault();
        sessionStorage.setItem(TOKEN, input.value.trim());
        try {
          whoami = await api('GET', '/api/v1/whoami');
          route();
        } catch (e) {
          sessionStorage.removeItem(TOKEN);
          signIn(e.status === 401 ? 'That token is not valid (unknown, expired or revoked).' : e.message);
        }
      },
    },
    el('label', { for: 'token' }, 'API token (`tend orchestrator token create`; kept in this tab only)'),
    input,
    el('div', { class: 'actions' }, el('button', { type: 'submit', class: 'primary' }, 'Sign in'))),
    message ? el('p', { class: 'error', id: 'signin-error' }, message) : null,
  );
  input.focus();
}

function invRow(i) {
  return [link('inv', i.id), `${i.skill}@${i.version}`, i.target, badge(i.state), `L${i.level}`, i.requester, i.reason, i.created_at];
}

async function dashboard() {
  const [agents, pending, recent, incidents] = await Promise.all([
    api('GET', '/api/v1/agents'),
    api('GET', '/api/v1/invocations?state=pending_approval&limit=100'),
    api('GET', '/api/v1/invocations?limit=20'),
    api('GET', '/api/v1/incidents?limit=10'),
  ]);
  show(
    el('h1', {}, 'Dashboard'),
    el('section', { id: 'pending' }, el('h2', {}, 'Pending approvals'),
      table(['Invocation', 'Skill', 'Target', 'Level', 'Requester', 'Reason', 'Expires', ''],
        pending.invocations.map((i) => [link('inv', i.id), `${i.skill}@${i.version}`, i.target, `L${i.level}`, i.requester, i.reason, i.expires_at,
          el('a', { href: `#/approve/${encodeURIComponent(i.id)}` }, canApprove() ? 'Review' : 'View')]))),
    el('section', { id: 'agents' }, el('h2', {}, 'Agents'),
      table(['Name', 'State', 'Health', 'Pools', 'Labels', 'Running', 'Last seen'],
        agents.map((a) => [a.name, badge(a.state), String(a.health), (a.pools || []).join(', '),
          Object.entries(a.labels || {}).map(([k, v]) => `${k}=${v}`).join(', '), `${a.running}/${a.capacity}`, a.last_seen]))),
    el('section', { id: 'recent' }, el('h2', {}, 'Recent invocations'),
      table(['Invocation', 'Skill', 'Target', 'State', 'Level', 'Requester', 'Reason', 'Created'], recent.invocations.map(invRow))),
    el('section', { id: 'incidents' }, el('h2', {}, 'Recent incidents'), incidentTable(incidents)),
  );
  timer = setTimeout(refresh, 5000);
}

function incidentTable(list) {
  return table(['Incident', 'Alert', 'State', 'Target', 'Stage', 'Outcome', 'Last seen'],
    list.map((x) => [link('incident', x.id), x.alertname, badge(x.state), x.target ?? '', x.stage, x.outcome ?? '', x.last_seen_at]));
}

async function incidents() {
  show(el('h1', {}, 'Incidents'), el('section', {}, incidentTable(await api('GET', '/api/v1/incidents?limit=200'))));
}

async function incident(id) {
  const x = await api('GET', `/api/v1/incidents/${encodeURIComponent(id)}`);
  show(
    el('h1', {}, 'Incident ', x.id),
    el('section', {}, fields([
      ['Alert', x.alertname], ['State', badge(x.state)], ['Alert status', x.alert_status], ['Target', x.target ?? ''],
      ['Policy', x.policy ?? 'none'], ['Stage', x.stage], ['Outcome', x.outcome ?? ''], ['Escalation', x.escalation ?? ''],
      ['Episode', String(x.episode)], ['First seen', x.first_seen_at], ['Last seen', x.last_seen_at], ['Resolved', x.resolved_at ?? ''],
      ['Invocations', (x.invocations || []).map((i) => [link('inv', i), ' '])],
    ])),
    el('h2', {}, 'Labels'), el('section', { class: 'kv' }, table(['Label', 'Value'], Object.entries(x.labels || {}))),
    el('h2', {}, 'Annotations'), el('section', { class: 'kv' }, table(['Annotation', 'Value'], Object.entries(x.annotations || {}))),
    el('h2', {}, 'Timeline'),
    el('section', { id: 'timeline' }, (x.story || []).length
      ? el('ol', { class: 'timeline' }, x.story.map((s) => el('li', {},
        el('div', { class: 'when' }, el('span', { class: 'mono' }, s.at), ' ', el('strong', {}, s.step)),
        el('div', {}, s.text),
        s.data === undefined || s.data === null ? null : pre(JSON.stringify(s.data, null, 2)))))
      : el('p', { class: 'muted' }, 'nothing yet')),
    (x.messages || []).length ? [el('h2', {}, 'Messages'), el('section', {}, pre(JSON.stringify(x.messages, null, 2)))] : null,
  );
}

async function invocation(id) {
  const raw = await api('GET', `/api/v1/invocations/${encodeURIComponent(id)}`, undefined, true);
  const i = JSON.parse(raw);
  // Output, plan and report as sent: a JavaScript number would round integers past 2^53 and
  // print `10.0` as `10`.
  const exact = parseJson(raw);
  const er = exact.get('result') instanceof Map ? exact.get('result') : new Map();
  const r = i.result;
  show(
    el('h1', {}, 'Invocation ', i.id),
    i.state === 'pending_approval' ? el('p', {}, el('a', { href: `#/approve/${encodeURIComponent(i.id)}`, id: 'review' }, canApprove() ? 'Review and approve or reject' : 'See what an approval binds')) : null,
    el('section', { id: 'summary' }, fields([
      ['State', badge(i.state)], ['Skill', `${i.skill}@${i.version} (${i.export})`], ['Publisher', `${i.publisher} (key ${i.publisher_key})`],
      ['Target', i.target], ['Hosts', (i.hosts || []).join(', ') || 'chosen when it runs'], ['Level', `L${i.level}, ${i.approvals_required} approval(s)`],
      ['Requester', i.requester], ['Trigger', i.trigger], ['Reason', i.reason], ['Healing policy', i.healing ?? ''],
      ['Created', i.created_at], ['Started', i.started_at ?? ''], ['Finished', i.finished_at ?? ''], ['Comment', i.comment ?? ''],
      ['Approvals', (i.approvals || []).map((a) => `${a.approver} at ${a.at}`).join('; ') || 'none'],
      ['Plan of', i.plan_for ? link('inv', i.plan_for) : null], ['Part of', i.part_of ? link('inv', i.part_of) : null],
    ])),
    el('h2', {}, 'Outcome'),
    el('section', { id: 'outcome' }, r ? [fields([
      ['Outcome', badge(r.outcome)],
      r.error ? ['Error', `${r.error.code ?? ''}: ${r.error.message ?? ''}`] : null,
      r.duration_us !== undefined ? ['Duration', `${(r.duration_us / 1000).toFixed(1)} ms`] : null,
      r.fuel_consumed !== undefined ? ['Fuel', String(r.fuel_consumed)] : null,
      r.peak_memory_bytes !== undefined ? ['Peak memory', `${Math.ceil(r.peak_memory_bytes / 1024)} KiB`] : null,
      (r.notes || []).length ? ['Notes', el('ul', {}, r.notes.map((n) => el('li', {}, n)))] : null,
    ]),
    r.output !== undefined && r.output !== null ? [el('h2', {}, 'Output'), el('section', { id: 'output' }, pre(pretty(er.get('output'))))] : null,
    (r.exec || []).length ? [el('h2', {}, 'Programs run'), table(['Program', 'Arguments', 'Status', 'Refused'],
      r.exec.map((x) => [x.program, (x.args || []).join(' '), x.status === null || x.status === undefined ? '' : String(x.status), x.denied ?? '']))] : null]
      : el('p', { class: 'muted' }, 'not run yet')),
    (i.parts || []).length ? [el('h2', {}, 'Per host'), el('section', { id: 'parts' },
      table(['Host', 'Part', 'State', 'Outcome'], i.parts.map((p) => [p.host, link('inv', p.id), badge(p.state), p.outcome ?? ''])))] : null,
    r ? [el('h2', {}, 'Logs'), el('section', { id: 'logs' },
      (r.logs || []).length ? table(['Level', 'Message'], r.logs.map((l) => [l.level, pre(l.message)])) : el('p', { class: 'muted' }, 'no log lines'),
      r.logs_dropped ? el('p', { class: 'muted' }, `${r.logs_dropped} more dropped`) : null,
      r.stdout ? [el('h2', {}, 'stdout'), pre(r.stdout)] : null,
      r.stderr ? [el('h2', {}, 'stderr'), pre(r.stderr)] : null)] : null,
    i.plan ? [el('h2', {}, 'Plan'), el('section', { id: 'plan' }, pre(pretty(exact.get('plan'))))] : null,
    i.plan_check ? [el('h2', {}, 'Plan check'), el('section', {}, pre(pretty(exact.get('plan_check'))))] : null,
    r ? [el('h2', {}, 'Report'), el('section', { id: 'report' }, pre(pretty(er)))] : null,
  );
  if (!['succeeded', 'failed', 'rejected', 'expired', 'cancelled', 'unknown'].includes(i.state)) timer = setTimeout(refresh, 1000);
}

/** The approval page: every bound field as the page will hash it, the context, and the two
 * decisions. The digest shown is the one computed here; a differing server digest is named
 * and nothing can be signed. */
async function approvePage(id) {
  const raw = await api('GET', `/api/v1/invocations/${encodeURIComponent(id)}`, undefined, true);
  const inv = parseJson(raw);
  const i = JSON.parse(raw);
  let bound = null;
  let digest = '';
  let refusal = null;
  try {
    bound = boundOf(inv);
    digest = await invocationDigest(bound);
    if (digest !== i.invocation_digest) {
      refusal = `Refusing to sign: the orchestrator says this invocation's digest is ${i.invocation_digest}, but the fields shown here hash to ${digest}. What is shown is not what would be approved; report this to whoever runs the orchestrator.`;
    } else if (!['run', 'plan'].includes(bound.get('export'))) {
      refusal = `Refusing to sign: export ${bound.get('export')} is not one a runner runs.`;
    } else if (Number(bound.get('expires_ms').literal) <= Date.now()) {
      refusal = `Refusing to sign: the approval window closed at ${new Date(Number(bound.get('expires_ms').literal)).toISOString()}; the orchestrator would refuse it too.`;
    } else {
      const why = understated(bound, i.level, i.approvals_required);
      if (why) refusal = `Refusing to sign: ${why}. What is shown is not what would be approved; report this to whoever runs the orchestrator.`;
    }
  } catch (e) {
    refusal = `Refusing to sign: ${e.message}`;
  }
  const [incidentsOf, skills] = await Promise.all([
    api('GET', `/api/v1/incidents?invocation=${encodeURIComponent(i.id)}`).catch(() => []),
    api('GET', `/api/v1/skills?name=${encodeURIComponent(i.skill)}`).catch(() => ({ skills: [] })),
  ]);
  const skill = skills.skills.find((s) => s.name === i.skill && s.key_id === i.publisher_key);
  const narrowing = i.narrowing || {};
  const b = (k) => (bound ? bound.get(k) : inv.get(k));
  const grants = b('grants') instanceof Map ? b('grants') : new Map();
  const limits = b('limits') instanceof Map ? b('limits') : new Map();
  const isNarrowed = (k) => Object.prototype.hasOwnProperty.call(narrowing, k);
  const limitNarrowed = (k) => narrowing.limits && narrowing.limits[k] !== undefined && narrowing.limits[k] !== null;
  const expires = b('expires_ms') instanceof Num ? Number(b('expires_ms').literal) : NaN;
  const pending = i.state === 'pending_approval';
  const comment = el('textarea', { id: 'comment', maxlength: '1000', placeholder: 'Why you reject it (recorded in the audit trail)' });
  const status = el('p', { id: 'decision', role: 'status' });

  const approve = async () => {
    status.replaceChildren(text('Signing…'));
    try {
      const key = await loadKey();
      if (!key) throw new Error('this browser has no approver key: make one on the Approver key page and have an admin register it');
      const sig = await crypto.subtle.sign({ name: 'Ed25519' }, key.privateKey, approvalMessage(digest));
      await api('POST', `/api/v1/invocations/${encodeURIComponent(i.id)}/approve`, { invocation_digest: digest, signature: b64(sig) });
      location.hash = `#/inv/${encodeURIComponent(i.id)}`;
    } catch (e) {
      status.replaceChildren(failure(e));
    }
  };
  const reject = async () => {
    try {
      await api('POST', `/api/v1/invocations/${encodeURIComponent(i.id)}/reject`, { comment: comment.value });
      location.hash = `#/inv/${encodeURIComponent(i.id)}`;
    } catch (e) {
      status.replaceChildren(failure(e));
    }
  };

  show(
    el('h1', {}, 'Approve ', i.id, '?'),
    el('p', {}, badge(i.state), ' ', pending ? 'An approval is your signature over the digest below, which this page computed from exactly the fields it shows.' : 'This invocation is not pending approval: there is nothing to sign.'),
    refusal ? el('section', { class: 'refusal', id: 'refusal' }, el('strong', {}, refusal)) : null,
    el('section', { id: 'bound' }, el('h2', {}, 'What you sign off'), fields([
      ['Skill', `${b('skill')} ${b('version')}`],
      ['Export', b('export')],
      ['Component digest', b('digest'), 'digest'],
      ['Manifest digest', b('manifest_digest'), 'digest'],
      ['Publisher key', b('publisher_key')],
      ['Target', b('target')],
      ['Hosts', (b('hosts') || []).length ? b('hosts').join(', ') : 'one runner of the target, chosen when it runs'],
      ['Requester', b('requester')],
      ['Expires', Number.isFinite(expires) ? `${new Date(expires).toISOString()} (${b('expires_ms')} ms)` : String(b('expires_ms'))],
      ['Input', pre(pretty(b('input')), true)],
      ['Grants', el('div', { id: 'grants' }, [...grants].map(([k, v]) => el('div', {},
        el('code', {}, k), isNarrowed(k) ? el('span', { class: 'narrowed' }, ' (narrowed)') : null, ': ',
        Array.isArray(v) && !v.length ? el('span', { class: 'muted' }, 'none') : canonical(v))))],
      ['Limits', el('div', { id: 'limits' }, [...limits].map(([k, v]) => el('div', {},
        el('code', {}, k), limitNarrowed(k) ? el('span', { class: 'narrowed' }, ' (narrowed)') : null, ': ',
        v === null ? el('span', { class: 'muted' }, 'default') : canonical(v))))],
      ['Plan', b('plan') === null ? el('span', { class: 'muted' }, 'no plan') : el('div', { id: 'plan' }, pre(pretty(b('plan')), true))],
      ['Digest (computed here)', el('span', { id: 'digest', class: 'digest' }, digest || 'not computed')],
      ['Digest (orchestrator)', el('span', { class: 'digest' }, i.invocation_digest)],
    ], true)),
    el('section', { id: 'context' }, el('h2', {}, 'Context (not signed)'), fields([
      ['Publisher', `${i.publisher} (key ${b('publisher_key')})`],
      ['Why it is trusted', skill ? skill.trust : `the orchestrator verified key ${b('publisher_key')} against its trust policy when it resolved this skill; every runner verifies it again against its own`],
      ['Level', `L${i.level}: ${i.approvals_required} approval(s) by someone other than the requester`],
      ['Why this level', el('ul', {}, (i.reasons || []).map((r) => el('li', {}, r)))],
      ['Reason given', i.reason],
      ['Trigger', i.trigger],
      ['Narrowed at submit', Object.keys(narrowing).length ? pre(JSON.stringify(narrowing, null, 2)) : 'nothing'],
      ['Incident', incidentsOf.length ? incidentsOf.map((x) => [link('incident', x.id), ' ', x.alertname, ' ',
        Object.entries(x.labels || {}).map(([k, v]) => `${k}=${v}`).join(', ')]) : 'none'],
      ['Approvals so far', (i.approvals || []).map((a) => a.approver).join(', ') || 'none'],
    ])),
    pending && canApprove() ? el('section', { id: 'decide' },
      el('div', { class: 'actions' },
        el('button', { type: 'button', id: 'approve', class: 'primary', disabled: Boolean(refusal) || !digest, onclick: approve }, 'Approve and sign'),
      ),
      el('div', { class: 'stack' },
        el('label', { for: 'comment' }, 'Or reject it, saying why:'), comment,
        el('div', { class: 'actions' }, el('button', { type: 'button', id: 'reject', class: 'danger', onclick: reject }, 'Reject'))),
      status) : (pending ? el('p', { class: 'muted', id: 'cannot-approve' }, `Signed in as ${whoami ? whoami.role : '?'}: only approvers and admins can approve or reject.`) : null),
  );
}

async function skillsPage() {
  const { skills } = await api('GET', '/api/v1/skills');
  show(el('h1', {}, 'Skills'), el('section', {}, table(['Skill', 'Versions', 'Kind', 'Publisher', 'Level', 'Grants', 'Trust'],
    skills.map((s) => [
      el('div', {}, el('strong', {}, s.name), ' ', s.version, el('div', { class: 'muted' }, s.description)),
      s.versions.join(', '), s.kind, s.publisher ? `${s.publisher} (${s.key_id})` : s.key_id,
      el('div', {}, `declared L${s.declared_level}, at least L${s.effective_level}`, el('ul', {}, s.level_reasons.map((r) => el('li', {}, r)))),
      s.grants ? el('div', {}, Object.entries(s.grants).filter(([, v]) => v.length).map(([k, v]) => el('div', {}, el('code', {}, k), ': ', JSON.stringify(v)))) : '',
      el('span', { class: s.trusted ? '' : 'error' }, s.trust),
    ]))));
}

async function audit() {
  const [verify, head] = await Promise.all([api('GET', '/api/v1/audit/verify'), api('GET', '/api/v1/audit/head')]);
  const page = await api('GET', `/api/v1/audit?after=${Math.max(0, head.index - 200)}&limit=200`);
  show(
    el('h1', {}, 'Audit'),
    el('section', { id: 'chain', class: verify.ok ? '' : 'refusal' }, verify.ok
      ? el('p', {}, badge('ok'), ` The chain verifies: ${verify.events} events, head ${verify.head.index} ${verify.head.hash}.`)
      : el('p', {}, badge('bad'), ' The chain does not verify: ', verify.problem)),
    el('section', { id: 'events' }, table(['#', 'At', 'Actor', 'Action', 'Subject', 'Detail'],
      page.events.slice().reverse().map((e) => [String(e.index), e.at, e.actor, e.action,
        /^inv_[0-9a-f]{16}$/.test(e.subject) ? link('inv', e.subject) : e.subject, el('code', {}, JSON.stringify(e.detail))]))),
  );
}

async function keyPage() {
  const key = await loadKey();
  const name = el('input', { id: 'approver-name', value: whoami ? whoami.name : '' });
  const status = el('p', { id: 'key-status', role: 'status' });
  show(
    el('h1', {}, 'Approver key'),
    el('section', {},
      el('p', {}, 'Approvals are signed in this browser with an Ed25519 key made here. Its private half cannot be exported: it never leaves this browser profile (and is lost with it). An admin registers the public half, and every runner that should count these approvals lists it in its trust policy.'),
      key ? fields([
        ['Public key', el('code', { id: 'public-key' }, key.publicText)],
        ['Trust policy entry', pre(`[[approvers]]\nname = "${whoami ? whoami.name : 'NAME'}"\nkey = "${key.publicText}"`)],
      ]) : el('p', { class: 'muted' }, 'No key in this browser yet.'),
      el('div', { class: 'actions' }, el('button', {
        type: 'button', id: 'generate', class: key ? '' : 'primary',
        onclick: async () => { await generateKey(); route(); },
      }, key ? 'Replace with a new key' : 'Generate a key'))),
    key && whoami && whoami.role === 'admin' ? el('section', {}, el('h2', {}, 'Register this key (admin)'),
      el('label', { for: 'approver-name' }, 'Approver (the name of the token they approve with)'), name,
      el('div', { class: 'actions' }, el('button', {
        type: 'button', id: 'register',
        onclick: async () => {
          try {
            await api('POST', '/api/v1/approvers', { name: name.value, public_key: key.publicText });
            status.replaceChildren(text(`Registered for ${name.value}.`));
          } catch (e) { status.replaceChildren(failure(e)); }
        },
      }, 'Register')), status) : null,
  );
}

// ---------------------------------------------------------------- routing

async function route() {
  clearTimeout(timer);
  if (!sessionStorage.getItem(TOKEN)) return signIn();
  try {
    if (!whoami) whoami = await api('GET', '/api/v1/whoami');
  } catch (e) {
    sessionStorage.removeItem(TOKEN);
    return signIn(e.status === 401 ? 'Signed out: the token is no longer valid.' : e.message);
  }
  document.getElementById('nav').hidden = false;
  document.getElementById('signout').hidden = false;
  document.getElementById('who').replaceChildren(text(`${whoami.name} (${whoami.role})`));
  const [, page, arg] = (location.hash.match(/^#\/([a-z]*)\/?(.*)$/) || [null, '', '']);
  const pages = {
    '': dashboard, inv: (id) => invocation(id), approve: (id) => approvePage(id), incidents, incident: (id) => incident(id),
    skills: skillsPage, audit, key: keyPage,
  };
  try {
    // Inside the try: a malformed escape in the address (`#/inv/%E0%A4%A`) is said, not left
    // as a page that never loads.
    const id = decodeURIComponent(arg || '');
    await (Object.hasOwn(pages, page) ? pages[page] : dashboard)(id);
    document.body.dataset.ready = location.hash || '#/';
  } catch (e) {
    if (e.status === 401) {
      // The token died mid-session (revoked, expired): back to sign-in, whatever the page.
      sessionStorage.removeItem(TOKEN);
      whoami = null;
      signIn('Signed out: the token is no longer valid.');
      document.body.dataset.ready = 'signin';
      return;
    }
    show(failure(e));
    document.body.dataset.ready = 'error';
  }
}

function refresh() {
  // Only re-render while nobody is typing on the page.
  if (!document.activeElement || !['INPUT', 'TEXTAREA'].includes(document.activeElement.tagName)) route();
  else timer = setTimeout(refresh, 2000);
}

if (typeof document !== 'undefined') {
  document.getElementById('signout').addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN);
    whoami = null;
    location.hash = '#/';
    signIn();
  });
  window.addEventListener('hashchange', () => {
    delete document.body.dataset.ready;
    window.scrollTo(0, 0);
    route();
  });
  route();
}
