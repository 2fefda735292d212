//! Every change of an invocation's state, as data: a [`Transition`] names the row, the states
//! (and lease conditions) it may start from, the state it ends in, the columns it writes and
//! the audit events that record it. [`apply`] is the one place that runs one:
//!
//! 1. one conditional `UPDATE invocations ... WHERE id = $ AND state = $from [AND guards]` per
//!    allowed starting state, until one matches (so two racing requests cannot both win);
//! 2. no row matched: a [`FlowError::Conflict`] (HTTP 409) naming the state the invocation is
//!    really in, and nothing is written;
//! 3. otherwise the audit events, in the same transaction, and commit.
//!
//! The SQL text is made of fixed fragments chosen by the variants of [`Set`] and [`Guard`];
//! every value, states included, is a bound parameter.

use std::fmt::Write as _;

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{FlowError, Queue, State};
use crate::audit::{self, Action};
use crate::db::{Db, now_ms};

/// Which row a transition moves.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// This invocation.
    Id(&'a str),
    /// The oldest one in the starting state that `queue` may take (a claim): picked and moved
    /// in one statement, with `FOR UPDATE SKIP LOCKED` on PostgreSQL (on SQLite the single
    /// writer makes the statement atomic).
    Oldest(Queue<'a>),
}

/// What else must hold of the row, besides its state.
#[derive(Debug, Clone, Copy)]
pub enum Guard<'a> {
    /// Its lease is held by this owner (the worker's name or an agent's id).
    HeldBy(&'a str),
    /// Its holder has not said it started (`run_started_ms` unset).
    NotStarted,
    /// It is assigned to this agent.
    AssignedTo(&'a str),
    /// Its lease ran out before this time (unix ms): the holder is gone.
    LeaseEndedBefore(i64),
    /// Its lease still holds at this time (unix ms).
    LeaseHoldsAt(i64),
}

/// A column a transition writes besides `state`.
#[derive(Debug, Clone, Copy)]
pub enum Set<'a> {
    /// `queued_ms`: now.
    QueuedNow,
    /// `started_ms`: now (claimed).
    ClaimedNow,
    /// `run_started_ms`: now (the holder started running it).
    StartedNow,
    /// `run_started_ms`: unset (it will start afresh).
    NotStarted,
    /// `finished_ms`: now.
    FinishedNow,
    /// `result`: this JSON.
    Result(&'a serde_json::Value),
    /// `comment`: what the person who ended it said.
    Comment(&'a str),
    /// `plan`: the plan record, and the `invocation_digest` that now binds it.
    Plan {
        plan: &'a serde_json::Value,
        digest: &'a str,
    },
    /// A lease for `owner` until `until_ms`.
    Lease { owner: &'a str, until_ms: i64 },
    /// The lease held now, extended to `until_ms`.
    LeaseUntil(i64),
    /// No lease.
    NoLease,
    /// Assigned to this agent.
    AssignedTo(&'a str),
    /// Assigned to no agent.
    Unassigned,
    /// A `pool:` job assigned to no agent, so any agent of the pool may take it; other jobs
    /// keep their agent.
    UnassignedIfPool,
}

/// One audit event recording a transition (its subject is the invocation).
#[derive(Debug, Clone)]
pub struct Audit<'a> {
    pub actor: &'a str,
    pub action: Action,
    pub detail: serde_json::Value,
}

/// One change of state, as data.
#[derive(Debug, Clone)]
pub struct Transition<'a> {
    pub target: Target<'a>,
    /// The states it may start from, each with what else must hold of the row then; tried in
    /// order inside one transaction.
    pub from: &'a [(State, &'a [Guard<'a>])],
    pub to: State,
    pub set: &'a [Set<'a>],
    /// The events that record it, appended in this order in its transaction. Empty only where
    /// the caller records the change itself (an agent's removal counts the jobs it requeues)
    /// or the state does not change (a lease renewal).
    pub audit: Vec<Audit<'a>>,
}

impl<'a> Transition<'a> {
    /// Move invocation `id` from one of `from` to `to`, recorded by `audit`.
    pub fn new(
        id: &'a str,
        from: &'a [(State, &'a [Guard<'a>])],
        to: State,
        set: &'a [Set<'a>],
        audit: Vec<Audit<'a>>,
    ) -> Transition<'a> {
        Transition {
            target: Target::Id(id),
            from,
            to,
            set,
            audit,
        }
    }
}

/// A value bound to a placeholder.
enum Arg<'a> {
    Text(&'a str),
    Owned(String),
    Int(i64),
}

/// SQL text made of fixed fragments, with numbered placeholders for every value.
#[derive(Default)]
struct Sql<'a> {
    text: String,
    args: Vec<Arg<'a>>,
}

impl<'a> Sql<'a> {
    fn push(&mut self, fragment: &'static str) -> &mut Self {
        self.text.push_str(fragment);
        self
    }

    fn arg(&mut self, arg: Arg<'a>) -> &mut Self {
        self.args.push(arg);
        let _ = write!(self.text, "${}", self.args.len());
        self
    }

    fn query(&self) -> sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments<'_>> {
        let mut q = sqlx::query(&self.text);
        for a in &self.args {
            q = match a {
                Arg::Text(s) => q.bind(*s),
                Arg::Owned(s) => q.bind(s.as_str()),
                Arg::Int(n) => q.bind(*n),
            };
        }
        q
    }
}

