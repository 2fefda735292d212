//! service-restart: restart one allowlisted systemd unit and report the state it ends in.
//!
//! Input: `{"unit": "nginx.service", "systemctl": "/usr/bin/systemctl"}`. `unit` is a full unit
//! name and must be one of [`ALLOWED_UNITS`]; `systemctl` is optional (default
//! `/usr/bin/systemctl`) and exists so tests can point the skill at a stand-in: whatever path is
//! given, the host runs it only if the manifest grants it with these exact arguments.
//!
//! `plan` (no side effects) reads the unit's state with `host::unit_status` (`before`, or
//! `before_error` where systemd is not running) and says the exact commands `run` would execute:
//! `<systemctl> restart <unit>`, then `<systemctl> is-active <unit>`. `run` executes them and
//! reports the restart's exit status and stderr, what `is-active` said (`state`), the unit
//! state after (`after`, when systemd can be asked) and `success` (restart exited 0 and the
//! unit is `active`). Both outputs carry `mode` (`plan` or `run`); `[output.schema]` is a
//! `oneOf` of the two shapes.
//!
//! Errors: `invalid-input` (not a unit name / not an absolute path), `not-allowed` (the unit is
//! not in the allowlist; nothing runs), and the host's `denied` / `exec-failed` when the restart
//! command itself could not be run (so nothing was restarted).
//!
//! ## Two allowlists, on purpose
//!
//! A guest cannot read its manifest, so the unit allowlist is enforced twice:
//!
//! * here, from [`ALLOWED_UNITS`], so that a unit outside it is refused by `plan` and `run`
//!   with a clear `not-allowed` before anything is attempted; and
//! * by the host, because the manifest's `exec` grants name each unit *literally*
//!   (`args = ["restart", "nginx.service"]`), not with a `{unit}` placeholder. Least privilege:
//!   even a compromised build of this skill can restart only those units, never `sshd` or
//!   `systemd-networkd`.
//!
//! `[capabilities.services].restart` in `skill.toml` lists the same units for the host's
//! future `service` interface and for operators reading the manifest. The three lists must
//! match: adding a unit means editing [`ALLOWED_UNITS`], both of its `exec` grants and
//! `services.restart`.

use serde::{Deserialize, Serialize};
use tend_sdk::{Repair, SkillError, exec, host, log};

/// Units this skill may restart. Keep equal to `services.restart` and the `exec` grants in
/// `skill.toml`.
pub const ALLOWED_UNITS: &[&str] = &[
    "nginx.service",
    "apache2.service",
    "caddy.service",
    "haproxy.service",
];

const DEFAULT_SYSTEMCTL: &str = "/usr/bin/systemctl";
/// `systemctl restart` waits for the start job; give it most of the invocation's deadline.
const RESTART_TIMEOUT_MS: u32 = 90_000;
const IS_ACTIVE_TIMEOUT_MS: u32 = 10_000;
/// Most stderr/stdout kept per command in the output.
const MAX_TEXT: usize = 4096;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    unit: String,
    #[serde(default = "default_systemctl")]
    systemctl: String,
}

fn default_systemctl() -> String {
    DEFAULT_SYSTEMCTL.to_string()
}

#[derive(Serialize)]
pub struct UnitState {
    load_state: String,
    active_state: String,
    sub_state: String,
    main_pid: Option<u32>,
    restarts: Option<u32>,
    last_result: Option<String>,
}

#[derive(Serialize)]
pub struct Plan {
    mode: &'static str,
    unit: String,
    /// The exact restart command, program first.
    command: Vec<String>,
    /// The exact check run after it.
    verify: Vec<String>,
    before: Option<UnitState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    before_error: Option<String>,
}

#[derive(Serialize)]
pub struct Command {
    status: Option<i32>,
    timed_out: bool,
    stdout: String,
    stderr: String,
}

#[derive(Serialize)]
pub struct Output {
    mode: &'static str,
    unit: String,
    command: Vec<String>,
    verify: Vec<String>,
    before: Option<UnitState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    before_error: Option<String>,
    restart: Command,
    /// `None` if `is-active` could not be run at all (the reason is in `state_error`).
    is_active: Option<Command>,
    /// What `is-active` reported: `active`, `failed`, `activating`, ... or `unknown`.
    state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    state_error: Option<String>,
    after: Option<UnitState>,
    success: bool,
}

fn invalid(message: String) -> SkillError {
    SkillError::new("invalid-input", message)
}

