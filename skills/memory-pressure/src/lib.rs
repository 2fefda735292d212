//! memory-pressure: how much memory is left, how hard the kernel is working to find more, and
//! whether the OOM killer has struck.
//!
//! Input (all optional):
//! `{"warn_available_percent": 20, "critical_available_percent": 10,
//!   "warn_psi_some_avg10": 10, "critical_psi_some_avg10": 40}`.
//! Less available memory than a `*_available_percent` threshold, or a memory PSI `some avg10`
//! (percent of the last 10 s in which some task stalled on memory) at or above a `*_psi_*`
//! threshold, raises the status to `warn` / `critical`.
//!
//! Output: `status` (`ok` | `warn` | `critical`) with the `reasons` for it; `memory` (total,
//! available, used = total - available, free, buffers, cached, in bytes, and percentages);
//! `swap` (total, free, used, used percent); `pressure` (memory PSI averages, `null` where the
//! kernel does not expose /proc/pressure); `oom_kills` since boot (`null` when unknown).

use serde::{Deserialize, Serialize};
use tend_sdk::{Diagnose, SkillError, host};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    #[serde(default = "default_warn_available")]
    warn_available_percent: f64,
    #[serde(default = "default_critical_available")]
    critical_available_percent: f64,
    #[serde(default = "default_warn_psi")]
    warn_psi_some_avg10: f64,
    #[serde(default = "default_critical_psi")]
    critical_psi_some_avg10: f64,
}

fn default_warn_available() -> f64 {
    20.0
}
fn default_critical_available() -> f64 {
    10.0
}
fn default_warn_psi() -> f64 {
    10.0
}
fn default_critical_psi() -> f64 {
    40.0
}

#[derive(Serialize, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
enum Status {
    Ok,
    Warn,
    Critical,
}

#[derive(Serialize)]
struct Memory {
    total_bytes: u64,
    available_bytes: u64,
    used_bytes: u64,
    free_bytes: u64,
    buffers_bytes: u64,
    cached_bytes: u64,
    available_percent: f64,
    used_percent: f64,
}

#[derive(Serialize)]
struct Swap {
    total_bytes: u64,
    free_bytes: u64,
    used_bytes: u64,
    used_percent: f64,
}

#[derive(Serialize)]
struct Pressure {
    some_avg10: f64,
    some_avg60: f64,
    some_avg300: f64,
    some_total_us: u64,
    full_avg10: Option<f64>,
    full_avg60: Option<f64>,
    full_avg300: Option<f64>,
    full_total_us: Option<u64>,
}

#[derive(Serialize)]
struct Output {
    status: Status,
    reasons: Vec<String>,
    memory: Memory,
    swap: Swap,
    pressure: Option<Pressure>,
    oom_kills: Option<u64>,
}

fn percent(part: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        (part as f64 * 10_000.0 / total as f64).round() / 100.0
    }
}

struct MemoryPressure;

impl Diagnose for MemoryPressure {
    type Input = Input;
    type Output = Output;

    fn run(input: Input) -> Result<Output, SkillError> {
        let in_range = |v: f64| (0.0..=100.0).contains(&v);
        if !in_range(input.warn_available_percent)
            || !in_range(input.critical_available_percent)
            || input.critical_available_percent > input.warn_available_percent
        {
            return Err(SkillError::new(
                "invalid-input",
                "available thresholds must satisfy 0 <= critical_available_percent <= warn_available_percent <= 100",
            ));
        }
        if !in_range(input.warn_psi_some_avg10)
            || !in_range(input.critical_psi_some_avg10)
            || input.warn_psi_some_avg10 > input.critical_psi_some_avg10
        {
            return Err(SkillError::new(
                "invalid-input",
                "PSI thresholds must satisfy 0 <= warn_psi_some_avg10 <= critical_psi_some_avg10 <= 100",
            ));
        }

        let m = host::memory();
        let used = m.total_bytes.saturating_sub(m.available_bytes);
        let memory = Memory {
            total_bytes: m.total_bytes,
            available_bytes: m.available_bytes,
            used_bytes: used,
            free_bytes: m.free_bytes,
            buffers_bytes: m.buffers_bytes,
            cached_bytes: m.cached_bytes,
            available_percent: percent(m.available_bytes, m.total_bytes),
            used_percent: percent(used, m.total_bytes),
        };
        let swap_used = m.swap_total_bytes.saturating_sub(m.swap_free_bytes);
        let swap = Swap {
            total_bytes: m.swap_total_bytes,
            free_bytes: m.swap_free_bytes,
            used_bytes: swap_used,
            used_percent: percent(swap_used, m.swap_total_bytes),
        };
        let pressure = m.pressure.map(|p| Pressure {
            some_avg10: p.some_avg10,
            some_avg60: p.some_avg60,
            some_avg300: p.some_avg300,
            some_total_us: p.some_total_us,
            full_avg10: p.full_avg10,
            full_avg60: p.full_avg60,
            full_avg300: p.full_avg300,
            full_total_us: p.full_total_us,
        });

        let mut status = Status::Ok;
        let mut reasons = Vec::new();
        let mut raise = |s: Status, why: String| {
            status = status.max(s);
            reasons.push(why);
        };
        let avail = memory.available_percent;
        if m.total_bytes == 0 {
            raise(
                Status::Warn,
                "the host reported no memory total; cannot judge available memory".into(),
            );
        } else if avail < input.critical_available_percent {
            raise(
                Status::Critical,
                format!(
                    "available memory {avail}% is below the critical threshold {}%",
                    input.critical_available_percent
                ),
            );
        } else if avail < input.warn_available_percent {
            raise(
                Status::Warn,
                format!(
                    "available memory {avail}% is below the warning threshold {}%",
                    input.warn_available_percent
                ),
            );
        }
        match &pressure {
            Some(p) if p.some_avg10 >= input.critical_psi_some_avg10 => raise(
                Status::Critical,
                format!(
                    "memory pressure some avg10 {}% is at or above the critical threshold {}%",
                    p.some_avg10, input.critical_psi_some_avg10
                ),
            ),
            Some(p) if p.some_avg10 >= input.warn_psi_some_avg10 => raise(
                Status::Warn,
                format!(
                    "memory pressure some avg10 {}% is at or above the warning threshold {}%",
                    p.some_avg10, input.warn_psi_some_avg10
                ),
            ),
            Some(_) => {}
            None => tend_sdk::log::info(
                "memory PSI is not available on this kernel (/proc/pressure/memory); judged on available memory only",
            ),
        }
        Ok(Output {
            status,
            reasons,
            memory,
            swap,
            pressure,
            oom_kills: m.oom_kills,
        })
    }
}

tend_sdk::export_diagnose!(MemoryPressure);
