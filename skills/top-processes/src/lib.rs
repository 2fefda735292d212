//! top-processes: the processes using the most CPU and the most memory.
//!
//! Input (all optional): `{"limit": 10, "by": "both"}`: `limit` is 1-50 processes per list,
//! `by` is `"cpu"`, `"rss"` or `"both"`.
//!
//! Output: `by` as given, `memory_total_bytes`, and `by_cpu` and/or `by_rss` (the lists that
//! were asked for), each sorted descending. A process has its `pid`, `ppid`, command `name`
//! (not the command line), `uid`, `user` (`null` when unknown), one-letter `state`,
//! `cpu_percent` (average since the process started, in percent of one CPU, as `ps` shows it),
//! `cpu_time_ms`, `rss_bytes`, `rss_percent` of total memory, `threads` and `start_time`
//! (seconds since the Unix epoch).

use serde::{Deserialize, Serialize};
use tend_sdk::host::{self, ProcessSort};
use tend_sdk::{Diagnose, SkillError};

#[derive(Deserialize, Serialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum By {
    Cpu,
    Rss,
    Both,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    #[serde(default = "default_limit")]
    limit: u32,
    #[serde(default = "default_by")]
    by: By,
}

fn default_limit() -> u32 {
    10
}
fn default_by() -> By {
    By::Both
}

const MAX_LIMIT: u32 = 50;

#[derive(Serialize)]
struct Process {
    pid: u32,
    ppid: u32,
    name: String,
    uid: u32,
    user: Option<String>,
    state: String,
    cpu_percent: f64,
    cpu_time_ms: u64,
    rss_bytes: u64,
    rss_percent: f64,
    threads: u32,
    start_time: u64,
}

#[derive(Serialize)]
struct Output {
    by: By,
    memory_total_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    by_cpu: Option<Vec<Process>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    by_rss: Option<Vec<Process>>,
}

fn list(sort: ProcessSort, limit: u32, total: u64) -> Vec<Process> {
    host::processes(sort, limit)
        .into_iter()
        .map(|p| Process {
            pid: p.pid,
            ppid: p.ppid,
            name: p.name,
            uid: p.uid,
            user: p.user,
            state: p.state,
            cpu_percent: p.cpu_percent,
            cpu_time_ms: p.cpu_time_ms,
            rss_bytes: p.rss_bytes,
            rss_percent: if total == 0 {
                0.0
            } else {
                (p.rss_bytes as f64 * 10_000.0 / total as f64).round() / 100.0
            },
            threads: p.threads,
            start_time: p.start_time,
        })
        .collect()
}

struct TopProcesses;

impl Diagnose for TopProcesses {
    type Input = Input;
    type Output = Output;

    fn run(input: Input) -> Result<Output, SkillError> {
        if !(1..=MAX_LIMIT).contains(&input.limit) {
            return Err(SkillError::new(
                "invalid-input",
                format!("limit must be between 1 and {MAX_LIMIT}"),
            ));
        }
        let total = host::memory().total_bytes;
        let by_cpu = matches!(input.by, By::Cpu | By::Both)
            .then(|| list(ProcessSort::Cpu, input.limit, total));
        let by_rss = matches!(input.by, By::Rss | By::Both)
            .then(|| list(ProcessSort::Rss, input.limit, total));
        Ok(Output {
            by: input.by,
            memory_total_bytes: total,
            by_cpu,
            by_rss,
        })
    }
}

tend_sdk::export_diagnose!(TopProcesses);
