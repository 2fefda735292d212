//! clean-old-logs: delete rotated or compressed log files older than N days under a granted
//! directory, and nothing else.
//!
//! Input: `{"dir": "/var/log", "older_than_days": 30, "max_files": 1000}`. `dir` (default
//! `/var/log`) is absolute, without `.` or `..`, and must lie under a directory the manifest
//! grants through `fs_write`; anything else cannot even be opened (the host preopens only the
//! grants, and cap-std keeps every path inside them). `older_than_days` is 1-3650; `max_files`
//! (default 1000, at most 10000) bounds how many files one call deletes, oldest first.
//!
//! A file is a candidate when it is a regular file (never a symlink, never a directory), its
//! last modification is at least `older_than_days` ago, and its name matches a rotation rule
//! ([`rotation_rule`]): `compressed` (`*.gz`, `*.xz`, `*.bz2`, `*.zst`, `*.lz4`), `numbered`
//! (`*.1` .. `*.999`, so also `*.log.3`), `dated` (`*-YYYYMMDD`) or `old` (`*.old`). An active
//! log (`syslog`, `app.log`, `wtmp`, journal files) matches none of them and is never touched.
//!
//! The tree is walked recursively with `symlink_metadata`: a symlink is neither followed nor
//! deleted, only reported in `skipped`, as are directories that could not be read.
//!
//! `plan` (no side effects) lists exactly the files `run` would delete (`files`: path, size,
//! modification time, age in days, rule) and their `total_bytes`. `run` computes the same list,
//! re-checks each file immediately before deleting it (still a regular file, not a symlink,
//! still old enough) and reports every file it deleted (`deleted`), `bytes_freed` (the sum of
//! their sizes) and any it left (`kept`, with the reason). `remove_file` unlinks a name, so even
//! a file swapped for a symlink after the re-check removes only that link, never its target.
//! Both outputs carry `mode`; `[output.schema]` is a `oneOf` of the two shapes.
//!
//! Errors: `invalid-input` (bad `dir`, days or max), `not-accessible` (`dir` does not exist or
//! is not under a granted directory), `not-a-directory` (`dir` is a file or a symlink).

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tend_sdk::{Repair, SkillError, log};

const DEFAULT_DIR: &str = "/var/log";
const DEFAULT_MAX_FILES: u32 = 1000;
const MAX_FILES: u32 = 10_000;
/// Deepest directory level walked below `dir`.
const MAX_DEPTH: usize = 32;
/// Most directory entries examined in one call; beyond it the result is marked `incomplete`.
const MAX_ENTRIES: usize = 200_000;
/// Most entries listed in `skipped` (all are counted in `skipped_count`).
const MAX_SKIPPED_LISTED: usize = 100;
const DAY_SECS: u64 = 86_400;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    #[serde(default = "default_dir")]
    dir: String,
    older_than_days: u32,
    #[serde(default)]
    max_files: Option<u32>,
}

fn default_dir() -> String {
    DEFAULT_DIR.to_string()
}

#[derive(Serialize, Clone)]
pub struct File {
    path: String,
    size_bytes: u64,
    /// Last modification, seconds since the Unix epoch.
    modified: u64,
    age_days: f64,
    rule: &'static str,
    #[serde(skip)]
    real: PathBuf,
}

#[derive(Serialize)]
pub struct Skipped {
    path: String,
    reason: String,
}

#[derive(Serialize)]
pub struct Plan {
    mode: &'static str,
    dir: String,
    older_than_days: u32,
    /// Exactly what `run` would delete, oldest first.
    files: Vec<File>,
    total_bytes: u64,
    /// How many files matched before `max_files` was applied.
    matched: usize,
    /// `matched` exceeded `max_files`: the rest waits for another call.
    truncated: bool,
    skipped: Vec<Skipped>,
    skipped_count: usize,
    /// The walk stopped early (too many entries): a later call may find more.
    incomplete: bool,
}

#[derive(Serialize)]
pub struct Output {
    mode: &'static str,
    dir: String,
    older_than_days: u32,
    deleted: Vec<File>,
    bytes_freed: u64,
    /// Planned files not deleted, and why (changed since the scan, or the delete failed).
    kept: Vec<Skipped>,
    matched: usize,
    truncated: bool,
    skipped: Vec<Skipped>,
    skipped_count: usize,
    incomplete: bool,
}

