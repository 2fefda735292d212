"""Median of `tend skill pull --json` reports (one per line on stdin), as one table row."""
import json
import os
import statistics
import sys

rows = [json.loads(line) for line in sys.stdin if line.strip()]
name, mode = sys.argv[1], sys.argv[2]
med = lambda key: statistics.median(r[key] for r in rows)
size = os.path.getsize(rows[0]["component"]) / 2**20
print(f"{name:<14} {mode:<7} {size:9.1f} {med('total_ms'):10.1f} {med('fetch_ms'):14.1f} {med('ready_ms'):11.1f}")
