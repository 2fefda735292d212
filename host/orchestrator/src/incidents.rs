//! Alert intake: Prometheus Alertmanager's webhook (payload version 4) becomes incidents.
//!
//! `POST /api/v1/alerts/alertmanager` (a bearer token with the operator role, which
//! Alertmanager sends through `http_config.authorization`) checks the whole payload, then
//! records every alert in one transaction and answers 200 only after the commit: an answer
//! Alertmanager sees means the alerts are stored, and anything else makes it retry. A
//! malformed payload is a 400 naming the field, and nothing is stored.
//!
//! One incident per alert fingerprint: a repeated notification updates it (last seen, count,
//! labels) and never opens a second; a `resolved` notification resolves it, and the alert
//! firing again later opens it again (a new episode, diagnosed again under its policy). Its target agent
//! comes from a `[[target]]` mapping of the healing policy file, else the alert's `instance`
//! (without the port), `host` or `nodename` label, matched to an enrolled agent's name; an alert that names no enrolled agent is **escalated**, not
//! dropped. Opening, resolving and escalating are audited.

use std::collections::BTreeMap;

use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::api::{ApiError, ApiJson, ApiResult, AppState, ErrorBody};
use crate::audit::{self, Action};
use crate::db::{Db, now_ms, random_id, rfc3339};
use crate::extract::{Caller, Operator, Viewer};
use crate::invocation::FlowError;

/// Largest webhook body: Alertmanager batches a group's alerts into one notification.
pub const MAX_PAYLOAD_BYTES: usize = 4 * 1024 * 1024;
/// Most alerts in one notification.
pub const MAX_ALERTS: usize = 1000;
/// Most labels (and annotations) on one alert.
const MAX_LABELS: usize = 64;
/// Longest label name, label value or annotation (bytes).
const MAX_TEXT: usize = 4096;

/// Alertmanager's webhook payload, version 4
/// (<https://prometheus.io/docs/alerting/latest/configuration/#webhook_config>). Fields it may
/// add later are ignored; the ones Tend uses are checked.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    pub version: String,
    #[serde(default)]
    pub group_key: String,
    #[serde(default)]
    pub truncated_alerts: u64,
    /// `firing` or `resolved` (the group's).
    pub status: String,
    #[serde(default)]
    pub receiver: String,
    #[serde(default)]
    pub group_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub common_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub common_annotations: BTreeMap<String, String>,
    #[serde(default, rename = "externalURL")]
    pub external_url: String,
    pub alerts: Vec<Alert>,
}

/// One alert of a notification.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    /// `firing` or `resolved`.
    pub status: String,
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// RFC 3339.
    pub starts_at: String,
    /// RFC 3339; `0001-01-01T00:00:00Z` while firing.
    #[serde(default)]
    pub ends_at: String,
    #[serde(default, rename = "generatorURL")]
    pub generator_url: String,
    /// Alertmanager's identity of the alert (hex).
    pub fingerprint: String,
}

/// An incident as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Incident {
    pub id: String,
    pub fingerprint: String,
    pub alertname: String,
    /// `open`, `escalated` or `resolved`.
    pub state: String,
    /// The alert's own status in its last notification: `firing` or `resolved`.
    pub alert_status: String,
    /// The agent it is about, when its labels name an enrolled one.
    pub target: Option<String>,
    /// Why it was escalated to a person, if it was.
    pub escalation: Option<String>,
    /// The healing policy that matched it, if any.
    pub policy: Option<String>,
    /// The invocations Tend submitted for it: diagnoses, repairs, verifications.
    pub invocations: Vec<String>,
    /// Where the healing loop is: `none` (no loop), `diagnose`, `diagnosing`, `repair`,
    /// `repairing`, `verifying`, `checking` or `done`.
    pub stage: String,
    /// How the loop ended: `healed`, `resolved` (cleared by itself), `escalated` or `dry_run`.
    pub outcome: Option<String>,
    /// 1, and +1 each time the alert fires again after it resolved.
    pub episode: i64,
    /// Repairs submitted in this episode.
    pub attempts: i64,
    /// The repair being followed (in a dry run, its plan).
    pub repair: Option<String>,
    /// What happened, in order: `{at, step, text, data}`.
    #[schema(value_type = Vec<Object>)]
    pub story: Vec<serde_json::Value>,
    /// The messages sent (or being sent) to people about it; shown for one incident only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<Object>)]
    pub messages: Vec<serde_json::Value>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub starts_at: String,
    pub generator_url: String,
    /// Notifications received for it (Alertmanager repeats and regroups).
    pub notifications: i64,
    pub first_seen_at: String,
    pub last_seen_at: String,
    pub resolved_at: Option<String>,
}

