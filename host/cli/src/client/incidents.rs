//! `tend incidents`: what alerts became, and where each healing loop is.
//!
//! `tend incidents` lists them (newest first); `tend incidents ID` shows one whole: the alert's
//! labels and annotations, its state, the loop's stage and outcome, the story of what Tend did
//! and why, and the messages people were sent. [`context_of`] is what `tend approve` shows
//! beside a repair the loop submitted: the alert and its diagnosis.
//!
//! Everything here comes from alerts and skills, so every value is printed through
//! [`output::one_line`]: a label cannot move the cursor or forge a line.

use serde_json::Value;

use super::config::ConnArgs;
use super::http::Client;
use super::output::{self, one_line};
use crate::{Failure, exit, out};

#[derive(Debug, clap::Args)]
pub struct IncidentsArgs {
    /// Show this incident whole (inc_...); without it, list them
    id: Option<String>,
    /// With no ID: only open and escalated incidents (not resolved ones)
    #[arg(long)]
    open: bool,
    /// With no ID: at most this many, newest first (1-500)
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..=500))]
    limit: i64,
    /// Print the API's JSON
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    conn: ConnArgs,
}

/// An incident id as the orchestrator makes them: `inc_` and 16 hex digits.
fn incident_path(id: &str) -> Result<String, Failure> {
    let ok = id
        .strip_prefix("inc_")
        .is_some_and(|hex| hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()));
    if ok {
        Ok(format!("/api/v1/incidents/{id}"))
    } else {
        Err(Failure::bad_input(format!(
            "{:?} is not an incident id (inc_ and 16 hex digits, as `tend incidents` shows)",
            id.chars().take(80).collect::<String>()
        )))
    }
}

pub async fn incidents(args: IncidentsArgs) -> Result<u8, Failure> {
    let client = Client::from_args(&args.conn)?;
    if let Some(id) = &args.id {
        let incident: Value = client.get(&incident_path(id)?).await?;
        if args.json {
            out(&incident.to_string());
        } else {
            out(render_incident(&incident).trim_end());
        }
        return Ok(exit::OK);
    }
    let answer: Value = client
        .get(&format!("/api/v1/incidents?limit={}", args.limit))
        .await?;
    let list: Vec<&Value> = answer
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| !args.open || text(i, "state") != "resolved")
        .collect();
    if args.json {
        out(&Value::Array(list.into_iter().cloned().collect()).to_string());
        return Ok(exit::OK);
    }
    if list.is_empty() {
        eprintln!("no incidents{}", if args.open { " open" } else { " yet" });
        return Ok(exit::OK);
    }
    let rows = list
        .iter()
        .map(|i| {
            vec![
                text(i, "id"),
                text(i, "alertname"),
                or_dash(text(i, "target")),
                text(i, "state"),
                loop_state(i),
                or_dash(text(i, "policy")),
                output::age(i["first_seen_at"].as_str().unwrap_or_default()),
            ]
            .into_iter()
            .map(|c| one_line(&c))
            .collect()
        })
        .collect();
    out(output::table(
        &["ID", "ALERT", "TARGET", "STATE", "HEALING", "POLICY", "AGE"],
        rows,
    )
    .trim_end());
    eprintln!("show one with `tend incidents ID`");
    Ok(exit::OK)
}

