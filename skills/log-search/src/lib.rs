//! log-search: a regular expression over the log files under the granted directories.
//!
//! Input: `{"paths": ["/var/log"], "pattern": "error|fail", "max_matches": 100, "context": 2,
//! "ignore_case": false}`. Only `pattern` is required (the `regex` crate's syntax: no
//! look-around or backreferences, and matching time is linear in the input). `paths` are
//! absolute files or directories (searched recursively, symlinked directories not followed)
//! and default to `/var/log`; a path outside the directories the manifest grants with `fs_read`
//! cannot be opened in the sandbox and is listed under `skipped` with the reason.
//! `max_matches` is 1-1000 (default 100), `context` 0-10 lines before and after (default 0).
//!
//! Files are searched newest first (by modification time). Within a file matches are in line
//! order, and when a file has more matches than the budget left, its *last* ones (the most
//! recent entries) are kept. Output: `matches` (newest file first; each with `file`,
//! `line_number` from 1, `line`, `context_before` and `context_after`), `files_searched`,
//! `truncated` (true when more matches may exist than are reported: the budget was spent, or
//! the output grew too large), and `skipped` files with a reason (unreadable, binary,
//! outside the grant, missing). Lines longer than 1024 characters are cut and end in `[...]`.

use std::collections::{BTreeSet, VecDeque};
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Serialize};
use tend_sdk::{Diagnose, SkillError};

const MAX_MATCHES: usize = 1000;
const MAX_CONTEXT: usize = 10;
const MAX_PATHS: usize = 32;
/// Files considered at most (the newest are searched first).
const MAX_FILES: usize = 5000;
/// Directory depth walked below each given directory.
const MAX_DEPTH: usize = 16;
/// A line is matched on its first 64 KiB.
const MAX_LINE_BYTES: u64 = 64 * 1024;
/// A line (or context line) is reported with at most this many characters.
const MAX_LINE_CHARS: usize = 1024;
/// Roughly how much match text the output may carry before the search stops.
const OUTPUT_BUDGET: usize = 2 * 1024 * 1024;
/// Skipped files listed at most (the rest are counted).
const MAX_SKIPPED: usize = 200;
/// How much of a file's start is checked for NUL bytes to call it binary.
const SNIFF_BYTES: usize = 8 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    #[serde(default = "default_paths")]
    paths: Vec<String>,
    pattern: String,
    #[serde(default = "default_max_matches")]
    max_matches: usize,
    #[serde(default)]
    context: usize,
    #[serde(default)]
    ignore_case: bool,
}

fn default_paths() -> Vec<String> {
    vec!["/var/log".into()]
}
fn default_max_matches() -> usize {
    100
}

#[derive(Serialize)]
struct Match {
    file: String,
    line_number: u64,
    line: String,
    context_before: Vec<String>,
    context_after: Vec<String>,
}

impl Match {
    fn size(&self) -> usize {
        self.file.len()
            + self.line.len()
            + self.context_before.iter().map(String::len).sum::<usize>()
            + self.context_after.iter().map(String::len).sum::<usize>()
            + 100
    }
}

#[derive(Serialize)]
struct Skipped {
    path: String,
    reason: String,
}

#[derive(Serialize)]
struct Output {
    pattern: String,
    files_searched: usize,
    truncated: bool,
    matches: Vec<Match>,
    skipped: Vec<Skipped>,
    skipped_not_listed: usize,
}

use tend_sdk::files::{explain, explain_input};

struct Search {
    skipped: Vec<Skipped>,
    skipped_not_listed: usize,
    files_limited: bool,
}

impl Search {
    fn skip(&mut self, path: &Path, reason: String) {
        if self.skipped.len() < MAX_SKIPPED {
            self.skipped.push(Skipped {
                path: path.display().to_string(),
                reason,
            });
        } else {
            self.skipped_not_listed += 1;
        }
    }

