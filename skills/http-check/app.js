// http-check: status, latency and an optional body match for HTTP(S) endpoints.
//
// Input:  {"targets": [{"url": "...", "expect_status": 200, "body_contains": "ok"}], "timeout_ms": 5000}
// Output: {"status": "ok"|"failing", "results": [{url, ok, status, latency_ms, body_matched, error}]}
// Only origins granted in skill.toml (`http = [...]`) can be reached; others fail with an
// error naming the refusal, as does anything the SSRF guard blocks.
import { diagnose, log } from 'tend-skill';

async function check(target, timeoutMs) {
  const started = Date.now();
  const result = { url: target.url, ok: false, status: null, latency_ms: null, body_matched: null, error: null };
  try {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), timeoutMs);
    const response = await fetch(target.url, { method: 'GET', signal: controller.signal });
    const body = target.body_contains !== undefined ? await response.text() : '';
    clearTimeout(timer);
    result.latency_ms = Date.now() - started;
    result.status = response.status;
    const expected = target.expect_status ?? 200;
    result.ok = response.status === expected;
    if (target.body_contains !== undefined) {
      result.body_matched = body.includes(target.body_contains);
      result.ok = result.ok && result.body_matched;
    }
    if (!result.ok && result.error === null) {
      result.error = result.status !== expected
        ? `status ${result.status}, expected ${expected}`
        : `body does not contain ${JSON.stringify(target.body_contains)}`;
    }
  } catch (e) {
    result.latency_ms = Date.now() - started;
    result.error = `${e && e.name ? e.name : 'Error'}: ${e && e.message ? e.message : String(e)}`;
  }
  return result;
}

class HttpCheck {
  async run(input) {
    const timeoutMs = input.timeout_ms ?? 5000;
    const results = [];
    for (const target of input.targets) {
      results.push(await check(target, timeoutMs));
    }
    const failing = results.filter((r) => !r.ok).length;
    log.info(`${results.length} endpoints checked, ${failing} failing`);
    return { status: failing === 0 ? 'ok' : 'failing', results };
  }
}

export const { run } = diagnose(HttpCheck);
