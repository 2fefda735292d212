//! Invocations, approvals and the state machine:
//!
//! ```text
//! pending_approval -> queued -> running -> succeeded | failed
//! pending_approval -> rejected | expired | cancelled
//! queued -> cancelled
//! ```
//!
//! Every transition is one conditional `UPDATE ... WHERE state = <from>`, so two racing
//! requests cannot both win; a transition that does not apply is a conflict (HTTP 409).
//! An approval binds the invocation digest — the skill digest, input, target, grants, limits
//! and expiry — so nothing can be changed after approval.

use sqlx::Row;
use sqlx::any::AnyRow;
use tend_policy::{Decision, Verdict};

use crate::audit;
use crate::auth::Actor;
use crate::db::{Backend, Db, DbError, now_ms, random_id, rfc3339};
use crate::skills::Resolved;
pub use tend_protocol::{Approval, Invocation, State};

#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<sqlx::Error> for FlowError {
    fn from(e: sqlx::Error) -> Self {
        FlowError::Db(DbError::Sql(e))
    }
}

/// The digest an approval binds: every byte that decides what would run, where and how.
pub fn invocation_digest(
    skill: &Resolved,
    target: &str,
    input: &serde_json::Value,
    expires_ms: i64,
) -> String {
    crate::protocol::invocation_digest(
        &skill.name,
        &skill.version,
        &skill.digest,
        target,
        input,
        &skill.manifest.grants(),
        &serde_json::to_value(&skill.manifest.limits).unwrap_or_default(),
        expires_ms,
    )
}

/// Everything needed to record a new invocation.
pub struct NewInvocation<'a> {
    pub skill: &'a Resolved,
    pub target: &'a str,
    pub input: serde_json::Value,
    pub reason: &'a str,
    pub requester: &'a Actor,
    pub verdict: &'a Verdict,
    pub approval_ttl_ms: i64,
    /// What started it (recorded with it and in the audit trail).
    pub trigger: crate::flow::Trigger,
}

pub async fn create(db: &Db, new: NewInvocation<'_>) -> Result<Invocation, FlowError> {
    let now = now_ms();
    let expires = now + new.approval_ttl_ms;
    let (state, required) = match &new.verdict.decision {
        Decision::Allow => (State::Queued, 0u8),
        Decision::NeedsApproval {
            approvals_required, ..
        } => (State::PendingApproval, *approvals_required),
        Decision::Deny(_) => {
            return Err(FlowError::Forbidden(
                "denied invocations are not recorded".into(),
            ));
        }
    };
    let id = random_id("inv");
    let digest = invocation_digest(new.skill, new.target, &new.input, expires);
    let mut tx = db.pool.begin().await?;
    sqlx::query(
        "INSERT INTO invocations (id, skill, version, digest, target, input, reason, requester, level, approvals_required, invocation_digest, verdict, state, created_ms, expires_ms, queued_ms, kind, trigger) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)",
    )
    .bind(&id)
    .bind(&new.skill.name)
    .bind(&new.skill.version)
    .bind(&new.skill.digest)
    .bind(new.target)
    .bind(new.input.to_string())
    .bind(new.reason)
    .bind(&new.requester.name)
    .bind(u8::from(new.verdict.level) as i64)
    .bind(required as i64)
    .bind(&digest)
    .bind(serde_json::to_string(new.verdict).unwrap_or_default())
    .bind(state.as_str())
    .bind(now)
    .bind(expires)
    .bind((state == State::Queued).then_some(now))
    .bind(new.skill.manifest.skill.kind.to_string())
    .bind(new.trigger.as_str())
    .execute(&mut *tx)
    .await?;
    audit::append_tx(
        &mut tx,
        &new.requester.name,
        "invocation.create",
        &id,
        serde_json::json!({
            "skill": new.skill.name, "version": new.skill.version, "digest": new.skill.digest,
            "target": new.target, "reason": new.reason, "state": state.as_str(),
            "trigger": new.trigger.as_str(),
            "level": u8::from(new.verdict.level), "approvals_required": required,
            "invocation_digest": digest, "decision": new.verdict.explain(),
        }),
    )
    .await?;
    tx.commit().await?;
    Ok(Invocation {
        id,
        skill: new.skill.name.clone(),
        version: new.skill.version.clone(),
        digest: new.skill.digest.clone(),
        target: new.target.to_string(),
        input: new.input,
        reason: new.reason.to_string(),
        requester: new.requester.name.clone(),
        trigger: new.trigger.as_str().to_string(),
        level: u8::from(new.verdict.level),
        approvals_required: required,
        invocation_digest: digest,
        state,
        verdict: new.verdict.clone(),
        reasons: new.verdict.explain(),
        created_at: rfc3339(now),
        expires_at: rfc3339(expires),
        approvals: Vec::new(),
        result: None,
    })
}

