// tend-skill: write a Tend skill in JavaScript.
//
// A skill is a class with `run(input)` (and, for a repair skill, `plan(input)`) taking and
// returning plain objects; either may be async (e.g. to `fetch`). Throw `SkillFailure` to
// return a skill-error; any other exception becomes a skill-error with code `internal`.
// Export it with one line:
//
//     export const { run } = diagnose(MySkill);          // diagnose world
//     export const { run, plan } = repair(MySkill);      // repair world
//
// Build with `tend skill build <dir>` (bundled with rolldown, componentized with
// componentize-js against wit/skill).

import { log as wasmLog } from 'tend:skill/log@0.1.0';
import { getDirectories } from 'wasi:filesystem/preopens@0.2.12';

export * as host from 'tend:skill/host@0.1.0';

export class SkillFailure extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

export const log = {
  debug: (m) => wasmLog('debug', String(m)),
  info: (m) => wasmLog('info', String(m)),
  warn: (m) => wasmLog('warn', String(m)),
  error: (m) => wasmLog('error', String(m)),
};

// Files under the manifest's `fs_read` / `fs_write` grants. The engine has no `node:fs`; the
// host preopens each granted directory at its own path, and these helpers read through those
// preopens (WASI `wasi:filesystem`, which `tend skill build` adds to the world). A path under
// no granted directory, or one that leads out of it (`..`, a symlink), is refused by the host.
const MAX_READ = 1024 * 1024;

function failure(code, message, e) {
  // A refused WASI call carries the error code (e.g. `not-permitted`) as its payload.
  const why = e && e.payload !== undefined ? String(e.payload) : e && e.message ? e.message : String(e);
  return new SkillFailure(code, `${message}: ${why}`);
}

function preopenFor(path) {
  if (typeof path !== 'string' || !path.startsWith('/')) {
    throw new SkillFailure('invalid-input', `${JSON.stringify(path)} is not an absolute path`);
  }
  let best = null;
  for (const [descriptor, root] of getDirectories()) {
    const base = root.endsWith('/') ? root : `${root}/`;
    if ((path === root || path.startsWith(base)) && (!best || root.length > best[1].length)) {
      best = [descriptor, root];
    }
  }
  if (!best) {
    throw new SkillFailure(
      'denied',
      `${path} is not under a directory this skill is granted (capabilities.fs_read); the sandbox cannot see it`,
    );
  }
  const rel = path.slice(best[1].length).replace(/^\/+/, '') || '.';
  return [best[0], rel];
}

export const files = {
  /** The directories this run may read (the granted ones that exist). */
  granted() {
    return getDirectories().map(([, root]) => root);
  },

  /** The bytes of the file at `path` (absolute), at most `maxBytes` (default 1 MiB). */
  readBytes(path, maxBytes = MAX_READ) {
    const [dir, rel] = preopenFor(path);
    let file;
    try {
      file = dir.openAt({ symlinkFollow: true }, rel, {}, { read: true });
    } catch (e) {
      const code = e && e.payload === 'no-entry' ? 'not-found' : 'denied';
      throw failure(code, `cannot open ${path}`, e);
    }
    const chunks = [];
    let total = 0;
    try {
      while (total < maxBytes) {
        const [chunk, end] = file.read(BigInt(Math.min(65536, maxBytes - total)), BigInt(total));
        chunks.push(chunk);
        total += chunk.length;
        if (end || chunk.length === 0) break;
      }
    } catch (e) {
      throw failure('unavailable', `cannot read ${path}`, e);
    }
    const out = new Uint8Array(total);
    let at = 0;
    for (const c of chunks) {
      out.set(c, at);
      at += c.length;
    }
    return out;
  },

  /** The file at `path` as UTF-8 text, at most `maxBytes` (default 1 MiB). */
  readText(path, maxBytes = MAX_READ) {
    return new TextDecoder().decode(files.readBytes(path, maxBytes));
  },
};

// componentize-js turns a thrown `{ code, message }` into the WIT `skill-error`.
function asSkillError(e) {
  if (e instanceof SkillFailure) {
    return { code: e.code, message: e.message };
  }
  // A failed host call (e.g. exec `denied`) carries the host's skill-error as its payload.
  const p = e && e.payload;
  if (p && typeof p.code === 'string' && typeof p.message === 'string') {
    return { code: p.code, message: p.message };
  }
  const name = e && e.name ? e.name : 'Error';
  const message = e && e.message ? e.message : String(e);
  return { code: 'internal', message: `${name}: ${message}` };
}

function wrap(method) {
  return async (text) => {
    let input;
    try {
      input = JSON.parse(text);
    } catch (e) {
      throw { code: 'invalid-input', message: `input is not JSON: ${e.message}` };
    }
    try {
      const output = await method(input);
      // u64 host fields arrive as BigInt, which JSON cannot carry: numbers when exact, else text.
      return JSON.stringify(output, (_k, v) =>
        typeof v === 'bigint' ? (v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v.toString()) : v);
    } catch (e) {
      throw asSkillError(e);
    }
  };
}

export function diagnose(SkillClass) {
  const skill = new SkillClass();
  return { run: wrap((i) => skill.run(i)) };
}

export function repair(SkillClass) {
  const skill = new SkillClass();
  return { run: wrap((i) => skill.run(i)), plan: wrap((i) => skill.plan(i)) };
}