/// What a notification did: each alert's incident, and whether it was new.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Received {
    pub incidents: Vec<Touched>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Touched {
    pub id: String,
    pub fingerprint: String,
    pub state: String,
    /// `opened`, `reopened` (it fired again after it was resolved), `updated`, `resolved` or
    /// `escalated`.
    pub change: String,
}

/// A payload field that is wrong, named as JSON path.
fn invalid(field: String, why: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!(
        "{field}: {why}; nothing was stored (Alertmanager webhook payload, version 4)"
    ))
}

fn parse_time(field: &str, value: &str) -> Result<i64, ApiError> {
    humantime::parse_rfc3339_weak(value)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as i64)
        .ok_or_else(|| {
            invalid(
                field.to_string(),
                format!("{:?} is not an RFC 3339 time", audit::safe_field(value, 40)),
            )
        })
}

fn check_map(field: &str, map: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if map.len() > MAX_LABELS {
        return Err(invalid(
            field.into(),
            format!("more than {MAX_LABELS} entries"),
        ));
    }
    for (k, v) in map {
        if k.contains('\0') || v.contains('\0') {
            return Err(invalid(
                format!("{field}.{}", audit::safe_field(k, 40)),
                "contains a NUL character",
            ));
        }
        if k.is_empty() || k.len() > MAX_TEXT || v.len() > MAX_TEXT {
            return Err(invalid(
                format!("{field}.{}", audit::safe_field(k, 40)),
                format!("names and values are 1-{MAX_TEXT} bytes"),
            ));
        }
    }
    Ok(())
}

/// Every check before anything is stored.
pub fn check(n: &Notification) -> Result<(), ApiError> {
    if n.version != "4" {
        return Err(invalid(
            "version".into(),
            format!(
                "{:?}: only version 4 is understood",
                audit::safe_field(&n.version, 20)
            ),
        ));
    }
    if !["firing", "resolved"].contains(&n.status.as_str()) {
        return Err(invalid("status".into(), "is firing or resolved"));
    }
    if n.alerts.is_empty() || n.alerts.len() > MAX_ALERTS {
        return Err(invalid(
            "alerts".into(),
            format!("1 to {MAX_ALERTS} alerts"),
        ));
    }
    for (i, a) in n.alerts.iter().enumerate() {
        let at = |f: &str| format!("alerts[{i}].{f}");
        if !["firing", "resolved"].contains(&a.status.as_str()) {
            return Err(invalid(at("status"), "is firing or resolved"));
        }
        if a.fingerprint.is_empty()
            || a.fingerprint.len() > 64
            || !a.fingerprint.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(invalid(at("fingerprint"), "is 1-64 hex digits"));
        }
        check_map(&at("labels"), &a.labels)?;
        check_map(&at("annotations"), &a.annotations)?;
        if !a.labels.contains_key("alertname") {
            return Err(invalid(at("labels.alertname"), "is missing"));
        }
        parse_time(&at("startsAt"), &a.starts_at)?;
        if a.generator_url.len() > MAX_TEXT {
            return Err(invalid(
                at("generatorURL"),
                format!("over {MAX_TEXT} bytes"),
            ));
        }
    }
    Ok(())
}

