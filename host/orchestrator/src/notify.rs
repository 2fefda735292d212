//! Telling people about incidents, and silencing an alert while Tend repairs it.
//!
//! A change of an incident queues one message per channel of its policy (`notify`: every
//! change; `escalate`: when a person must act) in the same transaction as the change, keyed by
//! (incident, channel, episode and event): a change seen twice — a retried step, a second
//! replica — is sent once. [`deliver_due`] POSTs them: a Slack-compatible incoming webhook
//! gets `{"text": ...}` (with `&`, `<` and `>` escaped, so an alert label cannot mention
//! `@channel` or forge a link), a generic webhook the event as JSON. A failed delivery is
//! retried with backoff (1 s doubling, at most 5 min apart) and given up after 8 attempts.
//!
//! Silences use Alertmanager's v2 API: while a repair is verified, the alert (all its labels,
//! matched exactly) is silenced so nobody is paged for what Tend is fixing; the silence is
//! expired when the loop ends.

use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::Row;

use crate::api::AppState;
use crate::db::{now_ms, random_id, rfc3339};
use crate::healing::{Alertmanager, ChannelKind, Config};
use crate::invocation::FlowError;

/// Attempts before a message is given up.
const MAX_ATTEMPTS: i64 = 8;
/// Longest wait between attempts.
const MAX_BACKOFF_MS: i64 = 300_000;

/// One change of one incident, as people are told of it.
#[derive(Debug, Clone)]
pub struct Message {
    pub incident: String,
    pub policy: Option<String>,
    /// `opened`, `escalated`, `approval_needed`, `repairing`, `healed`, `resolved`, `dry_run`.
    pub event: String,
    /// Unique within the episode.
    pub key: String,
    pub alertname: String,
    pub target: Option<String>,
    pub state: String,
    /// What happened and what a person must do.
    pub text: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub story: Vec<Value>,
}

/// Events a person must act on: these go to a policy's `escalate` channels too.
fn needs_a_person(event: &str) -> bool {
    matches!(event, "escalated" | "dry_run" | "approval_needed")
}

/// Queue `m` for each channel that should hear of it, once per (incident, channel, episode,
/// event), in the caller's transaction.
pub async fn queue_tx(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    config: &Config,
    m: &Message,
    episode: i64,
) -> Result<(), FlowError> {
    let mut channels: Vec<&str> = Vec::new();
    match m.policy.as_deref().and_then(|p| config.policy(p)) {
        Some(p) => {
            channels.extend(p.policy.notify.iter().map(String::as_str));
            if needs_a_person(&m.event) {
                channels.extend(p.policy.escalate.iter().map(String::as_str));
            }
        }
        None => channels.extend(config.notify_unmatched.iter().map(String::as_str)),
    }
    channels.sort_unstable();
    channels.dedup();
    if channels.is_empty() {
        return Ok(());
    }
    let body = json!({
        "version": "1",
        "event": m.event,
        "incident": m.incident,
        "alertname": m.alertname,
        "target": m.target,
        "policy": m.policy,
        "state": m.state,
        "text": m.text,
        "labels": m.labels,
        "story": m.story,
        "at": rfc3339(now_ms()),
    })
    .to_string();
    let now = now_ms();
    for channel in channels {
        sqlx::query(
            "INSERT INTO notifications (id, incident_id, channel, event, body, state, attempts, next_ms, created_ms) VALUES ($1, $2, $3, $4, $5, 'pending', 0, $6, $6) ON CONFLICT (incident_id, channel, event) DO NOTHING",
        )
        .bind(random_id("ntf"))
        .bind(&m.incident)
        .bind(channel)
        .bind(format!("{episode}:{}", m.key))
        .bind(&body)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default()
    })
}

/// Slack's mrkdwn control characters, escaped as Slack asks.
fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// One line of untrusted text (alert labels, a skill's status, a model's reason): control and
/// direction characters become spaces, so it cannot forge a line of the message.
fn flat(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control()
                || matches!(c, '\u{200b}'..='\u{200f}' | '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}')
            {
                ' '
            } else {
                c
            }
        })
        .collect()
}

/// The text a person reads: the event, the alert, and the story so far.
pub fn slack_text(body: &Value) -> String {
    let s = |k: &str| flat(body[k].as_str().unwrap_or(""));
    let mut text = format!(
        "*Tend: {}* — incident {} ({} on {})\n{}",
        s("event"),
        s("incident"),
        s("alertname"),
        flat(body["target"].as_str().unwrap_or("no agent")),
        s("text")
    );
    if let Some(story) = body["story"].as_array()
        && !story.is_empty()
    {
        text.push_str("\nWhat happened:");
        for entry in story.iter().rev().take(12).rev() {
            text.push_str(&format!(
                "\n• {} {}",
                flat(entry["at"].as_str().unwrap_or("")),
                flat(entry["text"].as_str().unwrap_or(""))
            ));
        }
    }
    slack_escape(&text)
}

