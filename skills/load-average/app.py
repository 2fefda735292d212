"""load-average: load averages normalised by CPU count (written in Python).

Input:  {"warn_per_cpu": 1.0, "critical_per_cpu": 2.0}   (both optional)
Output: {"status", "cpu_count", "load": {"1m", "5m", "15m"}, "per_cpu": {...},
         "runnable_tasks", "total_tasks", "cpu_pressure": {...} | null, "trend"}
"""

import tend_skill
from tend_skill import SkillFailure, host


def _pressure(p):
    if p is None:
        return None
    return {"some_avg10": p.some_avg10, "some_avg60": p.some_avg60, "some_avg300": p.some_avg300}


class LoadAverage(tend_skill.Skill):
    def run(self, input):
        warn = float(input.get("warn_per_cpu", 1.0))
        critical = float(input.get("critical_per_cpu", 2.0))
        if warn > critical:
            raise SkillFailure("invalid-input", "warn_per_cpu must not exceed critical_per_cpu")
        load = host.load()
        cpus = max(load.cpu_count, 1)
        per_cpu = {
            "1m": round(load.one / cpus, 3),
            "5m": round(load.five / cpus, 3),
            "15m": round(load.fifteen / cpus, 3),
        }
        worst = max(per_cpu["1m"], per_cpu["5m"])
        status = "critical" if worst >= critical else "warn" if worst >= warn else "ok"
        if load.one > load.fifteen * 1.2:
            trend = "rising"
        elif load.one < load.fifteen * 0.8:
            trend = "falling"
        else:
            trend = "steady"
        tend_skill.info(f"load {load.one:.2f} on {cpus} CPUs: {status}")
        return {
            "status": status,
            "cpu_count": load.cpu_count,
            "load": {"1m": load.one, "5m": load.five, "15m": load.fifteen},
            "per_cpu": per_cpu,
            "runnable_tasks": load.runnable_tasks,
            "total_tasks": load.total_tasks,
            "cpu_pressure": _pressure(host.pressure_of(host.PressureResource.CPU)),
            "trend": trend,
        }


WitWorld = tend_skill.diagnose(LoadAverage)
