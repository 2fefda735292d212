//! The healing loop: takes an open incident with a healing policy and a target agent, and
//! moves it on one stage at a time until it is healed or handed to a person.
//!
//! ```text
//! diagnose ─▶ diagnosing ─▶ repair ─▶ repairing ─▶ verifying ─┬▶ done: healed
//!    ▲                        │  (plan, decision,    │        └▶ checking (rerun)
//!    └──── retry (max_retries) ◀───── failed ◀───────┘
//! any stage ─▶ done: escalated (with the whole story) | resolved (cleared by itself)
//! ```
//!
//! Every submission goes through the one submit flow ([`crate::flow::submit_under`]) and is
//! decided like any other: a policy never raises what a skill may do, and only an L1 repair
//! under `auto_heal` — on an agent whose own ceiling lists the skill under `auto_heal` — runs
//! without a person. The state lives in the incident's row (`stage`, `round`, `repair_id`,
//! `due_ms`, `story`), so an orchestrator that restarts picks up where it was; one replica at a
//! time moves an incident (a lease on the row). Each step is audited (`incident.step`) and
//! queues the notifications of its change in the same transaction.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::Row;
use tokio::sync::watch;

use crate::api::AppState;
use crate::audit::{self, Action};
use crate::auth::Actor;
use crate::db::{now_ms, rfc3339};
use crate::healing::{Compiled, Config, Facts, Verify};
use crate::invocation::{self, FlowError, Invocation, State};

/// How long a replica holds an incident while it moves it on.
const LEASE_MS: i64 = 30_000;
/// How often a waiting blast-radius slot is looked at again.
const SLOT_RECHECK_MS: i64 = 2_000;
/// How often Alertmanager is asked whether a silenced alert still fires.
const ALERT_POLL_MS: i64 = 1_000;
/// Most story entries kept per incident episode.
const MAX_STORY: usize = 200;
/// Longest story text (characters), and the most JSON kept as one entry's data (bytes): a skill's output
/// can be megabytes; the story keeps a pointer to its invocation instead.
const MAX_STORY_TEXT: usize = 2048;
const MAX_STORY_DATA: usize = 16 * 1024;

/// `data` as a story entry keeps it: whole when small, else what it was about and its size.
fn clip(data: Value) -> Value {
    let size = data.to_string().len();
    if size <= MAX_STORY_DATA {
        return data;
    }
    json!({
        "clipped": true,
        "bytes": size,
        "invocation": data.get("invocation").cloned().unwrap_or(Value::Null),
        "see": "the invocation's result holds all of it",
    })
}

/// Where an incident is in the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// No loop: no policy matched, or no agent to act on.
    None,
    /// Its diagnose skills are to be submitted.
    Diagnose,
    /// Waiting for the diagnose skills (`round`).
    Diagnosing,
    /// The analysis picks the repair; the limits are checked; the repair is submitted.
    Repair,
    /// Waiting for the repair (`repair_id`): its plan, its approval, its run.
    Repairing,
    /// Waiting for proof: the alert's resolved notification, or the time to re-run.
    Verifying,
    /// The diagnose skills again (`round`), to prove the repair.
    Checking,
    /// Finished; `outcome` says how.
    Done,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::None => "none",
            Stage::Diagnose => "diagnose",
            Stage::Diagnosing => "diagnosing",
            Stage::Repair => "repair",
            Stage::Repairing => "repairing",
            Stage::Verifying => "verifying",
            Stage::Checking => "checking",
            Stage::Done => "done",
        }
    }

    pub fn parse(s: &str) -> Stage {
        [
            Stage::Diagnose,
            Stage::Diagnosing,
            Stage::Repair,
            Stage::Repairing,
            Stage::Verifying,
            Stage::Checking,
            Stage::Done,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
        .unwrap_or(Stage::None)
    }
}

/// An incident as the loop sees it (its row), changed in memory and saved whole.
#[derive(Debug, Clone)]
struct Case {
    id: String,
    fingerprint: String,
    alertname: String,
    state: String,
    stage: Stage,
    outcome: Option<String>,
    escalation: Option<String>,
    target: String,
    policy: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    episode: i64,
    attempts: i64,
    repair_id: Option<String>,
    round: Vec<String>,
    due_ms: Option<i64>,
    verify_until_ms: Option<i64>,
    story: Vec<Value>,
    opened_by: String,
    silence_id: Option<String>,
    invocations: Vec<String>,
    /// What this step did, for the audit trail and the notifications.
    events: Vec<Event>,
}

/// A change people hear about (one message per incident, episode and event).
#[derive(Debug, Clone)]
pub struct Event {
    /// `approval_needed`, `repairing`, `healed`, `resolved`, `escalated`, `dry_run`, ...
    pub name: String,
    /// Unique within the episode (a retry's repair is a new event).
    pub key: String,
    pub text: String,
}

impl Case {
    fn note(&mut self, step: &str, text: impl Into<String>, data: Value) {
        let text = text.into();
        tracing::info!(incident = %self.id, step, "{text}");
        if self.story.len() < MAX_STORY {
            self.story.push(json!({
                "at": rfc3339(now_ms()), "step": step,
                "text": text.chars().take(MAX_STORY_TEXT).collect::<String>(), "data": clip(data),
            }));
        }
    }

