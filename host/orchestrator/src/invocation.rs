//! Invocations, approvals and the state machine:
//!
//! ```text
//! pending_approval -> queued -> running -> succeeded | failed
//! pending_approval -> rejected | expired | cancelled
//! queued -> cancelled
//! ```
//!
//! (and `running -> queued | unknown` when a lease runs out, `unknown -> succeeded | failed`
//! for a late result). Every transition is a [`Transition`], run by the one [`apply`]: a
//! conditional `UPDATE ... WHERE state = <from>`, so two racing requests cannot both win; a
//! transition that does not apply is a conflict (HTTP 409) naming the current state.
//! An approval binds the invocation digest — the skill digest, input, target, grants, limits
//! and expiry — so nothing can be changed after approval.

use sqlx::Row;
use sqlx::any::AnyRow;
use tend_policy::{Decision, Verdict};

use crate::audit::{self, Action};
use crate::auth::Actor;
use crate::db::{Db, DbError, now_ms, random_id, rfc3339};
use crate::skills::Resolved;
pub use tend_protocol::{Approval, Invocation, State};

mod transition;
pub use transition::{Audit, Guard, Set, Target, Transition, apply, apply_in};

#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Conflict(String),
    /// A field of the request is malformed (HTTP 422); nothing was changed.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<sqlx::Error> for FlowError {
    fn from(e: sqlx::Error) -> Self {
        FlowError::Db(DbError::Sql(e))
    }
}

/// Everything needed to record a new invocation.
pub struct NewInvocation<'a> {
    pub skill: &'a Resolved,
    /// The skill's manifest narrowed as the operator asked (`skill.manifest` when not).
    pub narrowed: &'a tend_manifest::Manifest,
    pub narrowing: &'a tend_manifest::Narrowing,
    pub target: &'a str,
    /// A run across a pool: the agents it runs on (bound into the digest).
    pub hosts: Vec<String>,
    pub input: serde_json::Value,
    pub reason: &'a str,
    pub requester: &'a Actor,
    pub verdict: &'a Verdict,
    pub approval_ttl_ms: i64,
    /// What started it (recorded with it and in the audit trail).
    pub trigger: crate::flow::Trigger,
    /// `run`, or `plan` for a repair's plan job.
    pub export: &'a str,
    /// For a plan job: the repair it plans.
    pub plan_for: Option<&'a str>,
    /// A plan record known at submit (a plan that could not run), bound into the digest.
    pub plan: Option<serde_json::Value>,
    /// It waits in `planning` for its plan job: then for approval, or (allowed without one)
    /// straight to the queue.
    pub planning: bool,
    /// The healing policy it is submitted under, if any (see [`Invocation::healing`]).
    pub healing: Option<&'a str>,
}

pub async fn create(db: &Db, new: NewInvocation<'_>) -> Result<Invocation, FlowError> {
    let mut tx = db.begin_write().await?;
    let inv = insert(&mut tx, random_id("inv"), new).await?;
    tx.commit().await?;
    Ok(inv)
}

/// Record a repair that waits in `planning` and its plan job, in one transaction: neither
/// exists without the other.
pub async fn create_planned(
    db: &Db,
    repair: NewInvocation<'_>,
    plan: NewInvocation<'_>,
) -> Result<(Invocation, Invocation), FlowError> {
    let repair_id = random_id("inv");
    let mut tx = db.begin_write().await?;
    let repair = insert(&mut tx, repair_id.clone(), repair).await?;
    let plan = insert(
        &mut tx,
        random_id("inv"),
        NewInvocation {
            plan_for: Some(&repair_id),
            ..plan
        },
    )
    .await?;
    tx.commit().await?;
    Ok((repair, plan))
}

/// The digest an approval of `inv` binds, from its own fields.
pub fn digest_of(inv: &Invocation) -> String {
    crate::protocol::invocation_digest(&inv.bound())
}

