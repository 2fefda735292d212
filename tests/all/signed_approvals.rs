//! Approvals signed by people. An approval is an ed25519 signature by the approver's own key
//! over the invocation digest: the orchestrator takes it only when it verifies against the key
//! an admin registered, and every runner (the local worker, each agent) counts it only when it
//! verifies against a key in its own trust policy. So neither a compromised orchestrator nor
//! someone with its database can invent an approval. Real processes on loopback.

use serde_json::{Value, json};

use crate::agent::{AgentProc, agent_id, audit_events, enroll, submit_to};
use crate::orchestrator::{Api, Backend, Orch, setup, tamper};
use crate::support::*;

fn insert_approval(
    orch: &Orch,
    id: &str,
    approver: &str,
    digest: &str,
    signed: Option<(String, String)>,
) {
    let (key, signature) = match signed {
        Some((k, s)) => (format!("'{k}'"), format!("'{s}'")),
        None => ("NULL".into(), "NULL".into()),
    };
    tamper(
        &orch.database,
        &format!(
            "INSERT INTO approvals (invocation_id, approver, invocation_digest, created_ms, public_key, signature) VALUES ('{id}', '{approver}', '{digest}', 0, {key}, {signature})"
        ),
    );
}

/// Someone with the orchestrator's database approves an L2 job by writing approval rows — one
/// with no signature, one signed by a key no runner trusts under an approver's name, one whose
/// signature is over another digest — and queues it. The local worker and an agent that
/// allows L2 both refuse it, naming each approval they did not count.
#[tokio::test(flavor = "multi_thread")]
async fn approvals_written_into_the_database_are_refused_by_every_runner() {
    let (w, reg) = setup();
    let orch = Orch::start(&w, &reg, Backend::Sqlite, &[]);
    let api = Api::new(&orch);
    let alice = orch.token(&w, "alice", "operator");
    let trust = w.path("trust.toml");
    enroll(
        &w,
        &orch,
        &reg,
        "web-1",
        trust.to_str().expect("trust"),
        &["--pool", "web", "--max-level", "2"],
    );
    let _agent = AgentProc::start(&w, "web-1");
    let mallory = ed25519_dalek::SigningKey::from_bytes(&[0x66; 32]);

    for (target, agent) in [
        ("local", None),
        ("agent:web-1", Some(agent_id(&w, "web-1"))),
    ] {
        let (s, v) = submit_to(&api, &alice, "acme-disrupt", target, json!({})).await;
        assert_eq!(s, 201, "{v}");
        assert_eq!(v["state"], "pending_approval", "{v}");
        let id = v["id"].as_str().expect("id").to_string();
        let digest = v["invocation_digest"].as_str().expect("digest").to_string();
        insert_approval(&orch, &id, "bob", &digest, None);
        insert_approval(
            &orch,
            &id,
            "carol",
            &digest,
            Some(tend_protocol::sign_approval(&mallory, &digest)),
        );
        let (key, _) = tend_protocol::sign_approval(&approver_key("erin"), &digest);
        let (_, other) = tend_protocol::sign_approval(&approver_key("erin"), "another-digest");
        insert_approval(&orch, &id, "erin", &digest, Some((key, other)));
        let assign = agent
            .as_ref()
            .map_or(String::new(), |a| format!(", assigned_agent = '{a}'"));
        tamper(
            &orch.database,
            &format!(
                "UPDATE invocations SET state = 'queued', queued_ms = 0{assign} WHERE id = '{id}'"
            ),
        );
        let done = api.wait_for(&alice, &id, "failed").await;
        let error = done["result"]["error"]
            .as_str()
            .expect("refusal")
            .to_string();
        for why in [
            "needs 1 approval",
            "it has 0",
            "the approval announced as bob's carries no signature",
            "the approval announced as carol's is signed by a key this host does not trust as an approver",
            "the approval announced as erin's has a signature that does not verify",
        ] {
            assert!(error.contains(why), "{target}: {why}: {error}");
        }
        assert!(done["result"]["output"].is_null(), "{done}");
    }
}