    fn event(&mut self, name: &str, key: impl Into<String>, text: impl Into<String>) {
        self.events.push(Event {
            name: name.into(),
            key: key.into(),
            text: text.into(),
        });
    }

    fn actor(&self) -> Actor {
        Actor {
            name: if self.opened_by.is_empty() {
                "alertmanager".into()
            } else {
                self.opened_by.clone()
            },
            role: tend_policy::Role::Operator,
        }
    }

    fn facts<'a>(&'a self, diagnosis: &'a BTreeMap<String, Value>) -> Facts<'a> {
        Facts {
            labels: &self.labels,
            annotations: &self.annotations,
            diagnosis,
        }
    }

    /// The reason recorded with what the loop submits (one line, bounded).
    fn reason(&self, what: &str) -> String {
        format!(
            "incident {} ({} on {}), healing policy {}: {what}",
            self.id,
            audit::safe_field(&self.alertname, 80),
            self.target,
            self.policy
        )
    }

    /// Hand it to a person with why, ending the loop.
    fn escalate(&mut self, why: impl Into<String>) {
        let why = why.into();
        self.note("escalated", why.clone(), Value::Null);
        self.state = "escalated".into();
        self.stage = Stage::Done;
        self.outcome = Some("escalated".into());
        self.escalation = Some(why.clone());
        self.due_ms = None;
        self.event("escalated", "escalated", why);
    }

    /// A repair that did not work: try again from the diagnosis while retries are left.
    fn retry_or_escalate(&mut self, policy: &Compiled, why: String) {
        let retries = i64::from(policy.policy.max_retries);
        if self.attempts <= retries {
            self.note(
                "retry",
                format!("{why}; trying again (retry {} of {retries})", self.attempts),
                Value::Null,
            );
            self.stage = Stage::Diagnose;
            self.repair_id = None;
            self.due_ms = None;
        } else {
            self.escalate(format!(
                "{why}; {} repair attempt(s) made, no retries left (max_retries = {retries}): a person must look",
                self.attempts
            ));
        }
    }
}

/// Run the loop until `stop`: look at incidents that can move every 100 ms, or at once when
/// woken (an alert arrived). Notifications are sent by a task of their own
/// ([`crate::notify::run`]), so a slow receiver never holds the loop up.
pub async fn run(state: AppState, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = state.heal_wake.notified() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if let Err(e) = pass(&state).await {
            tracing::warn!(error = %e, "the healing loop could not look at incidents");
        }
    }
}

/// One look at every incident that can move now.
pub async fn pass(state: &AppState) -> Result<(), FlowError> {
    crate::healing::refresh(&state.db, &state.settings.healing).await?;
    let now = now_ms();
    let rows = sqlx::query(
        "SELECT id FROM incidents WHERE stage <> 'none' AND stage <> 'done' AND (due_ms IS NULL OR due_ms <= $1 OR state = 'resolved') AND (lease_until_ms IS NULL OR lease_until_ms < $1) ORDER BY last_seen_ms LIMIT 100",
    )
    .bind(now)
    .fetch_all(&state.db.pool)
    .await?;
    let config = state.settings.healing.current();
    for row in rows {
        let id: String = row.try_get("id")?;
        let lease = now_ms() + LEASE_MS;
        let claimed = sqlx::query(
            "UPDATE incidents SET lease_until_ms = $1 WHERE id = $2 AND (lease_until_ms IS NULL OR lease_until_ms < $3)",
        )
        .bind(lease)
        .bind(&id)
        .bind(now_ms())
        .execute(&state.db.pool)
        .await?
        .rows_affected();
        if claimed != 1 {
            continue;
        }
        let outcome = step(state, &config, &id, lease).await;
        if let Err(e) = outcome {
            tracing::warn!(incident = %id, error = %e, "moving an incident on failed; it is looked at again");
            let _ = sqlx::query(
                "UPDATE incidents SET lease_until_ms = NULL WHERE id = $1 AND lease_until_ms = $2",
            )
            .bind(&id)
            .bind(lease)
            .execute(&state.db.pool)
            .await;
        }
    }
    Ok(())
}

async fn load(state: &AppState, id: &str) -> Result<Case, FlowError> {
    let r = sqlx::query("SELECT * FROM incidents WHERE id = $1")
        .bind(id)
        .fetch_one(&state.db.pool)
        .await?;
    let json_of = |col: &str| -> Result<Value, FlowError> {
        let text: String = r.try_get(col)?;
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    };
    Ok(Case {
        id: r.try_get("id")?,
        fingerprint: r.try_get("fingerprint")?,
        alertname: r.try_get("alertname")?,
        state: r.try_get("state")?,
        stage: Stage::parse(&r.try_get::<String, _>("stage")?),
        outcome: r.try_get("outcome")?,
        escalation: r.try_get("escalation")?,
        target: r
            .try_get::<Option<String>, _>("target")?
            .unwrap_or_default(),
        policy: r
            .try_get::<Option<String>, _>("policy")?
            .unwrap_or_default(),
        labels: serde_json::from_value(json_of("labels")?).unwrap_or_default(),
        annotations: serde_json::from_value(json_of("annotations")?).unwrap_or_default(),
        episode: r.try_get("episode")?,
        attempts: r.try_get("attempts")?,
        repair_id: r.try_get("repair_id")?,
        round: serde_json::from_value(json_of("round")?).unwrap_or_default(),
        due_ms: r.try_get("due_ms")?,
        verify_until_ms: r.try_get("verify_until_ms")?,
        story: serde_json::from_value(json_of("story")?).unwrap_or_default(),
        opened_by: r.try_get("opened_by")?,
        silence_id: r.try_get("silence_id")?,
        invocations: serde_json::from_value(json_of("invocations")?).unwrap_or_default(),
        events: Vec::new(),
    })
}

