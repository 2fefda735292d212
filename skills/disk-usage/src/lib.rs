//! disk-usage: bytes and inodes used per mounted filesystem, worst first.
//!
//! Input: `{"warn_percent": 80, "critical_percent": 90, "include_read_only": false}` (all
//! optional). Output: one entry per filesystem with percentages and a `status` of `ok`,
//! `warn` or `critical` (the worse of bytes and inodes), plus the overall worst status.

use serde::{Deserialize, Serialize};
use tend_sdk::{Diagnose, SkillError, host};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    #[serde(default = "default_warn")]
    warn_percent: f64,
    #[serde(default = "default_critical")]
    critical_percent: f64,
    #[serde(default)]
    include_read_only: bool,
}

fn default_warn() -> f64 {
    80.0
}
fn default_critical() -> f64 {
    90.0
}

#[derive(Serialize, Clone, Copy, PartialEq, PartialOrd)]
#[serde(rename_all = "lowercase")]
enum Status {
    Ok,
    Warn,
    Critical,
}

#[derive(Serialize)]
struct Mount {
    mount_point: String,
    device: String,
    fs_type: String,
    total_bytes: u64,
    used_bytes: u64,
    available_bytes: u64,
    used_percent: f64,
    inodes_total: u64,
    inodes_used: u64,
    inodes_used_percent: f64,
    status: Status,
}

#[derive(Serialize)]
struct Output {
    status: Status,
    filesystems: Vec<Mount>,
}

fn percent(used: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        (used as f64 * 10_000.0 / total as f64).round() / 100.0
    }
}

struct DiskUsage;

impl Diagnose for DiskUsage {
    type Input = Input;
    type Output = Output;

    fn run(input: Input) -> Result<Output, SkillError> {
        if !(0.0..=100.0).contains(&input.warn_percent)
            || !(0.0..=100.0).contains(&input.critical_percent)
            || input.warn_percent > input.critical_percent
        {
            return Err(SkillError::new(
                "invalid-input",
                "thresholds must satisfy 0 <= warn_percent <= critical_percent <= 100",
            ));
        }
        let classify = |p: f64| {
            if p >= input.critical_percent {
                Status::Critical
            } else if p >= input.warn_percent {
                Status::Warn
            } else {
                Status::Ok
            }
        };
        let mut filesystems: Vec<Mount> = host::filesystems()
            .into_iter()
            .filter(|f| input.include_read_only || !f.read_only)
            .map(|f| {
                // Percent of what non-root users can use, as `df` reports it.
                let usable = f.used_bytes + f.available_bytes;
                let used_percent = percent(f.used_bytes, usable);
                let inodes_used_percent = percent(f.inodes_used, f.inodes_total);
                let status = classify(used_percent).max_by(classify(inodes_used_percent));
                Mount {
                    mount_point: f.mount_point,
                    device: f.device,
                    fs_type: f.fs_type,
                    total_bytes: f.total_bytes,
                    used_bytes: f.used_bytes,
                    available_bytes: f.available_bytes,
                    used_percent,
                    inodes_total: f.inodes_total,
                    inodes_used: f.inodes_used,
                    inodes_used_percent,
                    status,
                }
            })
            .collect();
        filesystems.sort_by(|a, b| {
            let worst = |m: &Mount| m.used_percent.max(m.inodes_used_percent);
            worst(b).total_cmp(&worst(a))
        });
        let status = filesystems
            .iter()
            .map(|m| m.status)
            .fold(Status::Ok, |a, b| a.max_by(b));
        tend_sdk::log::info(&format!("{} filesystems checked", filesystems.len()));
        Ok(Output {
            status,
            filesystems,
        })
    }
}

trait MaxBy {
    fn max_by(self, other: Self) -> Self;
}
impl MaxBy for Status {
    fn max_by(self, other: Status) -> Status {
        if other > self { other } else { self }
    }
}

tend_sdk::export_diagnose!(DiskUsage);
