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