/// Send what is due until `stop`, looking every 200 ms.
pub async fn run(state: AppState, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if let Err(e) = deliver(&state).await {
            tracing::warn!(error = %e, "delivering notifications failed");
        }
    }
}

async fn deliver(state: &AppState) -> Result<(), FlowError> {
    let now = now_ms();
    let rows = sqlx::query(
        "SELECT id, channel, body, attempts FROM notifications WHERE state = 'pending' AND next_ms <= $1 AND (lease_until_ms IS NULL OR lease_until_ms < $1) ORDER BY created_ms LIMIT 20",
    )
    .bind(now)
    .fetch_all(&state.db.pool)
    .await?;
    if rows.is_empty() {
        return Ok(());
    }
    let config = state.settings.healing.current();
    for row in rows {
        let id: String = row.try_get("id")?;
        let channel: String = row.try_get("channel")?;
        let body: String = row.try_get("body")?;
        let attempts: i64 = row.try_get("attempts")?;
        let claimed = sqlx::query(
            "UPDATE notifications SET lease_until_ms = $1 WHERE id = $2 AND state = 'pending' AND (lease_until_ms IS NULL OR lease_until_ms < $3)",
        )
        .bind(now_ms() + 30_000)
        .bind(&id)
        .bind(now_ms())
        .execute(&state.db.pool)
        .await?
        .rows_affected();
        if claimed != 1 {
            continue;
        }
        let sent = match config.channel(&channel) {
            None => Err(format!(
                "no channel {channel} is configured any more; not sent"
            )),
            Some(ch) => {
                let value: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                let payload = match ch.kind {
                    ChannelKind::Slack => json!({ "text": slack_text(&value) }),
                    ChannelKind::Webhook => value,
                };
                match client().post(&ch.url).json(&payload).send().await {
                    Ok(r) if r.status().is_success() => Ok(()),
                    Ok(r) => Err(format!("{} answered {}", ch.name, r.status())),
                    Err(e) => Err(format!("{}: {e}", ch.name)),
                }
            }
        };
        let attempts = attempts + 1;
        match sent {
            Ok(()) => {
                sqlx::query(
                    "UPDATE notifications SET state = 'sent', attempts = $1, sent_ms = $2, lease_until_ms = NULL WHERE id = $3",
                )
                .bind(attempts)
                .bind(now_ms())
                .bind(&id)
                .execute(&state.db.pool)
                .await?;
            }
            Err(why) => {
                let gone = attempts >= MAX_ATTEMPTS || config.channel(&channel).is_none();
                if gone {
                    tracing::error!(notification = %id, channel = %channel, error = %why, "a notification was given up");
                } else {
                    tracing::warn!(notification = %id, channel = %channel, error = %why, attempts, "a notification failed; it is retried");
                }
                let backoff = (1000_i64 << (attempts - 1).min(20)).min(MAX_BACKOFF_MS);
                sqlx::query(
                    "UPDATE notifications SET state = $1, attempts = $2, next_ms = $3, last_error = $4, lease_until_ms = NULL WHERE id = $5",
                )
                .bind(if gone { "failed" } else { "pending" })
                .bind(attempts)
                .bind(now_ms() + backoff)
                .bind(crate::audit::safe_field(&why, 500))
                .bind(&id)
                .execute(&state.db.pool)
                .await?;
            }
        }
    }
    Ok(())
}

/// The notifications of one incident, oldest first (for the API and tests).
pub async fn of_incident(state: &AppState, incident: &str) -> Result<Vec<Value>, FlowError> {
    let rows = sqlx::query(
        "SELECT channel, event, state, attempts, created_ms, sent_ms, last_error FROM notifications WHERE incident_id = $1 ORDER BY created_ms, event",
    )
    .bind(incident)
    .fetch_all(&state.db.pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(json!({
                "channel": r.try_get::<String, _>("channel")?,
                "event": r.try_get::<String, _>("event")?,
                "state": r.try_get::<String, _>("state")?,
                "attempts": r.try_get::<i64, _>("attempts")?,
                "created_at": rfc3339(r.try_get("created_ms")?),
                "sent_at": r.try_get::<Option<i64>, _>("sent_ms")?.map(rfc3339),
                "last_error": r.try_get::<Option<String>, _>("last_error")?,
            }))
        })
        .collect()
}