/// What the orchestrator takes as an approval: only a signature that verifies against the
/// approver's registered key over this invocation's digest. Each refusal is audited; an admin
/// registers and removes keys through the API, also audited. An approver the orchestrator
/// accepts but no runner's trust policy lists still cannot make a job run.
#[tokio::test(flavor = "multi_thread")]
async fn the_orchestrator_takes_only_approvals_signed_with_the_registered_key() {
    let (w, reg) = setup();
    let orch = Orch::start(&w, &reg, Backend::Sqlite, &[]);
    let api = Api::new(&orch);
    let admin = orch.admin.clone();
    let alice = orch.token(&w, "alice", "operator");
    let bob = orch.token(&w, "bob", "approver");
    let zoe = orch.token(&w, "zoe", "approver");
    let (_, v) = submit_to(&api, &alice, "acme-disrupt", "local", json!({})).await;
    let id = v["id"].as_str().expect("id").to_string();
    let digest = v["invocation_digest"].as_str().expect("digest").to_string();
    let approve = |token: &str, body: Value| {
        let (api, token, id) = (api.clone(), token.to_string(), id.clone());
        async move {
            api.call(
                "POST",
                &format!("/api/v1/invocations/{id}/approve"),
                Some(&token),
                Some(body),
            )
            .await
        }
    };
    let signed = |key: &ed25519_dalek::SigningKey, over: &str| json!({ "invocation_digest": digest, "signature": tend_protocol::sign_approval(key, over).1 });

    let (s, v) = approve(&bob, json!({ "invocation_digest": digest })).await;
    assert_eq!(s, 422, "{v}");
    assert!(v.to_string().contains("tend approve"), "{v}");
    let (s, v) = approve(&bob, signed(&approver_key("carol"), &digest)).await;
    assert_eq!(s, 403, "someone else's key: {v}");
    assert!(
        v.to_string()
            .contains("does not verify with bob's registered approver key"),
        "{v}"
    );
    let (s, v) = approve(&bob, signed(&approver_key("bob"), "another-digest")).await;
    assert_eq!(s, 403, "a signature over other bytes: {v}");
    let (s, v) = approve(
        &bob,
        json!({ "invocation_digest": digest, "signature": "bm90IGEgc2lnbmF0dXJl" }),
    )
    .await;
    assert_eq!(s, 403, "garbage: {v}");
    let zoe_key = ed25519_dalek::SigningKey::from_bytes(&[0x2e; 32]);
    let (s, v) = approve(&zoe, signed(&zoe_key, &digest)).await;
    assert_eq!(s, 403, "{v}");
    assert!(
        v.to_string()
            .contains("no approver key is registered for zoe"),
        "{v}"
    );
    assert_eq!(api.get(&alice, &id).await["approvals"], json!([]));

    // Registering keys is an admin's act, bounded and checked.
    let zoe_public = tend_protocol::public_key_text(&zoe_key.verifying_key());
    let register = |token: &str, body: Value| {
        let (api, token) = (api.clone(), token.to_string());
        async move {
            api.call("POST", "/api/v1/approvers", Some(&token), Some(body))
                .await
        }
    };
    let (s, _) = register(&bob, json!({ "name": "zoe", "public_key": zoe_public })).await;
    assert_eq!(s, 403, "an approver registered a key");
    let (s, v) = register(
        &admin,
        json!({ "name": "zoe", "public_key": "ed25519:short" }),
    )
    .await;
    assert_eq!(s, 422, "{v}");
    let (s, v) = register(
        &admin,
        json!({ "name": "Zoe Smith", "public_key": zoe_public }),
    )
    .await;
    assert_eq!(s, 422, "{v}");
    let bob_public = tend_protocol::public_key_text(&approver_key("bob").verifying_key());
    let (s, v) = register(&admin, json!({ "name": "zoe", "public_key": bob_public })).await;
    assert_eq!(s, 409, "one key, two people: {v}");
    let (s, v) = register(&admin, json!({ "name": "zoe", "public_key": zoe_public })).await;
    assert_eq!(s, 201, "{v}");
    let (_, listed) = api
        .call("GET", "/api/v1/approvers", Some(&alice), None)
        .await;
    assert!(listed.to_string().contains(&zoe_public), "{listed}");

    // Now the orchestrator takes zoe's approval — but zoe is in no runner's trust policy, so
    // the local worker does not count it and the job does not run.
    let (s, v) = approve(&zoe, signed(&zoe_key, &digest)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["approvals"][0]["public_key"], zoe_public.as_str(), "{v}");
    let done = api.wait_for(&alice, &id, "failed").await;
    let error = done["result"]["error"].as_str().expect("refusal");
    assert!(error.contains("does not trust as an approver"), "{error}");

    // Removing a key: that person's approvals are refused from then on.
    let (s, _) = api
        .call("DELETE", "/api/v1/approvers/zoe", Some(&admin), None)
        .await;
    assert_eq!(s, 204);
    let (_, v2) = submit_to(&api, &alice, "acme-disrupt", "local", json!({})).await;
    let (s, v) = api
        .call(
            "POST",
            &format!("/api/v1/invocations/{}/approve", v2["id"].as_str().expect("id")),
            Some(&zoe),
            Some(json!({
                "invocation_digest": v2["invocation_digest"],
                "signature": tend_protocol::sign_approval(&zoe_key, v2["invocation_digest"].as_str().expect("d")).1,
            })),
        )
        .await;
    assert_eq!(s, 403, "{v}");

    let events = audit_events(&api, &admin).await;
    let count = |action: &str| events.iter().filter(|e| e["action"] == action).count();
    assert_eq!(count("approver.register"), 1);
    assert_eq!(count("approver.remove"), 1);
    assert!(count("approval.refused") >= 5, "{events:?}");
    assert_eq!(count("approval.grant"), 1);
}