/// Write the case back (releasing the lease), its audit event and its notifications, in one
/// transaction. Nothing is written when the lease was lost meanwhile.
async fn save(
    state: &AppState,
    config: &Config,
    before: Stage,
    c: &Case,
    lease: i64,
) -> Result<(), FlowError> {
    let mut tx = state.db.begin_write().await?;
    let saved = sqlx::query(
        "UPDATE incidents SET state = $1, stage = $2, outcome = $3, escalation = $4, attempts = $5, repair_id = $6, round = $7, due_ms = $8, story = $9, silence_id = $10, invocations = $11, lease_until_ms = NULL, resolved_ms = CASE WHEN $1 = 'resolved' AND resolved_ms IS NULL THEN $12 ELSE resolved_ms END, verify_until_ms = $15 WHERE id = $13 AND lease_until_ms = $14",
    )
    .bind(&c.state)
    .bind(c.stage.as_str())
    .bind(c.outcome.as_deref())
    .bind(c.escalation.as_deref())
    .bind(c.attempts)
    .bind(c.repair_id.as_deref())
    .bind(serde_json::to_string(&c.round).unwrap_or_default())
    .bind(c.due_ms)
    .bind(serde_json::to_string(&c.story).unwrap_or_default())
    .bind(c.silence_id.as_deref())
    .bind(serde_json::to_string(&c.invocations).unwrap_or_default())
    .bind(now_ms())
    .bind(&c.id)
    .bind(lease)
    .bind(c.verify_until_ms)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if saved != 1 {
        tx.rollback().await?;
        return Err(FlowError::Conflict(format!(
            "incident {} was taken over by another replica",
            c.id
        )));
    }
    if before != c.stage || !c.events.is_empty() {
        let action = match c.outcome.as_deref() {
            Some("escalated") if c.stage == Stage::Done => Action::IncidentEscalated,
            Some("healed") if c.stage == Stage::Done => Action::IncidentHealed,
            _ => Action::IncidentStep,
        };
        audit::append_tx(
            &mut tx,
            "tend-healing",
            action,
            &c.id,
            json!({
                "from": before.as_str(), "stage": c.stage.as_str(), "outcome": c.outcome,
                "policy": c.policy, "target": c.target, "attempts": c.attempts,
                "repair": c.repair_id, "why": c.escalation.as_ref().filter(|_| c.stage == Stage::Done),
                "events": c.events.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
            }),
        )
        .await?;
    }
    for e in &c.events {
        crate::notify::queue_tx(&mut tx, config, &incident_message(c, e), c.episode).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// What a notification about `c` says: the event, and the incident's whole story.
fn incident_message(c: &Case, e: &Event) -> crate::notify::Message {
    crate::notify::Message {
        incident: c.id.clone(),
        policy: Some(c.policy.clone()).filter(|p| !p.is_empty()),
        event: e.name.clone(),
        key: e.key.clone(),
        alertname: c.alertname.clone(),
        target: Some(c.target.clone()).filter(|t| !t.is_empty()),
        state: c.state.clone(),
        text: e.text.clone(),
        labels: c.labels.clone(),
        story: c.story.clone(),
    }
}

/// Move one claimed incident on as far as it can go now.
async fn step(state: &AppState, config: &Config, id: &str, lease: i64) -> Result<(), FlowError> {
    let mut c = load(state, id).await?;
    let before = c.stage;
    let Some(policy) = config.policy(&c.policy).cloned() else {
        c.escalate(format!(
            "its healing policy {} is no longer in force: a person must look",
            c.policy
        ));
        return save(state, config, before, &c, lease).await;
    };
    // A few stages in one go when nothing has to be waited for (e.g. no diagnose skills).
    for _ in 0..4 {
        let was = c.stage;
        if c.stage == Stage::Done {
            break;
        }
        if c.state == "resolved" {
            on_resolved(state, &mut c).await?;
        } else {
            match c.stage {
                Stage::Diagnose => diagnose(state, &policy, &mut c).await,
                Stage::Diagnosing => diagnosing(state, &mut c).await?,
                Stage::Repair => repair(state, config, &policy, &mut c).await?,
                Stage::Repairing => repairing(state, config, &policy, &mut c).await?,
                Stage::Verifying => verifying(state, config, &policy, &mut c).await,
                Stage::Checking => checking(state, &policy, &mut c).await?,
                Stage::None | Stage::Done => {}
            }
        }
        if c.stage == was || c.due_ms.is_some_and(|d| d > now_ms()) {
            break;
        }
    }
    if c.stage == Stage::Done && c.silence_id.is_some() {
        crate::notify::expire_silence(config, &mut c.silence_id).await;
    }
    save(state, config, before, &c, lease).await
}

/// The alert resolved: the loop ends — healed when a repair ran and this is its proof.
async fn on_resolved(state: &AppState, c: &mut Case) -> Result<(), FlowError> {
    let repair = match &c.repair_id {
        Some(id) => Some(invocation::get(&state.db, id).await?),
        None => None,
    };
    let repaired = repair
        .as_ref()
        .is_some_and(|r| r.state == State::Succeeded && r.export == "run");
    if let Some(r) = &repair
        && c.stage == Stage::Repairing
        && !r.state.is_final()
    {
        if matches!(
            r.state,
            State::Planning | State::PendingApproval | State::Queued
        ) {
            // Nothing to repair any more: whoever was asked to approve it need not.
            let tend = Actor {
                name: "tend-healing".into(),
                role: tend_policy::Role::Admin,
            };
            if invocation::cancel(&state.db, &r.id, &tend).await.is_ok() {
                c.note(
                    "cancelled",
                    format!("the alert resolved before repair {} ran: cancelled", r.id),
                    Value::Null,
                );
            }
        } else {
            // Running: its end is waited for, so the story says what it did.
            return Ok(());
        }
    }
    // The repair's result may be recorded after the alert resolved, before the loop saw it.
    if c.stage == Stage::Repairing
        && repaired
        && let Some(r) = &repair
    {
        note_repaired(c, r);
    }
    if matches!(
        c.stage,
        Stage::Repairing | Stage::Verifying | Stage::Checking
    ) && repaired
    {
        c.note(
            "healed",
            "verified: the alert resolved after the repair",
            Value::Null,
        );
        c.outcome = Some("healed".into());
        c.event(
            "healed",
            "healed",
            format!(
                "healed: the alert resolved after {} ran",
                repair.as_ref().map_or("the repair", |r| r.skill.as_str())
            ),
        );
    } else {
        c.note("resolved", "the alert resolved", Value::Null);
        c.outcome = Some("resolved".into());
        c.event(
            "resolved",
            "resolved",
            "the alert resolved without a repair by Tend",
        );
    }
    c.stage = Stage::Done;
    c.due_ms = None;
    Ok(())
}

/// Submit the policy's diagnose skills on the incident's agent.
async fn diagnose(state: &AppState, policy: &Compiled, c: &mut Case) {
    let none = BTreeMap::new();
    let mut ids = Vec::new();
    let mut failed = Vec::new();
    for call in &policy.policy.diagnose {
        let submission = crate::flow::Submission {
            skill: call.skill.clone(),
            version: call.version.clone(),
            target: Some(format!("agent:{}", c.target)),
            input: crate::healing::fill(&call.input, &c.facts(&none)),
            reason: c.reason(&format!("diagnose with {}", call.skill)),
            narrowing: Default::default(),
        };
        let healing = crate::flow::Healing {
            policy: c.policy.clone(),
            auto_heal: false,
            dry_run: false,
        };
        match crate::flow::submit_under(
            state,
            crate::flow::Trigger::Webhook,
            &c.actor(),
            submission,
            Some(&healing),
        )
        .await
        {
            Ok(inv) => ids.push(inv.id),
            Err(e) => failed.push(format!("diagnose {} was not submitted: {e}", call.skill)),
        }
    }
    c.invocations.extend(ids.iter().cloned());
    if !failed.is_empty() {
        c.escalate(failed.join("; "));
        return;
    }
    if ids.is_empty() {
        c.note(
            "diagnosed",
            "the policy runs no diagnose skill",
            Value::Null,
        );
        c.stage = Stage::Repair;
        return;
    }
    c.note(
        "diagnosing",
        format!(
            "diagnosing with {}",
            policy
                .policy
                .diagnose
                .iter()
                .map(|d| d.skill.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        json!({ "invocations": ids }),
    );
    c.round = ids;
    c.stage = Stage::Diagnosing;
}

/// The outputs of a round of diagnose skills, once every one has ended: by skill name, and
/// why any did not succeed. `None` while one is still running (or waiting for approval).
async fn round_results(
    state: &AppState,
    round: &[String],
) -> Result<Option<(BTreeMap<String, Value>, Vec<String>, Vec<Value>)>, FlowError> {
    let mut outputs = BTreeMap::new();
    let mut failures = Vec::new();
    let mut summary = Vec::new();
    for id in round {
        let inv = invocation::get(&state.db, id).await?;
        if !inv.state.is_final() {
            return Ok(None);
        }
        let output = inv
            .result
            .as_ref()
            .and_then(|r| r.get("output"))
            .cloned()
            .unwrap_or(Value::Null);
        let status = output.get("status").and_then(Value::as_str).unwrap_or("");
        summary.push(json!({
            "invocation": inv.id, "skill": inv.skill, "state": inv.state.as_str(),
            "status": status,
        }));
        if inv.state != State::Succeeded {
            failures.push(format!(
                "{} ({}) {}: {}",
                inv.skill,
                inv.id,
                inv.state.as_str(),
                why_not(&inv)
            ));
        }
        outputs.insert(inv.skill.clone(), output);
    }
    Ok(Some((outputs, failures, summary)))
}

/// Why an invocation did not succeed, in one line.
fn why_not(inv: &Invocation) -> String {
    let from_result = inv.result.as_ref().and_then(|r| {
        r.get("error")
            .and_then(|e| {
                e.get("message")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .or_else(|| e.as_str().map(str::to_string))
            })
            .or_else(|| {
                r.get("outcome")
                    .and_then(Value::as_str)
                    .map(|o| format!("outcome {o}"))
            })
    });
    let text = from_result
        .or_else(|| inv.comment.clone().map(|c| format!("comment: {c}")))
        .unwrap_or_else(|| inv.state.as_str().to_string());
    audit::safe_field(&text, 300)
}

/// The diagnose round ended: keep what it found, then on to the repair.
async fn diagnosing(state: &AppState, c: &mut Case) -> Result<(), FlowError> {
    let Some((_, failures, summary)) = round_results(state, &c.round).await? else {
        return Ok(());
    };
    if !failures.is_empty() {
        c.escalate(format!(
            "the diagnosis did not complete: {}",
            failures.join("; ")
        ));
        return Ok(());
    }
    c.note(
        "diagnosed",
        format!("diagnosis: {}", statuses(&summary)),
        json!({ "results": summary }),
    );
    c.stage = Stage::Repair;
    Ok(())
}

fn statuses(summary: &[Value]) -> String {
    summary
        .iter()
        .map(|s| {
            let status = s["status"].as_str().filter(|x| !x.is_empty());
            format!(
                "{} {}",
                s["skill"].as_str().unwrap_or("?"),
                status.unwrap_or("ran")
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The reason a repair with `skill` is submitted with: it names the incident, its episode and
/// the attempt, so a repair submitted before a lost step is found again.
fn repair_reason(c: &Case, policy: &Compiled, skill: &str) -> String {
    c.reason(&format!(
        "{} (episode {}, attempt {})",
        if policy.policy.dry_run {
            format!("dry run of {skill} (plan only)")
        } else {
            format!("repair with {skill}")
        },
        c.episode,
        c.attempts + 1
    ))
}

/// Analyse, check the cooldown, the circuit breaker and the blast radius, then submit the
/// repair the analysis chose ([`crate::analysis`]; its plan first) under the policy.
async fn repair(
    state: &AppState,
    config: &Config,
    policy: &Compiled,
    c: &mut Case,
) -> Result<(), FlowError> {
    // This attempt's repair may have been submitted already by a step whose save was lost (a
    // crash, a lease that ran out): it is followed, never submitted a second time. It is any
    // of the policy's repairs (an analyst may have chosen one of `repairs`).
    let mut skills: Vec<&str> = Vec::new();
    for call in policy.policy.repair.iter().chain(&policy.policy.repairs) {
        if !skills.contains(&call.skill.as_str()) {
            skills.push(&call.skill);
        }
    }
    let mut before = None;
    for skill in skills {
        if let Some(inv) =
            submitted_before(state, &c.policy, &repair_reason(c, policy, skill)).await?
        {
            before = Some(inv);
            break;
        }
    }
    if let Some(inv) = before {
        c.attempts += 1;
        if !c.invocations.contains(&inv.id) {
            c.invocations.push(inv.id.clone());
        }
        c.note(
            "repair",
            format!(
                "repair {} ({}) was submitted before the orchestrator stopped: followed, not submitted again",
                inv.skill, inv.id
            ),
            json!({ "invocation": inv.id }),
        );
        // The lost step may have stopped before it counted the repair: count it now, or the
        // cooldown and circuit breaker would not see a repair that ran.
        if !policy.policy.dry_run {
            record_repair(state, c, &inv.id).await?;
        }
        c.repair_id = Some(inv.id);
        c.stage = Stage::Repairing;
        c.due_ms = None;
        return Ok(());
    }
    let diagnosis = match round_results(state, &c.round).await? {
        Some((outputs, _, _)) => outputs,
        None => BTreeMap::new(),
    };
    if let Err(why) = crate::analysis::needs_repair(policy, &diagnosis) {
        c.escalate(why);
        return Ok(());
    }
    if let Some(why) = limits(state, policy, c).await? {
        match why {
            Limit::Wait(text) => {
                if c.story.last().and_then(|s| s["step"].as_str()) != Some("waiting") {
                    c.note("waiting", text, Value::Null);
                }
                c.due_ms = Some(now_ms() + SLOT_RECHECK_MS);
            }
            Limit::Stop(text) => c.escalate(text),
        }
        return Ok(());
    }
    c.due_ms = None;
    // The limits hold whatever is chosen, so the analyst is asked only once they allow a repair
    // (a repair waiting for a blast-radius slot does not ask again every few seconds).
    let facts = c.facts(&diagnosis);
    let candidates = crate::analysis::candidates(policy, &facts);
    let decision = crate::analysis::decide(
        config.llm.as_ref(),
        policy,
        &c.alertname,
        &facts,
        &candidates,
    )
    .await;
    if let Some(text) = &decision.story {
        let chosen = match &decision.choice {
            crate::analysis::Choice::Repair(call) => json!(call.number),
            crate::analysis::Choice::Escalate(_) => json!("escalate"),
        };
        c.note(
            "analysis",
            text.clone(),
            json!({
                "analyst": decision.analyst.name(),
                "model": config.llm.as_ref().map(|l| audit::safe_field(&l.model, 80)),
                "choice": chosen,
                "reason": decision.reason,
                "candidates": candidates.iter().map(|k| json!({ "number": k.number, "skill": k.skill })).collect::<Vec<_>>(),
            }),
        );
    }
    let call = match decision.choice {
        crate::analysis::Choice::Repair(call) => call,
        crate::analysis::Choice::Escalate(why) => {
            c.escalate(why);
            return Ok(());
        }
    };
    let reason = repair_reason(c, policy, &call.skill);
    let analyst = decision.analyst.name();
    let agent_allows = agent_allows_auto_heal(state, &c.target, &call.skill).await?;
    let auto_heal = policy.policy.auto_heal && agent_allows;
    if policy.policy.auto_heal && !agent_allows && !policy.policy.dry_run {
        c.note(
            "decision",
            format!(
                "policy {} has auto_heal, but agent {} does not list {} under auto_heal in its ceiling, so a person must approve",
                policy.policy.name, c.target, call.skill
            ),
            Value::Null,
        );
    }
    let input = call.input.clone();
    let submission = crate::flow::Submission {
        skill: call.skill.clone(),
        version: call.version.clone(),
        target: Some(format!("agent:{}", c.target)),
        input: input.clone(),
        reason,
        narrowing: Default::default(),
    };
    let healing = crate::flow::Healing {
        policy: c.policy.clone(),
        auto_heal,
        dry_run: policy.policy.dry_run,
    };
    let submitted = crate::flow::submit_under(
        state,
        crate::flow::Trigger::Webhook,
        &c.actor(),
        submission,
        Some(&healing),
    )
    .await;
    let inv = match submitted {
        Ok(inv) => inv,
        Err(e) => {
            c.escalate(format!("the repair {} was not submitted: {e}", call.skill));
            return Ok(());
        }
    };
    c.attempts += 1;
    c.invocations.push(inv.id.clone());
    c.repair_id = Some(inv.id.clone());
    c.stage = Stage::Repairing;
    if !policy.policy.dry_run {
        record_repair(state, c, &inv.id).await?;
    }
    let decision = if inv.approvals_required == 0 {
        "runs without a person".to_string()
    } else {
        format!("needs {} approval(s)", inv.approvals_required)
    };
    c.note(
        "repair",
        format!(
            "{} {} (L{}, attempt {}): {decision} — {}",
            if policy.policy.dry_run {
                "dry run: plan of"
            } else {
                "repair"
            },
            inv.skill,
            inv.level,
            c.attempts,
            inv.reasons.join("; ")
        ),
        json!({ "invocation": inv.id, "input": input, "level": inv.level, "analyst": analyst }),
    );
    if !policy.policy.dry_run {
        let text = format!("repairing with {} ({decision})", inv.skill);
        c.event("repairing", format!("repairing:{}", c.attempts), text);
    }
    Ok(())
}

/// Count a submitted repair for the cooldown and the circuit breaker (once per invocation).
async fn record_repair(state: &AppState, c: &Case, invocation: &str) -> Result<(), FlowError> {
    sqlx::query(
        "INSERT INTO healing_repairs (invocation_id, incident_id, episode, policy, target, created_ms) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (invocation_id) DO NOTHING",
    )
    .bind(invocation)
    .bind(&c.id)
    .bind(c.episode)
    .bind(&c.policy)
    .bind(&c.target)
    .bind(now_ms())
    .execute(&state.db.pool)
    .await?;
    Ok(())
}

/// The repair (or dry-run plan) this policy submitted with exactly `reason` — which names the
/// incident, its episode and the attempt — if there is one.
async fn submitted_before(
    state: &AppState,
    policy: &str,
    reason: &str,
) -> Result<Option<Invocation>, FlowError> {
    let row = sqlx::query(
        "SELECT id FROM invocations WHERE healing = $1 AND reason = $2 AND plan_for IS NULL AND part_of IS NULL ORDER BY created_ms LIMIT 1",
    )
    .bind(policy)
    .bind(reason)
    .fetch_optional(&state.db.pool)
    .await?;
    match row {
        Some(r) => Ok(Some(
            invocation::get(&state.db, &r.try_get::<String, _>("id")?).await?,
        )),
        None => Ok(None),
    }
}

/// Whether `agent`'s own ceiling lets `skill` run under auto-heal (it checks again itself).
async fn agent_allows_auto_heal(
    state: &AppState,
    agent: &str,
    skill: &str,
) -> Result<bool, FlowError> {
    Ok(crate::agents::list(&state.db)
        .await?
        .iter()
        .any(|a| a.name == agent && a.ceiling.auto_heal.iter().any(|s| s == skill)))
}

enum Limit {
    /// Not now: another target's repair holds the slot.
    Wait(String),
    /// Not at all: a person must decide.
    Stop(String),
}

/// The policy's cooldown, circuit breaker and blast radius, for this repair.
async fn limits(state: &AppState, policy: &Compiled, c: &Case) -> Result<Option<Limit>, FlowError> {
    let p = &policy.policy;
    let now = now_ms();
    // The cooldown: a repair of this target by this policy for another incident or episode.
    let cooldown = p.cooldown().as_millis() as i64;
    if cooldown > 0 {
        let last: Option<i64> = sqlx::query(
            "SELECT MAX(created_ms) AS last FROM healing_repairs WHERE policy = $1 AND target = $2 AND NOT (incident_id = $3 AND episode = $4)",
        )
        .bind(&c.policy)
        .bind(&c.target)
        .bind(&c.id)
        .bind(c.episode)
        .fetch_one(&state.db.pool)
        .await?
        .try_get("last")?;
        if let Some(last) = last
            && now - last < cooldown
        {
            return Ok(Some(Limit::Stop(format!(
                "cooldown: policy {} repaired {} {} ago and its cooldown is {}; repairing again so soon would hide a problem that comes back, so a person must look",
                p.name,
                c.target,
                humantime::format_duration(Duration::from_secs(((now - last) / 1000) as u64)),
                p.cooldown
            ))));
        }
    }
    // The circuit breaker: repairs in the last hour, by policy and by target.
    let hour_ago = now - 3_600_000;
    if let Some(max) = p.max_repairs_per_hour {
        let n: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM healing_repairs WHERE policy = $1 AND created_ms > $2",
        )
        .bind(&c.policy)
        .bind(hour_ago)
        .fetch_one(&state.db.pool)
        .await?
        .try_get("n")?;
        if n >= i64::from(max) {
            return Ok(Some(Limit::Stop(format!(
                "circuit breaker: policy {} made {n} repairs in the last hour (max_repairs_per_hour = {max}); it repairs no more until the hour has passed, so a person must look",
                p.name
            ))));
        }
    }
    if let Some(max) = p.max_repairs_per_target_per_hour {
        let n: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM healing_repairs WHERE policy = $1 AND target = $2 AND created_ms > $3",
        )
        .bind(&c.policy)
        .bind(&c.target)
        .bind(hour_ago)
        .fetch_one(&state.db.pool)
        .await?
        .try_get("n")?;
        if n >= i64::from(max) {
            return Ok(Some(Limit::Stop(format!(
                "circuit breaker: policy {} repaired {} {n} times in the last hour (max_repairs_per_target_per_hour = {max}), so a person must look",
                p.name, c.target
            ))));
        }
    }
    // The blast radius: other targets being repaired (or verified) under this policy now.
    if let Some(max) = p.max_targets {
        let rows = sqlx::query(
            "SELECT DISTINCT target FROM incidents WHERE policy = $1 AND stage IN ('repairing', 'verifying', 'checking') AND target <> $2",
        )
        .bind(&c.policy)
        .bind(&c.target)
        .fetch_all(&state.db.pool)
        .await?;
        if rows.len() >= max as usize {
            let busy: Vec<String> = rows
                .iter()
                .filter_map(|r| r.try_get::<String, _>("target").ok())
                .collect();
            return Ok(Some(Limit::Wait(format!(
                "blast radius: policy {} is repairing {} target(s) already ({}; max_targets = {max}); this repair waits for one of them to finish",
                p.name,
                busy.len(),
                busy.join(", ")
            ))));
        }
    }
    Ok(None)
}

/// Follow the repair: its plan, its approval, its run.
async fn repairing(
    state: &AppState,
    config: &Config,
    policy: &Compiled,
    c: &mut Case,
) -> Result<(), FlowError> {
    let Some(id) = c.repair_id.clone() else {
        c.stage = Stage::Repair;
        return Ok(());
    };
    let inv = invocation::get(&state.db, &id).await?;
    let dry_run = inv.export == "plan";
    match inv.state {
        State::PendingApproval => {
            let key = format!("approval_needed:{}", c.attempts);
            if !c.events.iter().any(|e| e.key == key)
                && c.story.last().and_then(|s| s["step"].as_str()) != Some("approval")
            {
                let plan = inv
                    .plan
                    .as_ref()
                    .map(|p| p["output"].clone())
                    .unwrap_or(Value::Null);
                c.note(
                    "approval",
                    format!(
                        "waiting for a person: {} needs {} approval(s) (tend approve {})",
                        inv.skill, inv.approvals_required, inv.id
                    ),
                    json!({ "invocation": inv.id, "plan": plan }),
                );
                c.event(
                    "approval_needed",
                    key,
                    format!(
                        "a person must approve or reject {} on {}: `tend approve {}` (it shows the alert, the diagnosis and the plan)",
                        inv.skill, c.target, inv.id
                    ),
                );
            }
        }
        State::Succeeded if dry_run => {
            let plan = inv
                .result
                .as_ref()
                .and_then(|r| r.get("output"))
                .cloned()
                .unwrap_or(Value::Null);
            c.note(
                "planned",
                format!(
                    "dry run: the plan of {} ran; nothing was applied",
                    inv.skill
                ),
                json!({ "invocation": inv.id, "plan": plan }),
            );
            c.state = "escalated".into();
            c.stage = Stage::Done;
            c.outcome = Some("dry_run".into());
            let why = format!(
                "dry run: policy {} only plans; the plan of {} is attached and nothing was applied: a person must act",
                policy.policy.name, inv.skill
            );
            c.escalation = Some(why.clone());
            c.event("dry_run", "dry_run", why);
        }
        State::Succeeded => {
            note_repaired(c, &inv);
            c.stage = Stage::Verifying;
            let now = now_ms();
            let until = now
                + match policy.policy.verify {
                    Verify::Resolved => policy.policy.verify_timeout(),
                    Verify::Rerun => policy.policy.verify_after(),
                }
                .as_millis() as i64;
            c.verify_until_ms = Some(until);
            c.due_ms = Some(until);
            if let Some(am) = config.alertmanager.as_ref().filter(|a| a.silence) {
                c.silence_id = crate::notify::silence(am, &c.labels, &c.id, until + 60_000).await;
                if let Some(id) = &c.silence_id {
                    c.note(
                        "silenced",
                        format!("the alert is silenced in Alertmanager ({id}) while the repair is verified"),
                        Value::Null,
                    );
                    if policy.policy.verify == Verify::Resolved {
                        // A silenced alert's resolution is not notified: Alertmanager is asked.
                        c.due_ms = Some(now + ALERT_POLL_MS);
                    }
                }
            }
        }
        State::Rejected | State::Expired | State::Cancelled => {
            c.escalate(format!(
                "the repair {} ({}) was {}{}",
                inv.skill,
                inv.id,
                inv.state.as_str(),
                inv.comment
                    .as_ref()
                    .map(|m| format!(": {}", audit::safe_field(m, 300)))
                    .unwrap_or_default()
            ));
        }
        State::Failed | State::Unknown if dry_run => {
            c.escalate(format!(
                "dry run: the plan of {} did not run: {}",
                inv.skill,
                why_not(&inv)
            ));
        }
        State::Failed | State::Unknown => {
            let why = format!(
                "the repair {} ({}) {}: {}",
                inv.skill,
                inv.id,
                inv.state.as_str(),
                why_not(&inv)
            );
            if inv.state == State::Unknown {
                // It may have run: never again on its own.
                c.escalate(format!(
                    "{why}; whether it ran is unknown, so Tend does not retry"
                ));
            } else {
                c.retry_or_escalate(policy, why);
            }
        }
        State::Planning | State::Queued | State::Running => {}
    }
    Ok(())
}

/// The story says who approved a repair that waited for a person.
fn note_repaired(c: &mut Case, inv: &Invocation) {
    let approvers: Vec<&str> = inv.approvals.iter().map(|a| a.approver.as_str()).collect();
    let by = if approvers.is_empty() {
        String::new()
    } else {
        format!(" (approved by {})", approvers.join(", "))
    };
    c.note(
        "repaired",
        format!("{} ran and succeeded{by}", inv.skill),
        json!({ "invocation": inv.id, "approved_by": approvers, "plan_check": inv.plan_check, "output": inv.result.as_ref().and_then(|r| r.get("output")) }),
    );
}

/// Wait for proof: the resolved notification (handled in [`on_resolved`]) until the timeout,
/// or the diagnosis again when it is due.
async fn verifying(state: &AppState, config: &Config, policy: &Compiled, c: &mut Case) {
    let now = now_ms();
    if c.due_ms.is_some_and(|d| d > now) {
        return;
    }
    if policy.policy.verify == Verify::Resolved
        && c.silence_id.is_some()
        && let Some(am) = &config.alertmanager
        && c.verify_until_ms.is_some_and(|u| u > now)
    {
        match crate::notify::alert_active(am, &c.alertname, &c.fingerprint).await {
            Some(false) => {
                c.note(
                    "resolved",
                    "Alertmanager no longer has the alert active",
                    Value::Null,
                );
                c.state = "resolved".into();
            }
            _ => c.due_ms = Some(now + ALERT_POLL_MS),
        }
        return;
    }
    match policy.policy.verify {
        Verify::Resolved => c.retry_or_escalate(
            policy,
            format!(
                "not verified: the alert did not resolve within {} of the repair",
                policy.policy.verify_timeout
            ),
        ),
        Verify::Rerun => {
            diagnose(state, policy, c).await;
            if c.stage == Stage::Diagnosing {
                c.stage = Stage::Checking;
                c.note(
                    "verifying",
                    "verifying: the diagnosis runs again",
                    Value::Null,
                );
            }
        }
    }
}

/// The diagnosis again, after the repair: all ok is healed; anything else is a retry.
async fn checking(state: &AppState, policy: &Compiled, c: &mut Case) -> Result<(), FlowError> {
    let Some((outputs, failures, summary)) = round_results(state, &c.round).await? else {
        return Ok(());
    };
    let ok = failures.is_empty()
        && !outputs.is_empty()
        && outputs
            .values()
            .all(|o| o.get("status").and_then(Value::as_str) == Some("ok"));
    if ok {
        c.note(
            "healed",
            format!("verified: {}", statuses(&summary)),
            json!({ "results": summary }),
        );
        c.stage = Stage::Done;
        c.outcome = Some("healed".into());
        c.due_ms = None;
        c.event(
            "healed",
            "healed",
            format!(
                "healed: the diagnosis after the repair reports {}",
                statuses(&summary)
            ),
        );
    } else {
        let why = if failures.is_empty() {
            format!("not verified: after the repair, {}", statuses(&summary))
        } else {
            format!("not verified: {}", failures.join("; "))
        };
        c.retry_or_escalate(policy, why);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_story_entry_keeps_large_outputs_out_and_says_where_they_are() {
        let small = json!({ "invocation": "inv_1", "output": { "deleted": ["a"] } });
        assert_eq!(clip(small.clone()), small);
        let big = json!({ "invocation": "inv_2", "output": "x".repeat(1 << 20) });
        let kept = clip(big);
        assert_eq!(kept["clipped"], true);
        assert_eq!(kept["invocation"], "inv_2");
        assert!(kept["bytes"].as_u64().is_some_and(|b| b > 1 << 20));
        assert!(kept.to_string().len() < MAX_STORY_DATA);
    }
}