/// The enrolled agent an alert's labels name: the first `[[target]]` mapping of the healing
/// policy file that matches them, else `instance` (without its port), `host` or `nodename`,
/// matched to an agent's name. A mapping that matches but names no enrolled agent is an
/// error (the operator said which agent it is; guessing from other labels would be wrong).
fn target_of(
    labels: &BTreeMap<String, String>,
    agents: &[String],
    mappings: &[crate::healing::Target],
) -> Result<String, String> {
    for (i, m) in mappings.iter().enumerate() {
        if let Some(agent) = m.agent_for(labels) {
            return match agents.iter().find(|a| **a == agent) {
                Some(a) => Ok(a.clone()),
                None => Err(format!(
                    "target mapping {} of the healing policies names agent {:?}, which is not enrolled: a person must look",
                    i + 1,
                    audit::safe_field(&agent, 80)
                )),
            };
        }
    }
    let mut tried = Vec::new();
    for key in ["instance", "host", "nodename"] {
        let Some(value) = labels.get(key) else {
            continue;
        };
        let host = if key == "instance" {
            // `host:port`, `[v6]:port`, or a bare host.
            value
                .rsplit_once(':')
                .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
                .map_or(value.as_str(), |(h, _)| h)
                .trim_start_matches('[')
                .trim_end_matches(']')
        } else {
            value.as_str()
        };
        let host = host.to_ascii_lowercase();
        if let Some(agent) = agents.iter().find(|a| **a == host) {
            return Ok(agent.clone());
        }
        tried.push(format!("{key}={}", audit::safe_field(value, 80)));
    }
    Err(if tried.is_empty() {
        "the alert has no instance, host or nodename label naming an agent".to_string()
    } else {
        format!(
            "no enrolled agent is named by {}: a person must look",
            tried.join(", ")
        )
    })
}

