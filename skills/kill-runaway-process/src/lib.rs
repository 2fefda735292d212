//! kill-runaway-process: send TERM (or KILL) to one process, only if it is still the process
//! that was diagnosed.
//!
//! Input: `{"pid": 4242, "expected_name": "stress", "expected_user": "app",
//! "expected_start_time": 1700000000, "signal": "TERM", "kill": "/bin/kill", "wait_ms": 1000}`;
//! only `pid` and `expected_name` (the `comm` name, as `top-processes` reports it) are required.
//! `kill` (default `/bin/kill`) exists so tests can use a stand-in; the host runs only a path
//! the manifest grants, with arguments `-s <TERM|KILL> <pid>`.
//!
//! Before acting, `plan` and `run` re-read the process with `host::process_by_pid` and refuse:
//!
//! * `mismatch`: the process no longer exists, or its name, user (when `expected_user` is
//!   given) or start time (when `expected_start_time` is given: guards against PID reuse)
//!   differ from what was diagnosed;
//! * `protected`: PID 1 and below, kernel threads (PID 2 and its children, or parent 0), a
//!   zombie (a signal cannot affect it), a name in [`PROTECTED_NAMES`] (init, sshd, the
//!   journal, D-Bus, Tend itself...), or a process owned by root when `expected_user` is not
//!   given as `"root"`: killing a root process needs the caller to say so explicitly;
//! * `invalid-input`: a malformed name, user or `kill` path.
//!
//! `plan` reports the process found and the exact command `run` would execute. `run` executes
//! it, then polls the PID for up to `wait_ms` (default 1000, at most 10000) and reports the
//! exit status and stderr of `kill`, whether the process is gone (`exited`; a zombie awaiting
//! its parent counts as gone) and the process as last seen (`after`, `null` once gone). Both outputs carry `mode`;
//! `[output.schema]` is a `oneOf` of the two shapes.
//!
//! The re-check and the signal are two steps: a PID could in principle be reused in between.
//! `expected_start_time` narrows that window to the few milliseconds between them.

use serde::{Deserialize, Serialize};
use tend_sdk::{Repair, SkillError, exec, host, log};

/// Processes this skill never signals, whatever the input says.
pub const PROTECTED_NAMES: &[&str] = &[
    "systemd",
    "init",
    "kthreadd",
    "sshd",
    "systemd-journal",
    "systemd-logind",
    "systemd-udevd",
    "systemd-network",
    "systemd-resolve",
    "dbus-daemon",
    "dbus-broker",
    "agetty",
    "tend",
];

const DEFAULT_KILL: &str = "/bin/kill";
const KILL_TIMEOUT_MS: u32 = 5_000;
const DEFAULT_WAIT_MS: u32 = 1_000;
const MAX_WAIT_MS: u32 = 10_000;
const POLL_MS: u64 = 20;
const MAX_TEXT: usize = 4096;

#[derive(Deserialize, Serialize, Clone, Copy, PartialEq, Eq, Debug)]
pub enum Signal {
    #[serde(rename = "TERM")]
    Term,
    #[serde(rename = "KILL")]
    Kill,
}

