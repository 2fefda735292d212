//! The one transition function (`invocation::apply`) on SQLite and PostgreSQL: a change from
//! the wrong state is a conflict that names the state the invocation is in and writes
//! nothing; of racing changes exactly one wins; a result is taken only from the job's holder.

use std::sync::Arc;

use serde_json::json;
use tend_orchestrator::audit::{self, Action};
use tend_orchestrator::invocation::{
    self, Audit, FlowError, JobOutcome, Queue, Runner, Set, State, Transition,
};
use tend_orchestrator::{Db, db::now_ms};

use crate::orchestrator::Backend;
use crate::registry::World;

/// A fresh database on `backend`, with the orchestrator's schema.
async fn fresh(backend: Backend, w: &World) -> Db {
    Db::connect(&backend.database(w, "transitions"))
        .await
        .expect("connect")
}

/// An invocation row in `state` (held by `holder` if given), as the orchestrator stores one.
async fn seed(db: &Db, id: &str, state: State, holder: Option<&str>) {
    let verdict = json!({ "decision": { "decision": "allow" }, "level": 0, "reasons": [] });
    sqlx::query(
        "INSERT INTO invocations (id, skill, version, digest, target, input, reason, requester, level, approvals_required, invocation_digest, verdict, state, created_ms, expires_ms, lease_owner, lease_until_ms) VALUES ($1, 'acme-echo', '1.0.0', 'sha256:00', 'local', '{}', 'test', 'alice', 0, 0, 'sha256:11', $2, $3, $4, $5, $6, $7)",
    )
    .bind(id)
    .bind(verdict.to_string())
    .bind(state.as_str())
    .bind(now_ms())
    .bind(now_ms() + 60_000)
    .bind(holder)
    .bind(holder.map(|_| now_ms() + 60_000))
    .execute(&db.pool)
    .await
    .expect("seed an invocation");
}

fn cancel<'a>(id: &'a str) -> Transition<'a> {
    Transition::new(
        id,
        &[(State::PendingApproval, &[]), (State::Queued, &[])],
        State::Cancelled,
        &[Set::FinishedNow],
        vec![Audit {
            actor: "alice",
            action: Action::InvocationCancelled,
            detail: json!({ "state": "cancelled" }),
        }],
    )
}

async fn state_of(db: &Db, id: &str) -> State {
    invocation::get(db, id).await.expect("get").state
}

async fn events_for(db: &Db, id: &str, action: Action) -> usize {
    audit::list(db, 0, 10_000)
        .await
        .expect("audit")
        .iter()
        .filter(|e| e.subject == id && e.action == action.as_str())
        .count()
}

async fn a_change_from_the_wrong_state_names_the_state_and_writes_nothing(backend: Backend) {
    let w = World {
        dir: tempfile::tempdir().expect("tempdir"),
    };
    let db = fresh(backend, &w).await;
    seed(&db, "inv_done", State::Succeeded, None).await;
    let head = audit::head(&db).await.expect("head");

    let err = invocation::apply(&db, &cancel("inv_done"))
        .await
        .expect_err("a succeeded invocation cannot be cancelled");
    let FlowError::Conflict(message) = &err else {
        panic!("expected a conflict (409), got {err:?}");
    };
    assert!(
        message.contains("inv_done is succeeded")
            && message.contains("cannot become cancelled")
            && message.contains("pending_approval, or queued"),
        "{message}"
    );
    assert_eq!(state_of(&db, "inv_done").await, State::Succeeded);
    assert_eq!(
        audit::head(&db).await.expect("head"),
        head,
        "no audit event"
    );

    // An invocation that does not exist is not found, not a conflict.
    let err = invocation::apply(&db, &cancel("inv_nope"))
        .await
        .expect_err("no such invocation");
    assert!(matches!(err, FlowError::NotFound(_)), "{err:?}");

    // From an allowed state it applies, with its audit event, in one go.
    seed(&db, "inv_queued", State::Queued, None).await;
    invocation::apply(&db, &cancel("inv_queued"))
        .await
        .expect("a queued invocation can be cancelled");
    assert_eq!(state_of(&db, "inv_queued").await, State::Cancelled);
    assert_eq!(
        events_for(&db, "inv_queued", Action::InvocationCancelled).await,
        1
    );
    let row = sqlx::query("SELECT finished_ms FROM invocations WHERE id = $1")
        .bind("inv_queued")
        .fetch_one(&db.pool)
        .await
        .expect("row");
    let finished: Option<i64> = sqlx::Row::try_get(&row, "finished_ms").expect("finished_ms");
    assert!(finished.is_some(), "the transition wrote its columns");
    db.close().await;
}