/// Record a checked notification: every alert's incident, in one transaction, with the
/// messages its changes send. An incident that opens under a healing policy of `config` with
/// an agent to act on starts the loop at `diagnose` ([`crate::heal`] takes it from there).
/// Returns what changed.
pub async fn record(
    db: &Db,
    by: &str,
    n: &Notification,
    config: &crate::healing::Config,
) -> Result<Received, FlowError> {
    let agents: Vec<String> = crate::agents::list(db)
        .await?
        .into_iter()
        .map(|a| a.name)
        .collect();
    let now = now_ms();
    let mut tx = db.begin_write().await?;
    let mut touched = Vec::with_capacity(n.alerts.len());
    for a in &n.alerts {
        let fingerprint = a.fingerprint.to_ascii_lowercase();
        let alertname = a.labels.get("alertname").cloned().unwrap_or_default();
        let labels = serde_json::to_string(&a.labels).unwrap_or_default();
        let annotations = serde_json::to_string(&a.annotations).unwrap_or_default();
        let starts = parse_time("startsAt", &a.starts_at).unwrap_or(now);
        let existing = sqlx::query(
            "SELECT id, state, stage, episode, policy, target FROM incidents WHERE fingerprint = $1",
        )
            .bind(&fingerprint)
            .fetch_optional(&mut *tx)
            .await?;
        let resolved = a.status == "resolved";
        // A known alert: updated, or resolved. One that fires again after it was resolved is a
        // new episode: opened again below (and diagnosed again under its policy).
        let mut reopen = None;
        let mut episode = 1;
        if let Some(row) = existing {
            let id: String = row.try_get("id")?;
            let was: String = row.try_get("state")?;
            let stage: String = row.try_get("stage")?;
            episode = row.try_get::<i64, _>("episode")?;
            if resolved || was != "resolved" {
                let state = if resolved { "resolved" } else { was.as_str() };
                sqlx::query(
                    "UPDATE incidents SET alert_status = $1, labels = $2, annotations = $3, notifications = notifications + 1, last_seen_ms = $4, state = $5, resolved_ms = CASE WHEN $6 = 1 AND resolved_ms IS NULL THEN $4 ELSE resolved_ms END WHERE id = $7",
                )
                .bind(&a.status)
                .bind(&labels)
                .bind(&annotations)
                .bind(now)
                .bind(state)
                .bind(i64::from(resolved && was != "resolved"))
                .bind(&id)
                .execute(&mut *tx)
                .await?;
                let change = if resolved && was != "resolved" {
                    audit::append_tx(
                        &mut tx,
                        by,
                        Action::IncidentResolved,
                        &id,
                        serde_json::json!({ "fingerprint": fingerprint, "alertname": alertname }),
                    )
                    .await?;
                    // In the loop, the loop ends it (healed, or cleared by itself) and says so.
                    if matches!(stage.as_str(), "none" | "done") {
                        let policy: Option<String> = row.try_get("policy")?;
                        let target: Option<String> = row.try_get("target")?;
                        crate::notify::queue_tx(
                            &mut tx,
                            config,
                            &crate::notify::Message {
                                incident: id.clone(),
                                policy,
                                event: "resolved".into(),
                                key: "resolved".into(),
                                alertname: alertname.clone(),
                                target,
                                state: "resolved".into(),
                                text: "the alert resolved".into(),
                                labels: a.labels.clone(),
                                story: Vec::new(),
                            },
                            episode,
                        )
                        .await?;
                    }
                    "resolved"
                } else {
                    "updated"
                };
                touched.push(Touched {
                    id,
                    fingerprint,
                    state: state.to_string(),
                    change: change.to_string(),
                });
                continue;
            }
            reopen = Some(id);
            episode += 1;
        }
        let (target, escalation) = match target_of(&a.labels, &agents, &config.targets) {
            Ok(t) => (Some(t), None),
            Err(why) => (None, Some(why)),
        };
        let state = match (resolved, &escalation) {
            (true, _) => "resolved",
            (false, Some(_)) => "escalated",
            (false, None) => "open",
        };
        let policy = crate::healing::matching(&config.policies, &a.labels);
        // The loop runs for an open incident under a policy, with an agent to act on.
        let stage = match (policy, state) {
            (Some(_), "open") => "diagnose",
            _ => "none",
        };
        let outcome = (state == "escalated").then_some("escalated");
        let id = match &reopen {
            Some(id) => {
                sqlx::query(
                    "UPDATE incidents SET state = $1, alert_status = $2, target = $3, escalation = $4, labels = $5, annotations = $6, starts_ms = $7, generator_url = $8, notifications = notifications + 1, last_seen_ms = $9, resolved_ms = NULL, policy = $10, invocations = '[]', stage = $12, outcome = $13, episode = $14, attempts = 0, repair_id = NULL, round = '[]', due_ms = NULL, verify_until_ms = NULL, story = '[]', opened_by = $15, lease_until_ms = NULL WHERE id = $11",
                )
                .bind(state)
                .bind(&a.status)
                .bind(target.as_deref())
                .bind(escalation.as_deref())
                .bind(&labels)
                .bind(&annotations)
                .bind(starts)
                .bind(&a.generator_url)
                .bind(now)
                .bind(policy.map(|p| p.policy.name.clone()))
                .bind(id)
                .bind(stage)
                .bind(outcome)
                .bind(episode)
                .bind(audit::safe_field(by, 200))
                .execute(&mut *tx)
                .await?;
                id.clone()
            }
            None => {
                let id = random_id("inc");
                sqlx::query(
                    "INSERT INTO incidents (id, fingerprint, alertname, state, alert_status, target, escalation, labels, annotations, starts_ms, generator_url, notifications, first_seen_ms, last_seen_ms, resolved_ms, receiver, group_key, policy, stage, outcome, opened_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 1, $12, $12, $13, $14, $15, $16, $17, $18, $19)",
                )
                .bind(&id)
                .bind(&fingerprint)
                .bind(&alertname)
                .bind(state)
                .bind(&a.status)
                .bind(target.as_deref())
                .bind(escalation.as_deref())
                .bind(&labels)
                .bind(&annotations)
                .bind(starts)
                .bind(&a.generator_url)
                .bind(now)
                .bind(resolved.then_some(now))
                .bind(audit::safe_field(&n.receiver, 200))
                .bind(audit::safe_field(&n.group_key, 1000))
                .bind(policy.map(|p| p.policy.name.clone()))
                .bind(stage)
                .bind(outcome)
                .bind(audit::safe_field(by, 200))
                .execute(&mut *tx)
                .await?;
                id
            }
        };
        let (action, change) = if escalation.is_some() && !resolved {
            (Action::IncidentEscalated, "escalated")
        } else {
            (
                Action::IncidentOpen,
                if reopen.is_some() {
                    "reopened"
                } else {
                    "opened"
                },
            )
        };
        audit::append_tx(
            &mut tx,
            by,
            action,
            &id,
            serde_json::json!({
                "fingerprint": fingerprint, "alertname": alertname,
                "status": a.status, "target": target, "why": escalation,
                "policy": policy.map(|p| p.policy.name.clone()),
                "reopened": reopen.is_some(),
            }),
        )
        .await?;
        let text = match (&escalation, policy) {
            (Some(why), _) => why.to_string(),
            (None, Some(p)) => format!(
                "the alert fired; healing policy {} diagnoses it on {}",
                p.policy.name,
                target.as_deref().unwrap_or("?")
            ),
            (None, None) => "the alert fired; no healing policy matches it".to_string(),
        };
        crate::notify::queue_tx(
            &mut tx,
            config,
            &crate::notify::Message {
                incident: id.clone(),
                policy: policy.map(|p| p.policy.name.clone()),
                event: change.to_string(),
                key: if escalation.is_some() {
                    "escalated"
                } else {
                    "opened"
                }
                .into(),
                alertname: alertname.clone(),
                target: target.clone(),
                state: state.to_string(),
                text,
                labels: a.labels.clone(),
                story: Vec::new(),
            },
            episode,
        )
        .await?;
        let state = state.to_string();
        let change = change.to_string();
        touched.push(Touched {
            id,
            fingerprint,
            state,
            change,
        });
    }
    tx.commit().await?;
    Ok(Received { incidents: touched })
}

