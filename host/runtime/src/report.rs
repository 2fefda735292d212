//! `ExecutionReport`: what happened in one invocation, as data.
//!
//! A guest's `skill-error` is an outcome, a trap is an outcome, a limit is an outcome; only a
//! bug or failure of the host itself is an `Err` (see [`crate::InvokeError`]).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::capabilities::exec::ExecRecord;
use crate::capabilities::log::LogEntry;
use crate::limits::Limits;

/// How an invocation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Returned JSON output.
    Ok,
    /// Returned a `skill-error` (or output that is not JSON).
    SkillError,
    /// Ran out of fuel (instruction budget).
    OutOfFuel,
    /// Tried to grow memory beyond its limit.
    MemoryLimit,
    /// Ran past its wall-clock deadline.
    Timeout,
    /// Returned more output than allowed.
    OutputLimit,
    /// Crashed: `unreachable`, out-of-bounds access, stack overflow, a panic, `exit`.
    Trap,
    /// Input was refused before the skill ran.
    InvalidInput,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::SkillError => "skill_error",
            Outcome::OutOfFuel => "out_of_fuel",
            Outcome::MemoryLimit => "memory_limit",
            Outcome::Timeout => "timeout",
            Outcome::OutputLimit => "output_limit",
            Outcome::Trap => "trap",
            Outcome::InvalidInput => "invalid_input",
        }
    }

    /// Whether the sandbox stopped the skill (a limit or a trap).
    pub fn is_limit_or_trap(self) -> bool {
        matches!(
            self,
            Outcome::OutOfFuel
                | Outcome::MemoryLimit
                | Outcome::Timeout
                | Outcome::OutputLimit
                | Outcome::Trap
        )
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error reported by the skill or by the sandbox about the skill.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportError {
    pub code: String,
    pub message: String,
}

/// Which export was called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Export {
    Run,
    Plan,
}