fn text(v: &Value, key: &str) -> String {
    match &v[key] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn or_dash(s: String) -> String {
    if s.is_empty() { "-".into() } else { s }
}

/// The loop in a word: its outcome when it ended, else its stage (`-` without a loop).
fn loop_state(i: &Value) -> String {
    match (i["outcome"].as_str(), i["stage"].as_str()) {
        (Some(outcome), _) => outcome.to_string(),
        (None, Some("none") | None) => "-".to_string(),
        (None, Some(stage)) => stage.to_string(),
    }
}

fn labels_line(map: &Value) -> String {
    map.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// One incident as a person reads it.
pub fn render_incident(i: &Value) -> String {
    let mut rows: Vec<(&str, String)> = vec![
        ("incident", text(i, "id")),
        (
            "alert",
            format!("{} ({})", text(i, "alertname"), text(i, "alert_status")),
        ),
        ("state", text(i, "state")),
        ("healing", loop_state(i)),
        ("target", or_dash(text(i, "target"))),
        ("policy", or_dash(text(i, "policy"))),
        (
            "episode",
            format!("{}, {} repair(s)", text(i, "episode"), text(i, "attempts")),
        ),
        ("labels", labels_line(&i["labels"])),
    ];
    if i["annotations"].as_object().is_some_and(|m| !m.is_empty()) {
        rows.push(("annotations", labels_line(&i["annotations"])));
    }
    if let Some(why) = i["escalation"].as_str() {
        rows.push(("escalated", why.to_string()));
    }
    rows.push(("first seen", output::when(&text(i, "first_seen_at"))));
    rows.push(("last seen", output::when(&text(i, "last_seen_at"))));
    if let Some(at) = i["resolved_at"].as_str() {
        rows.push(("resolved", output::when(at)));
    }
    let mut out = String::new();
    for (key, value) in rows {
        out.push_str(&format!("{key:<12} {}\n", one_line(&value)));
    }
    if let Some(story) = i["story"].as_array().filter(|s| !s.is_empty()) {
        out.push_str("story:\n");
        for entry in story {
            out.push_str(&format!(
                "  {}  {:<10} {}\n",
                one_line(&text(entry, "at")),
                one_line(&text(entry, "step")),
                one_line(&text(entry, "text"))
            ));
        }
    }
    if let Some(messages) = i["messages"].as_array().filter(|m| !m.is_empty()) {
        out.push_str("messages:\n");
        for m in messages {
            out.push_str(&format!(
                "  {} to {}: {}{}\n",
                one_line(&text(m, "event")),
                one_line(&text(m, "channel")),
                one_line(&text(m, "state")),
                m["last_error"]
                    .as_str()
                    .map(|e| format!(" ({})", one_line(e)))
                    .unwrap_or_default()
            ));
        }
    }
    let invocations: Vec<String> = i["invocations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(one_line))
        .collect();
    if !invocations.is_empty() {
        out.push_str(&format!(
            "invocations: {} (`tend status ID`)\n",
            invocations.join(", ")
        ));
    }
    out
}

/// What `tend approve` shows beside a repair the healing loop submitted: the incident, its
/// alert and what the diagnosis found. `None` when the invocation is not an incident's (or the
/// orchestrator cannot say). This is context for the person, not part of what they sign.
pub async fn context_of(client: &Client, invocation: &str) -> Option<String> {
    let answer: Value = client
        .get(&format!("/api/v1/incidents?invocation={invocation}"))
        .await
        .ok()?;
    let i = answer.as_array()?.first()?;
    let mut out = format!(
        "incident:   {} — {} on {} (healing policy {}); context, not part of what you sign\n",
        one_line(&text(i, "id")),
        one_line(&text(i, "alertname")),
        one_line(&or_dash(text(i, "target"))),
        one_line(&or_dash(text(i, "policy")))
    );
    out.push_str(&format!(
        "  alert       {}\n",
        one_line(&labels_line(&i["labels"]))
    ));
    if let Some(summary) = i["annotations"]["summary"].as_str() {
        out.push_str(&format!("  summary     {}\n", one_line(summary)));
    }
    for entry in i["story"].as_array().into_iter().flatten() {
        if entry["step"] != "diagnosed" {
            continue;
        }
        out.push_str(&format!(
            "  diagnosis   {}\n",
            one_line(&text(entry, "text"))
        ));
        for r in entry["data"]["results"].as_array().into_iter().flatten() {
            // The diagnose skill's own output, from its invocation.
            let id = text(r, "invocation");
            let output = match tend_protocol::is_invocation_id(&id) {
                true => client
                    .get::<Value>(&format!("/api/v1/invocations/{id}"))
                    .await
                    .map(|inv| inv["result"]["output"].clone())
                    .unwrap_or(Value::Null),
                false => Value::Null,
            };
            let shown = serde_json::to_string(&output).unwrap_or_default();
            let shown: String = if shown.chars().count() > 400 {
                shown.chars().take(397).collect::<String>() + "..."
            } else {
                shown
            };
            out.push_str(&format!(
                "    {} ({}): {}\n",
                one_line(&text(r, "skill")),
                one_line(&text(r, "invocation")),
                one_line(&shown)
            ));
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_incident_id_is_checked_before_it_becomes_a_path() {
        assert!(incident_path("inc_0123456789abcdef").is_ok());
        for bad in [
            "inc_../../x",
            "inv_0123456789abcdef",
            "inc_0123",
            "inc_0123456789abcdeg",
        ] {
            assert!(incident_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn alert_labels_and_story_text_cannot_forge_lines() {
        let i = json!({
            "id": "inc_0123456789abcdef", "alertname": "Disk\u{1b}[2J\nFull",
            "alert_status": "firing", "state": "open", "stage": "repair", "outcome": null,
            "labels": { "alertname": "x\r\napproved: yes" }, "annotations": {},
            "story": [{ "at": "2026-01-01T00:00:00Z", "step": "diagnosed", "text": "ok\u{202e}evil" }],
            "first_seen_at": "2026-01-01T00:00:00Z", "last_seen_at": "2026-01-01T00:00:00Z",
        });
        let shown = render_incident(&i);
        assert!(!shown.contains('\u{1b}') && !shown.contains('\r') && !shown.contains('\u{202e}'));
        assert!(!shown.lines().any(|l| l.starts_with("approved")), "{shown}");
        assert!(shown.contains("healing      repair"), "{shown}");
    }
}