/// `UPDATE invocations SET state = <to>, <set> WHERE <target> AND state = <from> AND <guards>
/// RETURNING *`.
fn update<'a>(
    t: &Transition<'a>,
    from: State,
    guards: &[Guard<'a>],
    now: i64,
    postgres: bool,
) -> Sql<'a> {
    let mut sql = Sql::default();
    sql.push("UPDATE invocations SET state = ")
        .arg(Arg::Text(t.to.as_str()));
    for s in t.set {
        match *s {
            Set::QueuedNow => sql.push(", queued_ms = ").arg(Arg::Int(now)),
            Set::ClaimedNow => sql.push(", started_ms = ").arg(Arg::Int(now)),
            Set::StartedNow => sql.push(", run_started_ms = ").arg(Arg::Int(now)),
            Set::NotStarted => sql.push(", run_started_ms = NULL"),
            Set::FinishedNow => sql.push(", finished_ms = ").arg(Arg::Int(now)),
            Set::Result(v) => sql.push(", result = ").arg(Arg::Owned(v.to_string())),
            Set::Comment(c) => sql.push(", comment = ").arg(Arg::Text(c)),
            Set::Plan { plan, digest } => sql
                .push(", plan = ")
                .arg(Arg::Owned(plan.to_string()))
                .push(", invocation_digest = ")
                .arg(Arg::Text(digest)),
            Set::Lease { owner, until_ms } => sql
                .push(", lease_owner = ")
                .arg(Arg::Text(owner))
                .push(", lease_until_ms = ")
                .arg(Arg::Int(until_ms)),
            Set::LeaseUntil(until_ms) => sql.push(", lease_until_ms = ").arg(Arg::Int(until_ms)),
            Set::NoLease => sql.push(", lease_owner = NULL, lease_until_ms = NULL"),
            Set::AssignedTo(agent) => sql.push(", assigned_agent = ").arg(Arg::Text(agent)),
            Set::Unassigned => sql.push(", assigned_agent = NULL"),
            Set::UnassignedIfPool => sql.push(
                ", assigned_agent = CASE WHEN target LIKE 'pool:%' THEN NULL ELSE assigned_agent END",
            ),
        };
    }
    match t.target {
        Target::Id(id) => sql.push(" WHERE id = ").arg(Arg::Text(id)),
        Target::Oldest(queue) => {
            sql.push(" WHERE id = (SELECT id FROM invocations WHERE state = ")
                .arg(Arg::Text(from.as_str()));
            match queue {
                Queue::Local(target) => sql.push(" AND target = ").arg(Arg::Text(target)),
                Queue::Agent(agent) => sql.push(" AND assigned_agent = ").arg(Arg::Text(agent)),
            };
            sql.push(" ORDER BY created_ms LIMIT 1");
            if postgres {
                sql.push(" FOR UPDATE SKIP LOCKED");
            }
            sql.push(")")
        }
    };
    sql.push(" AND state = ").arg(Arg::Text(from.as_str()));
    for g in guards {
        match *g {
            Guard::HeldBy(owner) => sql.push(" AND lease_owner = ").arg(Arg::Text(owner)),
            Guard::NotStarted => sql.push(" AND run_started_ms IS NULL"),
            Guard::AssignedTo(agent) => sql.push(" AND assigned_agent = ").arg(Arg::Text(agent)),
            Guard::LeaseEndedBefore(t) => sql.push(" AND lease_until_ms < ").arg(Arg::Int(t)),
            Guard::LeaseHoldsAt(t) => sql.push(" AND lease_until_ms >= ").arg(Arg::Int(t)),
        };
    }
    sql.push(" RETURNING *");
    sql
}

