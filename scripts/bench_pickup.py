"""Pick-up latency: submit N L0 jobs to pool:bench one after another (each waits for the
previous to finish, so the agent is idle in its long-poll), then read the audit trail: the
time from `invocation.create` (queued) to `invocation.started` on the agent."""
import json
import statistics
import sys
import time
import urllib.request
from datetime import datetime

base, token, n = sys.argv[1], sys.argv[2], int(sys.argv[3])


def call(method, path, body=None):
    req = urllib.request.Request(
        base + path, method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req) as resp:
        return json.load(resp)


ids = []
for _ in range(n):
    inv = call("POST", "/api/v1/invocations",
               {"skill": "echo", "target": "pool:bench", "input": {}, "reason": "bench"})
    while inv["state"] not in ("succeeded", "failed"):
        time.sleep(0.002)
        inv = call("GET", f"/api/v1/invocations/{inv['id']}")
    ids.append(inv["id"])

events, after = [], 0
while True:
    page = call("GET", f"/api/v1/audit?after={after}&limit=1000")["events"]
    if not page:
        break
    events += page
    after = page[-1]["index"]
at = lambda e: datetime.fromisoformat(e["at"].replace("Z", "+00:00")).timestamp()
created = {e["subject"]: at(e) for e in events if e["action"] == "invocation.create"}
started = {e["subject"]: at(e) for e in events if e["action"] == "invocation.started"}
lat = sorted((started[i] - created[i]) * 1000 for i in ids if i in started)
p = lambda q: lat[min(len(lat) - 1, round((len(lat) - 1) * q))]
print(f"pick-up latency over {len(lat)} jobs: p50 {p(0.5):.1f} ms, p90 {p(0.9):.1f} ms, "
      f"p99 {p(0.99):.1f} ms (mean {statistics.mean(lat):.1f} ms)")
