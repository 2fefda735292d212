//! Runs across a pool: `all:pool:NAME` is one invocation on every online agent of the pool —
//! one decision and one set of approvals covering the listed hosts (the list is bound into the
//! digest), one part per host with its own result, a summary, and a cap on hosts per level
//! (the blast radius). Real processes on loopback: registry, orchestrator, three agents.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::agent::{AgentProc, agent_id, audit_events, enroll, submit_to, until_agent};
use crate::orchestrator::{Api, Backend, Orch, setup, tamper};

fn hosts_of(v: &Value) -> Vec<&str> {
    v["hosts"]
        .as_array()
        .expect("hosts")
        .iter()
        .map(|h| h.as_str().expect("host"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_across_a_pool_covers_its_online_hosts_with_one_approval() {
    let (w, reg) = setup();
    let orch = Orch::start(
        &w,
        &reg,
        Backend::Sqlite,
        &["--agent-offline-after", "3s", "--blast-radius", "L2=2"],
    );
    let api = Api::new(&orch);
    let alice = orch.token(&w, "alice", "operator");
    let bob = orch.token(&w, "bob", "approver");
    let trust = w.path("trust.toml");
    for name in ["web-1", "web-2", "web-3"] {
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
    // web-3 enrolled but never started: offline once its enrollment is older than 3 s.
    until_agent(&api, &alice, "web-3", "offline").await;
    until_agent(&api, &alice, "web-1", "online").await;
    until_agent(&api, &alice, "web-2", "online").await;

    // L0 across the pool: runs at once on both online hosts, a result per host, a summary.
    let (s, v) = submit_to(&api, &alice, "acme-echo", "all:pool:web", json!({"x": 7})).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(hosts_of(&v), ["web-1", "web-2"], "{v}");
    let id = v["id"].as_str().expect("id").to_string();
    let done = api.wait_for(&alice, &id, "succeeded").await;
    assert_eq!(done["result"]["hosts"], 2, "{done}");
    assert_eq!(done["result"]["succeeded"], 2, "{done}");
    let parts = done["parts"].as_array().expect("parts");
    assert_eq!(parts.len(), 2, "{done}");
    for (part, host) in parts.iter().zip(["web-1", "web-2"]) {
        assert_eq!(part["host"], host, "{done}");
        assert_eq!(part["state"], "succeeded", "{done}");
        assert_eq!(part["outcome"], "ok", "{done}");
        let one = api.get(&alice, part["id"].as_str().expect("id")).await;
        assert_eq!(one["part_of"], id.as_str(), "{one}");
        assert_eq!(one["result"]["output"]["echo"]["x"], 7, "{one}");
        assert_eq!(one["invocation_digest"], done["invocation_digest"]);
    }

    // L2 across the pool: one approval covers both listed hosts.
    let (s, v) = submit_to(&api, &alice, "acme-disrupt", "all:pool:web", json!({})).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["state"], "pending_approval", "{v}");
    let id = v["id"].as_str().expect("id").to_string();
    let (s, a) = api
        .approve(&bob, &id, v["invocation_digest"].as_str().expect("d"))
        .await;
    assert_eq!(s, 200, "{a}");
    let done = api.wait_for(&alice, &id, "succeeded").await;
    assert_eq!(done["result"]["succeeded"], 2, "{done}");
    // Each agent's result is counted at the level it was decided at (the parts: L2).
    let (_, metrics) = api.call("GET", "/metrics", None, None).await;
    assert!(
        metrics
            .as_str()
            .unwrap_or_default()
            .contains("tend_invocations_total{outcome=\"ok\",level=\"2\"} 2"),
        "{metrics}"
    );

    // The host list is bound: a part forged for a host not on it is refused by that agent.
    let _web3 = AgentProc::start(&w, "web-3");
    until_agent(&api, &alice, "web-3", "online").await;
    let part = done["parts"][0]["id"].as_str().expect("part").to_string();
    let forged = "inv_00000000000f0e3d";
    let web3 = agent_id(&w, "web-3");
    tamper(
        &orch.database,
        &format!(
            "INSERT INTO invocations (id, skill, version, digest, target, input, reason, requester, level, approvals_required, invocation_digest, verdict, state, created_ms, expires_ms, queued_ms, kind, trigger, manifest_digest, hosts, narrowing, grants, limits, plan, export, plan_for, publisher, publisher_key, part_of, assigned_agent) SELECT '{forged}', skill, version, digest, target, input, reason, requester, level, approvals_required, invocation_digest, verdict, 'queued', created_ms, expires_ms, queued_ms, kind, trigger, manifest_digest, hosts, narrowing, grants, limits, plan, export, plan_for, publisher, publisher_key, part_of, '{web3}' FROM invocations WHERE id = '{part}'"
        ),
    );
    let refused = api.wait_for(&alice, forged, "failed").await;
    let error = refused["result"]["error"].as_str().expect("refusal");
    assert!(
        error.contains("web-3") && error.contains("not one of the hosts"),
        "{error}"
    );

    // The blast radius: three online hosts, L2 runs on at most two at once. Nothing recorded.
    let before = audit_events(&api, &alice).await.len();
    let (s, v) = submit_to(&api, &alice, "acme-disrupt", "all:pool:web", json!({})).await;
    assert_eq!(s, 422, "{v}");
    let text = v.to_string();
    assert!(
        text.contains("3 online agents") && text.contains("at most 2"),
        "{text}"
    );
    let events = audit_events(&api, &alice).await;
    let since: Vec<&Value> = events[before..].iter().collect();
    assert!(
        since.iter().any(|e| e["action"] == "invocation.denied"
            && e["detail"]["why"].to_string().contains("blast radius")),
        "{since:?}"
    );
    assert!(
        !since.iter().any(|e| e["action"] == "invocation.create"),
        "a refused run was recorded: {since:?}"
    );
    // L0 reads are wider: all three.
    let (s, v) = submit_to(&api, &alice, "acme-echo", "all:pool:web", json!({"x": 1})).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(hosts_of(&v), ["web-1", "web-2", "web-3"]);
    let (s, v) = submit_to(&api, &alice, "acme-echo", "all:pool:nope", json!({})).await;
    assert_eq!(s, 404, "{v}");

    // A host that stops right after the run was asked for leaves its part queued: cancelling
    // the run cancels that part, and the run ends with the parts that ran.
    drop(_web3);
    let (s, v) = submit_to(&api, &alice, "acme-echo", "all:pool:web", json!({"x": 2})).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(hosts_of(&v), ["web-1", "web-2", "web-3"]);
    let id = v["id"].as_str().expect("id").to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let run = api.get(&alice, &id).await;
        let done = run["parts"]
            .as_array()
            .expect("parts")
            .iter()
            .filter(|p| p["state"] == "succeeded")
            .count();
        if done == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "{run}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (s, v) = api
        .call(
            "POST",
            &format!("/api/v1/invocations/{id}/cancel"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["state"], "failed", "{v}");
    assert_eq!(v["result"]["succeeded"], 2, "{v}");
    let web3_part = v["parts"]
        .as_array()
        .expect("parts")
        .iter()
        .find(|p| p["host"] == "web-3")
        .expect("web-3's part")
        .clone();
    assert_eq!(web3_part["state"], "cancelled", "{v}");
}