impl fmt::Display for Export {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Export::Run => "run",
            Export::Plan => "plan",
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecutionReport {
    pub outcome: Outcome,
    /// The skill's JSON output, when `outcome` is `ok`.
    pub output: Option<serde_json::Value>,
    pub error: Option<ReportError>,
    /// `sha256:<hex>` of the component.
    pub digest: String,
    pub skill: Option<String>,
    pub version: Option<String>,
    pub export: Export,
    pub fuel_consumed: u64,
    pub peak_memory_bytes: u64,
    pub duration_us: u64,
    pub limits: Limits,
    pub logs: Vec<LogEntry>,
    pub logs_dropped: u64,
    pub stdout: String,
    pub stdout_dropped_bytes: u64,
    pub stderr: String,
    pub stderr_dropped_bytes: u64,
    /// Programs the skill ran or was refused.
    pub exec: Vec<ExecRecord>,
    /// What the host did on the skill's behalf that an operator should know: limits clamped,
    /// grants skipped, requests refused.
    pub notes: Vec<String>,
    /// Who signed the component (or that it ran unsigned by explicit choice); absent for
    /// harness loads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provenance: Option<crate::runtime::Provenance>,
}

// ---------------------------------------------------------------------------------------------
// Bounds. Everything in a report that a skill can influence is bounded, so the serialized
// report has a hard upper bound (`max_report_json_bytes`) that a transport can size its body
// limit from. Sizes are measured as JSON text (after escaping), not as raw bytes.

/// Longest `error.code` kept.
pub const MAX_ERROR_CODE_BYTES: usize = 128;
/// Longest `error.message` kept (also never more than the output cap, but at least 256).
pub const MAX_ERROR_MESSAGE_BYTES: usize = 16 * 1024;
/// Most `exec` calls one invocation may make; later calls are refused without running, so
/// every program that ran is in the report.
pub const MAX_EXEC_RECORDS: usize = 100;
/// Longest program path kept in an exec record.
pub const MAX_EXEC_PROGRAM_BYTES: usize = 512;
/// Most arguments kept in an exec record, and their total size.
pub const MAX_EXEC_ARGS: usize = 64;
pub const MAX_EXEC_ARGS_BYTES: usize = 4096;
/// Longest `denied` / `start_error` text in an exec record.
pub const MAX_EXEC_REASON_BYTES: usize = 512;
/// Most notes kept (the last one says how many were dropped), and the longest note.
pub const MAX_NOTES: usize = 64;
pub const MAX_NOTE_BYTES: usize = 1024;
/// Longest skill name, version, publisher or key id kept.
pub const MAX_NAME_BYTES: usize = 256;

/// JSON text of one exec record at most: its bounded fields, their quoting and separators,
/// and the keys and numbers around them.
const MAX_EXEC_RECORD_JSON: usize = MAX_EXEC_PROGRAM_BYTES
    + MAX_EXEC_ARGS_BYTES
    + 3 * MAX_EXEC_ARGS
    + 2 * MAX_EXEC_REASON_BYTES
    + 256;

/// Everything but the output cap's share: error, exec records, notes, log entry overhead,
/// names and the fixed fields.
const FIXED_REPORT_JSON: usize = MAX_ERROR_CODE_BYTES
    + MAX_ERROR_MESSAGE_BYTES
    + MAX_EXEC_RECORDS * (MAX_EXEC_RECORD_JSON + 1)
    + (MAX_NOTES + 1) * (MAX_NOTE_BYTES + 3)
    + crate::capabilities::log::MAX_ENTRIES * crate::capabilities::log::ENTRY_OVERHEAD_JSON
    + 6 * MAX_NAME_BYTES
    + 4096;

/// The largest a serialized [`ExecutionReport`] can be for an invocation whose output cap is
/// `output_cap` bytes: the output (≤ cap), the log (≤ cap of messages), stdout and stderr
/// (≤ 2 × cap each once escaped), plus a fixed part for everything else.
pub const fn max_report_json_bytes(output_cap: usize) -> usize {
    output_cap
        .saturating_mul(6)
        .saturating_add(FIXED_REPORT_JSON)
}

/// [`max_report_json_bytes`] at this host's largest output cap ([`crate::HOST_MAXIMA`]): no
/// report produced under the default maxima is bigger. Size a result body limit above it.
pub const MAX_REPORT_JSON_BYTES: usize =
    max_report_json_bytes(crate::limits::HOST_MAXIMA.output_kib as usize * 1024);

/// Bytes `s` takes as the inside of a JSON string (serde_json's escaping).
pub fn json_len(s: &str) -> usize {
    s.chars().map(json_char_len).sum()
}

fn json_char_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if (c as u32) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

const CUT_MARK: &str = " [truncated]";

/// Cut `s` so that its JSON text is at most `max` bytes, on a character boundary, ending with
/// a mark saying so. Returns the number of bytes dropped (0 if it already fit).
pub fn clip(s: &mut String, max: usize) -> usize {
    if json_len(s) <= max {
        return 0;
    }
    let room = max.saturating_sub(CUT_MARK.len());
    let mut used = 0;
    let mut cut = 0;
    for (i, c) in s.char_indices() {
        let n = json_char_len(c);
        if used + n > room {
            break;
        }
        used += n;
        cut = i + c.len_utf8();
    }
    let dropped = s.len() - cut;
    s.truncate(cut);
    if max >= CUT_MARK.len() {
        s.push_str(CUT_MARK);
    }
    dropped
}

impl ExecutionReport {
    /// Apply every bound (see [`max_report_json_bytes`]); a note says what was cut.
    pub(crate) fn bound(&mut self, output_cap: usize) {
        if let Some(e) = &mut self.error {
            clip(&mut e.code, MAX_ERROR_CODE_BYTES);
            let max = output_cap.clamp(256, MAX_ERROR_MESSAGE_BYTES);
            let dropped = clip(&mut e.message, max);
            if dropped > 0 {
                self.notes.push(format!(
                    "error message truncated: {dropped} bytes dropped (limit {max} bytes)"
                ));
            }
        }
        if self
            .output
            .as_ref()
            .is_some_and(|v| serde_json::to_string(v).map_or(usize::MAX, |t| t.len()) > output_cap)
        {
            self.output = None;
            self.outcome = Outcome::OutputLimit;
            self.error = Some(ReportError {
                code: "output-limit".into(),
                message: format!(
                    "the output takes more than the limit of {output_cap} bytes as JSON"
                ),
            });
        }
        for (name, text, dropped) in [
            ("stdout", &mut self.stdout, &mut self.stdout_dropped_bytes),
            ("stderr", &mut self.stderr, &mut self.stderr_dropped_bytes),
        ] {
            let cut = clip(text, output_cap.saturating_mul(2));
            if cut > 0 {
                *dropped += cut as u64;
                self.notes.push(format!(
                    "{name} truncated further: {cut} bytes dropped to keep its escaped form within twice the output limit"
                ));
            }
        }
        if self.exec.len() > MAX_EXEC_RECORDS {
            self.exec.truncate(MAX_EXEC_RECORDS);
        }
        for r in &mut self.exec {
            r.bound();
        }
        for s in [&mut self.skill, &mut self.version].into_iter().flatten() {
            clip(s, MAX_NAME_BYTES);
        }
        if let Some(crate::runtime::Provenance::Signed {
            publisher,
            key_id,
            digest,
        }) = &mut self.provenance
        {
            for s in [publisher, key_id, digest] {
                clip(s, MAX_NAME_BYTES);
            }
        }
        clip(&mut self.digest, MAX_NAME_BYTES);
        bound_notes(&mut self.notes);
    }
}

/// At most [`MAX_NOTES`] notes of at most [`MAX_NOTE_BYTES`] each; the last says how many
/// more there were.
pub fn bound_notes(notes: &mut Vec<String>) {
    if notes.len() > MAX_NOTES {
        let more = notes.len() - (MAX_NOTES - 1);
        notes.truncate(MAX_NOTES - 1);
        notes.push(format!("{more} more notes dropped"));
    }
    for n in notes.iter_mut() {
        clip(n, MAX_NOTE_BYTES);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capabilities::exec::ExecRecord;
    use crate::capabilities::log::LogEntry;

    #[test]
    fn clip_counts_escapes_and_keeps_char_boundaries() {
        let mut s = "é\u{1}\"x".repeat(100);
        let dropped = clip(&mut s, 50);
        assert!(json_len(&s) <= 50, "{}", json_len(&s));
        assert!(dropped > 0);
        assert!(s.ends_with(CUT_MARK));
        let mut short = "fits".to_string();
        assert_eq!(clip(&mut short, 50), 0);
        assert_eq!(short, "fits");
        assert_eq!(
            json_len("a\"\\\n\u{1}é"),
            serde_json::to_string("a\"\\\n\u{1}é").expect("json").len() - 2
        );
    }

    /// The worst a skill can do to every field at once stays under the documented bound.
    #[test]
    fn the_worst_report_is_within_the_bound() {
        for cap in [1024usize, 64 * 1024] {
            let nasty = |n: usize| "\u{1}".repeat(n);
            let mut r = ExecutionReport {
                outcome: Outcome::SkillError,
                output: Some(serde_json::Value::String("x".repeat(cap - 2))),
                error: Some(ReportError {
                    code: nasty(1 << 20),
                    message: nasty(8 << 20),
                }),
                digest: nasty(1000),
                skill: Some(nasty(1000)),
                version: Some(nasty(1000)),
                export: Export::Plan,
                fuel_consumed: u64::MAX,
                peak_memory_bytes: u64::MAX,
                duration_us: u64::MAX,
                limits: crate::limits::Limits {
                    fuel: u64::MAX,
                    memory_mib: u64::MAX,
                    timeout_ms: u64::MAX,
                    output_kib: u64::MAX,
                },
                logs: Vec::new(),
                logs_dropped: u64::MAX,
                stdout: nasty(cap),
                stdout_dropped_bytes: u64::MAX / 2,
                stderr: nasty(cap),
                stderr_dropped_bytes: u64::MAX / 2,
                exec: (0..1000)
                    .map(|_| {
                        let args: Vec<String> = (0..500).map(|_| nasty(1 << 12)).collect();
                        let mut rec = ExecRecord::new(&nasty(1 << 16), &args);
                        rec.denied = Some(nasty(1 << 16));
                        rec.start_error = Some(nasty(1 << 16));
                        rec.status = Some(i32::MIN);
                        rec.duration_ms = u64::MAX;
                        rec
                    })
                    .collect(),
                notes: vec![nasty(1 << 16); 1000],
                provenance: Some(crate::runtime::Provenance::Signed {
                    publisher: nasty(1000),
                    key_id: nasty(1000),
                    digest: nasty(1000),
                }),
            };
            let mut log = crate::capabilities::log::LogBuffer::new(cap);
            for _ in 0..5000 {
                log.push("debug", &nasty(100));
            }
            r.logs = log.take().0;
            assert!(r.logs.iter().all(|e: &LogEntry| e.level == "debug"));
            r.bound(cap);
            let len = serde_json::to_vec(&r).expect("json").len();
            assert!(
                len <= max_report_json_bytes(cap),
                "{len} > {}",
                max_report_json_bytes(cap)
            );
            assert_eq!(r.outcome, Outcome::SkillError);
        }
        // The constant covers the host's largest output cap and is what a transport sizes by.
        assert_eq!(
            MAX_REPORT_JSON_BYTES,
            max_report_json_bytes(16 * 1024 * 1024)
        );
    }
}