fn invalid(message: impl Into<String>) -> SkillError {
    SkillError::new("invalid-input", message)
}

fn all_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Which rotation rule a file name matches, if any. Every rule needs a non-empty stem, so
/// `.gz` or `.1` alone match nothing.
pub fn rotation_rule(name: &str) -> Option<&'static str> {
    if let Some((stem, ext)) = name.rsplit_once('.')
        && !stem.is_empty()
    {
        if ["gz", "xz", "bz2", "zst", "lz4"].contains(&ext) {
            return Some("compressed");
        }
        if ext == "old" {
            return Some("old");
        }
        // `.1` to `.999`: rotation counts, not a year or a PID-sized number.
        if all_digits(ext) && ext.len() <= 3 && !ext.starts_with('0') {
            return Some("numbered");
        }
    }
    if let Some((stem, date)) = name.rsplit_once('-')
        && !stem.is_empty()
        && date.len() == 8
        && all_digits(date)
    {
        let year: u32 = date[..4].parse().unwrap_or(0);
        let month: u32 = date[4..6].parse().unwrap_or(0);
        let day: u32 = date[6..].parse().unwrap_or(0);
        if (1970..=2999).contains(&year) && (1..=12).contains(&month) && (1..=31).contains(&day) {
            return Some("dated");
        }
    }
    None
}

fn check(input: &Input) -> Result<(), SkillError> {
    let d = &input.dir;
    if !d.starts_with('/') || d.len() > 4096 {
        return Err(invalid(format!("dir must be an absolute path, not {d:?}")));
    }
    if d.split('/').any(|p| p == "." || p == "..") || d.contains('\0') {
        return Err(invalid(format!("dir may not contain '.' or '..': {d:?}")));
    }
    if !(1..=3650).contains(&input.older_than_days) {
        return Err(invalid("older_than_days must be between 1 and 3650"));
    }
    if input
        .max_files
        .is_some_and(|m| !(1..=MAX_FILES).contains(&m))
    {
        return Err(invalid(format!(
            "max_files must be between 1 and {MAX_FILES}"
        )));
    }
    Ok(())
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn show(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// A regular file old enough to delete, from its metadata; `Err` says why not.
fn judge(meta: &std::fs::Metadata, now: u64, min_age: u64) -> Result<(u64, u64), String> {
    if meta.file_type().is_symlink() {
        return Err("now a symlink".into());
    }
    if !meta.is_file() {
        return Err("no longer a regular file".into());
    }
    let modified = meta.modified().map(unix_secs).unwrap_or(now);
    if now.saturating_sub(modified) < min_age {
        return Err("modified since the scan: no longer old enough".into());
    }
    Ok((meta.len(), modified))
}

struct Scan {
    dir: String,
    files: Vec<File>,
    matched: usize,
    truncated: bool,
    skipped: Vec<Skipped>,
    skipped_count: usize,
    incomplete: bool,
}

impl Scan {
    fn skip(&mut self, path: &Path, reason: impl Into<String>) {
        self.skipped_count += 1;
        if self.skipped.len() < MAX_SKIPPED_LISTED {
            self.skipped.push(Skipped {
                path: show(path),
                reason: reason.into(),
            });
        }
    }
}

fn scan(input: &Input) -> Result<Scan, SkillError> {
    check(input)?;
    // Normalise: no trailing or doubled slashes in what is reported.
    let root: PathBuf = Path::new(&input.dir).components().collect();
    let meta = std::fs::symlink_metadata(&root).map_err(|e| {
        SkillError::new(
            "not-accessible",
            format!(
                "{} cannot be opened ({e}): it does not exist or is not under a directory this skill is granted",
                show(&root)
            ),
        )
    })?;
    if meta.file_type().is_symlink() || !meta.is_dir() {
        return Err(SkillError::new(
            "not-a-directory",
            format!(
                "{} is not a directory (symlinks are not followed)",
                show(&root)
            ),
        ));
    }
    let now = unix_secs(SystemTime::now());
    let min_age = u64::from(input.older_than_days) * DAY_SECS;
    let mut out = Scan {
        dir: show(&root),
        files: Vec::new(),
        matched: 0,
        truncated: false,
        skipped: Vec::new(),
        skipped_count: 0,
        incomplete: false,
    };
    let mut entries = 0usize;
    let mut stack = vec![(root, 0usize)];
    'walk: while let Some((dir, depth)) = stack.pop() {
        let read = match std::fs::read_dir(&dir) {
            Ok(r) => r,
            Err(e) => {
                out.skip(&dir, format!("cannot read directory: {e}"));
                continue;
            }
        };
        for entry in read {
            entries += 1;
            if entries > MAX_ENTRIES {
                out.incomplete = true;
                break 'walk;
            }
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    out.skip(&dir, format!("cannot list directory: {e}"));
                    continue;
                }
            };
            let path = entry.path();
            // symlink_metadata: never follows a link, at any level.
            let meta = match std::fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) => {
                    out.skip(&path, format!("cannot stat: {e}"));
                    continue;
                }
            };
            let ft = meta.file_type();
            if ft.is_symlink() {
                out.skip(&path, "symlink: not followed, not deleted");
            } else if ft.is_dir() {
                if depth + 1 > MAX_DEPTH {
                    out.skip(&path, format!("deeper than {MAX_DEPTH} levels"));
                } else {
                    stack.push((path, depth + 1));
                }
            } else if ft.is_file() {
                let name = entry.file_name();
                let Some(rule) = rotation_rule(&name.to_string_lossy()) else {
                    continue;
                };
                let Ok((size, modified)) = judge(&meta, now, min_age) else {
                    continue;
                };
                out.files.push(File {
                    path: show(&path),
                    size_bytes: size,
                    modified,
                    age_days: ((now.saturating_sub(modified)) as f64 / DAY_SECS as f64 * 100.0)
                        .round()
                        / 100.0,
                    rule,
                    real: path,
                });
            }
            // Sockets, FIFOs, devices: not logs; ignored.
        }
    }
    out.files.sort_by(|a, b| {
        a.modified
            .cmp(&b.modified)
            .then_with(|| a.path.cmp(&b.path))
    });
    out.matched = out.files.len();
    let max = input.max_files.unwrap_or(DEFAULT_MAX_FILES) as usize;
    out.truncated = out.files.len() > max;
    out.files.truncate(max);
    Ok(out)
}