/// Run `t` and commit, or answer a conflict naming the state the invocation is in (and
/// write nothing).
pub async fn apply(db: &Db, t: &Transition<'_>) -> Result<(), FlowError> {
    let mut tx = db.begin_write().await?;
    match apply_in(&mut tx, t).await {
        Ok(Some(_)) => {
            tx.commit().await?;
            Ok(())
        }
        Ok(None) => {
            tx.rollback().await?;
            Err(FlowError::Conflict(
                "no invocation is waiting to be claimed".into(),
            ))
        }
        Err(e) => {
            // Roll back now: a dropped transaction gives its locks back only when the pooled
            // connection is next used.
            tx.rollback().await?;
            Err(e)
        }
    }
}

/// Run `t` inside the caller's transaction (the caller commits, or rolls back on an error):
/// the row as it is now. `None` only for [`Target::Oldest`]: nothing was waiting.
pub async fn apply_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    t: &Transition<'_>,
) -> Result<Option<AnyRow>, FlowError> {
    let now = now_ms();
    let postgres = tx.backend_name() == "PostgreSQL";
    let mut moved = None;
    for (from, guards) in t.from {
        let sql = update(t, *from, guards, now, postgres);
        if let Some(row) = sql.query().fetch_optional(&mut **tx).await? {
            moved = Some(row);
            break;
        }
    }
    let row = match (moved, t.target) {
        (Some(row), _) => row,
        (None, Target::Oldest(_)) => return Ok(None),
        (None, Target::Id(id)) => return Err(conflict(tx, id, t).await),
    };
    let id: String = row.try_get("id")?;
    for event in &t.audit {
        audit::append_tx(tx, event.actor, event.action, &id, event.detail.clone()).await?;
    }
    Ok(Some(row))
}

/// The one conflict: what the invocation is, and what the transition needed it to be.
async fn conflict(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    id: &str,
    t: &Transition<'_>,
) -> FlowError {
    let row = sqlx::query(
        "SELECT state, lease_owner, assigned_agent, run_started_ms FROM invocations WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&mut **tx)
    .await;
    let row = match row {
        Ok(Some(row)) => row,
        Ok(None) => return FlowError::NotFound(format!("no invocation {id}")),
        Err(e) => return e.into(),
    };
    let state: String = row.try_get("state").unwrap_or_default();
    let holder: Option<String> = row.try_get("lease_owner").unwrap_or_default();
    let now = match holder {
        Some(h) => format!("{state} (held by {h})"),
        None => state,
    };
    let needs = t
        .from
        .iter()
        .map(|(s, guards)| {
            let mut n = s.as_str().to_string();
            for g in *guards {
                match g {
                    Guard::HeldBy(o) => n.push_str(&format!(" and held by {o}")),
                    Guard::NotStarted => n.push_str(" and not yet started"),
                    Guard::AssignedTo(a) => n.push_str(&format!(" and assigned to {a}")),
                    Guard::LeaseEndedBefore(_) => n.push_str(" and its lease run out"),
                    Guard::LeaseHoldsAt(_) => n.push_str(" and its lease still holding"),
                }
            }
            n
        })
        .collect::<Vec<_>>()
        .join(", or ");
    let to = t.to.as_str();
    if t.from.iter().any(|(s, _)| *s == t.to) {
        FlowError::Conflict(format!(
            "invocation {id} is {now}: this needs it to be {needs}"
        ))
    } else {
        FlowError::Conflict(format!(
            "invocation {id} is {now}, so it cannot become {to}: that needs it to be {needs}"
        ))
    }
}