async fn a_result_is_taken_only_from_the_holder_of_the_lease(backend: Backend) {
    let w = World {
        dir: tempfile::tempdir().expect("tempdir"),
    };
    let db = fresh(backend, &w).await;
    seed(&db, "inv_run", State::Running, Some("worker-a")).await;
    let report = json!({ "outcome": "ok" });
    let outcome = || JobOutcome {
        succeeded: true,
        result: &report,
        detail: json!({ "outcome": "ok" }),
        refused: false,
    };

    let err = invocation::record_result(&db, "inv_run", Runner::Worker("worker-b"), outcome())
        .await
        .expect_err("worker-b does not hold the job");
    let FlowError::Conflict(message) = &err else {
        panic!("expected a conflict (409), got {err:?}");
    };
    assert!(
        message.contains("is running (held by worker-a)") && message.contains("held by worker-b"),
        "{message}"
    );
    assert_eq!(state_of(&db, "inv_run").await, State::Running);
    assert_eq!(
        events_for(&db, "inv_run", Action::InvocationSucceeded).await,
        0
    );

    invocation::record_result(&db, "inv_run", Runner::Worker("worker-a"), outcome())
        .await
        .expect("the holder's result is recorded");
    let inv = invocation::get(&db, "inv_run").await.expect("get");
    assert_eq!(inv.state, State::Succeeded);
    assert_eq!(inv.result, Some(report.clone()));
    let events = audit::list(&db, 0, 100).await.expect("audit");
    let recorded = events
        .iter()
        .find(|e| e.subject == "inv_run" && e.action == "invocation.succeeded")
        .expect("one invocation.succeeded event");
    assert_eq!(recorded.actor, "worker-a");
    assert_eq!(recorded.detail["state"], "succeeded");

    // Once recorded, a second result (even the holder's) changes nothing.
    let err = invocation::record_result(&db, "inv_run", Runner::Worker("worker-a"), outcome())
        .await
        .expect_err("already recorded");
    assert!(
        matches!(&err, FlowError::Conflict(m) if m.contains("is succeeded")),
        "{err:?}"
    );
    assert_eq!(
        events_for(&db, "inv_run", Action::InvocationSucceeded).await,
        1
    );

    // An agent's late result for a job marked `unknown` is taken from the agent it was
    // assigned to, and from no other.
    seed(&db, "inv_late", State::Unknown, None).await;
    sqlx::query("UPDATE invocations SET assigned_agent = $1 WHERE id = $2")
        .bind("agent_a")
        .bind("inv_late")
        .execute(&db.pool)
        .await
        .expect("assign");
    let failed = json!({ "outcome": "trap" });
    let late = || JobOutcome {
        succeeded: false,
        result: &failed,
        detail: json!({ "late": true }),
        refused: false,
    };
    let other = Runner::Agent {
        id: "agent_b",
        name: "b",
    };
    let err = invocation::record_result(&db, "inv_late", other, late())
        .await
        .expect_err("agent_b was not assigned the job");
    assert!(
        matches!(&err, FlowError::Conflict(m) if m.contains("is unknown") && m.contains("assigned to agent_b")),
        "{err:?}"
    );
    let assigned = Runner::Agent {
        id: "agent_a",
        name: "a",
    };
    invocation::record_result(&db, "inv_late", assigned, late())
        .await
        .expect("the assigned agent's late result is recorded");
    assert_eq!(state_of(&db, "inv_late").await, State::Failed);
    assert_eq!(
        events_for(&db, "inv_late", Action::InvocationFailed).await,
        1
    );
    db.close().await;
}