fn from_row(r: &AnyRow, approvals: Vec<Approval>) -> Result<Invocation, FlowError> {
    let verdict_text: String = r.try_get("verdict")?;
    let verdict: Verdict = serde_json::from_str(&verdict_text)
        .map_err(|e| FlowError::Conflict(format!("stored verdict unreadable: {e}")))?;
    let input: String = r.try_get("input")?;
    let result: Option<String> = r.try_get("result")?;
    let state: String = r.try_get("state")?;
    Ok(Invocation {
        id: r.try_get("id")?,
        skill: r.try_get("skill")?,
        version: r.try_get("version")?,
        digest: r.try_get("digest")?,
        target: r.try_get("target")?,
        input: serde_json::from_str(&input).unwrap_or(serde_json::Value::Null),
        reason: r.try_get("reason")?,
        requester: r.try_get("requester")?,
        trigger: r.try_get("trigger")?,
        level: r.try_get::<i64, _>("level")? as u8,
        approvals_required: r.try_get::<i64, _>("approvals_required")? as u8,
        invocation_digest: r.try_get("invocation_digest")?,
        state: State::parse(&state).unwrap_or(State::Failed),
        reasons: verdict.explain(),
        verdict,
        created_at: rfc3339(r.try_get("created_ms")?),
        expires_at: rfc3339(r.try_get("expires_ms")?),
        approvals,
        result: result.and_then(|t| serde_json::from_str(&t).ok()),
    })
}

async fn approvals(db: &Db, id: &str) -> Result<Vec<Approval>, FlowError> {
    let rows = sqlx::query(
        "SELECT approver, invocation_digest, created_ms FROM approvals WHERE invocation_id = $1 ORDER BY created_ms",
    )
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
    })
}

