use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::bindings::exec::{Host, Output, SkillError};
use crate::state::SkillState;

use super::SAFE_PATH;
use crate::report::{
    MAX_EXEC_ARGS, MAX_EXEC_ARGS_BYTES, MAX_EXEC_PROGRAM_BYTES, MAX_EXEC_REASON_BYTES,
    MAX_EXEC_RECORDS, clip, json_len,
};

/// Default timeout of one program when the skill does not give one.
const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(30);
/// Most output kept per stream of one program.
const MAX_EXEC_OUTPUT: usize = 1024 * 1024;

/// One program a skill ran (or tried to run), for the report and the audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRecord {
    pub program: String,
    pub args: Vec<String>,
    /// Why it was refused by the allowlist; `None` if it was allowed.
    pub denied: Option<String>,
    /// Why an allowed program could not be started; `None` if it started.
    pub start_error: Option<String>,
    pub status: Option<i32>,
    pub timed_out: bool,
    pub duration_ms: u64,
    /// The program path or arguments were too long to record in full (see
    /// [`crate::report::MAX_EXEC_ARGS_BYTES`]); what is kept is their head.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

impl ExecRecord {
    /// A record of `program args`, bounded: a skill chooses these, and may choose megabytes.
    pub fn new(program: &str, args: &[String]) -> ExecRecord {
        let mut record = ExecRecord {
            program: head(program, MAX_EXEC_PROGRAM_BYTES * 2),
            args: Vec::new(),
            denied: None,
            start_error: None,
            status: None,
            timed_out: false,
            duration_ms: 0,
            truncated: false,
        };
        let mut budget = MAX_EXEC_ARGS_BYTES;
        for arg in args.iter().take(MAX_EXEC_ARGS) {
            let mut arg = head(arg, budget + 1);
            if clip(&mut arg, budget) > 0 {
                record.truncated = true;
            }
            budget = budget.saturating_sub(json_len(&arg));
            record.args.push(arg);
            if budget == 0 {
                break;
            }
        }
        record.truncated |= record.args.len() < args.len();
        record.bound();
        record
    }

    /// Apply the per-field bounds of [`crate::report`].
    pub(crate) fn bound(&mut self) {
        self.truncated |= clip(&mut self.program, MAX_EXEC_PROGRAM_BYTES) > 0;
        if self.args.len() > MAX_EXEC_ARGS {
            self.args.truncate(MAX_EXEC_ARGS);
            self.truncated = true;
        }
        let mut budget = MAX_EXEC_ARGS_BYTES;
        for arg in &mut self.args {
            self.truncated |= clip(arg, budget) > 0;
            budget = budget.saturating_sub(json_len(arg));
        }
        for reason in [&mut self.denied, &mut self.start_error]
            .into_iter()
            .flatten()
        {
            clip(reason, MAX_EXEC_REASON_BYTES);
        }
    }
}

/// At most the first `max` bytes of `s` (on a character boundary), copied.
fn head(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// Read a stream to its end, keeping at most `cap` bytes.
async fn read_bounded(mut r: impl AsyncRead + Unpin, cap: usize) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut truncated = false;
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = cap.saturating_sub(kept.len());
                if n > room {
                    truncated = true;
                }
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    (kept, truncated)
}

impl Host for SkillState {
    async fn run(
        &mut self,
        program: String,
        args: Vec<String>,
        timeout_ms: Option<u32>,
    ) -> wasmtime::Result<Result<Output, SkillError>> {
        let mut record = ExecRecord::new(&program, &args);
        if self.exec_records.len() >= MAX_EXEC_RECORDS {
            // Refused without running, so every program that ran is in the report.
            self.exec_refused_unrecorded += 1;
            return Ok(Err(SkillError {
                code: "denied".into(),
                message: format!(
                    "exec refused: a skill may make at most {MAX_EXEC_RECORDS} exec calls per invocation"
                ),
            }));
        }
        if let Err(reason) = self.exec.check(&program, &args) {
            record.denied = Some(reason.clone());
            record.bound();
            tracing::info!(program = %record.program, args = ?record.args, "exec denied");
            self.exec_records.push(record);
            return Ok(Err(SkillError {
                code: "denied".into(),
                message: reason,
            }));
        }
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        let timeout = timeout_ms
            .map(|ms| Duration::from_millis(ms.into()))
            .unwrap_or(DEFAULT_EXEC_TIMEOUT)
            .min(remaining);
        let cap = self.output_cap.min(MAX_EXEC_OUTPUT);
        let started = Instant::now();
        let spawned = tokio::process::Command::new(&program)
            .args(&args)
            .env_clear()
            .env("PATH", SAFE_PATH)
            .env("LC_ALL", "C")
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                let message = format!("cannot start {program}: {e}");
                record.start_error = Some(message.clone());
                record.bound();
                self.exec_records.push(record);
                return Ok(Err(SkillError {
                    code: "exec-failed".into(),
                    message,
                }));
            }
        };
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let collect = async {
            let out = async {
                match stdout {
                    Some(s) => read_bounded(s, cap).await,
                    None => (Vec::new(), false),
                }
            };
            let err = async {
                match stderr {
                    Some(s) => read_bounded(s, cap).await,
                    None => (Vec::new(), false),
                }
            };
            let ((out, out_t), (err, err_t)) = tokio::join!(out, err);
            let status = child.wait().await;
            (out, out_t, err, err_t, status)
        };
        let result = tokio::time::timeout(timeout, collect).await;
        record.duration_ms = started.elapsed().as_millis() as u64;
        let output = match result {
            Ok((out, out_t, err, err_t, status)) => {
                record.status = status.ok().and_then(|s| s.code());
                Output {
                    status: record.status,
                    stdout: String::from_utf8_lossy(&out).into_owned(),
                    stderr: String::from_utf8_lossy(&err).into_owned(),
                    stdout_truncated: out_t,
                    stderr_truncated: err_t,
                    timed_out: false,
                    duration_ms: record.duration_ms,
                }
            }
            Err(_) => {
                let _ = child.start_kill();
                record.timed_out = true;
                Output {
                    status: None,
                    stdout: String::new(),
                    stderr: String::new(),
                    stdout_truncated: false,
                    stderr_truncated: false,
                    timed_out: true,
                    duration_ms: record.duration_ms,
                }
            }
        };
        self.exec_records.push(record);
        Ok(Ok(output))
    }
}