pub struct CleanOldLogs;

impl Repair for CleanOldLogs {
    type Input = Input;
    type Output = Output;
    type Plan = Plan;

    fn plan(input: Input) -> Result<Plan, SkillError> {
        let s = scan(&input)?;
        Ok(Plan {
            mode: "plan",
            dir: s.dir,
            older_than_days: input.older_than_days,
            total_bytes: s.files.iter().map(|f| f.size_bytes).sum(),
            files: s.files,
            matched: s.matched,
            truncated: s.truncated,
            skipped: s.skipped,
            skipped_count: s.skipped_count,
            incomplete: s.incomplete,
        })
    }

    fn run(input: Input) -> Result<Output, SkillError> {
        let s = scan(&input)?;
        let min_age = u64::from(input.older_than_days) * DAY_SECS;
        let mut deleted = Vec::new();
        let mut kept = Vec::new();
        for mut file in s.files {
            // Re-check right before deleting: the scan may be seconds old.
            let now = unix_secs(SystemTime::now());
            let verdict = std::fs::symlink_metadata(&file.real)
                .map_err(|e| format!("cannot stat: {e}"))
                .and_then(|m| judge(&m, now, min_age));
            let (size, modified) = match verdict {
                Ok(v) => v,
                Err(reason) => {
                    kept.push(Skipped {
                        path: file.path,
                        reason,
                    });
                    continue;
                }
            };
            match std::fs::remove_file(&file.real) {
                Ok(()) => {
                    file.size_bytes = size;
                    file.modified = modified;
                    deleted.push(file);
                }
                Err(e) => kept.push(Skipped {
                    path: file.path,
                    reason: format!("delete failed: {e}"),
                }),
            }
        }
        let bytes_freed = deleted.iter().map(|f| f.size_bytes).sum();
        log::info(&format!(
            "deleted {} files under {}, {bytes_freed} bytes; {} kept",
            deleted.len(),
            s.dir,
            kept.len()
        ));
        Ok(Output {
            mode: "run",
            dir: s.dir,
            older_than_days: input.older_than_days,
            deleted,
            bytes_freed,
            kept,
            matched: s.matched,
            truncated: s.truncated,
            skipped: s.skipped,
            skipped_count: s.skipped_count,
            incomplete: s.incomplete,
        })
    }
}

tend_sdk::export_repair!(CleanOldLogs);
