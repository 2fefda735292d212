//! service-status: the state of systemd units.
//!
//! Input: `{"units": ["ssh.service", "cron.service"]}`: 1-50 distinct unit names
//! (`[A-Za-z0-9:_.@\-]`, at most 256 characters, not starting with `-`).
//!
//! Output: `available` (whether systemd could be asked) with the host's `reason` when it
//! could not; an overall `status` (`ok` | `warn` | `critical`, or `unknown` when systemd is not
//! available); and per unit `name`, `load_state`, `active_state`, `sub_state`, `main_pid`,
//! `restarts`, `last_result`, `active_enter_timestamp_us`, its `status` and the `reason` for
//! it, or an `error` when that unit could not be read. A unit is `critical` when it failed, is
//! not found or cannot be loaded, or is inactive after an unsuccessful run; `warn` when it is
//! (de)activating, reloading, masked, inactive, or has restarted; `ok` when active.
//!
//! On a machine without systemd the skill succeeds with `available: false`, the reason, and
//! each unit listed with status `unknown`.

use serde::{Deserialize, Serialize};
use tend_sdk::{Diagnose, SkillError, host};

const MAX_UNITS: usize = 50;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    units: Vec<String>,
}

#[derive(Serialize, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
enum Status {
    Ok,
    Unknown,
    Warn,
    Critical,
}

#[derive(Serialize)]
struct UnitError {
    code: String,
    message: String,
}

#[derive(Serialize)]
struct Unit {
    name: String,
    status: Status,
    reason: String,
    load_state: Option<String>,
    active_state: Option<String>,
    sub_state: Option<String>,
    main_pid: Option<u32>,
    restarts: Option<u32>,
    last_result: Option<String>,
    active_enter_timestamp_us: Option<u64>,
    error: Option<UnitError>,
}

#[derive(Serialize)]
struct Output {
    available: bool,
    reason: Option<String>,
    status: Status,
    units: Vec<Unit>,
}

fn valid_unit_name(unit: &str) -> bool {
    !unit.is_empty()
        && unit.len() <= 256
        && !unit.starts_with('-')
        && unit
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@:\\".contains(&b))
}

fn judge(u: &host::UnitInfo) -> (Status, String) {
    let failed_run = u
        .last_result
        .as_deref()
        .is_some_and(|r| !r.is_empty() && r != "success");
    let result = u.last_result.as_deref().unwrap_or("unknown");
    match (u.load_state.as_str(), u.active_state.as_str()) {
        ("not-found", _) => (Status::Critical, "unit not found".into()),
        ("error" | "bad-setting", _) => (
            Status::Critical,
            format!("unit cannot be loaded (load state {})", u.load_state),
        ),
        ("masked", _) => (Status::Warn, "unit is masked".into()),
        (_, "failed") => (Status::Critical, format!("unit failed (result {result})")),
        (_, "inactive") if failed_run => (
            Status::Critical,
            format!("unit is inactive after an unsuccessful run (result {result})"),
        ),
        (_, "inactive") => (Status::Warn, "unit is inactive".into()),
        (_, "activating" | "deactivating" | "reloading" | "refreshing") => (
            Status::Warn,
            format!("unit is {} ({})", u.active_state, u.sub_state),
        ),
        (_, "active") => match u.restarts {
            Some(n) if n > 0 => (
                Status::Warn,
                format!("unit is active but was restarted {n} time(s) by systemd"),
            ),
            _ => (Status::Ok, format!("unit is active ({})", u.sub_state)),
        },
        (_, other) => (Status::Warn, format!("unexpected active state {other:?}")),
    }
}

struct ServiceStatus;

impl Diagnose for ServiceStatus {
    type Input = Input;
    type Output = Output;

    fn run(input: Input) -> Result<Output, SkillError> {
        if input.units.is_empty() || input.units.len() > MAX_UNITS {
            return Err(SkillError::new(
                "invalid-input",
                format!("give 1 to {MAX_UNITS} units"),
            ));
        }
        if let Some(bad) = input.units.iter().find(|u| !valid_unit_name(u)) {
            return Err(SkillError::new(
                "invalid-input",
                format!("{bad:?} is not a valid systemd unit name"),
            ));
        }
        let results: Vec<(String, Result<host::UnitInfo, SkillError>)> = input
            .units
            .into_iter()
            .map(|name| {
                let r = host::unit_status(&name);
                (name, r)
            })
            .collect();

        // systemd itself is unavailable when every unit failed the same way with `unavailable`
        // (no systemd, or no systemctl): one clear answer instead of N identical errors.
        let first_unavailable = results.iter().find_map(|(_, r)| match r {
            Err(e) if e.code == "unavailable" => Some(e.message.clone()),
            _ => None,
        });
        let all_same_unavailable = results.iter().all(|(_, r)| {
            matches!(r, Err(e) if e.code == "unavailable" && Some(&e.message) == first_unavailable.as_ref())
        });
        if all_same_unavailable && let Some(reason) = first_unavailable {
            tend_sdk::log::warn(&format!("systemd unavailable: {reason}"));
            let units = results
                .into_iter()
                .map(|(name, _)| Unit {
                    name,
                    status: Status::Unknown,
                    reason: "systemd is not available".into(),
                    load_state: None,
                    active_state: None,
                    sub_state: None,
                    main_pid: None,
                    restarts: None,
                    last_result: None,
                    active_enter_timestamp_us: None,
                    error: None,
                })
                .collect();
            return Ok(Output {
                available: false,
                reason: Some(reason),
                status: Status::Unknown,
                units,
            });
        }

        let units: Vec<Unit> = results
            .into_iter()
            .map(|(name, r)| match r {
                Ok(u) => {
                    let (status, reason) = judge(&u);
                    Unit {
                        name,
                        status,
                        reason,
                        load_state: Some(u.load_state),
                        active_state: Some(u.active_state),
                        sub_state: Some(u.sub_state),
                        main_pid: u.main_pid,
                        restarts: u.restarts,
                        last_result: u.last_result,
                        active_enter_timestamp_us: u.active_enter_timestamp_us,
                        error: None,
                    }
                }
                Err(e) => Unit {
                    name,
                    status: Status::Unknown,
                    reason: format!("cannot read the unit: {}", e.message),
                    load_state: None,
                    active_state: None,
                    sub_state: None,
                    main_pid: None,
                    restarts: None,
                    last_result: None,
                    active_enter_timestamp_us: None,
                    error: Some(UnitError {
                        code: e.code,
                        message: e.message,
                    }),
                },
            })
            .collect();
        let status = units.iter().map(|u| u.status).max().unwrap_or(Status::Ok);
        Ok(Output {
            available: true,
            reason: None,
            status,
            units,
        })
    }
}

tend_sdk::export_diagnose!(ServiceStatus);