fn from_row(r: &sqlx::any::AnyRow) -> Result<Incident, FlowError> {
    let map = |col: &str| -> Result<BTreeMap<String, String>, FlowError> {
        let text: String = r.try_get(col)?;
        Ok(serde_json::from_str(&text).unwrap_or_default())
    };
    Ok(Incident {
        id: r.try_get("id")?,
        fingerprint: r.try_get("fingerprint")?,
        alertname: r.try_get("alertname")?,
        state: r.try_get("state")?,
        alert_status: r.try_get("alert_status")?,
        target: r.try_get("target")?,
        escalation: r.try_get("escalation")?,
        policy: r.try_get("policy")?,
        invocations: {
            let text: String = r.try_get("invocations")?;
            serde_json::from_str(&text).unwrap_or_default()
        },
        stage: r.try_get("stage")?,
        outcome: r.try_get("outcome")?,
        episode: r.try_get("episode")?,
        attempts: r.try_get("attempts")?,
        repair: r.try_get("repair_id")?,
        story: {
            let text: String = r.try_get("story")?;
            serde_json::from_str(&text).unwrap_or_default()
        },
        messages: Vec::new(),
        labels: map("labels")?,
        annotations: map("annotations")?,
        starts_at: rfc3339(r.try_get("starts_ms")?),
        generator_url: r.try_get("generator_url")?,
        notifications: r.try_get("notifications")?,
        first_seen_at: rfc3339(r.try_get("first_seen_ms")?),
        last_seen_at: rfc3339(r.try_get("last_seen_ms")?),
        resolved_at: r.try_get::<Option<i64>, _>("resolved_ms")?.map(rfc3339),
    })
}

pub async fn list(db: &Db, limit: i64) -> Result<Vec<Incident>, FlowError> {
    let rows = sqlx::query("SELECT * FROM incidents ORDER BY first_seen_ms DESC LIMIT $1")
        .bind(limit)
        .fetch_all(&db.pool)
        .await?;
    rows.iter().map(from_row).collect()
}

/// The incident an invocation was submitted for (a diagnosis, a repair or its verification),
/// if the healing loop submitted it. `id` must be an invocation id (checked by the caller).
pub async fn of_invocation(db: &Db, id: &str) -> Result<Vec<Incident>, FlowError> {
    // The id is `inv_` and hex digits, so it cannot carry a LIKE wildcard or a quote.
    let rows = sqlx::query(
        "SELECT * FROM incidents WHERE invocations LIKE $1 ORDER BY first_seen_ms DESC LIMIT 10",
    )
    .bind(format!("%\"{id}\"%"))
    .fetch_all(&db.pool)
    .await?;
    rows.iter().map(from_row).collect()
}