async fn insert(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    id: String,
    new: NewInvocation<'_>,
) -> Result<Invocation, FlowError> {
    let now = now_ms();
    let expires = now + new.approval_ttl_ms;
    let (state, required) = match &new.verdict.decision {
        Decision::Allow if new.planning => (State::Planning, 0u8),
        Decision::Allow => (State::Queued, 0u8),
        Decision::NeedsApproval {
            approvals_required, ..
        } if new.planning => (State::Planning, *approvals_required),
        Decision::NeedsApproval {
            approvals_required, ..
        } => (State::PendingApproval, *approvals_required),
        Decision::Deny(_) => {
            return Err(FlowError::Forbidden(
                "denied invocations are not recorded".into(),
            ));
        }
    };
    let mut inv = Invocation {
        id,
        skill: new.skill.name.clone(),
        version: new.skill.version.clone(),
        export: new.export.to_string(),
        plan_for: new.plan_for.map(str::to_string),
        part_of: None,
        digest: new.skill.digest.clone(),
        manifest_digest: new.skill.manifest_digest.clone(),
        publisher: new.skill.publisher.clone(),
        publisher_key: new.skill.key_id.clone(),
        target: new.target.to_string(),
        hosts: new.hosts,
        input: new.input,
        narrowing: new.narrowing.clone(),
        grants: new.narrowed.grants(),
        limits: new.narrowed.limits.clone(),
        plan: new.plan,
        plan_check: None,
        reason: new.reason.to_string(),
        requester: new.requester.name.clone(),
        trigger: new.trigger.as_str().to_string(),
        healing: new.healing.map(str::to_string),
        level: u8::from(new.verdict.level),
        approvals_required: required,
        invocation_digest: String::new(),
        state,
        verdict: new.verdict.clone(),
        reasons: new.verdict.explain(),
        created_at: rfc3339(now),
        expires_at: rfc3339(expires),
        expires_ms: expires,
        started_at: None,
        finished_at: None,
        comment: None,
        approvals: Vec::new(),
        parts: Vec::new(),
        result: None,
    };
    inv.invocation_digest = digest_of(&inv);
    sqlx::query(
        "INSERT INTO invocations (id, skill, version, digest, target, input, reason, requester, level, approvals_required, invocation_digest, verdict, state, created_ms, expires_ms, queued_ms, kind, trigger, manifest_digest, hosts, narrowing, grants, limits, plan, export, plan_for, publisher, publisher_key, healing) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29)",
    )
    .bind(&inv.id)
    .bind(&inv.skill)
    .bind(&inv.version)
    .bind(&inv.digest)
    .bind(&inv.target)
    .bind(inv.input.to_string())
    .bind(&inv.reason)
    .bind(&inv.requester)
    .bind(inv.level as i64)
    .bind(required as i64)
    .bind(&inv.invocation_digest)
    .bind(serde_json::to_string(new.verdict).unwrap_or_default())
    .bind(state.as_str())
    .bind(now)
    .bind(expires)
    .bind((state == State::Queued).then_some(now))
    .bind(new.skill.manifest.skill.kind.to_string())
    .bind(&inv.trigger)
    .bind(&inv.manifest_digest)
    .bind(serde_json::to_string(&inv.hosts).unwrap_or_default())
    .bind(serde_json::to_string(&inv.narrowing).unwrap_or_default())
    .bind(serde_json::to_string(&inv.grants).unwrap_or_default())
    .bind(serde_json::to_string(&inv.limits).unwrap_or_default())
    .bind(inv.plan.as_ref().map(|p| p.to_string()))
    .bind(&inv.export)
    .bind(inv.plan_for.as_deref())
    .bind(&inv.publisher)
    .bind(&inv.publisher_key)
    .bind(inv.healing.as_deref())
    .execute(&mut **tx)
    .await?;
    let mut detail = serde_json::json!({
        "skill": inv.skill, "version": inv.version, "digest": inv.digest,
        "target": inv.target, "reason": inv.reason, "state": state.as_str(),
        "trigger": inv.trigger, "export": inv.export,
        "narrowing": inv.narrowing,
        "level": inv.level, "approvals_required": required,
        "invocation_digest": inv.invocation_digest, "decision": inv.reasons,
    });
    if let Some(repair) = &inv.plan_for {
        detail["plan_for"] = serde_json::json!(repair);
    }
    if let Some(policy) = &inv.healing {
        detail["healing"] = serde_json::json!(policy);
    }
    audit::append_tx(
        tx,
        &new.requester.name,
        Action::InvocationCreate,
        &inv.id,
        detail,
    )
    .await?;
    if inv.state == State::Queued && inv.target.starts_with("all:") {
        fan_out(tx, &inv.id, &inv.requester).await?;
        inv.state = State::Running;
    }
    Ok(inv)
}

/// A run across a pool that may now run: one queued part per listed host, assigned to that
/// host's agent, each a copy of the invocation (so each agent recomputes the same digest and
/// checks the same approvals); the invocation itself is `running` until its parts end. In the
/// caller's transaction: the parts exist exactly when the invocation left `queued`.
async fn fan_out(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    id: &str,
    actor: &str,
) -> Result<(), FlowError> {
    let row = sqlx::query("SELECT * FROM invocations WHERE id = $1")
        .bind(id)
        .fetch_one(&mut **tx)
        .await?;
    let hosts: Vec<String> = json_column(&row, "hosts")?.unwrap_or_default();
    let now = now_ms();
    let mut parts = Vec::new();
    for host in &hosts {
        let agent: Option<String> = sqlx::query("SELECT id FROM agents WHERE name = $1")
            .bind(host)
            .fetch_optional(&mut **tx)
            .await?
            .map(|r| r.try_get("id"))
            .transpose()?;
        let part = random_id("inv");
        // Copy every column but the ones that make it a part.
        sqlx::query(
            "INSERT INTO invocations (id, skill, version, digest, target, input, reason, requester, level, approvals_required, invocation_digest, verdict, state, created_ms, expires_ms, queued_ms, kind, trigger, manifest_digest, hosts, narrowing, grants, limits, plan, export, plan_for, publisher, publisher_key, healing, part_of, assigned_agent) SELECT $1, skill, version, digest, target, input, reason, requester, level, approvals_required, invocation_digest, verdict, $2, $3, expires_ms, $3, kind, trigger, manifest_digest, hosts, narrowing, grants, limits, plan, export, plan_for, publisher, publisher_key, healing, id, $4 FROM invocations WHERE id = $5",
        )
        .bind(&part)
        .bind(State::Queued.as_str())
        .bind(now)
        .bind(agent.as_deref())
        .bind(id)
        .execute(&mut **tx)
        .await?;
        audit::append_tx(
            tx,
            actor,
            Action::InvocationAssign,
            &part,
            serde_json::json!({ "part_of": id, "agent": host, "agent_id": agent }),
        )
        .await?;
        parts.push(serde_json::json!({ "host": host, "id": part }));
    }
    let running = Transition::new(
        id,
        &[(State::Queued, &[])],
        State::Running,
        &[Set::ClaimedNow],
        vec![Audit {
            actor: "tend",
            action: Action::InvocationRunning,
            detail: serde_json::json!({ "parts": parts, "state": State::Running.as_str() }),
        }],
    );
    apply_in(tx, &running).await.map(drop)
}