/// An approval is for one run: someone with the database queues an approved repair again after
/// it ran (its approvals still unexpired). The local worker and the agent each remember the
/// digests they ran and refuse; the program does not run a second time.
#[tokio::test(flavor = "multi_thread")]
async fn an_approved_repair_queued_again_is_not_run_twice() {
    let (w, reg) = setup();
    let token = w.token("ci-fix", "publisher");
    let wasm = w.signed_with(
        "acme-fix",
        &guest("repair-exec"),
        "[skill]\nname = \"acme-fix\"\nversion = \"1.0.0\"\nkind = \"repair\"\nlevel = 2\n[capabilities]\nexec = [{ program = \"/bin/echo\", args = [\"{word}\"] }]\n",
    );
    w.published(&reg.url, &wasm, &token);
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
        &[
            "--pool",
            "web",
            "--max-level",
            "2",
            "--allow-capability",
            "exec",
        ],
    );
    let _agent = AgentProc::start(&w, "web-1");
    for target in ["local", "agent:web-1"] {
        let (s, v) = submit_to(
            &api,
            &alice,
            "acme-fix",
            target,
            json!({"program": "/bin/echo", "args": ["once"]}),
        )
        .await;
        assert_eq!(s, 201, "{v}");
        let id = v["id"].as_str().expect("id").to_string();
        let v = api.wait_for(&alice, &id, "pending_approval").await;
        let (s, a) = api
            .approve(&bob, &id, v["invocation_digest"].as_str().expect("d"))
            .await;
        assert_eq!(s, 200, "{a}");
        let done = api.wait_for(&alice, &id, "succeeded").await;
        assert_eq!(done["result"]["output"]["stdout"], "once\n", "{done}");

        tamper(
            &orch.database,
            &format!(
                "UPDATE invocations SET state = 'queued', result = NULL, lease_owner = NULL, lease_until_ms = NULL, run_started_ms = NULL, finished_ms = NULL WHERE id = '{id}'"
            ),
        );
        let again = api.wait_for(&alice, &id, "failed").await;
        let error = again["result"]["error"].as_str().expect("refusal");
        assert!(
            error.contains("already ran on this host"),
            "{target}: {error}"
        );
        assert!(again["result"]["output"].is_null(), "{again}");
    }
}

/// The publisher key that signed the skill is shown to the approver and bound: a database that
/// shows another key no longer hashes to the digest the approver is asked to sign (their client
/// refuses), and the runner binds the key whose signature it verified itself — an approval of
/// the stored digest still means the real signer.
#[tokio::test(flavor = "multi_thread")]
async fn the_publisher_key_an_approver_is_shown_is_bound() {
    let (w, reg) = setup();
    let orch = Orch::start(&w, &reg, Backend::Sqlite, &[]);
    let api = Api::new(&orch);
    let alice = orch.token(&w, "alice", "operator");
    let bob = orch.token(&w, "bob", "approver");
    let (_, v) = submit_to(&api, &alice, "acme-disrupt", "local", json!({})).await;
    assert_eq!(v["publisher"], "acme", "{v}");
    let key = v["publisher_key"].as_str().expect("key").to_string();
    assert_eq!(key.len(), 16, "{v}");
    let id = v["id"].as_str().expect("id").to_string();
    let digest = v["invocation_digest"].as_str().expect("d").to_string();
    let shown: tend_protocol::Invocation = serde_json::from_value(v.clone()).expect("inv");
    assert_eq!(tend_protocol::invocation_digest(&shown.bound()), digest);
    tamper(
        &orch.database,
        &format!("UPDATE invocations SET publisher_key = '0000000000000000' WHERE id = '{id}'"),
    );
    let v = api.get(&alice, &id).await;
    let shown: tend_protocol::Invocation = serde_json::from_value(v.clone()).expect("inv");
    assert_ne!(
        tend_protocol::invocation_digest(&shown.bound()),
        digest,
        "another publisher key is shown under the same digest"
    );
    let (s, a) = api.approve(&bob, &id, &digest).await;
    assert_eq!(s, 200, "{a}");
    let done = api.wait_for(&alice, &id, "succeeded").await;
    assert_eq!(
        done["result"]["provenance"]["key_id"],
        key.as_str(),
        "{done}"
    );
}
