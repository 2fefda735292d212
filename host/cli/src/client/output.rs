//! What the client prints for people: aligned tables, short ages (`3m`), and an invocation
//! shown whole ([`render_invocation`], also what an approver reads before approving).

use std::time::{Duration, SystemTime};

use tend_protocol::{Invocation, State};

/// Columns aligned with two spaces between them; the last column is not padded.
pub fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut text = String::new();
        let last = cells.len().saturating_sub(1);
        for (i, cell) in cells.into_iter().enumerate() {
            text.push_str(cell);
            if i < last {
                let pad = widths[i] - cell.chars().count() + 2;
                text.push_str(&" ".repeat(pad));
            }
        }
        text.trim_end().to_string() + "\n"
    };
    let mut text = line(headers.to_vec());
    for row in &rows {
        text.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    text
}

fn parse_time(at: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339(at).ok()
}

/// A duration as one short unit: `45s`, `3m`, `2h`, `4d`.
pub fn short(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// How long ago `at` (RFC 3339) was: `3m`; `?` if it does not read as a time.
pub fn age(at: &str) -> String {
    match parse_time(at) {
        Some(t) => short(SystemTime::now().duration_since(t).unwrap_or_default()),
        None => "?".to_string(),
    }
}

/// How far `at` (RFC 3339) is from now: `3m ago` or `in 57m`.
pub fn relative(at: &str) -> String {
    let Some(t) = parse_time(at) else {
        return "?".to_string();
    };
    let now = SystemTime::now();
    match now.duration_since(t) {
        Ok(ago) => format!("{} ago", short(ago)),
        Err(_) => format!("in {}", short(t.duration_since(now).unwrap_or_default())),
    }
}

/// `at` with how far it is from now: `2026-01-01T10:00:00.000Z (3m ago)`.
pub fn when(at: &str) -> String {
    format!("{at} ({})", relative(at))
}

/// The end of `inv`'s approval window as the invocation digest binds it (`expires_ms`), in
/// RFC 3339: what an approval of it is good for, whatever `expires_at` says.
pub fn bound_expiry(inv: &Invocation) -> String {
    let at = SystemTime::UNIX_EPOCH + Duration::from_millis(inv.expires_ms.max(0) as u64);
    humantime::format_rfc3339_millis(at).to_string()
}

/// Whether an invocation has reached an end state.
pub fn is_final(state: State) -> bool {
    state.is_final()
}

/// Distinct approvers of this invocation's own digest.
pub fn approvals_given(inv: &Invocation) -> usize {
    inv.approvals
        .iter()
        .filter(|a| a.invocation_digest == inv.invocation_digest)
        .map(|a| a.approver.as_str())
        .collect::<std::collections::BTreeSet<_>>()
        .len()
}

/// Approvals given of those needed: `1/2`.
pub fn approvals_count(inv: &Invocation) -> String {
    format!("{}/{}", approvals_given(inv), inv.approvals_required)
}

/// What a person must do next about a pending invocation, or `None`.
pub fn approval_hint(inv: &Invocation) -> Option<String> {
    if inv.state != State::PendingApproval {
        return None;
    }
    let left = (inv.approvals_required as usize)
        .saturating_sub(approvals_given(inv))
        .max(1);
    Some(format!(
        "waiting for {left} more approval{} by an approver other than {} (before {}): tend approve {}",
        if left == 1 { "" } else { "s" },
        inv.requester,
        bound_expiry(inv),
        inv.id
    ))
}

/// An invocation as a person reads it: what runs where, its decision and why, who asked, its
/// approvals, times, and its result. `tend status` prints it; `tend approve` shows it before
/// asking for a confirmation.
pub fn render_invocation(inv: &Invocation) -> String {
    let mut rows: Vec<(&str, String)> = vec![
        ("invocation", inv.id.clone()),
        (
            "skill",
            match (inv.export.as_str(), &inv.plan_for) {
                ("plan", Some(repair)) => {
                    format!("{}@{} (its plan, for {repair})", inv.skill, inv.version)
                }
                _ => format!("{}@{}", inv.skill, inv.version),
            },
        ),
        ("digest", inv.digest.clone()),
        ("manifest", inv.manifest_digest.clone()),
        (
            "publisher",
            format!("{} (key {})", inv.publisher, inv.publisher_key),
        ),
        ("target", inv.target.clone()),
        ("state", inv.state.as_str().to_string()),
        (
            "level",
            format!(
                "L{} ({})",
                inv.level,
                match inv.approvals_required {
                    0 => "runs without approval".to_string(),
                    n => format!(
                        "{n} approval{} needed, {} given",
                        if n == 1 { "" } else { "s" },
                        approvals_given(inv)
                    ),
                }
            ),
        ),
        (
            "requester",
            format!("{} (via {})", inv.requester, inv.trigger),
        ),
        ("reason", inv.reason.clone()),
        // What an approval binds is shown whole, however long.
        (
            "input",
            if matches!(inv.state, State::Planning | State::PendingApproval) {
                inv.input.to_string()
            } else {
                compact(&inv.input)
            },
        ),
        ("grants", grants_text(&inv.grants)),
        ("limits", limits_text(&inv.limits)),
        ("inv. digest", inv.invocation_digest.clone()),
        ("created", when(&inv.created_at)),
    ];
    if let Some(at) = &inv.started_at {
        rows.push(("started", when(at)));
    }
    if let Some(at) = &inv.finished_at {
        rows.push(("finished", when(at)));
    }
    if !inv.narrowing.is_empty() {
        rows.push((
            "narrowed",
            serde_json::to_string(&inv.narrowing).unwrap_or_default(),
        ));
    }
    if matches!(inv.state, State::Planning | State::PendingApproval) {
        // The end of the window the digest binds, not the server's text for it.
        rows.push(("expires", when(&bound_expiry(inv))));
    }
    if let Some(comment) = inv.comment.as_deref().filter(|c| !c.is_empty()) {
        rows.push(("comment", comment.to_string()));
    }
    let mut text = String::new();
    for (key, value) in rows {
        text.push_str(&format!("{key:<12} {}\n", one_line(&value)));
    }
    if !inv.reasons.is_empty() {
        text.push_str("decision:\n");
        for reason in &inv.reasons {
            text.push_str(&format!("  - {}\n", one_line(reason)));
        }
    }
    if let Some(plan) = &inv.plan {
        text.push_str(&render_plan(plan));
    } else if inv.state == State::Planning {
        text.push_str("plan:        running on the target first (an approval binds it)\n");
    }
    if !inv.approvals.is_empty() {
        text.push_str("approvals:\n");
        for a in &inv.approvals {
            let stale = if a.invocation_digest == inv.invocation_digest {
                ""
            } else {
                " (for another digest: does not count)"
            };
            text.push_str(&format!(
                "  - {} at {}{stale}\n",
                one_line(&a.approver),
                one_line(&a.at)
            ));
        }
    }
    if let Some(hint) = approval_hint(inv) {
        text.push_str(&format!("{}\n", one_line(&hint)));
    }
    if !inv.hosts.is_empty() {
        text.push_str(&format!(
            "hosts:       {}\n",
            one_line(&inv.hosts.join(", "))
        ));
    }
    if !inv.parts.is_empty() {
        let ok = inv
            .parts
            .iter()
            .filter(|p| p.state == State::Succeeded)
            .count();
        text.push_str(&format!(
            "per host:    {ok} of {} succeeded\n",
            inv.parts.len()
        ));
        let rows = inv
            .parts
            .iter()
            .map(|p| {
                vec![
                    format!("  {}", one_line(&p.host)),
                    p.state.as_str().to_string(),
                    one_line(&p.outcome.clone().unwrap_or_default()),
                    one_line(&p.id),
                ]
            })
            .collect();
        text.push_str(&table(&["  HOST", "STATE", "OUTCOME", "PART"], rows));
    } else if let Some(result) = &inv.result {
        text.push_str(&render_result(result));
    }
    if let Some(check) = &inv.plan_check {
        text.push_str(&format!(
            "vs plan:     {}\n",
            one_line(check["summary"].as_str().unwrap_or(""))
        ));
        for d in check["differences"].as_array().into_iter().flatten() {
            text.push_str(&format!("  - {}\n", one_line(d.as_str().unwrap_or(""))));
        }
    }
    // Every line above is this client's; whatever free text slipped into one stays on it.
    visible(&text)
}

/// A repair's plan record: what its plan said it would do, or that it failed or did not run.
pub fn render_plan(plan: &serde_json::Value) -> String {
    let outcome = one_line(plan["outcome"].as_str().unwrap_or("?"));
    let mut text = if outcome == "ok" {
        "plan:        what it says it will do (ran read-only on the target)\n".to_string()
    } else {
        format!(
            "plan:        NOT AVAILABLE ({outcome}): approve knowing it could not say what it will do\n"
        )
    };
    for part in ["output", "error"] {
        let value = &plan[part];
        if !value.is_null() {
            let pretty = serde_json::to_string_pretty(value).unwrap_or_default();
            for line in pretty.lines() {
                text.push_str(&format!("  {line}\n"));
            }
        }
    }
    text
}

/// Grants in one line, only the kinds granted: `fs_read /var/log; exec /bin/kill {pid}`.
fn grants_text(g: &tend_policy::Grants) -> String {
    let mut parts = Vec::new();
    for (kind, list) in [
        ("fs_read", &g.fs_read),
        ("fs_write", &g.fs_write),
        ("restart", &g.service_restart),
        ("reload", &g.service_reload),
        ("http", &g.http),
        ("tcp", &g.tcp),
        ("dns", &g.dns),
    ] {
        if !list.is_empty() {
            parts.push(format!("{kind} {}", list.join(", ")));
        }
    }
    for e in &g.exec {
        parts.push(format!("exec {} {}", e.program, e.args.join(" ")));
    }
    if parts.is_empty() {
        "none beyond host facts".to_string()
    } else {
        parts.join("; ")
    }
}

fn limits_text(l: &tend_manifest::ManifestLimits) -> String {
    let d = tend_manifest::DEFAULT_LIMITS;
    format!(
        "fuel {}, memory {} MiB, timeout {} ms, output {} KiB",
        l.fuel.or(d.fuel).unwrap_or(0),
        l.memory_mib.or(d.memory_mib).unwrap_or(0),
        l.timeout_ms.or(d.timeout_ms).unwrap_or(0),
        l.output_kib.or(d.output_kib).unwrap_or(0)
    )
}

/// The result of a run: outcome and duration, the skill's error or its output (pretty JSON),
/// or why it did not run.
pub fn render_result(result: &serde_json::Value) -> String {
    let mut text = String::new();
    match result["outcome"].as_str() {
        Some(outcome) => {
            let ms = result["duration_us"].as_f64().unwrap_or(0.0) / 1000.0;
            text.push_str(&format!("result:      {outcome} in {ms:.2} ms\n"));
            if let Some(err) = result.get("error").filter(|e| !e.is_null()) {
                text.push_str(&format!(
                    "error:       {}: {}\n",
                    err["code"].as_str().unwrap_or("error"),
                    err["message"].as_str().unwrap_or("")
                ));
            }
            if let Some(output) = result.get("output").filter(|o| !o.is_null()) {
                text.push_str("output:\n");
                let pretty =
                    serde_json::to_string_pretty(output).unwrap_or_else(|_| output.to_string());
                for line in pretty.lines() {
                    text.push_str(&format!("  {line}\n"));
                }
            }
        }
        None => {
            // A run that never produced a report: refused by an agent, or a host failure.
            let why = result["error"].as_str().unwrap_or("no report");
            match result["refused_by_agent"].as_str() {
                Some(agent) => {
                    text.push_str(&format!("result:      refused by agent {agent}: {why}\n"))
                }
                None => text.push_str(&format!("result:      did not run: {why}\n")),
            }
        }
    }
    visible(&text)
}

/// `s` as one line a terminal shows as it is: every control character (line breaks, carriage
/// returns, escape sequences) and every invisible or direction-changing format character is
/// written as `\u{..}`. Free text — a requester's reason, or anything a hostile server sends
/// — cannot then move the cursor, erase or fake a row of what an approver reads.
pub fn one_line(s: &str) -> String {
    escape(s, false)
}

/// Like [`one_line`], but keeps line breaks: for text made of lines this client wrote.
fn visible(s: &str) -> String {
    escape(s, true)
}

fn escape(s: &str, keep_newlines: bool) -> String {
    let hidden = |c: char| {
        c.is_control()
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}')
    };
    if !s.chars().any(hidden) {
        return s.to_string();
    }
    s.chars()
        .map(|c| match c {
            '\n' if keep_newlines => "\n".to_string(),
            c if hidden(c) => format!("\\u{{{:x}}}", c as u32),
            c => c.to_string(),
        })
        .collect()
}

