//! A repair's plan as approvers see it, and how a run is compared with it.
//!
//! Before a repair that needs approval is shown to anyone, its `plan` export runs on the target
//! (read-only, no programs: the runtime enforces it). What it said — or that it failed, or why
//! it could not run — is the **plan record**, stored with the repair and bound into its
//! invocation digest. After the repair runs, [`plan_check`] compares the programs it ran with
//! the commands its plan showed (any array of strings in the plan's output that starts with an
//! absolute program path, e.g. `"command": ["/usr/bin/systemctl", "restart", "nginx.service"]`).

use serde_json::{Value, json};

/// The plan record of the plan job `plan_id` from its execution report (or its refusal).
pub fn plan_record(plan_id: &str, report: &Value) -> Value {
    let outcome = report
        .get("outcome")
        .and_then(Value::as_str)
        .unwrap_or("refused");
    json!({
        "invocation": plan_id,
        "outcome": outcome,
        "output": report.get("output").cloned().unwrap_or(Value::Null),
        "error": report.get("error").cloned().unwrap_or(Value::Null),
    })
}

/// The plan record of a plan that was not run, with why.
pub fn plan_not_run(why: &[String]) -> Value {
    json!({ "outcome": "not_run", "output": null, "error": why.join("; ") })
}

/// Where a finished repair's run differs from its plan: `as_planned` (`null` when there was
/// no plan to compare with), a one-line `summary` and the `differences`.
pub fn plan_check(plan: &Value, result: &Value) -> Value {
    if plan.get("outcome").and_then(Value::as_str) != Some("ok") {
        return json!({
            "as_planned": null,
            "summary": "the plan did not run to completion, so there is nothing to compare the run with",
            "differences": [],
        });
    }
    let mut planned = Vec::new();
    commands_in(plan.get("output").unwrap_or(&Value::Null), &mut planned);
    let ran: Vec<Vec<String>> = result
        .get("exec")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|r| r.get("denied").is_none_or(Value::is_null))
        .filter(|r| r.get("start_error").is_none_or(Value::is_null))
        .filter_map(|r| {
            let mut cmd = vec![r.get("program")?.as_str()?.to_string()];
            for a in r.get("args")?.as_array()? {
                cmd.push(a.as_str()?.to_string());
            }
            Some(cmd)
        })
        .collect();
    let mut differences = Vec::new();
    for cmd in &ran {
        if !planned.contains(cmd) {
            differences.push(format!(
                "ran `{}`, which the plan did not show",
                cmd.join(" ")
            ));
        }
    }
    for cmd in &planned {
        if !ran.contains(cmd) {
            differences.push(format!(
                "the plan showed `{}`, which did not run",
                cmd.join(" ")
            ));
        }
    }
    let summary = match (differences.is_empty(), ran.is_empty() && planned.is_empty()) {
        (true, true) => "no programs were planned or run".to_string(),
        (true, false) => format!("ran exactly the {} command(s) the plan showed", ran.len()),
        (false, _) => format!(
            "differs from the plan: {} difference(s) in the programs run",
            differences.len()
        ),
    };
    json!({ "as_planned": differences.is_empty(), "summary": summary, "differences": differences })
}

/// Every array of strings in `v` whose first element is an absolute path.
fn commands_in(v: &Value, out: &mut Vec<Vec<String>>) {
    match v {
        Value::Array(items) => {
            let strings: Option<Vec<String>> = items
                .iter()
                .map(|i| i.as_str().map(str::to_string))
                .collect();
            match strings {
                Some(cmd) if cmd.first().is_some_and(|p| p.starts_with('/')) => {
                    if !out.contains(&cmd) {
                        out.push(cmd)
                    }
                }
                _ => items.iter().for_each(|i| commands_in(i, out)),
            }
        }
        Value::Object(map) => map.values().for_each(|i| commands_in(i, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ran(cmds: &[&[&str]]) -> Value {
        json!({ "exec": cmds.iter().map(|c| json!({
            "program": c[0], "args": &c[1..], "denied": null, "start_error": null, "status": 0,
        })).collect::<Vec<_>>() })
    }

    #[test]
    fn a_run_is_compared_with_the_commands_its_plan_showed() {
        let plan = plan_record(
            "inv_0000000000000001",
            &json!({ "outcome": "ok", "output": {
                "command": ["/usr/bin/systemctl", "restart", "nginx.service"],
                "verify": ["/usr/bin/systemctl", "is-active", "nginx.service"],
                "note": ["not", "a command"],
            }}),
        );
        let same = ran(&[
            &["/usr/bin/systemctl", "restart", "nginx.service"],
            &["/usr/bin/systemctl", "is-active", "nginx.service"],
        ]);
        assert_eq!(plan_check(&plan, &same)["as_planned"], true);
        let other = ran(&[&["/usr/bin/systemctl", "stop", "postgresql.service"]]);
        let check = plan_check(&plan, &other);
        assert_eq!(check["as_planned"], false);
        let text = check["differences"].to_string();
        assert!(
            text.contains(
                "ran `/usr/bin/systemctl stop postgresql.service`, which the plan did not show"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "the plan showed `/usr/bin/systemctl restart nginx.service`, which did not run"
            ),
            "{text}"
        );
        // A refused call ran nothing.
        let refused = json!({ "exec": [{ "program": "/bin/rm", "args": ["-rf", "/"], "denied": "not in the allowlist" }] });
        assert_eq!(
            plan_check(&plan, &refused)["differences"]
                .as_array()
                .map(Vec::len),
            Some(2)
        );
        let failed = plan_record(
            "inv_0000000000000002",
            &json!({ "outcome": "trap", "error": {"code": "trap"} }),
        );
        assert_eq!(plan_check(&failed, &same)["as_planned"], Value::Null);
    }
}