    /// Collect regular files under `path` with their modification times.
    fn collect(&mut self, path: &Path, depth: usize, out: &mut BTreeSet<(PathBuf, i128)>) {
        if out.len() >= MAX_FILES {
            self.files_limited = true;
            return;
        }
        let meta = match fs::metadata(path) {
            Ok(m) => m,
            Err(e) if depth == 0 => return self.skip(path, explain_input(path, &e)),
            Err(e) => return self.skip(path, explain(&e)),
        };
        if meta.is_file() {
            out.insert((path.to_path_buf(), mtime_ns(&meta)));
            return;
        }
        if !meta.is_dir() {
            return self.skip(path, "not a regular file or directory".into());
        }
        if depth > MAX_DEPTH {
            return self.skip(
                path,
                format!("deeper than {MAX_DEPTH} directories; not searched"),
            );
        }
        let entries = match fs::read_dir(path) {
            Ok(d) => d,
            Err(e) => return self.skip(path, explain(&e)),
        };
        let mut children: Vec<_> = entries.flatten().collect();
        children.sort_by_key(|e| e.file_name());
        for entry in children {
            let child = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                self.collect(&child, depth + 1, out);
            } else if kind.is_file() {
                if out.len() >= MAX_FILES {
                    self.files_limited = true;
                    return;
                }
                match entry.metadata() {
                    Ok(m) => {
                        out.insert((child, mtime_ns(&m)));
                    }
                    Err(e) => self.skip(&child, explain(&e)),
                }
            } else if kind.is_symlink() {
                // A symlink to a file is searched; one to a directory is not followed (loops,
                // duplicates). One leading outside the grant cannot be opened: say so.
                match fs::metadata(&child) {
                    Ok(m) if m.is_file() => {
                        if out.len() < MAX_FILES {
                            out.insert((child, mtime_ns(&m)));
                        } else {
                            self.files_limited = true;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => self.skip(&child, format!("symlink not followed: {}", explain(&e))),
                }
            }
        }
    }
}

fn mtime_ns(meta: &fs::Metadata) -> i128 {
    match meta.modified() {
        Ok(t) => match t.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(d) => d.as_nanos() as i128,
            Err(e) => -(e.duration().as_nanos() as i128),
        },
        Err(_) => 0,
    }
}

/// Read one line (without its end) into `buf`, matching on at most [`MAX_LINE_BYTES`]:
/// the rest of a longer line is skipped. `Ok(false)` at end of file.
fn read_line(reader: &mut impl BufRead, buf: &mut Vec<u8>) -> io::Result<bool> {
    buf.clear();
    let n = reader
        .by_ref()
        .take(MAX_LINE_BYTES)
        .read_until(b'\n', buf)?;
    if n == 0 {
        return Ok(false);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
    } else if n as u64 == MAX_LINE_BYTES {
        loop {
            let avail = reader.fill_buf()?;
            if avail.is_empty() {
                break;
            }
            if let Some(i) = avail.iter().position(|b| *b == b'\n') {
                reader.consume(i + 1);
                break;
            }
            let len = avail.len();
            reader.consume(len);
        }
    }
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    Ok(true)
}

fn clip(line: &str) -> String {
    match line.char_indices().nth(MAX_LINE_CHARS) {
        Some((cut, _)) => format!("{}[...]", &line[..cut]),
        None => line.to_string(),
    }
}

struct FileResult {
    matches: VecDeque<Match>,
    /// Earlier matches of this file were dropped to keep within the budget.
    dropped: bool,
}

enum FileOutcome {
    Searched(FileResult),
    Skipped(String),
}