async fn of_racing_changes_exactly_one_wins(backend: Backend) {
    let w = World {
        dir: tempfile::tempdir().expect("tempdir"),
    };
    let db = Arc::new(fresh(backend, &w).await);

    // Eight cancels of one queued invocation at once: one applies, seven are conflicts.
    seed(&db, "inv_race", State::Queued, None).await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            invocation::apply(&db, &cancel("inv_race")).await
        }));
    }
    let mut won = 0;
    for t in tasks {
        match t.await.expect("task") {
            Ok(_) => won += 1,
            Err(FlowError::Conflict(m)) => assert!(m.contains("is cancelled"), "{m}"),
            Err(e) => panic!("a racing change failed instead of losing: {e}"),
        }
    }
    assert_eq!(won, 1);
    assert_eq!(
        events_for(&db, "inv_race", Action::InvocationCancelled).await,
        1
    );

    // Eight claimants of one queued job: one gets it, the others find nothing.
    seed(&db, "inv_claim", State::Queued, None).await;
    let mut tasks = Vec::new();
    for n in 0..8 {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            let owner = format!("worker-{n}");
            invocation::claim(&db, &owner, 60_000, Queue::Local("local")).await
        }));
    }
    let mut claimed = Vec::new();
    for t in tasks {
        if let Some(inv) = t
            .await
            .expect("task")
            .expect("a claim fails only by losing")
        {
            claimed.push(inv.id);
        }
    }
    assert_eq!(claimed, vec!["inv_claim".to_string()]);
    assert_eq!(state_of(&db, "inv_claim").await, State::Running);
    assert_eq!(
        events_for(&db, "inv_claim", Action::InvocationRunning).await,
        1
    );

    db.close().await;
}

macro_rules! on_both {
    ($($name:ident => $scenario:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread")]
                async fn sqlite() {
                    super::$scenario(crate::orchestrator::Backend::Sqlite).await
                }
                #[tokio::test(flavor = "multi_thread")]
                async fn postgres() {
                    super::$scenario(crate::orchestrator::Backend::Postgres).await
                }
            }
        )*
    };
}

/// The holder of a job whose lease ran out cannot start it any more (so the sweep may queue it
/// again without racing a start), and the sweep queues again only what is still not started.
async fn a_job_whose_lease_ran_out_is_not_started_and_a_started_one_is_not_requeued(
    backend: Backend,
) {
    let w = World::new();
    let db = fresh(backend, &w).await;
    let agent = tend_orchestrator::agents::Agent {
        id: "agent_0000000000000001".into(),
        name: "web-1".into(),
        hostname: "web-1".into(),
        os: "linux".into(),
        arch: "x86_64".into(),
        labels: Default::default(),
        pools: vec!["web".into()],
        public_key: String::new(),
        ceiling: Default::default(),
        last_seen_ms: now_ms(),
        heartbeat_ms: 30_000,
        running: 0,
        capacity: 1,
        jobs_ok: 0,
        jobs_failed: 0,
    };
    let lapse = |id: &'static str| {
        sqlx::query("UPDATE invocations SET lease_until_ms = $1, kind = 'repair' WHERE id = $2")
            .bind(now_ms() - 1_000)
            .bind(id)
            .execute(&db.pool)
    };
    // Its lease ran out before the holder said it started: the start is refused.
    seed(&db, "inv_00000000000000a1", State::Running, Some(&agent.id)).await;
    lapse("inv_00000000000000a1").await.expect("lapse");
    let refused = tend_orchestrator::agents::start(&db, &agent, "inv_00000000000000a1").await;
    assert!(
        matches!(refused, Err(FlowError::Conflict(_))),
        "{refused:?}"
    );
    assert_eq!(
        events_for(&db, "inv_00000000000000a1", Action::InvocationStarted).await,
        0
    );
    // A repair that did start before its lease ran out is never queued again: unknown.
    seed(&db, "inv_00000000000000a2", State::Running, Some(&agent.id)).await;
    sqlx::query("UPDATE invocations SET kind = 'repair' WHERE id = $1")
        .bind("inv_00000000000000a2")
        .execute(&db.pool)
        .await
        .expect("kind");
    tend_orchestrator::agents::start(&db, &agent, "inv_00000000000000a2")
        .await
        .expect("started while the lease holds");
    lapse("inv_00000000000000a2").await.expect("lapse");
    invocation::expire_leases(&db).await.expect("sweep");
    assert_eq!(state_of(&db, "inv_00000000000000a1").await, State::Queued);
    assert_eq!(state_of(&db, "inv_00000000000000a2").await, State::Unknown);
}

on_both! {
    lease_and_start => a_job_whose_lease_ran_out_is_not_started_and_a_started_one_is_not_requeued,
    wrong_state_is_a_conflict => a_change_from_the_wrong_state_names_the_state_and_writes_nothing,
    results_come_from_the_holder => a_result_is_taken_only_from_the_holder_of_the_lease,
    racing_changes => of_racing_changes_exactly_one_wins,
}