/// A unit name systemctl accepts, with nothing an option parser could take for a flag.
fn valid_unit_name(unit: &str) -> bool {
    !unit.is_empty()
        && unit.len() <= 256
        && !unit.starts_with('-')
        && unit
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@:".contains(&b))
}

fn check(input: &Input) -> Result<(), SkillError> {
    if !valid_unit_name(&input.unit) {
        return Err(invalid(format!(
            "{:?} is not a systemd unit name ([A-Za-z0-9@._:-], not starting with '-')",
            input.unit
        )));
    }
    if !input.systemctl.starts_with('/')
        || input.systemctl.len() > 4096
        || input.systemctl.split('/').any(|p| p == "..")
    {
        return Err(invalid(format!(
            "systemctl must be an absolute path without '..', not {:?}",
            input.systemctl
        )));
    }
    if !ALLOWED_UNITS.contains(&input.unit.as_str()) {
        return Err(SkillError::new(
            "not-allowed",
            format!(
                "{} is not in this skill's restart allowlist ({})",
                input.unit,
                ALLOWED_UNITS.join(", ")
            ),
        ));
    }
    Ok(())
}

fn unit_state(unit: &str) -> Result<UnitState, String> {
    host::unit_status(unit)
        .map(|u| UnitState {
            load_state: u.load_state,
            active_state: u.active_state,
            sub_state: u.sub_state,
            main_pid: u.main_pid,
            restarts: u.restarts,
            last_result: u.last_result,
        })
        .map_err(|e| format!("{}: {}", e.code, e.message))
}

fn clip(s: String) -> String {
    tend_sdk::clip(s, MAX_TEXT)
}

fn argv(program: &str, args: &[&str]) -> Vec<String> {
    std::iter::once(program)
        .chain(args.iter().copied())
        .map(String::from)
        .collect()
}

fn make_plan(input: &Input) -> Result<Plan, SkillError> {
    check(input)?;
    let (before, before_error) = match unit_state(&input.unit) {
        Ok(s) => (Some(s), None),
        Err(e) => (None, Some(e)),
    };
    Ok(Plan {
        mode: "plan",
        unit: input.unit.clone(),
        command: argv(&input.systemctl, &["restart", &input.unit]),
        verify: argv(&input.systemctl, &["is-active", &input.unit]),
        before,
        before_error,
    })
}

fn command(out: exec::Output) -> Command {
    Command {
        status: out.status,
        timed_out: out.timed_out,
        stdout: clip(out.stdout),
        stderr: clip(out.stderr),
    }
}

pub struct ServiceRestart;

impl Repair for ServiceRestart {
    type Input = Input;
    type Output = Output;
    type Plan = Plan;

    fn plan(input: Input) -> Result<Plan, SkillError> {
        make_plan(&input)
    }

    fn run(input: Input) -> Result<Output, SkillError> {
        let plan = make_plan(&input)?;
        let unit = &input.unit;
        log::info(&format!("restarting {unit}"));
        // A restart that could not even be started (denied, missing binary) is an error:
        // nothing was done, and the host's exec record says why.
        let restart = exec::run(
            &input.systemctl,
            &["restart".to_string(), unit.clone()],
            Some(RESTART_TIMEOUT_MS),
        )?;
        let restart = command(restart);
        if restart.status != Some(0) {
            log::warn(&format!(
                "systemctl restart {unit} failed: status {:?}, timed out {}",
                restart.status, restart.timed_out
            ));
        }
        let (is_active, state, state_error) = match exec::run(
            &input.systemctl,
            &["is-active".to_string(), unit.clone()],
            Some(IS_ACTIVE_TIMEOUT_MS),
        ) {
            Ok(out) => {
                let out = command(out);
                // `is-active` prints the state; exit 0 alone means active.
                let printed = out.stdout.trim();
                let state = if !printed.is_empty() && !printed.contains(char::is_whitespace) {
                    printed.to_string()
                } else if out.status == Some(0) {
                    "active".to_string()
                } else {
                    "unknown".to_string()
                };
                (Some(out), state, None)
            }
            Err(e) => (
                None,
                "unknown".to_string(),
                Some(format!("{}: {}", e.code, e.message)),
            ),
        };
        let after = unit_state(unit).ok();
        let success = restart.status == Some(0) && state == "active";
        Ok(Output {
            mode: "run",
            unit: plan.unit,
            command: plan.command,
            verify: plan.verify,
            before: plan.before,
            before_error: plan.before_error,
            restart,
            is_active,
            state,
            state_error,
            after,
            success,
        })
    }
}

tend_sdk::export_repair!(ServiceRestart);