impl Signal {
    fn as_str(self) -> &'static str {
        match self {
            Signal::Term => "TERM",
            Signal::Kill => "KILL",
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    pid: u32,
    expected_name: String,
    #[serde(default)]
    expected_user: Option<String>,
    #[serde(default)]
    expected_start_time: Option<u64>,
    #[serde(default = "default_signal")]
    signal: Signal,
    #[serde(default = "default_kill")]
    kill: String,
    #[serde(default)]
    wait_ms: Option<u32>,
}

fn default_signal() -> Signal {
    Signal::Term
}
fn default_kill() -> String {
    DEFAULT_KILL.to_string()
}

#[derive(Serialize)]
pub struct Found {
    pid: u32,
    ppid: u32,
    name: String,
    uid: u32,
    user: Option<String>,
    state: String,
    cpu_percent: f64,
    rss_bytes: u64,
    threads: u32,
    start_time: u64,
}

impl From<host::Process> for Found {
    fn from(p: host::Process) -> Found {
        Found {
            pid: p.pid,
            ppid: p.ppid,
            name: p.name,
            uid: p.uid,
            user: p.user,
            state: p.state,
            cpu_percent: (p.cpu_percent * 100.0).round() / 100.0,
            rss_bytes: p.rss_bytes,
            threads: p.threads,
            start_time: p.start_time,
        }
    }
}

#[derive(Serialize)]
pub struct Plan {
    mode: &'static str,
    pid: u32,
    signal: Signal,
    found: Found,
    /// The exact command `run` executes, program first.
    command: Vec<String>,
}

#[derive(Serialize)]
pub struct Output {
    mode: &'static str,
    pid: u32,
    signal: Signal,
    found: Found,
    command: Vec<String>,
    status: Option<i32>,
    timed_out: bool,
    stderr: String,
    /// The process is gone (or a zombie waiting for its parent) after the signal.
    exited: bool,
    /// The process as last seen (state `Z` for a zombie); `null` once it is gone.
    after: Option<Found>,
}

fn err(code: &str, message: String) -> SkillError {
    SkillError::new(code, message)
}

fn printable_name(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && !s.chars().any(char::is_control)
}

fn check_input(input: &Input) -> Result<(), SkillError> {
    if input.pid <= 1 {
        return Err(err(
            "protected",
            format!("refusing to signal PID {}", input.pid),
        ));
    }
    if !printable_name(&input.expected_name, 64) {
        return Err(err(
            "invalid-input",
            "expected_name must be 1-64 printable characters".into(),
        ));
    }
    if let Some(u) = &input.expected_user
        && !printable_name(u, 64)
    {
        return Err(err(
            "invalid-input",
            "expected_user must be 1-64 printable characters".into(),
        ));
    }
    if !input.kill.starts_with('/') || input.kill.split('/').any(|p| p == "..") {
        return Err(err(
            "invalid-input",
            format!(
                "kill must be an absolute path without '..', not {:?}",
                input.kill
            ),
        ));
    }
    if input.wait_ms.is_some_and(|w| w > MAX_WAIT_MS) {
        return Err(err(
            "invalid-input",
            format!("wait_ms is at most {MAX_WAIT_MS}"),
        ));
    }
    Ok(())
}

/// Re-read the process and check it is the one that was diagnosed and may be signalled.
fn verify(input: &Input) -> Result<host::Process, SkillError> {
    let pid = input.pid;
    let Some(p) = host::process_by_pid(pid) else {
        return Err(err(
            "mismatch",
            format!("process {pid} does not exist (any more)"),
        ));
    };
    if p.name != input.expected_name {
        return Err(err(
            "mismatch",
            format!(
                "process {pid} is now {:?}, not {:?}",
                p.name, input.expected_name
            ),
        ));
    }
    if let Some(expected) = &input.expected_user
        && p.user.as_deref() != Some(expected.as_str())
    {
        return Err(err(
            "mismatch",
            format!(
                "process {pid} belongs to {} (uid {}), not {expected:?}",
                p.user.as_deref().unwrap_or("an unknown user"),
                p.uid
            ),
        ));
    }
    if let Some(expected) = input.expected_start_time
        && p.start_time != expected
    {
        return Err(err(
            "mismatch",
            format!(
                "process {pid} started at {}, not {expected}: the PID was reused",
                p.start_time
            ),
        ));
    }
    if pid == 2 || p.ppid == 2 || p.ppid == 0 {
        return Err(err(
            "protected",
            format!("process {pid} ({}) is a kernel thread or init", p.name),
        ));
    }
    if PROTECTED_NAMES.contains(&p.name.as_str()) {
        return Err(err(
            "protected",
            format!(
                "process {pid} ({}) is on this skill's protected list",
                p.name
            ),
        ));
    }
    if p.state == "Z" {
        return Err(err(
            "protected",
            format!(
                "process {pid} is a zombie: it has exited and a signal cannot affect it; its parent ({}) must reap it",
                p.ppid
            ),
        ));
    }
    if p.uid == 0 && input.expected_user.as_deref() != Some("root") {
        return Err(err(
            "protected",
            format!(
                "process {pid} ({}) runs as root: pass expected_user = \"root\" to confirm",
                p.name
            ),
        ));
    }
    Ok(p)
}

fn make_plan(input: &Input) -> Result<Plan, SkillError> {
    check_input(input)?;
    let p = verify(input)?;
    Ok(Plan {
        mode: "plan",
        pid: input.pid,
        signal: input.signal,
        found: p.into(),
        command: vec![
            input.kill.clone(),
            "-s".into(),
            input.signal.as_str().into(),
            input.pid.to_string(),
        ],
    })
}

fn clip(s: String) -> String {
    tend_sdk::clip(s, MAX_TEXT)
}

pub struct KillRunaway;

impl Repair for KillRunaway {
    type Input = Input;
    type Output = Output;
    type Plan = Plan;

    fn plan(input: Input) -> Result<Plan, SkillError> {
        make_plan(&input)
    }

    fn run(input: Input) -> Result<Output, SkillError> {
        let plan = make_plan(&input)?;
        let pid = input.pid;
        log::info(&format!(
            "sending SIG{} to {pid} ({})",
            input.signal.as_str(),
            plan.found.name
        ));
        let out = exec::run(&plan.command[0], &plan.command[1..], Some(KILL_TIMEOUT_MS))?;
        // Wait (bounded) for the process to go; a zombie has exited.
        let same = |p: &host::Process| p.start_time == plan.found.start_time;
        let wait = u64::from(input.wait_ms.unwrap_or(DEFAULT_WAIT_MS));
        let mut waited = 0;
        let after = loop {
            let now = host::process_by_pid(pid).filter(same);
            match now {
                Some(p) if p.state != "Z" && waited < wait && out.status == Some(0) => {
                    std::thread::sleep(std::time::Duration::from_millis(POLL_MS));
                    waited += POLL_MS;
                }
                other => break other,
            }
        };
        let exited = after.as_ref().is_none_or(|p| p.state == "Z");
        if out.status != Some(0) {
            log::warn(&format!(
                "kill -s {} {pid} exited with {:?}",
                input.signal.as_str(),
                out.status
            ));
        }
        Ok(Output {
            mode: "run",
            pid,
            signal: input.signal,
            found: plan.found,
            command: plan.command,
            status: out.status,
            timed_out: out.timed_out,
            stderr: clip(out.stderr),
            exited,
            after: after.map(Found::from),
        })
    }
}

tend_sdk::export_repair!(KillRunaway);