fn search_file(
    path: &Path,
    re: &Regex,
    context: usize,
    budget_matches: usize,
    budget_bytes: usize,
) -> FileOutcome {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) => return FileOutcome::Skipped(explain(&e)),
    };
    let mut reader = BufReader::with_capacity(64 * 1024, file);
    match reader.fill_buf() {
        Ok(head) if head[..head.len().min(SNIFF_BYTES)].contains(&0) => {
            return FileOutcome::Skipped(
                "binary (NUL bytes near the start; compressed or journal?)".into(),
            );
        }
        Ok(_) => {}
        Err(e) => return FileOutcome::Skipped(format!("cannot read: {}", explain(&e))),
    }
    let name = path.display().to_string();
    let mut before: VecDeque<String> = VecDeque::with_capacity(context);
    let mut found: VecDeque<Match> = VecDeque::new();
    let mut found_bytes = 0usize;
    let mut dropped = false;
    let mut buf = Vec::new();
    let mut line_number = 0u64;
    loop {
        match read_line(&mut reader, &mut buf) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                return FileOutcome::Skipped(format!(
                    "read failed at line {}: {}",
                    line_number + 1,
                    explain(&e)
                ));
            }
        }
        line_number += 1;
        let text = String::from_utf8_lossy(&buf);
        // After-context for the latest matches still waiting for lines.
        if context > 0 {
            for m in found.iter_mut().rev() {
                if m.line_number + context as u64 >= line_number {
                    let line = clip(&text);
                    found_bytes += line.len();
                    m.context_after.push(line);
                } else {
                    break;
                }
            }
        }
        if re.is_match(&text) {
            let m = Match {
                file: name.clone(),
                line_number,
                line: clip(&text),
                context_before: before.iter().cloned().collect(),
                context_after: Vec::new(),
            };
            found_bytes += m.size();
            found.push_back(m);
            while found.len() > budget_matches || (found_bytes > budget_bytes && found.len() > 1) {
                if let Some(old) = found.pop_front() {
                    found_bytes = found_bytes.saturating_sub(old.size());
                }
                dropped = true;
            }
        }
        if context > 0 {
            if before.len() == context {
                before.pop_front();
            }
            before.push_back(clip(&text));
        }
    }
    FileOutcome::Searched(FileResult {
        matches: found,
        dropped,
    })
}

struct LogSearch;

impl Diagnose for LogSearch {
    type Input = Input;
    type Output = Output;

    fn run(input: Input) -> Result<Output, SkillError> {
        if input.pattern.is_empty() {
            return Err(SkillError::new(
                "invalid-input",
                "pattern must not be empty",
            ));
        }
        if !(1..=MAX_MATCHES).contains(&input.max_matches) {
            return Err(SkillError::new(
                "invalid-input",
                format!("max_matches must be between 1 and {MAX_MATCHES}"),
            ));
        }
        if input.context > MAX_CONTEXT {
            return Err(SkillError::new(
                "invalid-input",
                format!("context must be between 0 and {MAX_CONTEXT}"),
            ));
        }
        tend_sdk::files::check_input_paths(&input.paths, MAX_PATHS)?;
        let re = RegexBuilder::new(&input.pattern)
            .case_insensitive(input.ignore_case)
            .size_limit(4 << 20)
            .build()
            .map_err(|e| SkillError::new("invalid-input", format!("bad pattern: {e}")))?;

        let mut search = Search {
            skipped: Vec::new(),
            skipped_not_listed: 0,
            files_limited: false,
        };
        let mut files = BTreeSet::new();
        for p in &input.paths {
            search.collect(Path::new(p), 0, &mut files);
        }
        let mut files: Vec<(PathBuf, i128)> = files.into_iter().collect();
        // Newest first; the same path reached twice (overlapping inputs) is searched once.
        files.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        files.dedup_by(|a, b| a.0 == b.0);

        let mut matches = Vec::new();
        let mut bytes = 0usize;
        let mut truncated = search.files_limited;
        let mut files_searched = 0;
        for (i, (path, _)) in files.iter().enumerate() {
            let budget_matches = input.max_matches - matches.len();
            let budget_bytes = OUTPUT_BUDGET.saturating_sub(bytes);
            if budget_matches == 0 || budget_bytes == 0 {
                truncated = true;
                tend_sdk::log::info(&format!(
                    "budget spent; {} older files not searched",
                    files.len() - i
                ));
                break;
            }
            match search_file(path, &re, input.context, budget_matches, budget_bytes) {
                FileOutcome::Searched(r) => {
                    files_searched += 1;
                    truncated |= r.dropped;
                    for m in r.matches {
                        bytes += m.size();
                        matches.push(m);
                    }
                }
                FileOutcome::Skipped(reason) => search.skip(path, reason),
            }
        }
        if search.files_limited {
            tend_sdk::log::warn(&format!(
                "more than {MAX_FILES} files under the given paths; only {MAX_FILES} considered"
            ));
        }
        Ok(Output {
            pattern: input.pattern,
            files_searched,
            truncated,
            matches,
            skipped: search.skipped,
            skipped_not_listed: search.skipped_not_listed,
        })
    }
}

tend_sdk::export_diagnose!(LogSearch);
