//! Attacks on the trust decisions of signed approvals, plans, narrowing, runs across a pool,
//! the replay guard and token lifecycle: each is what someone holding the orchestrator's
//! database (or an API token) would try, and what Tend does about it.

use serde_json::json;

use crate::agent::{AgentProc, agent_id, audit_events, enroll, submit_to, until_agent};
use crate::orchestrator::{Api, Backend, Orch, setup, tamper};

/// An approval for `agent:web-1` binds that target. Whoever holds the database copies the
/// approved job (its approvals read through `part_of`) and assigns the copy to web-2, whose
/// replay record has never seen the digest: web-2 refuses it, because its target does not
/// name web-2. Likewise a job approved for the orchestrator's own host.
#[tokio::test(flavor = "multi_thread")]
async fn an_approved_job_assigned_to_a_host_its_target_does_not_name_is_refused() {
    let (w, reg) = setup();
    let orch = Orch::start(&w, &reg, Backend::Sqlite, &[]);
    let api = Api::new(&orch);
    let alice = orch.token(&w, "alice", "operator");
    let bob = orch.token(&w, "bob", "approver");
    let trust = w.path("trust.toml");
    for name in ["web-1", "web-2"] {
        enroll(
            &w,
            &orch,
            &reg,
            name,
            trust.to_str().expect("trust"),
            &["--pool", "web", "--max-level", "2"],
        );
    }
    let _web1 = AgentProc::start(&w, "web-1");
    let _web2 = AgentProc::start(&w, "web-2");
    until_agent(&api, &alice, "web-1", "online").await;
    until_agent(&api, &alice, "web-2", "online").await;

    let (s, v) = submit_to(&api, &alice, "acme-disrupt", "agent:web-1", json!({})).await;
    assert_eq!(s, 201, "{v}");
    let id = v["id"].as_str().expect("id").to_string();
    let v = api.wait_for(&alice, &id, "pending_approval").await;
    assert_eq!(v["state"], "pending_approval", "{v}");
    let (s, a) = api
        .approve(&bob, &id, v["invocation_digest"].as_str().expect("d"))
        .await;
    assert_eq!(s, 200, "{a}");
    let done = api.wait_for(&alice, &id, "succeeded").await;
    assert_eq!(done["state"], "succeeded", "{done}");

    let web2 = agent_id(&w, "web-2");
    let forged = "inv_00000000000a7721";
    tamper(
        &orch.database,
        &format!(
            "INSERT INTO invocations (id, skill, version, digest, target, input, reason, requester, level, approvals_required, invocation_digest, verdict, state, created_ms, expires_ms, queued_ms, kind, trigger, manifest_digest, hosts, narrowing, grants, limits, plan, export, plan_for, part_of, assigned_agent) SELECT '{forged}', skill, version, digest, target, input, reason, requester, level, approvals_required, invocation_digest, verdict, 'queued', created_ms, expires_ms, queued_ms, kind, trigger, manifest_digest, hosts, narrowing, grants, limits, plan, export, plan_for, '{id}', '{web2}' FROM invocations WHERE id = '{id}'"
        ),
    );
    let refused = api.wait_for(&alice, forged, "failed").await;
    assert_eq!(
        refused["state"], "failed",
        "web-2 ran a job approved for web-1: {refused}"
    );
    let error = refused["result"]["error"].as_str().expect("refusal");
    assert!(
        error.contains("web-2") && error.contains("agent:web-1"),
        "{error}"
    );
}

/// The export is bound, but only `run` and `plan` exist. An orchestrator that records an
/// approved repair with export `Run` (which `tend approve` shows like any other run, and an
/// approver signs) would have it run as `run` while the runner's replay record — kept for
/// `run` — is skipped, so it could be queued again and again. Every runner refuses an export
/// it does not know.
#[tokio::test(flavor = "multi_thread")]
async fn an_export_other_than_run_or_plan_is_refused_by_the_runner() {
    let (w, reg) = setup();
    let orch = Orch::start(&w, &reg, Backend::Sqlite, &[]);
    let api = Api::new(&orch);
    let alice = orch.token(&w, "alice", "operator");
    let bob = orch.token(&w, "bob", "approver");
    let trust = w.path("trust.toml");
    enroll(
        &w,
        &orch,
        &reg,
        "web-1",
        trust.to_str().expect("trust"),
        &["--pool", "web", "--max-level", "2"],
    );
    let _web1 = AgentProc::start(&w, "web-1");
    until_agent(&api, &alice, "web-1", "online").await;

    let (s, v) = submit_to(&api, &alice, "acme-disrupt", "agent:web-1", json!({})).await;
    assert_eq!(s, 201, "{v}");
    let id = v["id"].as_str().expect("id").to_string();
    let v = api.wait_for(&alice, &id, "pending_approval").await;
    let mut inv: tend_protocol::Invocation = serde_json::from_value(v).expect("invocation");
    inv.export = "Run".into();
    let digest = tend_protocol::invocation_digest(&inv.bound());
    tamper(
        &orch.database,
        &format!(
            "UPDATE invocations SET export = 'Run', invocation_digest = '{digest}' WHERE id = '{id}'"
        ),
    );
    // The approver signs what is shown: the digest recomputed from the fields, export `Run`.
    let (s, a) = api.approve(&bob, &id, &digest).await;
    assert_eq!(s, 200, "{a}");
    let done = api.wait_for(&alice, &id, "failed").await;
    assert_eq!(done["state"], "failed", "an unknown export ran: {done}");
    let error = done["result"]["error"].as_str().expect("refusal");
    assert!(
        error.contains("\"Run\"") && error.contains("export"),
        "{error}"
    );
}

