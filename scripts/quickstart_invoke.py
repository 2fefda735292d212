"""scripts/run: invoke two catalog skills through the orchestrator's API and show what happens.

disk-usage is L0 (reads only): it runs at once. service-restart is L2 (it may run systemctl):
it waits for an approval by someone other than the requester, and the decision says why.
"""
import json
import sys
import time
import urllib.error
import urllib.request

base, token = sys.argv[1], sys.argv[2]
target = sys.argv[3] if len(sys.argv) > 3 else "local"


def call(method, path, body=None):
    req = urllib.request.Request(
        base + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


status, inv = call("POST", "/api/v1/invocations", {
    "skill": "disk-usage", "target": target,
    "input": {"warn_percent": 80, "critical_percent": 90}, "reason": "quickstart"})
if status != 201:
    sys.exit(f"submitting disk-usage failed ({status}): {inv}")
print(f"disk-usage on {target}: {inv['state']} (L{inv['level']})")
for reason in inv["reasons"]:
    print(f"  - {reason}")
deadline = time.time() + 60
while inv["state"] not in ("succeeded", "failed"):
    if time.time() > deadline:
        sys.exit(f"disk-usage did not finish: {inv['state']}")
    time.sleep(0.05)
    _, inv = call("GET", f"/api/v1/invocations/{inv['id']}")
report = inv["result"]
print(f"disk-usage: {inv['state']} in {report.get('duration_us', 0) / 1000:.2f} ms, "
      f"signed by {report.get('provenance', {}).get('publisher')}")
for fs in (report.get("output") or {}).get("filesystems", [])[:5]:
    print(f"  {fs['mount_point']:<20} {fs['used_percent']:5.1f}% used  ({fs['status']})")

status, inv = call("POST", "/api/v1/invocations", {
    "skill": "service-restart", "target": target,
    "input": {"unit": "nginx.service"}, "reason": "quickstart"})
print(f"service-restart: HTTP {status}, {inv.get('state', inv.get('error'))}")
for reason in inv.get("reasons", []):
    print(f"  - {reason}")
