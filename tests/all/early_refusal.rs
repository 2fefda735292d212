//! Refuse early what cannot run: an invocation that no agent of its target would accept is
//! refused at submit, each agent named with its reason, before anyone is asked to approve it.
//! When some agents would accept it, it is recorded and its reasons name those that would not.
//! Real processes on loopback: registry, orchestrator (SQLite), enrolled agents.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::agent::{AgentProc, audit_events, enroll, submit_to};
use crate::orchestrator::{Api, Backend, Orch};
use crate::registry::{Registry, World};
use crate::support::*;

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

async fn invocation_count(api: &Api, token: &str) -> usize {
    let (s, v) = api
        .call("GET", "/api/v1/invocations", Some(token), None)
        .await;
    assert_eq!(s, 200, "{v}");
    v["invocations"].as_array().map_or(0, Vec::len)
}

/// A repair like service-restart: three exec grants of one program, one restart each.
fn publish_restart(w: &World, reg: &Registry) {
    let token = w.token("ci-restart", "publisher");
    let exec: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|u| {
            format!("{{ program = \"/usr/bin/systemctl\", args = [\"restart\", \"{u}.service\"] }}")
        })
        .collect();
    let wasm = w.signed_with(
        "acme-restart",
        &guest("trivial"),
        &format!(
            "[skill]\nname = \"acme-restart\"\nversion = \"1.0.0\"\nkind = \"repair\"\nlevel = 2\n[capabilities]\nexec = [{}]\n",
            exec.join(", ")
        ),
    );
    w.published(&reg.url, &wasm, &token);
}

/// A pool whose agents all stop at L1, plus one that runs another publisher's skills only:
/// an L2 skill is refused at submit (422), the agents grouped by reason, nothing recorded
/// but the audit event. An L1 skill is accepted, noting the agent that would refuse it. In a
/// pool where only one agent allows `exec`, a repair is accepted with the other named, and its
/// eight-grant-like exec floor is one reason.
#[tokio::test(flavor = "multi_thread")]
async fn no_agent_of_the_target_could_run_it_so_it_is_refused_at_submit() {
    let (w, reg) = crate::orchestrator::setup();
    publish_restart(&w, &reg);
    let orch = Orch::start(&w, &reg, Backend::Sqlite, &[]);
    let api = Api::new(&orch);
    let admin = orch.admin.clone();
    let trust = w.path("trust.toml");
    let trust = trust.to_str().expect("trust");
    for name in ["low-1", "low-2"] {
        enroll(
            &w,
            &orch,
            &reg,
            name,
            trust,
            &["--pool", "web", "--max-level", "1"],
        );
    }
    enroll(
        &w,
        &orch,
        &reg,
        "picky",
        trust,
        &["--pool", "web", "--max-level", "3", "--publisher", "other"],
    );

    let before = audit_events(&api, &admin).await.len();
    let (s, v) = submit_to(&api, &admin, "acme-disrupt", "pool:web", json!({})).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (422, Some("no_runner")),
        "{v}"
    );
    let above = "level L2 disrupt, recomputed from the verified manifest, is above this agent's ceiling L1 adjust";
    let publisher = "publisher \"acme\" is not one this agent runs ([\"other\"])";
    let reasons = vec![
        format!("low-1, low-2: {above}"),
        format!("picky: {publisher}"),
    ];
    assert_eq!(strings(&v["error"]["reasons"]), reasons, "{v}");
    let message = v["error"]["message"].as_str().expect("message");
    assert!(
        message.starts_with("no agent of pool:web would run acme-disrupt 1.0.0: low-1, low-2: "),
        "{message}"
    );
    // Nothing recorded, nobody asked to approve; the audit trail says why.
    assert_eq!(invocation_count(&api, &admin).await, 0);
    let (_, pending) = api
        .call(
            "GET",
            "/api/v1/invocations?state=pending_approval",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(pending["invocations"], json!([]), "{pending}");
    let events = audit_events(&api, &admin).await;
    assert_eq!(events.len(), before + 1, "{events:#?}");
    let denied = events
        .iter()
        .find(|e| e["action"] == "invocation.denied" && e["subject"] == "acme-disrupt")
        .expect("an invocation.denied event");
    assert_eq!(denied["detail"]["refused"], "no_runner", "{denied}");
    assert_eq!(strings(&denied["detail"]["agents"]), reasons, "{denied}");
    assert_eq!(denied["detail"]["target"], "pool:web", "{denied}");

    // One agent, by name: refused for its publishers.
    let (s, v) = submit_to(&api, &admin, "acme-echo", "agent:picky", json!({})).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (422, Some("no_runner")),
        "{v}"
    );
    assert_eq!(
        strings(&v["error"]["reasons"]),
        vec![format!("picky: {publisher}")]
    );

    // Within the L1 agents' reach: accepted, and the one agent that would refuse is named.
    let (s, v) = submit_to(&api, &admin, "acme-adjust", "pool:web", json!({})).await;
    assert_eq!(s, 201, "{v}");
    assert!(
        strings(&v["reasons"]).contains(&format!("agent picky would refuse it: {publisher}")),
        "{v}"
    );
    assert_eq!(invocation_count(&api, &admin).await, 1);

    // A pool where one agent allows exec and another does not: accepted.
    enroll(
        &w,
        &orch,
        &reg,
        "no-exec",
        trust,
        &[
            "--pool",
            "ops",
            "--max-level",
            "3",
            "--allow-capability",
            "fs_read",
        ],
    );
    enroll(
        &w,
        &orch,
        &reg,
        "runner",
        trust,
        &[
            "--pool",
            "ops",
            "--max-level",
            "2",
            "--allow-capability",
            "exec",
        ],
    );
    let (s, v) = submit_to(&api, &admin, "acme-restart", "pool:ops", json!({})).await;
    assert_eq!(s, 201, "{v}");
    // A repair that needs approval: its plan runs first, on an agent of the pool.
    assert_eq!(v["state"], "planning", "{v}");
    let reasons = strings(&v["reasons"]);
    assert!(
        reasons.contains(
            &"agent no-exec would refuse it: the skill is granted exec, which this agent does not allow (allowed: [\"fs_read\"])"
                .to_string()
        ),
        "{reasons:#?}"
    );
    // Three grants of one program at one floor: one reason, counted.
    let exec: Vec<&String> = reasons.iter().filter(|r| r.starts_with("exec ")).collect();
    assert_eq!(
        exec,
        [
            "exec /usr/bin/systemctl (3 grants) implies at least L2 disrupt: running a program (restart, kill, ...) has service impact"
        ],
        "{reasons:#?}"
    );
    // Without the agent that allows exec, nothing in the pool could run it.
    let (s, v) = submit_to(&api, &admin, "acme-restart", "agent:no-exec", json!({})).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (422, Some("no_runner")),
        "{v}"
    );
}