/// A requester's reason is shown to approvers next to what they sign: one with escape
/// sequences or line breaks (to erase or fake rows on the approver's terminal) is refused at
/// submit with the reason, and nothing is recorded.
#[tokio::test(flavor = "multi_thread")]
async fn a_reason_that_would_write_to_the_approvers_terminal_is_refused() {
    let (w, reg) = setup();
    let orch = Orch::start(&w, &reg, Backend::Sqlite, &[]);
    let api = Api::new(&orch);
    let alice = orch.token(&w, "alice", "operator");
    for reason in [
        "disk full\u{1b}[1A\u{1b}[2Kgrants none",
        "ok\ngrants       none",
    ] {
        let (s, v) = api
            .call(
                "POST",
                "/api/v1/invocations",
                Some(&alice),
                Some(json!({"skill": "acme-echo", "reason": reason, "input": {}})),
            )
            .await;
        assert_eq!(s, 400, "{v}");
        assert!(v.to_string().contains("`reason` must be one line"), "{v}");
    }
    let (_, list) = api
        .call("GET", "/api/v1/invocations", Some(&alice), None)
        .await;
    assert_eq!(
        list["invocations"].as_array().map(Vec::len),
        Some(0),
        "{list}"
    );
}

/// A `pool:` invocation that needs approval is approved for one host: the best member that
/// would accept it is chosen at submit and bound (the approver sees it), it runs there, and a
/// copy of it queued for another member of the same pool is refused — one approval, one run.
#[tokio::test(flavor = "multi_thread")]
async fn an_approval_for_a_pool_is_for_the_one_host_it_names() {
    let (w, reg) = setup();
    let orch = Orch::start(&w, &reg, Backend::Sqlite, &[]);
    let api = Api::new(&orch);
    let alice = orch.token(&w, "alice", "operator");
    let bob = orch.token(&w, "bob", "approver");
    let trust = w.path("trust.toml");
    for name in ["web-1", "web-2"] {
        enroll(
            &w,
            &orch,
            &reg,
            name,
            trust.to_str().expect("trust"),
            &["--pool", "web", "--max-level", "2"],
        );
    }
    let _web1 = AgentProc::start(&w, "web-1");
    let _web2 = AgentProc::start(&w, "web-2");
    until_agent(&api, &alice, "web-1", "online").await;
    until_agent(&api, &alice, "web-2", "online").await;

    let (s, v) = submit_to(&api, &alice, "acme-disrupt", "pool:web", json!({})).await;
    assert_eq!(s, 201, "{v}");
    let hosts = v["hosts"].as_array().expect("hosts").clone();
    assert_eq!(hosts.len(), 1, "{v}");
    let chosen = hosts[0].as_str().expect("host").to_string();
    let other = if chosen == "web-1" { "web-2" } else { "web-1" };
    let id = v["id"].as_str().expect("id").to_string();
    let (s, a) = api
        .approve(&bob, &id, v["invocation_digest"].as_str().expect("d"))
        .await;
    assert_eq!(s, 200, "{a}");
    let done = api.wait_for(&alice, &id, "succeeded").await;
    let ran_on = audit_events(&api, &alice)
        .await
        .into_iter()
        .find(|e| e["subject"] == id.as_str() && e["action"] == "invocation.started")
        .expect("started");
    assert_eq!(ran_on["actor"], chosen.as_str(), "{done}");

    let forged = "inv_00000000000b7722";
    let other_id = agent_id(&w, other);
    tamper(
        &orch.database,
        &format!(
            "INSERT INTO invocations (id, skill, version, digest, target, input, reason, requester, level, approvals_required, invocation_digest, verdict, state, created_ms, expires_ms, queued_ms, kind, trigger, manifest_digest, publisher, publisher_key, hosts, narrowing, grants, limits, plan, export, plan_for, part_of, assigned_agent) SELECT '{forged}', skill, version, digest, target, input, reason, requester, level, approvals_required, invocation_digest, verdict, 'queued', created_ms, expires_ms, queued_ms, kind, trigger, manifest_digest, publisher, publisher_key, hosts, narrowing, grants, limits, plan, export, plan_for, '{id}', '{other_id}' FROM invocations WHERE id = '{id}'"
        ),
    );
    let refused = api.wait_for(&alice, forged, "failed").await;
    let error = refused["result"]["error"].as_str().expect("refusal");
    assert!(
        error.contains(other) && error.contains("not one of the hosts"),
        "{error}"
    );
}