pub async fn get(db: &Db, id: &str) -> Result<Invocation, FlowError> {
    let row = sqlx::query("SELECT * FROM invocations WHERE id = $1")
        .bind(id)
        .fetch_optional(&db.pool)
        .await?
        .ok_or_else(|| FlowError::NotFound(format!("no invocation {id}")))?;
    from_row(&row, approvals(db, id).await?)
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
        "SELECT invocation_id, approver, invocation_digest, created_ms FROM approvals WHERE invocation_id IN ({}) ORDER BY created_ms",
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

/// Move `id` from one of `from` to `to`; a conflict names the state it is really in.
async fn transition(
    db: &Db,
    id: &str,
    from: &[State],
    to: State,
    actor: &str,
    detail: serde_json::Value,
) -> Result<(), FlowError> {
    let now = now_ms();
    let mut done = false;
    let mut tx = db.pool.begin().await?;
    let stamp = match to {
        State::Queued => Some("queued_ms"),
        State::Succeeded | State::Failed | State::Rejected | State::Expired | State::Cancelled => {
            Some("finished_ms")
        }
        State::PendingApproval | State::Running | State::Unknown => None,
    };
    for f in from {
        let affected = match stamp {
            Some(col) => {
                let sql = format!(
                    "UPDATE invocations SET state = $1, {col} = $2 WHERE id = $3 AND state = $4"
                );
                sqlx::query(&sql)
                    .bind(to.as_str())
                    .bind(now)
                    .bind(id)
                    .bind(f.as_str())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
            }
            None => sqlx::query("UPDATE invocations SET state = $1 WHERE id = $2 AND state = $3")
                .bind(to.as_str())
                .bind(id)
                .bind(f.as_str())
                .execute(&mut *tx)
                .await?
                .rows_affected(),
        };
        if affected == 1 {
            done = true;
            break;
        }
    }
    if !done {
        tx.rollback().await?;
        let current = get(db, id).await?;
        return Err(FlowError::Conflict(format!(
            "invocation {id} is {}, so it cannot become {}",
            current.state.as_str(),
            to.as_str()
        )));
    }
    let mut detail = detail;
    detail["state"] = serde_json::Value::String(to.as_str().into());
    audit::append_tx(
        &mut tx,
        actor,
        &format!("invocation.{}", to.as_str()),
        id,
        detail,
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Approvals as [`tend_policy::admit`] reads them. A time that does not parse never counts.
/// Count the approvals that still stand for this exact invocation, by the one rule in
/// [`tend_policy::admit::valid_approvers`].
fn valid_approvals(inv: &Invocation, expires_ms: i64) -> usize {
    tend_policy::admit::valid_approvers(
        &tend_protocol::approval_facts(&inv.approvals),
        &inv.requester,
        &inv.invocation_digest,
        expires_ms,
    )
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

/// Approve `id` for `digest`. The approval and the `pending_approval -> queued` move it
/// completes commit in one transaction, so a crash cannot leave an approved invocation
/// waiting. A retry by the same approver for the same digest is idempotent: it answers with
/// the current state and, should the invocation still be pending with enough approvals (as a
/// crash under an older release could leave it), completes the move.
pub async fn approve(
    db: &Db,
    id: &str,
    approver: &Actor,
    digest: &str,
) -> Result<Invocation, FlowError> {
    let inv = get(db, id).await?;
    let refuse = |e: FlowError| async {
        let _ = audit::append(
            db,
            &approver.name,
            "approval.refused",
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
    let mut tx = db.pool.begin().await?;
    // Lock the invocation first (a row lock on PostgreSQL, the writer lock on SQLite), so two
    // approvers finishing the count together serialise and the second sees the first.
    let locked = sqlx::query(
        "UPDATE invocations SET state = state WHERE id = $1 AND state = 'pending_approval'",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if locked != 1 {
        tx.rollback().await?;
        let now = get(db, id).await?;
        return refuse(FlowError::Conflict(format!(
            "invocation {id} is {}, not pending approval",
            now.state.as_str()
        )))
        .await;
    }
    let inserted = sqlx::query(
        "INSERT INTO approvals (invocation_id, approver, invocation_digest, created_ms) VALUES ($1, $2, $3, $4)",
    )
    .bind(id)
    .bind(&approver.name)
    .bind(digest)
    .bind(now_ms())
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
        "approval.grant",
        id,
        serde_json::json!({ "invocation_digest": digest }),
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
        let mut tx = db.pool.begin().await?;
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
        "SELECT requester, invocation_digest, approvals_required, expires_ms FROM invocations WHERE id = $1 AND state = 'pending_approval'",
    )
    .bind(id)
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
        "SELECT approver, created_ms FROM approvals WHERE invocation_id = $1 AND invocation_digest = $2 AND approver <> $3 AND created_ms <= $4 ORDER BY created_ms",
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
    let moved = sqlx::query(
        "UPDATE invocations SET state = 'queued', queued_ms = $1 WHERE id = $2 AND state = 'pending_approval'",
    )
    .bind(now)
    .bind(id)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if moved != 1 {
        return Ok(false);
    }
    let mut detail = serde_json::json!({ "state": "queued", "approvers": approvers });
    if recovered {
        detail["recovered"] = serde_json::json!(
            "the approvals were complete but the invocation was still pending: queued on the approver's retry"
        );
    }
    audit::append_tx(tx, actor, "invocation.queued", id, detail).await?;
    Ok(true)
}

pub async fn reject(
    db: &Db,
    id: &str,
    actor: &Actor,
    comment: &str,
) -> Result<Invocation, FlowError> {
    transition(
        db,
        id,
        &[State::PendingApproval],
        State::Rejected,
        &actor.name,
        serde_json::json!({ "comment": comment }),
    )
    .await?;
    get(db, id).await
}

pub async fn cancel(db: &Db, id: &str, actor: &Actor) -> Result<Invocation, FlowError> {
    let inv = get(db, id).await?;
    if inv.requester != actor.name && actor.role != tend_policy::Role::Admin {
        return Err(FlowError::Forbidden(format!(
            "only the requester ({}) or an admin may cancel invocation {id}",
            inv.requester
        )));
    }
    transition(
        db,
        id,
        &[State::PendingApproval, State::Queued],
        State::Cancelled,
        &actor.name,
        serde_json::json!({}),
    )
    .await?;
    get(db, id).await
}

/// Expire pending invocations whose approval window has closed.
pub async fn expire_due(db: &Db) -> Result<usize, FlowError> {
    let rows = sqlx::query(
        "SELECT id FROM invocations WHERE state = 'pending_approval' AND expires_ms < $1",
    )
    .bind(now_ms())
    .fetch_all(&db.pool)
    .await?;
    let mut n = 0;
    for r in rows {
        let id: String = r.try_get("id")?;
        if transition(
            db,
            &id,
            &[State::PendingApproval],
            State::Expired,
            "tend",
            serde_json::json!({ "why": "no sufficient approval before expiry" }),
        )
        .await
        .is_ok()
        {
            n += 1;
        }
    }
    Ok(n)
}

/// Which queued jobs a claimant may take.
#[derive(Debug, Clone, Copy)]
pub enum Queue<'a> {
    /// Jobs for this host, run by the built-in worker.
    Local,
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
    let now = now_ms();
    let (column, value) = match queue {
        Queue::Local => ("target", "local"),
        Queue::Agent(id) => ("assigned_agent", id),
    };
    let lock = match db.backend {
        Backend::Postgres => " FOR UPDATE SKIP LOCKED",
        Backend::Sqlite => "",
    };
    // The local worker starts a job the moment it claims it; an agent says when it starts.
    let started = match queue {
        Queue::Local => ", run_started_ms = $3",
        Queue::Agent(_) => "",
    };
    let sql = format!(
        "UPDATE invocations SET state = 'running', lease_owner = $1, lease_until_ms = $2, started_ms = $3{started}
         WHERE id = (SELECT id FROM invocations WHERE state = 'queued' AND {column} = $4 ORDER BY created_ms LIMIT 1{lock}) AND state = 'queued'
         RETURNING *"
    );
    let mut tx = db.pool.begin().await?;
    let Some(row) = sqlx::query(&sql)
        .bind(owner)
        .bind(now + lease_ms)
        .bind(now)
        .bind(value)
        .fetch_optional(&mut *tx)
        .await?
    else {
        // Roll back now: a dropped transaction gives its lock back only when the pooled
        // connection is next used.
        tx.rollback().await?;
        return Ok(None);
    };
    // A queued job's approvals are read with it: the worker checks them again before it runs.
    let id: String = row.try_get("id")?;
    let approval_rows = sqlx::query(
        "SELECT approver, invocation_digest, created_ms FROM approvals WHERE invocation_id = $1 ORDER BY created_ms",
    )
    .bind(&id)
    .fetch_all(&mut *tx)
    .await?;
    audit::append_tx(
        &mut tx,
        owner,
        "invocation.running",
        &id,
        serde_json::json!({ "state": "running", "lease_ms": lease_ms }),
    )
    .await?;
    tx.commit().await?;
    let approvals = approval_rows
        .iter()
        .map(approval_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(from_row(&row, approvals)?))
}

/// Record the outcome of a job this worker holds.
pub async fn finish(
    db: &Db,
    id: &str,
    owner: &str,
    succeeded: bool,
    result: &serde_json::Value,
    summary: serde_json::Value,
) -> Result<(), FlowError> {
    let to = if succeeded {
        State::Succeeded
    } else {
        State::Failed
    };
    let mut tx = db.pool.begin().await?;
    let n = sqlx::query(
        "UPDATE invocations SET state = $1, result = $2, finished_ms = $3, lease_owner = NULL, lease_until_ms = NULL WHERE id = $4 AND state = 'running' AND lease_owner = $5",
    )
    .bind(to.as_str())
    .bind(result.to_string())
    .bind(now_ms())
    .bind(id)
    .bind(owner)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let mut summary = summary;
    summary["state"] = serde_json::Value::String(to.as_str().into());
    commit_one(
        tx,
        n,
        || format!("invocation {id} is no longer held by {owner}"),
        Recorded {
            actor: owner,
            action: &format!("invocation.{}", to.as_str()),
            subject: id,
            detail: summary,
        },
    )
    .await
}

/// The audit event that records one change.
pub(crate) struct Recorded<'a> {
    pub actor: &'a str,
    pub action: &'a str,
    pub subject: &'a str,
    pub detail: serde_json::Value,
}

/// Finish a one-row change made inside `tx`: if it touched exactly one row, append its audit
/// event and commit both; otherwise roll back and report `conflict` (a 409).
pub(crate) async fn commit_one(
    mut tx: sqlx::Transaction<'_, sqlx::Any>,
    changed: u64,
    conflict: impl FnOnce() -> String,
    event: Recorded<'_>,
) -> Result<(), FlowError> {
    if changed != 1 {
        tx.rollback().await?;
        return Err(FlowError::Conflict(conflict()));
    }
    audit::append_tx(
        &mut tx,
        event.actor,
        event.action,
        event.subject,
        event.detail,
    )
    .await?;
    tx.commit().await?;
    Ok(())
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
    for r in candidates {
        let id: String = r.try_get("id")?;
        let owner: Option<String> = r.try_get("lease_owner")?;
        let mut tx = db.pool.begin().await?;
        let changed = sqlx::query(
            "UPDATE invocations SET state = 'failed', finished_ms = $1, result = $2, lease_owner = NULL WHERE id = $3 AND state = 'running'",
        )
        .bind(now_ms())
        .bind(serde_json::json!({ "error": why }).to_string())
        .bind(&id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed == 1 {
            audit::append_tx(
                &mut tx,
                actor,
                "invocation.failed",
                &id,
                serde_json::json!({ "state": "failed", "why": why, "lease_owner": owner }),
            )
            .await?;
            tx.commit().await?;
            n += 1;
        } else {
            tx.rollback().await?;
        }
    }
    Ok(n)
}

/// Jobs whose lease ran out while their holder was gone (a crash, a lost network):
/// not started yet → queued again; a started diagnose skill → queued again (reading twice is
/// harmless); a started **repair** → `unknown`, escalated to a human, never run again on its own.
pub async fn expire_leases(db: &Db) -> Result<usize, FlowError> {
    let rows = sqlx::query(
        "SELECT id, lease_owner, kind, target, run_started_ms FROM invocations WHERE state = 'running' AND lease_until_ms < $1",
    )
    .bind(now_ms())
    .fetch_all(&db.pool)
    .await?;
    let mut n = 0;
    for r in rows {
        let id: String = r.try_get("id")?;
        let owner: Option<String> = r.try_get("lease_owner")?;
        let kind: String = r.try_get("kind")?;
        let target: String = r.try_get("target")?;
        let started: Option<i64> = r.try_get("run_started_ms")?;
        let mut tx = db.pool.begin().await?;
        let (sql, action, why) = match (started, kind.as_str()) {
            (Some(_), "repair") => (
                "UPDATE invocations SET state = 'unknown', lease_owner = NULL, lease_until_ms = NULL, finished_ms = $1 WHERE id = $2 AND state = 'running'",
                "invocation.unknown",
                "the lease expired after this repair started: it may or may not have acted. Escalated: a human must check the target; it will not run again on its own",
            ),
            (Some(_), _) => (
                "UPDATE invocations SET state = 'queued', lease_owner = NULL, lease_until_ms = NULL, run_started_ms = NULL, queued_ms = $1 WHERE id = $2 AND state = 'running'",
                "invocation.requeued",
                "the lease expired after this diagnose skill started; reading again is harmless, so it is queued again",
            ),
            (None, _) => (
                "UPDATE invocations SET state = 'queued', lease_owner = NULL, lease_until_ms = NULL, queued_ms = $1 WHERE id = $2 AND state = 'running'",
                "invocation.requeued",
                "the lease expired before the job started: queued again",
            ),
        };
        let changed = sqlx::query(sql)
            .bind(now_ms())
            .bind(&id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if changed != 1 {
            tx.rollback().await?;
            continue;
        }
        if action == "invocation.requeued" && target.starts_with("pool:") {
            sqlx::query("UPDATE invocations SET assigned_agent = NULL WHERE id = $1")
                .bind(&id)
                .execute(&mut *tx)
                .await?;
        }
        audit::append_tx(
            &mut tx,
            "tend",
            action,
            &id,
            serde_json::json!({ "why": why, "lease_owner": owner }),
        )
        .await?;
        tx.commit().await?;
        n += 1;
    }
    Ok(n)
}

/// At shutdown, after the grace period: jobs this worker still holds are failed with the
/// reason, so none stays claimed by a process that is gone.
pub async fn release_owned(db: &Db, owner: &str, why: &str) -> Result<usize, FlowError> {
    let rows = sqlx::query(
        "SELECT id, lease_owner FROM invocations WHERE state = 'running' AND lease_owner = $1",
    )
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
