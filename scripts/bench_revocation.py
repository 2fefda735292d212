"""Revocation across replicas: two `tend orchestrator serve` on one PostgreSQL database. N
times: create a viewer token on replica A, use it on both (so both cache it), wait a varying
part of the cache period, revoke it on A, then poll replica B every 2 ms until it answers 401.
Prints the time from the revoke's answer to B's first refusal (A refuses at once).

    python3 scripts/bench_revocation.py TEND_BINARY N   (TEND_TEST_POSTGRES must be set)
"""
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

tend, n = sys.argv[1], int(sys.argv[2])
pg = os.environ["TEND_TEST_POSTGRES"]
tmp = tempfile.mkdtemp()
env = dict(os.environ, TEND_CACHE_DIR=f"{tmp}/cache", TEND_DATA_DIR=f"{tmp}/data", TEND_LOG="warn")
subprocess.run(["psql", "-q", f"{pg}/postgres", "-c", "DROP DATABASE IF EXISTS tend_bench_revoke",
                "-c", "CREATE DATABASE tend_bench_revoke"], check=True, capture_output=True)
subprocess.run([tend, "key", "gen", "--out", f"{tmp}/k"], env=env, check=True, capture_output=True)
public = json.loads(subprocess.run([tend, "key", "show", f"{tmp}/k", "--json"], env=env,
                                   capture_output=True, check=True).stdout)["public_key"]
with open(f"{tmp}/trust.toml", "w") as f:
    f.write(f'[[publishers]]\nname = "x"\nkey = "{public}"\nprefixes = ["*"]\n')
procs = [subprocess.Popen([tend, "registry", "serve", "--listen", "127.0.0.1:17170", "--data",
                           f"{tmp}/reg", "--trust", f"{tmp}/trust.toml"], env=env,
                          stderr=subprocess.DEVNULL)]


def replica(port, name):
    p = subprocess.Popen([tend, "orchestrator", "serve", "--listen", f"127.0.0.1:{port}",
                          "--database", f"{pg}/tend_bench_revoke", "--registry",
                          "http://127.0.0.1:17170", "--trust", f"{tmp}/trust.toml",
                          "--data-dir", f"{tmp}/{name}"],
                         env=env, stderr=subprocess.PIPE, text=True)
    procs.append(p)
    admin = None
    for line in p.stderr:
        m = re.search(r"(tend_\S+)", line)
        if "keep it secret" in line and m:
            admin = m.group(1)
        if "listening on" in line:
            return admin


def call(port, method, path, token, body=None):
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, None


latencies = []
try:
    admin = replica(17180, "a")
    replica(17181, "b")
    for i in range(n):
        s, t = call(17180, "POST", "/api/v1/tokens", admin, {"name": f"t{i}", "role": "viewer"})
        assert s == 201, s
        assert call(17180, "GET", "/api/v1/status", t["token"])[0] == 200
        assert call(17181, "GET", "/api/v1/status", t["token"])[0] == 200
        time.sleep((i % 10) / 20)
        assert call(17180, "POST", f"/api/v1/tokens/{t['prefix']}/revoke", admin)[0] == 200
        t0 = time.monotonic()
        assert call(17180, "GET", "/api/v1/status", t["token"])[0] == 401
        while call(17181, "GET", "/api/v1/status", t["token"])[0] == 200:
            time.sleep(0.002)
        latencies.append((time.monotonic() - t0) * 1000)
finally:
    for p in procs:
        p.terminate()
latencies.sort()
print(f"n={len(latencies)}: revoked on A -> refused on B: p50 {statistics.median(latencies):.0f} ms, "
      f"max {latencies[-1]:.0f} ms, min {latencies[0]:.0f} ms")