pub async fn find(db: &Db, id: &str) -> Result<Incident, FlowError> {
    let row = sqlx::query("SELECT * FROM incidents WHERE id = $1")
        .bind(id)
        .fetch_optional(&db.pool)
        .await?
        .ok_or_else(|| FlowError::NotFound(format!("no incident {}", audit::safe_field(id, 40))))?;
    from_row(&row)
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/alerts/alertmanager",
            post(alertmanager).layer(DefaultBodyLimit::max(MAX_PAYLOAD_BYTES)),
        )
        .route("/api/v1/incidents", get(list_incidents))
        .route("/api/v1/incidents/{id}", get(show_incident))
        .route(
            "/api/v1/healing/policies",
            get(show_policies).put(set_policies),
        )
}

/// Alertmanager's webhook: every alert of the notification is recorded as (or updates) an
/// incident before the answer; a malformed payload is a 400 naming the field.
#[utoipa::path(post, path = "/api/v1/alerts/alertmanager", tag = "incidents", security(("bearer" = [])), request_body = Notification,
    responses((status = 200, body = Received), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 500, body = ErrorBody)))]
pub async fn alertmanager(
    State(state): State<AppState>,
    Caller(who, ..): Caller<Operator>,
    ApiJson(n): ApiJson<Notification>,
) -> ApiResult<Json<Received>> {
    check(&n)?;
    let config = state.settings.healing.current();
    let received = record(&state.db, &who.name, &n, &config).await?;
    // Stored: the healing loop takes it from here, on its own task, so Alertmanager's answer
    // does not wait for it (and an orchestrator that stops picks it up again at start).
    state.heal_wake.notify_one();
    Ok(Json(received))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct IncidentQuery {
    /// Only the incident this invocation was submitted for (what an approver reads beside a
    /// repair: the alert and its diagnosis)
    invocation: Option<String>,
    /// At most this many, newest first (1-500, default 500)
    limit: Option<i64>,
}

/// Incidents, newest first (at most 500).
#[utoipa::path(get, path = "/api/v1/incidents", tag = "incidents", security(("bearer" = [])), params(IncidentQuery),
    responses((status = 200, body = [Incident]), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn list_incidents(
    State(state): State<AppState>,
    _: Caller<Viewer>,
    Query(q): Query<IncidentQuery>,
) -> ApiResult<Json<Vec<Incident>>> {
    let limit = q.limit.unwrap_or(500);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit: {limit} is not 1-500"
        )));
    }
    if let Some(id) = &q.invocation {
        if !tend_protocol::is_invocation_id(id) {
            return Err(ApiError::bad_request(format!(
                "invocation: {:?} is not an invocation id (inv_ and 16 hex digits)",
                audit::safe_field(id, 40)
            )));
        }
        return Ok(Json(of_invocation(&state.db, id).await?));
    }
    Ok(Json(list(&state.db, limit).await?))
}

#[utoipa::path(get, path = "/api/v1/incidents/{id}", tag = "incidents", security(("bearer" = [])), params(("id" = String, Path)),
    responses((status = 200, body = Incident), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn show_incident(
    State(state): State<AppState>,
    _: Caller<Viewer>,
    Path(id): Path<String>,
) -> ApiResult<Json<Incident>> {
    let mut incident = find(&state.db, &id).await?;
    incident.messages = crate::notify::of_incident(&state, &incident.id).await?;
    Ok(Json(incident))
}

/// The healing policies in force: their version and text (channel URLs included: admin only).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Policies {
    pub version: i64,
    /// The policy file (TOML).
    pub text: String,
    /// The policies' names, in matching order.
    #[serde(default)]
    pub policies: Vec<String>,
}

fn policies_view(state: &AppState) -> Policies {
    let config = state.settings.healing.current();
    Policies {
        version: state.settings.healing.version(),
        text: config.text.clone(),
        policies: config
            .policies
            .iter()
            .map(|p| p.policy.name.clone())
            .collect(),
    }
}

/// The healing policies in force. Admin: the text holds the channels' webhook URLs.
#[utoipa::path(get, path = "/api/v1/healing/policies", tag = "incidents", security(("bearer" = [])),
    responses((status = 200, body = Policies), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn show_policies(
    State(state): State<AppState>,
    _: Caller<crate::extract::Admin>,
) -> ApiResult<Json<Policies>> {
    crate::healing::refresh(&state.db, &state.settings.healing).await?;
    Ok(Json(policies_view(&state)))
}

/// A new policy file to put in force.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPolicies {
    /// The whole policy file (TOML), as `--healing-policies` reads it.
    pub text: String,
    /// The version this replaces (from GET): a change made meanwhile is a conflict.
    pub replaces: i64,
}