/// Silence the incident's alert in Alertmanager until `until_ms`: its id, or `None` (logged)
/// when Alertmanager does not take it — the repair goes on either way.
pub(crate) async fn silence(
    am: &Alertmanager,
    labels: &std::collections::BTreeMap<String, String>,
    incident: &str,
    until_ms: i64,
) -> Option<String> {
    // An id Alertmanager sends back becomes part of a URL later: a UUID, nothing else.
    let well_formed = |id: &str| {
        !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
    };
    let matchers: Vec<Value> = labels
        .iter()
        .map(|(k, v)| json!({ "name": k, "value": v, "isRegex": false, "isEqual": true }))
        .collect();
    let body = json!({
        "matchers": matchers,
        "startsAt": rfc3339(now_ms()),
        "endsAt": rfc3339(until_ms),
        "createdBy": "tend",
        "comment": format!("Tend is repairing this (incident {incident}); expired when the repair is verified"),
    });
    let url = format!("{}/api/v2/silences", am.url.trim_end_matches('/'));
    match client().post(&url).json(&body).send().await {
        Ok(r) if r.status().is_success() => r
            .json::<Value>()
            .await
            .ok()
            .and_then(|v| v["silenceID"].as_str().map(str::to_string))
            .filter(|id| well_formed(id)),
        Ok(r) => {
            tracing::warn!(incident, status = %r.status(), "Alertmanager did not take the silence");
            None
        }
        Err(e) => {
            tracing::warn!(incident, error = %e, "Alertmanager could not be reached to silence the alert");
            None
        }
    }
}

/// Expire a silence Tend made (clearing `id` once Alertmanager took it, or knows it not).
pub(crate) async fn expire_silence(config: &Config, id: &mut Option<String>) {
    let (Some(am), Some(silence)) = (config.alertmanager.as_ref(), id.as_ref()) else {
        return;
    };
    let url = format!(
        "{}/api/v2/silence/{}",
        am.url.trim_end_matches('/'),
        silence
    );
    match client().delete(&url).send().await {
        Ok(r) if r.status().is_success() || r.status() == reqwest::StatusCode::NOT_FOUND => {
            *id = None;
        }
        Ok(r) => {
            tracing::warn!(silence, status = %r.status(), "Alertmanager did not expire the silence")
        }
        Err(e) => {
            tracing::warn!(silence, error = %e, "Alertmanager could not be reached to expire the silence")
        }
    }
}

/// Whether Alertmanager still has the alert `fingerprint` active (firing, silenced or not):
/// `None` when it cannot be asked or answers something else.
pub(crate) async fn alert_active(
    am: &Alertmanager,
    alertname: &str,
    fingerprint: &str,
) -> Option<bool> {
    let url = format!("{}/api/v2/alerts", am.url.trim_end_matches('/'));
    let filter = format!("alertname={:?}", alertname);
    let r = client()
        .get(&url)
        .query(&[
            ("filter", filter.as_str()),
            ("silenced", "true"),
            ("inhibited", "true"),
            ("active", "true"),
        ])
        .send()
        .await
        .ok()?;
    if !r.status().is_success() {
        return None;
    }
    let alerts: Vec<Value> = r.json().await.ok()?;
    Some(alerts.iter().any(|a| {
        a["fingerprint"].as_str() == Some(fingerprint)
            && a["endsAt"]
                .as_str()
                .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
                .is_none_or(|t| t > std::time::SystemTime::now())
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A diagnose skill's status, an alert's name or a model's reason holding line breaks
    /// cannot add a line to what people read in chat (a forged "healed" step, say).
    #[test]
    fn untrusted_text_cannot_forge_a_line_of_a_chat_message() {
        let body = json!({
            "event": "escalated", "incident": "inc_0123456789abcdef",
            "alertname": "DiskFull\n*Tend: healed*", "target": "web-1\r\nok",
            "text": "a person must look\u{2028}all good",
            "story": [
                { "at": "2026-01-01T00:00:00Z", "text": "diagnosis: disk-usage ok\n• 2026-01-01T00:00:01Z repair succeeded; healed" },
                { "at": "2026-01-01T00:00:02Z", "text": "escalated" },
            ],
        });
        let text = slack_text(&body);
        // The header, the event's text, "What happened:" and one line per story entry.
        assert_eq!(text.lines().count(), 5, "{text}");
        assert!(!text.contains('\u{2028}') && !text.contains('\r'), "{text}");
        assert!(text.contains("DiskFull *Tend: healed*"), "{text}");
    }
}
