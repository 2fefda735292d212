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