/// Largest policy file (bytes).
const MAX_POLICY_TEXT: usize = 256 * 1024;

/// Put new healing policies in force on every replica (admin). A file that does not parse is
/// a 400 naming the line or key, and changes nothing.
#[utoipa::path(put, path = "/api/v1/healing/policies", tag = "incidents", security(("bearer" = [])), request_body = NewPolicies,
    responses((status = 200, body = Policies), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn set_policies(
    State(state): State<AppState>,
    Caller(who, ..): Caller<crate::extract::Admin>,
    ApiJson(new): ApiJson<NewPolicies>,
) -> ApiResult<Json<Policies>> {
    if new.text.len() > MAX_POLICY_TEXT {
        return Err(ApiError::bad_request(format!(
            "`text` is {} bytes; at most {MAX_POLICY_TEXT} are accepted; nothing was changed",
            new.text.len()
        )));
    }
    let config = crate::healing::parse(&new.text, "text")
        .map_err(|e| ApiError::bad_request(format!("{e}; nothing was changed")))?;
    crate::healing::refresh(&state.db, &state.settings.healing).await?;
    let current = state.settings.healing.version();
    if new.replaces != current {
        return Err(FlowError::Conflict(format!(
            "`replaces` is {} but version {current} is in force: read them again and retry",
            new.replaces
        ))
        .into());
    }
    crate::healing::store(&state.db, current + 1, &new.text, "api", &who.name).await?;
    state.settings.healing.replace(current + 1, config);
    Ok(Json(policies_view(&state)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alert_names_its_agent_by_instance_host_or_nodename() {
        let agents = vec!["web-1".to_string(), "db-1".to_string()];
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            target_of(&labels(&[("instance", "web-1:9100")]), &agents, &[]),
            Ok("web-1".to_string())
        );
        assert_eq!(
            target_of(
                &labels(&[("instance", "10.0.0.9:9100"), ("host", "DB-1")]),
                &agents,
                &[]
            ),
            Ok("db-1".to_string())
        );
        let why = target_of(&labels(&[("instance", "cache-9:9100")]), &agents, &[])
            .expect_err("no such agent");
        assert!(why.contains("instance=cache-9:9100"), "{why}");
        assert!(target_of(&labels(&[("job", "x")]), &agents, &[]).is_err());
    }

    #[test]
    fn a_target_mapping_names_the_agent_before_the_labels_do() {
        let config = crate::healing::parse(
            r#"
[[target]]
match = { job = "postgres", cluster = "main" }
agent = "db-1"

[[target]]
match = { job = "~blackbox|probe" }
agent = "{{labels.probe_from}}"
"#,
            "healing.toml",
        )
        .expect("parses");
        let agents = vec!["web-1".to_string(), "db-1".to_string()];
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        // The mapping wins over an instance that names another agent.
        assert_eq!(
            target_of(
                &labels(&[
                    ("job", "postgres"),
                    ("cluster", "main"),
                    ("instance", "web-1:9187")
                ]),
                &agents,
                &config.targets
            ),
            Ok("db-1".to_string())
        );
        assert_eq!(
            target_of(
                &labels(&[("job", "probe"), ("probe_from", "Web-1")]),
                &agents,
                &config.targets
            ),
            Ok("web-1".to_string())
        );
        // A mapping that names no enrolled agent escalates; it never falls back to a guess.
        let why = target_of(
            &labels(&[
                ("job", "blackbox"),
                ("probe_from", "cache-9"),
                ("instance", "web-1"),
            ]),
            &agents,
            &config.targets,
        )
        .expect_err("not enrolled");
        assert!(
            why.contains("target mapping 2") && why.contains("cache-9"),
            "{why}"
        );
        // No mapping matches: the labels decide, as before.
        assert_eq!(
            target_of(
                &labels(&[("job", "node"), ("instance", "web-1:9100")]),
                &agents,
                &config.targets
            ),
            Ok("web-1".to_string())
        );
    }
}