/// If every part of the run across a pool `parent` has now ended, end the run: `succeeded`
/// when every part succeeded, else `failed`, with a summary as its result.
async fn finish_run(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    parent: &str,
) -> Result<(), FlowError> {
    let parts = parts_in(&mut **tx, parent).await?;
    if parts.is_empty() {
        return Ok(());
    }
    if parts.iter().any(|p| !p.state.is_final()) {
        return Ok(());
    }
    let ok = parts.iter().filter(|p| p.state == State::Succeeded).count();
    let to = if ok == parts.len() {
        State::Succeeded
    } else {
        State::Failed
    };
    let summary = serde_json::json!({
        "hosts": parts.len(), "succeeded": ok, "not_succeeded": parts.len() - ok, "parts": parts,
    });
    let set = [Set::Result(&summary), Set::FinishedNow];
    let ended = Transition::new(
        parent,
        &[(State::Running, &[])],
        to,
        &set,
        vec![Audit {
            actor: "tend",
            action: if to == State::Succeeded {
                Action::InvocationSucceeded
            } else {
                Action::InvocationFailed
            },
            detail: serde_json::json!({
                "hosts": parts.len(), "succeeded": ok, "state": to.as_str(),
            }),
        }],
    );
    match apply_in(tx, &ended).await {
        Ok(_) | Err(FlowError::Conflict(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The parts of the run across a pool `id`, by host name.
async fn parts_in<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(
    exec: E,
    id: &str,
) -> Result<Vec<tend_protocol::Part>, FlowError> {
    let rows = sqlx::query(
        "SELECT i.id, i.state, i.result, a.name AS host, i.assigned_agent FROM invocations i LEFT JOIN agents a ON a.id = i.assigned_agent WHERE i.part_of = $1",
    )
    .bind(id)
    .fetch_all(exec)
    .await?;
    let mut parts = rows
        .iter()
        .map(|r| {
            let result: Option<String> = r.try_get("result")?;
            let result: Option<serde_json::Value> =
                result.and_then(|t| serde_json::from_str(&t).ok());
            Ok(tend_protocol::Part {
                host: r
                    .try_get::<Option<String>, _>("host")?
                    .or(r.try_get::<Option<String>, _>("assigned_agent")?)
                    .unwrap_or_default(),
                id: r.try_get("id")?,
                state: State::parse(&r.try_get::<String, _>("state")?).unwrap_or(State::Failed),
                outcome: result.map(|v| {
                    v.get("outcome")
                        .and_then(|o| o.as_str())
                        .unwrap_or("refused")
                        .to_string()
                }),
            })
        })
        .collect::<Result<Vec<_>, FlowError>>()?;
    parts.sort_by(|a, b| a.host.cmp(&b.host));
    Ok(parts)
}

fn from_row(r: &AnyRow, approvals: Vec<Approval>) -> Result<Invocation, FlowError> {
    let verdict_text: String = r.try_get("verdict")?;
    let verdict: Verdict = serde_json::from_str(&verdict_text)
        .map_err(|e| FlowError::Conflict(format!("stored verdict unreadable: {e}")))?;
    let input: String = r.try_get("input")?;
    let result: Option<String> = r.try_get("result")?;
    let result_value: Option<serde_json::Value> =
        result.and_then(|t| serde_json::from_str(&t).ok());
    let state = State::parse(&r.try_get::<String, _>("state")?).unwrap_or(State::Failed);
    // A job queued again keeps the time of its earlier claim: it has not started (again).
    let waiting = matches!(state, State::PendingApproval | State::Queued);
    Ok(Invocation {
        id: r.try_get("id")?,
        skill: r.try_get("skill")?,
        version: r.try_get("version")?,
        export: r.try_get("export")?,
        plan_for: r.try_get("plan_for")?,
        part_of: r.try_get("part_of")?,
        digest: r.try_get("digest")?,
        manifest_digest: r
            .try_get::<Option<String>, _>("manifest_digest")?
            .unwrap_or_default(),
        publisher: r
            .try_get::<Option<String>, _>("publisher")?
            .unwrap_or_default(),
        publisher_key: r
            .try_get::<Option<String>, _>("publisher_key")?
            .unwrap_or_default(),
        target: r.try_get("target")?,
        hosts: json_column(r, "hosts")?.unwrap_or_default(),
        input: serde_json::from_str(&input).unwrap_or(serde_json::Value::Null),
        narrowing: json_column(r, "narrowing")?.unwrap_or_default(),
        grants: json_column(r, "grants")?.unwrap_or_default(),
        limits: json_column(r, "limits")?.unwrap_or_default(),
        plan_check: match (json_column::<serde_json::Value>(r, "plan")?, &result_value) {
            (Some(plan), Some(result)) if state == State::Succeeded || state == State::Failed => {
                Some(tend_protocol::plan_check(&plan, result))
            }
            _ => None,
        },
        plan: json_column(r, "plan")?,
        reason: r.try_get("reason")?,
        requester: r.try_get("requester")?,
        trigger: r.try_get("trigger")?,
        healing: r.try_get("healing")?,
        level: r.try_get::<i64, _>("level")? as u8,
        approvals_required: r.try_get::<i64, _>("approvals_required")? as u8,
        invocation_digest: r.try_get("invocation_digest")?,
        state,
        reasons: verdict.explain(),
        verdict,
        created_at: rfc3339(r.try_get("created_ms")?),
        expires_at: rfc3339(r.try_get("expires_ms")?),
        expires_ms: r.try_get("expires_ms")?,
        // The holder's own start when it said so (an agent), else the claim (the worker).
        started_at: r
            .try_get::<Option<i64>, _>("run_started_ms")?
            .or(r.try_get::<Option<i64>, _>("started_ms")?)
            .filter(|_| !waiting)
            .map(rfc3339),
        finished_at: r.try_get::<Option<i64>, _>("finished_ms")?.map(rfc3339),
        comment: r
            .try_get::<Option<String>, _>("comment")?
            .filter(|c| !c.is_empty()),
        approvals,
        parts: Vec::new(),
        result: result_value,
    })
}

/// A JSON column that rows from before it existed hold as NULL. A stored value that does not
/// read back is an error, never a silent default (it is bound into the invocation digest).
fn json_column<T: serde::de::DeserializeOwned>(
    r: &AnyRow,
    column: &str,
) -> Result<Option<T>, FlowError> {
    match r.try_get::<Option<String>, _>(column)? {
        None => Ok(None),
        Some(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| FlowError::Conflict(format!("stored {column} unreadable: {e}"))),
    }
}

/// The approvals of invocation `$1` (= `$2`): for one host's part of a run across a pool,
/// those of the run, which is what was approved.
const APPROVALS_OF: &str = "SELECT approver, invocation_digest, created_ms, public_key, signature FROM approvals WHERE invocation_id = COALESCE((SELECT part_of FROM invocations WHERE id = $1), $2) ORDER BY created_ms";

async fn approvals(db: &Db, id: &str) -> Result<Vec<Approval>, FlowError> {
    let rows = sqlx::query(APPROVALS_OF)
        .bind(id)
        .bind(id)
        .fetch_all(&db.pool)
        .await?;
    rows.iter().map(approval_from_row).collect()
}

fn approval_from_row(r: &AnyRow) -> Result<Approval, FlowError> {
    Ok(Approval {
        approver: r.try_get("approver")?,
        invocation_digest: r.try_get("invocation_digest")?,
        at: rfc3339(r.try_get("created_ms")?),
        public_key: r.try_get("public_key")?,
        signature: r.try_get("signature")?,
    })
}

pub async fn get(db: &Db, id: &str) -> Result<Invocation, FlowError> {
    let row = sqlx::query("SELECT * FROM invocations WHERE id = $1")
        .bind(id)
        .fetch_optional(&db.pool)
        .await?
        .ok_or_else(|| FlowError::NotFound(format!("no invocation {id}")))?;
    let mut inv = from_row(&row, approvals(db, id).await?)?;
    if inv.target.starts_with("all:") && inv.part_of.is_none() {
        inv.parts = parts_in(&db.pool, id).await?;
    }
    Ok(inv)
}

pub async fn list(db: &Db, state: Option<State>, limit: i64) -> Result<Vec<Invocation>, FlowError> {
    let rows = match state {
        Some(s) => {
            sqlx::query(
                "SELECT * FROM invocations WHERE state = $1 ORDER BY created_ms DESC LIMIT $2",
            )
            .bind(s.as_str())
            .bind(limit)
            .fetch_all(&db.pool)
            .await?
        }
        None => {
            sqlx::query("SELECT * FROM invocations ORDER BY created_ms DESC LIMIT $1")
                .bind(limit)
                .fetch_all(&db.pool)
                .await?
        }
    };
    let mut by_id = approvals_of(db, &rows).await?;
    rows.iter()
        .map(|r| {
            let id: String = r.try_get("id")?;
            from_row(r, by_id.remove(&id).unwrap_or_default())
        })
        .collect()
}

/// The approvals of each of `rows` (invocations), in one query.
async fn approvals_of(
    db: &Db,
    rows: &[AnyRow],
) -> Result<std::collections::HashMap<String, Vec<Approval>>, FlowError> {
    let mut by_id: std::collections::HashMap<String, Vec<Approval>> = Default::default();
    if rows.is_empty() {
        return Ok(by_id);
    }
    let ids = rows
        .iter()
        .map(|r| r.try_get::<String, _>("id"))
        .collect::<Result<Vec<_>, _>>()?;
    let placeholders: Vec<String> = (1..=ids.len()).map(|n| format!("${n}")).collect();
    let sql = format!(
        "SELECT invocation_id, approver, invocation_digest, created_ms, public_key, signature FROM approvals WHERE invocation_id IN ({}) ORDER BY created_ms",
        placeholders.join(", ")
    );
    let mut q = sqlx::query(&sql);
    for id in &ids {
        q = q.bind(id);
    }
    for r in q.fetch_all(&db.pool).await? {
        let id: String = r.try_get("invocation_id")?;
        by_id.entry(id).or_default().push(approval_from_row(&r)?);
    }
    Ok(by_id)
}

/// Approvals as [`tend_policy::admit`] reads them. A time that does not parse never counts.
/// Count the approvals that still stand for this exact invocation, by the one rule in
/// [`tend_policy::admit::valid_approvers`].
fn valid_approvals(inv: &Invocation, expires_ms: i64) -> usize {
    // Every stored signature was verified against the approver's registered key when it was
    // given (see `approve`); the runner checks each again against its own trust policy.
    let facts: Vec<tend_policy::admit::Approval> =
        tend_protocol::approval_facts(&inv.approvals, &[])
            .into_iter()
            .zip(&inv.approvals)
            .map(|(mut fact, a)| {
                if a.signature.is_some() {
                    fact.signature = tend_policy::admit::Signature::Verified;
                }
                fact
            })
            .collect();
    tend_policy::admit::valid_approvers(&facts, &inv.requester, &inv.invocation_digest, expires_ms)
        .0
        .len()
}

async fn expires_ms(db: &Db, id: &str) -> Result<i64, FlowError> {
    Ok(
        sqlx::query("SELECT expires_ms FROM invocations WHERE id = $1")
            .bind(id)
            .fetch_one(&db.pool)
            .await?
            .try_get("expires_ms")?,
    )
}

/// Whether `inv` has the approvals its decision asked for, so it may be queued. (Just before it
/// runs, the worker and every agent admit it again with [`tend_policy::admit`], from the
/// verified manifest rather than this row.)
pub async fn sufficiently_approved(db: &Db, inv: &Invocation) -> Result<bool, FlowError> {
    if inv.approvals_required == 0 {
        return Ok(true);
    }
    let expires = expires_ms(db, &inv.id).await?;
    Ok(valid_approvals(inv, expires) >= inv.approvals_required as usize)
}

/// Approve `id` for `digest` with `signature`: the approver's ed25519 signature over
/// [`tend_protocol::approval_message`] of the digest, which must verify against the key an
/// admin registered for them. The approval and the `pending_approval -> queued` move it
/// completes commit in one transaction, so a crash cannot leave an approved invocation
/// waiting. A retry by the same approver for the same digest is idempotent: it answers with
/// the current state and, should the invocation still be pending with enough approvals (as a
/// crash under an older release could leave it), completes the move.
pub async fn approve(
    db: &Db,
    id: &str,
    approver: &Actor,
    digest: &str,
    signature: &str,
) -> Result<Invocation, FlowError> {
    let inv = get(db, id).await?;
    let refuse = |e: FlowError| async {
        let _ = audit::append(
            db,
            &approver.name,
            Action::ApprovalRefused,
            id,
            serde_json::json!({ "why": e.to_string() }),
        )
        .await;
        Err(e)
    };
    if inv.requester == approver.name {
        return refuse(FlowError::Forbidden(format!(
            "{} requested invocation {id} and cannot approve it: approval needs someone other than the requester",
            approver.name
        )))
        .await;
    }
    let mine = inv.approvals.iter().any(|a| a.approver == approver.name);
    if mine && digest == inv.invocation_digest {
        return approve_again(db, id, approver).await;
    }
    if inv.state != State::PendingApproval {
        return refuse(FlowError::Conflict(format!(
            "invocation {id} is {}, not pending approval",
            inv.state.as_str()
        )))
        .await;
    }
    if now_ms() > expires_ms(db, id).await? {
        let _ = expire_due(db).await;
        return refuse(FlowError::Conflict(format!(
            "invocation {id} expired at {}: it can no longer be approved",
            inv.expires_at
        )))
        .await;
    }
    if digest != inv.invocation_digest {
        return refuse(FlowError::Conflict(format!(
            "the approval is for invocation digest {}, but invocation {id} has digest {}: an approval binds one exact invocation",
            audit::safe_field(digest, 80),
            inv.invocation_digest
        )))
        .await;
    }
    let registered = crate::approvers::key_of(db, &approver.name).await?;
    let Some(public_key) = registered else {
        return refuse(FlowError::Forbidden(format!(
            "no approver key is registered for {0}: an admin registers it with `tend approver add {0} --key FILE` (the public half of `tend key gen`)",
            approver.name
        )))
        .await;
    };
    let verifies = tend_protocol::parse_public_key(&public_key)
        .is_some_and(|k| tend_protocol::approval_verifies(&k, signature, digest));
    if !verifies {
        return refuse(FlowError::Forbidden(format!(
            "the signature does not verify with {}'s registered approver key over invocation digest {}: `tend approve` signs the digest it recomputes from what it shows",
            approver.name, inv.invocation_digest
        )))
        .await;
    }
    let mut tx = db.begin_write().await?;
    // Lock the invocation first (a row lock on PostgreSQL, the writer lock on SQLite), so two
    // approvers finishing the count together serialise and the second sees the first.
    // (A transition to the state it is in, with nothing to write or record.)
    let hold = Transition::new(
        id,
        &[(State::PendingApproval, &[])],
        State::PendingApproval,
        &[],
        Vec::new(),
    );
    if let Err(e) = apply_in(&mut tx, &hold).await {
        tx.rollback().await?;
        return refuse(e).await;
    }
    let inserted = sqlx::query(
        "INSERT INTO approvals (invocation_id, approver, invocation_digest, created_ms, public_key, signature) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(id)
    .bind(&approver.name)
    .bind(digest)
    .bind(now_ms())
    .bind(&public_key)
    .bind(signature)
    .execute(&mut *tx)
    .await;
    if inserted.is_err() {
        // The same approver, a moment ago (a double click): the same answer as a retry.
        tx.rollback().await?;
        return approve_again(db, id, approver).await;
    }
    audit::append_tx(
        &mut tx,
        &approver.name,
        Action::ApprovalGrant,
        id,
        serde_json::json!({ "invocation_digest": digest, "public_key": public_key }),
    )
    .await?;
    queue_if_approved(&mut tx, id, &approver.name, false).await?;
    tx.commit().await?;
    get(db, id).await
}

/// A repeated approval by someone who already approved this exact invocation: nothing new to
/// record; complete the move to `queued` if it is due and was never made.
async fn approve_again(db: &Db, id: &str, approver: &Actor) -> Result<Invocation, FlowError> {
    let inv = get(db, id).await?;
    if inv.state == State::PendingApproval && sufficiently_approved(db, &inv).await? {
        let mut tx = db.begin_write().await?;
        queue_if_approved(&mut tx, id, &approver.name, true).await?;
        tx.commit().await?;
        return get(db, id).await;
    }
    Ok(inv)
}

/// Inside the approval's transaction: if `id` is pending, unexpired and now has the approvals
/// its level needs, move it to `queued` and record that. The caller holds the row.
async fn queue_if_approved(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    id: &str,
    actor: &str,
    recovered: bool,
) -> Result<bool, FlowError> {
    let Some(row) = sqlx::query(
        "SELECT requester, invocation_digest, approvals_required, expires_ms FROM invocations WHERE id = $1 AND state = $2",
    )
    .bind(id)
    .bind(State::PendingApproval.as_str())
    .fetch_optional(&mut **tx)
    .await?
    else {
        return Ok(false);
    };
    let requester: String = row.try_get("requester")?;
    let digest: String = row.try_get("invocation_digest")?;
    let required: i64 = row.try_get("approvals_required")?;
    let expires: i64 = row.try_get("expires_ms")?;
    let now = now_ms();
    if now > expires {
        return Ok(false);
    }
    let rows = sqlx::query(
        "SELECT approver, created_ms FROM approvals WHERE invocation_id = $1 AND invocation_digest = $2 AND approver <> $3 AND created_ms <= $4 AND signature IS NOT NULL ORDER BY created_ms",
    )
    .bind(id)
    .bind(&digest)
    .bind(&requester)
    .bind(expires)
    .fetch_all(&mut **tx)
    .await?;
    let mut approvers = rows
        .iter()
        .map(|r| r.try_get::<String, _>("approver"))
        .collect::<Result<Vec<_>, _>>()?;
    approvers.dedup();
    if (approvers.len() as i64) < required {
        return Ok(false);
    }
    let mut detail = serde_json::json!({ "state": State::Queued.as_str(), "approvers": approvers });
    if recovered {
        detail["recovered"] = serde_json::json!(
            "the approvals were complete but the invocation was still pending: queued on the approver's retry"
        );
    }
    let queued = Transition::new(
        id,
        &[(State::PendingApproval, &[])],
        State::Queued,
        &[Set::QueuedNow],
        vec![Audit {
            actor,
            action: Action::InvocationQueued,
            detail,
        }],
    );
    match apply_in(tx, &queued).await {
        Ok(_) => {}
        Err(FlowError::Conflict(_)) => return Ok(false),
        Err(e) => return Err(e),
    }
    let target: String = sqlx::query("SELECT target FROM invocations WHERE id = $1")
        .bind(id)
        .fetch_one(&mut **tx)
        .await?
        .try_get("target")?;
    if target.starts_with("all:") {
        fan_out(tx, id, actor).await?;
    }
    Ok(true)
}

pub async fn reject(
    db: &Db,
    id: &str,
    actor: &Actor,
    comment: &str,
) -> Result<Invocation, FlowError> {
    let to = State::Rejected;
    apply(
        db,
        &Transition::new(
            id,
            &[(State::PendingApproval, &[])],
            to,
            &[Set::FinishedNow, Set::Comment(comment)],
            vec![Audit {
                actor: &actor.name,
                action: Action::InvocationRejected,
                detail: serde_json::json!({ "comment": comment, "state": to.as_str() }),
            }],
        ),
    )
    .await?;
    get(db, id).await
}

pub async fn cancel(db: &Db, id: &str, actor: &Actor) -> Result<Invocation, FlowError> {
    let inv = get(db, id).await?;
    if inv.requester != actor.name && actor.role != tend_policy::Role::Admin {
        // A refusal of an authenticated caller is audited like a role refusal.
        audit::append(
            db,
            &actor.name,
            Action::AuthForbidden,
            id,
            serde_json::json!({ "role": actor.role.as_str(), "needs": "the requester or admin" }),
        )
        .await?;
        return Err(FlowError::Forbidden(format!(
            "only the requester ({}) or an admin may cancel invocation {id}",
            inv.requester
        )));
    }
    let to = State::Cancelled;
    let cancel = |id| {
        Transition::new(
            id,
            &[
                (State::Planning, &[]),
                (State::PendingApproval, &[]),
                (State::Queued, &[]),
            ],
            to,
            &[Set::FinishedNow],
            vec![Audit {
                actor: &actor.name,
                action: Action::InvocationCancelled,
                detail: serde_json::json!({ "state": to.as_str() }),
            }],
        )
    };
    let mut tx = db.begin_write().await?;
    if inv.state == State::Running && !inv.parts.is_empty() {
        // A run across a pool: its parts not yet claimed are cancelled; those running finish,
        // and the run ends with them.
        for part in inv.parts.iter().filter(|p| p.state == State::Queued) {
            match apply_in(&mut tx, &cancel(&part.id)).await {
                Ok(_) | Err(FlowError::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
        }
        finish_run(&mut tx, id).await?;
    } else {
        if let Err(e) = apply_in(&mut tx, &cancel(id)).await {
            tx.rollback().await?;
            return Err(e);
        }
        // One host's part: the run may have just ended with it.
        if let Some(run) = &inv.part_of {
            finish_run(&mut tx, run).await?;
        }
    }
    tx.commit().await?;
    get(db, id).await
}

/// Expire pending invocations whose approval window has closed.
pub async fn expire_due(db: &Db) -> Result<usize, FlowError> {
    let rows =
        sqlx::query("SELECT id FROM invocations WHERE state IN ($1, $2) AND expires_ms < $3")
            .bind(State::PendingApproval.as_str())
            .bind(State::Planning.as_str())
            .bind(now_ms())
            .fetch_all(&db.pool)
            .await?;
    let mut n = 0;
    for r in rows {
        let id: String = r.try_get("id")?;
        let to = State::Expired;
        let expired = Transition::new(
            &id,
            &[(State::Planning, &[]), (State::PendingApproval, &[])],
            to,
            &[Set::FinishedNow],
            vec![Audit {
                actor: "tend",
                action: Action::InvocationExpired,
                detail: serde_json::json!({
                    "why": "no sufficient approval before expiry", "state": to.as_str(),
                }),
            }],
        );
        if apply(db, &expired).await.is_ok() {
            n += 1;
        }
    }
    Ok(n)
}

/// Which queued jobs a claimant may take.
#[derive(Debug, Clone, Copy)]
pub enum Queue<'a> {
    /// Jobs for this host (the target the orchestrator serves as, `local` by default), run by
    /// the built-in worker.
    Local(&'a str),
    /// Jobs assigned to this agent.
    Agent(&'a str),
}

/// Claim the oldest queued job with a lease (`FOR UPDATE SKIP LOCKED` on PostgreSQL; on SQLite
/// the single writer makes the conditional update atomic).
pub async fn claim(
    db: &Db,
    owner: &str,
    lease_ms: i64,
    queue: Queue<'_>,
) -> Result<Option<Invocation>, FlowError> {
    let until_ms = now_ms() + lease_ms;
    let lease = Set::Lease { owner, until_ms };
    // The local worker starts a job the moment it claims it; an agent says when it starts.
    let set: &[Set] = match queue {
        Queue::Local(_) => &[lease, Set::ClaimedNow, Set::StartedNow],
        Queue::Agent(_) => &[lease, Set::ClaimedNow],
    };
    let claim = Transition {
        target: Target::Oldest(queue),
        from: &[(State::Queued, &[])],
        to: State::Running,
        set,
        audit: vec![Audit {
            actor: owner,
            action: Action::InvocationRunning,
            detail: serde_json::json!({ "state": State::Running.as_str(), "lease_ms": lease_ms }),
        }],
    };
    let mut tx = db.begin_write().await?;
    let row = match apply_in(&mut tx, &claim).await {
        Ok(Some(row)) => row,
        other => {
            // Roll back now: a dropped transaction gives its lock back only when the pooled
            // connection is next used.
            tx.rollback().await?;
            return other.map(|_| None);
        }
    };
    // A queued job's approvals are read with it: the worker checks them again before it runs.
    let id: String = row.try_get("id")?;
    let approval_rows = sqlx::query(APPROVALS_OF)
        .bind(&id)
        .bind(&id)
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    let approvals = approval_rows
        .iter()
        .map(approval_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(from_row(&row, approvals)?))
}

/// Who ran a job and reports its result.
#[derive(Debug, Clone, Copy)]
pub enum Runner<'a> {
    /// The built-in worker, by the name its leases carry.
    Worker(&'a str),
    /// An enrolled agent: its leases carry its id, the audit its name.
    Agent { id: &'a str, name: &'a str },
}

/// A job's result, as its runner reports it.
#[derive(Debug, Clone)]
pub struct JobOutcome<'a> {
    pub succeeded: bool,
    /// Stored as the invocation's result.
    pub result: &'a serde_json::Value,
    /// The audit detail (its `state` is set here).
    pub detail: serde_json::Value,
    /// The runner refused to run it (an agent's own admission check): recorded as
    /// `agent.refused` too.
    pub refused: bool,
}

/// Record the result of a job, whoever ran it: `running -> succeeded | failed` for the holder
/// of its lease, in one transaction with its audit event. An agent's result is also taken
/// late, for a job it was assigned that was marked `unknown` meanwhile, and counts towards its
/// health. Anyone else's result is a conflict that changes nothing.
pub async fn record_result(
    db: &Db,
    id: &str,
    runner: Runner<'_>,
    outcome: JobOutcome<'_>,
) -> Result<(), FlowError> {
    let to = if outcome.succeeded {
        State::Succeeded
    } else {
        State::Failed
    };
    let action = if outcome.succeeded {
        Action::InvocationSucceeded
    } else {
        Action::InvocationFailed
    };
    let mut detail = outcome.detail;
    detail["state"] = serde_json::Value::String(to.as_str().into());
    let (actor, holder, agent) = match runner {
        Runner::Worker(owner) => (owner, owner, None),
        Runner::Agent { id, name } => (name, id, Some(id)),
    };
    let held = [Guard::HeldBy(holder)];
    let late = agent.map(|a| [Guard::AssignedTo(a)]);
    let by_worker = [(State::Running, &held[..])];
    let by_agent;
    let from: &[(State, &[Guard])] = match &late {
        None => &by_worker,
        Some(late) => {
            by_agent = [(State::Running, &held[..]), (State::Unknown, &late[..])];
            &by_agent
        }
    };
    let mut audit = Vec::with_capacity(2);
    if outcome.refused {
        audit.push(Audit {
            actor,
            action: Action::AgentRefused,
            detail: detail.clone(),
        });
    }
    audit.push(Audit {
        actor,
        action,
        detail,
    });
    let recorded = Transition {
        target: Target::Id(id),
        from,
        to,
        set: &[Set::Result(outcome.result), Set::FinishedNow, Set::NoLease],
        audit,
    };
    let mut tx = db.begin_write().await?;
    if let Err(e) = apply_in(&mut tx, &recorded).await {
        tx.rollback().await?;
        return Err(e);
    }
    attach_plan(&mut tx, id, outcome.result).await?;
    let run: Option<String> = sqlx::query("SELECT part_of FROM invocations WHERE id = $1")
        .bind(id)
        .fetch_one(&mut *tx)
        .await?
        .try_get("part_of")?;
    if let Some(run) = run {
        finish_run(&mut tx, &run).await?;
    }
    if let Some(agent) = agent {
        let count = if outcome.succeeded {
            "UPDATE agents SET jobs_ok = jobs_ok + 1 WHERE id = $1"
        } else {
            "UPDATE agents SET jobs_failed = jobs_failed + 1 WHERE id = $1"
        };
        sqlx::query(count).bind(agent).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// If `id` is a plan job, its result becomes the plan record of the repair it plans, which
/// moves `planning -> pending_approval` with a digest that now binds the plan — in the plan
/// job's own transaction, so a crash cannot leave the repair waiting for a plan that ran.
async fn attach_plan(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    id: &str,
    result: &serde_json::Value,
) -> Result<(), FlowError> {
    let repair_id: Option<String> = sqlx::query("SELECT plan_for FROM invocations WHERE id = $1")
        .bind(id)
        .fetch_one(&mut **tx)
        .await?
        .try_get("plan_for")?;
    let Some(repair_id) = repair_id else {
        return Ok(());
    };
    let Some(row) = sqlx::query("SELECT * FROM invocations WHERE id = $1")
        .bind(&repair_id)
        .fetch_optional(&mut **tx)
        .await?
    else {
        return Ok(());
    };
    let mut repair = from_row(&row, Vec::new())?;
    if repair.state != State::Planning {
        // Cancelled or expired meanwhile: the plan is kept with the plan job only.
        return Ok(());
    }
    let plan = tend_protocol::plan_record(id, result);
    repair.plan = Some(plan.clone());
    let digest = digest_of(&repair);
    // A repair allowed without approval (an L1 repair under a healing policy's auto_heal) ran
    // its plan for the record and goes on to the queue — unless its plan failed: nobody is
    // there to judge that, so it does not run. Any other repair waits for its approvers.
    let planned_ok = plan["outcome"] == "ok";
    if repair.approvals_required == 0 && !planned_ok {
        let why = serde_json::json!({
            "error": format!("not run: its plan did not succeed ({}), and no person approved it", plan["outcome"].as_str().unwrap_or("refused")),
        });
        let set = [
            Set::Plan {
                plan: &plan,
                digest: &digest,
            },
            Set::Result(&why),
            Set::FinishedNow,
        ];
        let stopped = Transition::new(
            &repair_id,
            &[(State::Planning, &[])],
            State::Failed,
            &set,
            vec![Audit {
                actor: "tend",
                action: Action::InvocationFailed,
                detail: serde_json::json!({
                    "plan_job": id, "outcome": plan["outcome"], "why": why["error"],
                    "state": State::Failed.as_str(),
                }),
            }],
        );
        return match apply_in(tx, &stopped).await {
            Ok(_) | Err(FlowError::Conflict(_)) => Ok(()),
            Err(e) => Err(e),
        };
    }
    let to = if repair.approvals_required == 0 {
        State::Queued
    } else {
        State::PendingApproval
    };
    let plan_set = Set::Plan {
        plan: &plan,
        digest: &digest,
    };
    let queued_set = [plan_set, Set::QueuedNow];
    let waiting_set = [plan_set];
    let planned = Transition::new(
        &repair_id,
        &[(State::Planning, &[])],
        to,
        if to == State::Queued {
            &queued_set
        } else {
            &waiting_set
        },
        vec![Audit {
            actor: "tend",
            action: Action::InvocationPlanned,
            detail: serde_json::json!({
                "plan_job": id, "outcome": plan["outcome"],
                "invocation_digest": digest, "state": to.as_str(),
            }),
        }],
    );
    match apply_in(tx, &planned).await {
        Ok(_) | Err(FlowError::Conflict(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Fail running jobs with `why` in their result: ids from `candidates` whose holder is gone.
/// They had started, so they are never re-queued (a repair must not run twice unseen).
async fn fail_running(
    db: &Db,
    candidates: Vec<AnyRow>,
    actor: &str,
    why: &str,
) -> Result<usize, FlowError> {
    let mut n = 0;
    let result = serde_json::json!({ "error": why });
    for r in candidates {
        let id: String = r.try_get("id")?;
        let owner: Option<String> = r.try_get("lease_owner")?;
        let to = State::Failed;
        let failed = Transition {
            target: Target::Id(&id),
            from: &[(State::Running, &[])],
            to,
            set: &[Set::FinishedNow, Set::Result(&result), Set::NoLease],
            audit: vec![Audit {
                actor,
                action: Action::InvocationFailed,
                detail: serde_json::json!({ "state": to.as_str(), "why": why, "lease_owner": owner }),
            }],
        };
        match apply(db, &failed).await {
            Ok(_) => n += 1,
            Err(FlowError::Conflict(_) | FlowError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Jobs whose lease ran out while their holder was gone (a crash, a lost network):
/// not started yet → queued again; a started diagnose skill → queued again (reading twice is
/// harmless); a started **repair** → `unknown`, escalated to a human, never run again on its own.
/// A `pool:` job queued again may go to any agent of its pool.
pub async fn expire_leases(db: &Db) -> Result<usize, FlowError> {
    let now = now_ms();
    let rows = sqlx::query(
        "SELECT id, lease_owner, kind, run_started_ms FROM invocations WHERE state = $1 AND lease_until_ms < $2",
    )
    .bind(State::Running.as_str())
    .bind(now)
    .fetch_all(&db.pool)
    .await?;
    let mut n = 0;
    for r in rows {
        let id: String = r.try_get("id")?;
        let owner: Option<String> = r.try_get("lease_owner")?;
        let kind: String = r.try_get("kind")?;
        let started: Option<i64> = r.try_get("run_started_ms")?;
        let (to, set, action, why): (_, &[Set], _, _) = match (started, kind.as_str()) {
            (Some(_), "repair") => (
                State::Unknown,
                &[Set::NoLease, Set::FinishedNow],
                Action::InvocationUnknown,
                "the lease expired after this repair started: it may or may not have acted. Escalated: a human must check the target; it will not run again on its own",
            ),
            (Some(_), _) => (
                State::Queued,
                &[
                    Set::NoLease,
                    Set::NotStarted,
                    Set::QueuedNow,
                    Set::UnassignedIfPool,
                ],
                Action::InvocationRequeued,
                "the lease expired after this diagnose skill started; reading again is harmless, so it is queued again",
            ),
            (None, _) => (
                State::Queued,
                &[Set::NoLease, Set::QueuedNow, Set::UnassignedIfPool],
                Action::InvocationRequeued,
                "the lease expired before the job started: queued again",
            ),
        };
        // The row as read must still be the row changed: the same holder, its lease still run
        // out, and (for a job queued again because it never started) still not started. A
        // holder that renewed or started in between wins; a repair is never queued again
        // after it started (`start` also refuses once the lease has run out).
        let owner_guard = owner.as_deref().map(Guard::HeldBy);
        let mut guards: Vec<Guard> = owner_guard.into_iter().collect();
        guards.push(Guard::LeaseEndedBefore(now));
        if started.is_none() {
            guards.push(Guard::NotStarted);
        }
        let from = [(State::Running, guards.as_slice())];
        let expired = Transition::new(
            &id,
            &from,
            to,
            set,
            vec![Audit {
                actor: "tend",
                action,
                detail: serde_json::json!({ "why": why, "lease_owner": owner }),
            }],
        );
        match apply(db, &expired).await {
            Ok(_) => n += 1,
            Err(FlowError::Conflict(_) | FlowError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// At shutdown, after the grace period: jobs this worker still holds are failed with the
/// reason, so none stays claimed by a process that is gone.
pub async fn release_owned(db: &Db, owner: &str, why: &str) -> Result<usize, FlowError> {
    let rows = sqlx::query(
        "SELECT id, lease_owner FROM invocations WHERE state = $1 AND lease_owner = $2",
    )
    .bind(State::Running.as_str())
    .bind(owner)
    .fetch_all(&db.pool)
    .await?;
    fail_running(db, rows, owner, why).await
}

/// The skill kind (`diagnose` / `repair`) and approval expiry of an invocation.
pub async fn kind_and_expiry(db: &Db, id: &str) -> Result<(String, i64), FlowError> {
    let row = sqlx::query("SELECT kind, expires_ms FROM invocations WHERE id = $1")
        .bind(id)
        .fetch_one(&db.pool)
        .await?;
    Ok((row.try_get("kind")?, row.try_get("expires_ms")?))
}

/// Counts by state (for metrics and status).
pub async fn counts(db: &Db) -> Result<Vec<(String, i64)>, FlowError> {
    let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM invocations GROUP BY state")
        .fetch_all(&db.pool)
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("state")?, r.try_get("n")?)))
        .collect()
}