/// An agent that allows reading one subdirectory: a skill granted its parent is refused at
/// submit, the same skill narrowed to the subdirectory is accepted — and the agent, once
/// started, agrees and runs it. When the only agent that fits is offline, the invocation says
/// it waits for one to come back.
#[tokio::test(flavor = "multi_thread")]
async fn a_narrowed_grant_that_fits_the_agents_paths_is_accepted() {
    let (w, reg) = crate::orchestrator::setup();
    let logs = w.path("logs");
    let app = w.path("logs/app");
    std::fs::create_dir_all(&app).expect("dir");
    let (logs, app) = (
        logs.to_str().expect("p").to_string(),
        app.to_str().expect("p").to_string(),
    );
    let token = w.token("ci-logs", "publisher");
    let wasm = w.signed_with(
        "acme-logs",
        &guest("trivial"),
        &format!(
            "[skill]\nname = \"acme-logs\"\nversion = \"1.0.0\"\nkind = \"diagnose\"\n[capabilities]\nfs_read = [\"{logs}\"]\n"
        ),
    );
    w.published(&reg.url, &wasm, &token);
    let orch = Orch::start(&w, &reg, Backend::Sqlite, &["--agent-offline-after", "2s"]);
    let api = Api::new(&orch);
    let admin = orch.admin.clone();
    let trust = w.path("trust.toml");
    enroll(
        &w,
        &orch,
        &reg,
        "reader",
        trust.to_str().expect("trust"),
        &["--allow-capability", "fs_read", "--allow-path", &app],
    );
    let submit = |narrowing: Value| {
        let api = api.clone();
        let admin = admin.clone();
        async move {
            api.call(
                "POST",
                "/api/v1/invocations",
                Some(&admin),
                Some(json!({
                    "skill": "acme-logs", "target": "agent:reader", "reason": "test",
                    "input": {}, "narrowing": narrowing,
                })),
            )
            .await
        }
    };
    let (s, v) = submit(json!({})).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (422, Some("no_runner")),
        "{v}"
    );
    assert_eq!(
        strings(&v["error"]["reasons"]),
        vec![format!(
            "reader: the skill is granted {logs}, outside the paths this agent allows ([\"{app}\"])"
        )]
    );
    assert_eq!(invocation_count(&api, &admin).await, 0);

    let (s, first) = submit(json!({ "fs_read": [app] })).await;
    assert_eq!(s, 201, "{first}");
    assert_eq!(first["grants"]["fs_read"], json!([app]), "{first}");

    // The agent was enrolled but never started: once it counts as offline, an invocation
    // that only it could run is still accepted, and says it waits.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, agents) = api.call("GET", "/api/v1/agents", Some(&admin), None).await;
        let offline = agents.as_array().is_some_and(|a| {
            a.iter()
                .any(|a| a["name"] == "reader" && a["state"] == "offline")
        });
        if offline {
            break;
        }
        assert!(Instant::now() < deadline, "reader never counted as offline");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (s, second) = submit(json!({ "fs_read": [app] })).await;
    assert_eq!(s, 201, "{second}");
    assert!(
        strings(&second["reasons"]).contains(
            &"every agent that could run it is offline now (reader): it waits until one is back"
                .to_string()
        ),
        "{second}"
    );

    // The agent comes back and agrees: both run.
    let _agent = AgentProc::start(&w, "reader");
    for inv in [&first, &second] {
        api.wait_for(&admin, inv["id"].as_str().expect("id"), "succeeded")
            .await;
    }
}