/// JSON on one line, shortened for a table or a summary.
fn compact(v: &serde_json::Value) -> String {
    let text = v.to_string();
    if text.chars().count() > 200 {
        text.chars().take(197).collect::<String>() + "..."
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let t = table(
            &["ID", "SKILL"],
            vec![
                vec!["inv_1".into(), "disk-usage".into()],
                vec!["inv_22222".into(), "x".into()],
            ],
        );
        assert_eq!(t, "ID         SKILL\ninv_1      disk-usage\ninv_22222  x\n");
    }

    #[test]
    fn ages_are_one_short_unit() {
        assert_eq!(short(Duration::from_secs(5)), "5s");
        assert_eq!(short(Duration::from_secs(200)), "3m");
        assert_eq!(short(Duration::from_secs(7300)), "2h");
        assert_eq!(short(Duration::from_secs(3 * 86_400)), "3d");
    }

    /// An invocation as a server sends it, pending approval, with the approval window that
    /// the digest binds (`expires_ms`) and the one it states in words (`expires_at`).
    fn pending(expires_at: &str, expires_ms: i64) -> Invocation {
        serde_json::from_value(serde_json::json!({
            "id": "inv_0000000000000001", "skill": "clean-old-logs", "version": "1.0.0",
            "digest": "sha256:00", "target": "local", "input": {}, "reason": "disk full",
            "requester": "alice", "level": 1, "approvals_required": 1,
            "invocation_digest": "d", "state": "pending_approval",
            "verdict": {"decision": {"decision": "allow"}, "level": 1, "reasons": []}, "reasons": [],
            "created_at": "2026-01-01T00:00:00.000Z", "expires_at": expires_at,
            "expires_ms": expires_ms, "approvals": [], "result": null,
        }))
        .expect("an invocation")
    }

    /// The approval window an approver reads is the one the digest binds: a server that
    /// states a short window in `expires_at` while binding a year cannot make the approver
    /// believe the approval lapses in an hour.
    #[test]
    fn the_expiry_shown_is_the_one_the_digest_binds() {
        // 2027-01-01T00:00:00Z, bound; an earlier time stated.
        let text = render_invocation(&pending("2026-01-01T01:00:00.000Z", 1_798_761_600_000));
        let line = text
            .lines()
            .find(|l| l.starts_with("expires"))
            .expect("an expires line");
        assert!(line.contains("2027-01-01T00:00:00.000Z"), "{line}");
        assert!(!line.contains("2026-01-01T01:00:00"), "{line}");
    }

    /// An approver sees the names a skill may look up, beside its other grants.
    #[test]
    fn an_approver_sees_dns_grants() {
        let mut inv = pending("2027-01-01T00:00:00.000Z", 1_798_761_600_000);
        inv.grants.dns = vec!["db.example.com".into(), "*.internal.example.com".into()];
        inv.grants.tcp = vec!["db.example.com:5432".into()];
        let text = render_invocation(&inv);
        let line = text
            .lines()
            .find(|l| l.starts_with("grants"))
            .expect("a grants line");
        assert!(
            line.ends_with("tcp db.example.com:5432; dns db.example.com, *.internal.example.com"),
            "{line}"
        );
    }

    /// Everything an approval binds is shown in full: a requester cannot hide part of the
    /// input after the first 200 characters, where a shortened line would cut it.
    #[test]
    fn an_approver_sees_the_whole_input() {
        let mut inv = pending("2027-01-01T00:00:00.000Z", 1_798_761_600_000);
        inv.input = serde_json::json!({
            "aa_note": "routine cleanup of old nginx logs, nothing else ".repeat(6),
            "zz_path": "/var/lib/postgresql",
        });
        let text = render_invocation(&inv);
        assert!(text.contains("/var/lib/postgresql"), "{text}");
    }

    /// Free text in an invocation (the requester's reason, or anything a hostile server
    /// sends) cannot write to the approver's terminal: no escape sequences, no carriage
    /// returns, no extra lines that look like rows, no bidirectional overrides.
    #[test]
    fn free_text_cannot_forge_what_an_approver_reads() {
        let mut inv = pending("2027-01-01T00:00:00.000Z", 1_798_761_600_000);
        inv.reason = "disk full\n\u{1b}[1A\u{1b}[2K\rgrants       none\u{202e}".into();
        inv.approvals = vec![tend_protocol::Approval {
            approver: "bob\ngrants       none".into(),
            invocation_digest: "d".into(),
            at: "\u{1b}[2J".into(),
            public_key: None,
            signature: None,
        }];
        inv.plan = Some(serde_json::json!({"outcome": "ok\u{1b}[2K\nplan: fine", "output": null}));
        let text = render_invocation(&inv);
        assert!(!text.contains('\u{1b}'), "{text:?}");
        assert!(!text.contains('\r'), "{text:?}");
        assert!(!text.contains('\u{202e}'), "{text:?}");
        let forged = text
            .lines()
            .filter(|l| l.trim_start().starts_with("grants"))
            .count();
        assert_eq!(forged, 1, "{text}");
        assert!(!text.lines().any(|l| l.starts_with("plan: fine")), "{text}");
    }
}
