//! The plan comes before the approval: a repair that needs approval runs its `plan` export on
//! the target first (read-only, no programs), the plan record is stored with the repair and
//! bound into its digest, and after the run the invocation says where what was done differs
//! from the plan. Real processes on loopback: registry, orchestrator (SQLite), local worker.

use serde_json::{Value, json};

use crate::agent::{audit_events, submit_to};
use crate::orchestrator::{Api, Backend, Orch, setup, tamper};
use crate::support::*;

/// A repair (L2: it may run /bin/echo) whose plan shows the command it would run.
fn publish_fix(w: &crate::registry::World, reg: &crate::registry::Registry) {
    let token = w.token("ci-fix", "publisher");
    let wasm = w.signed_with(
        "acme-fix",
        &guest("repair-exec"),
        "[skill]\nname = \"acme-fix\"\nversion = \"1.0.0\"\nkind = \"repair\"\nlevel = 2\n[capabilities]\nexec = [{ program = \"/bin/echo\", args = [\"{word}\"] }]\n",
    );
    w.published(&reg.url, &wasm, &token);
}

/// The digest recomputed from the fields the invocation shows, as an approver's client does.
fn recomputed(v: &Value) -> String {
    let inv: tend_protocol::Invocation = serde_json::from_value(v.clone()).expect("invocation");
    tend_protocol::invocation_digest(&inv.bound())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_repair_is_approved_with_its_plan_in_front_of_the_approver() {
    let (w, reg) = setup();
    publish_fix(&w, &reg);
    let orch = Orch::start(&w, &reg, Backend::Sqlite, &[]);
    let api = Api::new(&orch);
    let alice = orch.token(&w, "alice", "operator");
    let bob = orch.token(&w, "bob", "approver");

    // Planned, shown, bound, approved, run as planned.
    let (s, v) = submit_to(
        &api,
        &alice,
        "acme-fix",
        "local",
        json!({"program": "/bin/echo", "args": ["hello"]}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["state"], "planning", "{v}");
    let id = v["id"].as_str().expect("id").to_string();
    // Nobody can approve what has not been planned yet (or, if the plan already ran, the
    // approval must be for the digest that binds it).
    let (s, _) = api
        .approve(&bob, &id, v["invocation_digest"].as_str().expect("d"))
        .await;
    assert_eq!(s, 409);
    let inv = api.wait_for(&alice, &id, "pending_approval").await;
    let plan = &inv["plan"];
    assert_eq!(plan["outcome"], "ok", "{inv}");
    assert_eq!(
        plan["output"]["command"],
        json!(["/bin/echo", "hello"]),
        "{inv}"
    );
    assert_ne!(
        inv["invocation_digest"], v["invocation_digest"],
        "the plan is bound"
    );
    assert_eq!(
        recomputed(&inv),
        inv["invocation_digest"].as_str().expect("d")
    );
    // The plan ran as a job of its own, read-only, and nothing was executed.
    let plan_job = api
        .get(&alice, plan["invocation"].as_str().expect("plan job"))
        .await;
    assert_eq!(plan_job["export"], "plan", "{plan_job}");
    assert_eq!(plan_job["plan_for"], id.as_str(), "{plan_job}");
    assert_eq!(plan_job["state"], "succeeded", "{plan_job}");
    assert_eq!(plan_job["result"]["export"], "plan", "{plan_job}");
    let executed = plan_job["result"]["exec"].as_array().map_or(0, Vec::len);
    assert_eq!(executed, 0, "{plan_job}");

    let (s, v) = api
        .approve(&bob, &id, inv["invocation_digest"].as_str().expect("d"))
        .await;
    assert_eq!(s, 200, "{v}");
    let done = api.wait_for(&alice, &id, "succeeded").await;
    assert_eq!(done["result"]["output"]["stdout"], "hello\n", "{done}");
    assert_eq!(done["plan_check"]["as_planned"], true, "{done}");

    // A skill whose plan lies about what it will run: approved on the plan it showed, and the
    // result says the run differed from it.
    let (_, v) = submit_to(
        &api,
        &alice,
        "acme-fix",
        "local",
        json!({"program": "/bin/echo", "args": ["gotcha"], "plan_shows": ["/bin/echo", "harmless"]}),
    )
    .await;
    let id = v["id"].as_str().expect("id").to_string();
    let inv = api.wait_for(&alice, &id, "pending_approval").await;
    assert_eq!(
        inv["plan"]["output"]["command"],
        json!(["/bin/echo", "harmless"])
    );
    api.approve(&bob, &id, inv["invocation_digest"].as_str().expect("d"))
        .await;
    let done = api.wait_for(&alice, &id, "succeeded").await;
    let check = &done["plan_check"];
    assert_eq!(check["as_planned"], false, "{done}");
    let text = check["differences"].to_string();
    assert!(
        text.contains("ran `/bin/echo gotcha`, which the plan did not show")
            && text.contains("the plan showed `/bin/echo harmless`, which did not run"),
        "{text}"
    );

    // A plan that fails is shown as failed; the approver decides knowing it.
    let (_, v) = submit_to(&api, &alice, "acme-fix", "local", json!({"args": ["x"]})).await;
    let id = v["id"].as_str().expect("id").to_string();
    let inv = api.wait_for(&alice, &id, "pending_approval").await;
    assert_eq!(inv["plan"]["outcome"], "skill_error", "{inv}");
    assert!(
        inv["plan"]["error"].to_string().contains("program"),
        "{inv}"
    );

    let events = audit_events(&api, &alice).await;
    let planned = events
        .iter()
        .filter(|e| e["action"] == "invocation.planned")
        .count();
    assert_eq!(planned, 3, "{events:?}");
}

/// Someone with the database rewrites a plan after it was bound: what the invocation shows no
/// longer hashes to the digest it carries (an approver's client refuses to sign), and an
/// approval of the stored digest is refused by the runner, which recomputes it with the plan
/// it is sent.
#[tokio::test(flavor = "multi_thread")]
async fn a_plan_rewritten_in_the_database_no_longer_matches_what_was_approved() {
    let (w, reg) = setup();
    publish_fix(&w, &reg);
    let orch = Orch::start(&w, &reg, Backend::Sqlite, &[]);
    let api = Api::new(&orch);
    let alice = orch.token(&w, "alice", "operator");
    let bob = orch.token(&w, "bob", "approver");
    let (_, v) = submit_to(
        &api,
        &alice,
        "acme-fix",
        "local",
        json!({"program": "/bin/echo", "args": ["hello"]}),
    )
    .await;
    let id = v["id"].as_str().expect("id").to_string();
    let inv = api.wait_for(&alice, &id, "pending_approval").await;
    let digest = inv["invocation_digest"].as_str().expect("d").to_string();
    let mut plan = inv["plan"].clone();
    plan["output"]["command"] = json!(["/bin/echo", "nothing to see"]);
    tamper(
        &orch.database,
        &format!(
            "UPDATE invocations SET plan = '{}' WHERE id = '{id}'",
            plan.to_string().replace('\'', "''")
        ),
    );
    let shown = api.get(&alice, &id).await;
    assert_ne!(
        recomputed(&shown),
        digest,
        "what is shown is not what was bound"
    );
    // An approval of the stored digest: the worker recomputes with the rewritten plan.
    let (s, v) = api.approve(&bob, &id, &digest).await;
    assert_eq!(s, 200, "{v}");
    let done = api.wait_for(&alice, &id, "failed").await;
    let error = done["result"]["error"].as_str().expect("refusal");
    assert!(error.contains("invocation digest"), "{error}");
}
