//! Admission, where a skill is about to run: what runs is exactly the signed pair (component,
//! manifest) that was decided on, admitted from what the host verified itself — never from a
//! cache keyed by the bytes alone, a database row, or a version the rollback floor has passed.
//! Real processes on loopback: registry, orchestrator (SQLite) with its local worker, agents.

use std::process::{Child, Command};

use serde_json::{Value, json};

use crate::agent::{AgentProc, agent_id, audit_events, count, enroll, submit_to, wait_audit};
use crate::orchestrator::{Api, Backend, Orch, tamper};
use crate::registry::{Registry, World};
use crate::support::*;

/// Two skills built from the very same component bytes (the hostile guest), each granted
/// read access to a different directory: `acme-broad` to one holding a secret, `acme-narrow`
/// to one holding a note.
fn publish_twins(w: &World, reg: &Registry) {
    let token = w.token("ci-twins", "publisher");
    for (name, dir) in [("acme-broad", "broad"), ("acme-narrow", "narrow")] {
        let dir = w.path(dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let wasm = w.signed_with(
            name,
            &guest("hostile"),
            &format!(
                "[skill]\nname = \"{name}\"\nversion = \"1.0.0\"\nkind = \"diagnose\"\n[capabilities]\nfs_read = [\"{}\"]\n",
                dir.display()
            ),
        );
        w.published(&reg.url, &wasm, &token);
    }
    std::fs::write(w.path("broad/secret.txt"), "the broad secret").expect("secret");
    std::fs::write(w.path("narrow/note.txt"), "a narrow note").expect("note");
}

/// Run `skill` on `target` reading `file` (under the world); the guest's own answer.
async fn read(api: &Api, token: &str, target: &str, skill: &str, w: &World, file: &str) -> Value {
    let path = w.path(file);
    let (s, v) = submit_to(
        api,
        token,
        skill,
        target,
        json!({ "do": "read", "path": path.to_str().expect("path") }),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let done = api
        .wait_for(token, v["id"].as_str().expect("id"), "succeeded")
        .await;
    done["result"]["output"].clone()
}

/// A registry with the twins, an orchestrator, and an agent `reader` allowed to read files.
fn twins_world() -> (World, Registry, Orch, AgentProc) {
    let (w, reg) = crate::orchestrator::setup();
    publish_twins(&w, &reg);
    let orch = Orch::start(&w, &reg, Backend::Sqlite, &[]);
    let trust = w.path("trust.toml");
    enroll(
        &w,
        &orch,
        &reg,
        "reader",
        trust.to_str().expect("trust"),
        &["--allow-capability", "fs_read"],
    );
    let agent = AgentProc::start(&w, "reader");
    (w, reg, orch, agent)
}

fn assert_read(out: &Value, text: &str) {
    assert_eq!(out["read"], true, "{out}");
    assert_eq!(out["head"], text, "{out}");
}

fn assert_denied(out: &Value) {
    assert_eq!(out["read"], false, "read outside its own grant: {out}");
    assert!(!out.to_string().contains("the broad secret"), "{out}");
}

/// The broad-grant skill runs first; then its twin with the narrow grant tries the broad path.
/// It must get its own manifest, not the one loaded first for the same bytes.
#[tokio::test(flavor = "multi_thread")]
async fn same_bytes_under_another_manifest_broad_first() {
    let (w, _reg, orch, _agent) = twins_world();
    let api = Api::new(&orch);
    let admin = orch.admin.clone();
    for target in ["local", "agent:reader"] {
        let out = read(&api, &admin, target, "acme-broad", &w, "broad/secret.txt").await;
        assert_read(&out, "the broad secret");
        let out = read(&api, &admin, target, "acme-narrow", &w, "broad/secret.txt").await;
        assert_denied(&out);
        let out = read(&api, &admin, target, "acme-narrow", &w, "narrow/note.txt").await;
        assert_read(&out, "a narrow note");
    }
}

/// The reverse order: the narrow-grant skill is loaded first; the broad one still gets its own
/// grant (and the narrow one never gets the broad one).
#[tokio::test(flavor = "multi_thread")]
async fn same_bytes_under_another_manifest_narrow_first() {
    let (w, _reg, orch, _agent) = twins_world();
    let api = Api::new(&orch);
    let admin = orch.admin.clone();
    for target in ["local", "agent:reader"] {
        let out = read(&api, &admin, target, "acme-narrow", &w, "broad/secret.txt").await;
        assert_denied(&out);
        let out = read(&api, &admin, target, "acme-broad", &w, "broad/secret.txt").await;
        assert_read(&out, "the broad secret");
        let out = read(&api, &admin, target, "acme-narrow", &w, "broad/secret.txt").await;
        assert_denied(&out);
    }
}

/// A real process the forged repair would kill; killed and reaped when dropped.
struct Victim(Child);

impl Victim {
    fn start() -> Victim {
        Victim(
            Command::new("sleep")
                .arg("600")
                .spawn()
                .expect("start sleep"),
        )
    }

    fn pid(&self) -> String {
        self.0.id().to_string()
    }

    fn alive(&mut self) -> bool {
        self.0.try_wait().expect("wait").is_none()
    }
}

impl Drop for Victim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Someone with write access to the database turns a pending L2 repair into a queued L0 job
/// that needs no approval (and, for an agent, assigns it).
fn forge(orch: &Orch, id: &str, agent: Option<&str>) {
    let assign = agent.map_or(String::new(), |a| format!(", assigned_agent = '{a}'"));
    tamper(
        &orch.database,
        &format!(
            "UPDATE invocations SET level = 0, approvals_required = 0, state = 'queued', queued_ms = 0{assign} WHERE id = '{id}'"
        ),
    );
}

/// A repair declaring L2 and granted `kill`, forged in the database as an L0 job with no
/// approvals, is refused by the local worker, by an agent whose ceiling is L0 and by one whose
/// ceiling allows L2: each recomputes the level from the verified manifest. The process lives;
/// the refusal is in the result and the audit trail.
#[tokio::test(flavor = "multi_thread")]
async fn a_forged_job_row_is_refused_from_the_verified_manifest() {
    let (w, reg) = crate::orchestrator::setup();
    let token = w.token("ci-kill", "publisher");
    let wasm = w.signed_with(
        "acme-kill",
        &guest("repair-exec"),
        "[skill]\nname = \"acme-kill\"\nversion = \"1.0.0\"\nkind = \"repair\"\nlevel = 2\n[capabilities]\nexec = [{ program = \"/bin/kill\", args = [\"-9\", \"{pid}\"] }]\n",
    );
    w.published(&reg.url, &wasm, &token);
    let orch = Orch::start(&w, &reg, Backend::Sqlite, &[]);
    let api = Api::new(&orch);
    let admin = orch.admin.clone();
    let trust = w.path("trust.toml");
    let trust = trust.to_str().expect("trust");
    for (name, level) in [("low", "0"), ("high", "3")] {
        enroll(
            &w,
            &orch,
            &reg,
            name,
            trust,
            &[
                "--pool",
                "ops",
                "--max-level",
                level,
                "--allow-capability",
                "exec",
            ],
        );
    }
    let _low = AgentProc::start(&w, "low");
    let _high = AgentProc::start(&w, "high");
    let mut victim = Victim::start();
    let input = json!({ "program": "/bin/kill", "args": ["-9", victim.pid()] });

    let cases = [
        (
            "local",
            None,
            "refused at run time: L2 disrupt (recomputed from the verified manifest) needs 1 approval",
        ),
        // A `pool:` job that needs approval is bound to the one member that would accept it
        // (high); the forged copy for low is refused for that before its level is looked at.
        (
            "pool:ops",
            Some(agent_id(&w, "low")),
            "this host (low) is not one of the hosts the invocation was decided and approved for (high)",
        ),
        (
            "pool:ops",
            Some(agent_id(&w, "high")),
            "L2 disrupt (recomputed from the verified manifest) needs 1 approval",
        ),
    ];
    for (target, agent, why) in cases {
        let (s, v) = submit_to(&api, &admin, "acme-kill", target, input.clone()).await;
        assert_eq!(s, 201, "{v}");
        // A repair waits for its plan before anyone may approve it.
        assert_eq!(v["state"], "planning", "{v}");
        let id = v["id"].as_str().expect("id").to_string();
        let v = api.wait_for(&admin, &id, "pending_approval").await;
        assert_eq!(v["plan"]["outcome"], "ok", "{v}");
        forge(&orch, &id, agent.as_deref());
        let done = api.wait_for(&admin, &id, "failed").await;
        let error = done["result"]["error"].as_str().expect("refusal");
        assert!(error.contains(why), "{target} {agent:?}: {error}");
        assert!(victim.alive(), "the forged repair killed the process");
        let events = audit_events(&api, &admin).await;
        let recorded = events
            .iter()
            .filter(|e| e["subject"] == id.as_str())
            .any(|e| e["detail"].to_string().contains(why));
        assert!(
            recorded,
            "the refusal is not in the audit trail: {events:?}"
        );
        if agent.is_some() {
            wait_audit(&api, &admin, &id, "agent.refused").await;
            assert_eq!(count(&events, &id, "invocation.started"), 0);
        }
    }
    assert!(victim.alive());
}

async fn submit_version(api: &Api, token: &str, target: &str, version: &str) -> (u16, Value) {
    api.call(
        "POST",
        "/api/v1/invocations",
        Some(token),
        Some(json!({
            "skill": "acme-roll", "version": version, "target": target,
            "input": {}, "reason": "test",
        })),
    )
    .await
}

/// Once 0.2.0 has been resolved, 0.1.0 is a rollback: refused by the orchestrator even though
/// it resolved (and cached) 0.1.0 before, and by an agent that verified (and cached) 0.1.0
/// before, for a job approved after it saw 0.2.0.
#[tokio::test(flavor = "multi_thread")]
async fn a_cached_older_version_is_refused_once_a_newer_one_was_seen() {
    let (w, reg) = crate::orchestrator::setup();
    let token = w.token("ci-roll", "publisher");
    for version in ["0.1.0", "0.2.0"] {
        let wasm = w.signed_with(
            &format!("roll-{version}"),
            &guest("trivial"),
            &format!(
                "[skill]\nname = \"acme-roll\"\nversion = \"{version}\"\nkind = \"diagnose\"\nlevel = 2\n"
            ),
        );
        w.published(&reg.url, &wasm, &token);
    }
    let orch = Orch::start(&w, &reg, Backend::Sqlite, &[]);
    let api = Api::new(&orch);
    let admin = orch.admin.clone();
    let bob = orch.token(&w, "bob", "approver");
    let trust = w.path("trust.toml");
    enroll(
        &w,
        &orch,
        &reg,
        "web-1",
        trust.to_str().expect("trust"),
        &["--max-level", "2"],
    );
    let _agent = AgentProc::start(&w, "web-1");
    let approve = |v: &Value| {
        let (api, bob, v) = (api.clone(), bob.clone(), v.clone());
        async move {
            let id = v["id"].as_str().expect("id");
            let (s, a) = api
                .approve(&bob, id, v["invocation_digest"].as_str().expect("digest"))
                .await;
            assert_eq!(s, 200, "{a}");
        }
    };

    // 0.1.0 runs on the agent (both verify and cache it); a second 0.1.0 job waits for approval.
    let (s, first) = submit_version(&api, &admin, "agent:web-1", "0.1.0").await;
    assert_eq!(s, 201, "{first}");
    approve(&first).await;
    api.wait_for(&admin, first["id"].as_str().expect("id"), "succeeded")
        .await;
    let (s, waiting) = submit_version(&api, &admin, "agent:web-1", "0.1.0").await;
    assert_eq!(s, 201, "{waiting}");

    // 0.2.0 is resolved and runs on the same agent.
    let (s, newer) = submit_version(&api, &admin, "agent:web-1", "0.2.0").await;
    assert_eq!(s, 201, "{newer}");
    approve(&newer).await;
    api.wait_for(&admin, newer["id"].as_str().expect("id"), "succeeded")
        .await;

    // The orchestrator refuses an explicit 0.1.0 now, from its cache as after a restart.
    for target in ["local", "agent:web-1"] {
        let (s, v) = submit_version(&api, &admin, target, "0.1.0").await;
        assert_eq!(s, 422, "{v}");
        assert_eq!(v["error"]["code"], "not_trusted", "{v}");
        let m = v["error"]["message"].as_str().expect("message");
        assert!(m.contains("older than 0.2.0"), "{m}");
    }

    // The agent refuses the 0.1.0 job approved now, though it verified 0.1.0 before.
    approve(&waiting).await;
    let id = waiting["id"].as_str().expect("id");
    let done = api.wait_for(&admin, id, "failed").await;
    let why = done["result"]["error"].as_str().expect("refusal");
    assert!(
        why.contains("no longer trusted here") && why.contains("older than 0.2.0"),
        "{why}"
    );
    assert_eq!(
        count(&audit_events(&api, &admin).await, id, "invocation.started"),
        0
    );
}

/// Submit `skill` on `target` reading `file`, with `narrowing`: (status, invocation).
async fn read_narrowed(
    api: &Api,
    token: &str,
    target: &str,
    skill: &str,
    path: &std::path::Path,
    narrowing: Value,
) -> (u16, Value) {
    api.call(
        "POST",
        "/api/v1/invocations",
        Some(token),
        Some(json!({
            "skill": skill, "target": target, "reason": "test",
            "input": { "do": "read", "path": path.to_str().expect("path") },
            "narrowing": narrowing,
        })),
    )
    .await
}

/// An operator narrows acme-broad (granted the `broad` directory) to `broad/logs` for one
/// invocation: the invocation shows the narrowed grant and lower limit, and the runtime
/// enforces them on the local worker and on an agent — the rest of `broad` is out of reach.
/// Widening a path or raising a limit is refused with the reason, and nothing is recorded.
#[tokio::test(flavor = "multi_thread")]
async fn an_operator_narrows_grants_and_limits_and_cannot_widen_them() {
    let (w, _reg, orch, _agent) = twins_world();
    let api = Api::new(&orch);
    let admin = orch.admin.clone();
    std::fs::create_dir_all(w.path("broad/logs")).expect("dir");
    std::fs::write(w.path("broad/logs/app.log"), "a log line").expect("log");
    let logs = w.path("broad/logs");
    let narrowing =
        json!({ "fs_read": [logs.to_str().expect("p")], "limits": { "timeout_ms": 5000 } });
    for target in ["local", "agent:reader"] {
        for (file, allowed) in [("broad/logs/app.log", true), ("broad/secret.txt", false)] {
            let (s, v) = read_narrowed(
                &api,
                &admin,
                target,
                "acme-broad",
                &w.path(file),
                narrowing.clone(),
            )
            .await;
            assert_eq!(s, 201, "{v}");
            assert_eq!(v["grants"]["fs_read"], json!([logs.to_str()]), "{v}");
            assert_eq!(v["limits"]["timeout_ms"], 5000, "{v}");
            let done = api
                .wait_for(&admin, v["id"].as_str().expect("id"), "succeeded")
                .await;
            assert_eq!(done["result"]["limits"]["timeout_ms"], 5000, "{done}");
            let out = &done["result"]["output"];
            if allowed {
                assert_read(out, "a log line");
            } else {
                assert_denied(out);
            }
        }
    }
    // The same skill without narrowing still reads all of its grant.
    let out = read(&api, &admin, "local", "acme-broad", &w, "broad/secret.txt").await;
    assert_read(&out, "the broad secret");

    let before = audit_events(&api, &admin).await.len();
    let (_, list) = api
        .call("GET", "/api/v1/invocations", Some(&admin), None)
        .await;
    let widen = [
        (
            json!({ "fs_read": [w.path("narrow").to_str()] }),
            "grants.fs_read",
        ),
        (json!({ "fs_read": ["/etc"] }), "never widen"),
        (
            json!({ "fs_read": [format!("{}/../narrow", w.path("broad").display())] }),
            "'..' component",
        ),
        (
            json!({ "limits": { "timeout_ms": 10_000_000 } }),
            "limits.timeout_ms: 10000000 is above",
        ),
        (json!({ "fs_write": ["/tmp"] }), "grants.fs_write"),
        (json!({ "exec": [] }), "unknown field"),
    ];
    for (narrowing, why) in widen {
        let (s, v) = read_narrowed(
            &api,
            &admin,
            "local",
            "acme-broad",
            &w.path("broad/secret.txt"),
            narrowing.clone(),
        )
        .await;
        assert!(s == 422 || s == 400, "{narrowing}: {s} {v}");
        assert!(v.to_string().contains(why), "{narrowing}: {v}");
    }
    let (_, after) = api
        .call("GET", "/api/v1/invocations", Some(&admin), None)
        .await;
    assert_eq!(
        list["invocations"].as_array().map(Vec::len),
        after["invocations"].as_array().map(Vec::len),
        "a refused narrowing recorded an invocation"
    );
    assert_eq!(audit_events(&api, &admin).await.len(), before);
}

/// Someone with the database widens a narrowed invocation waiting for its agent (the
/// narrowing cleared): the agent recomputes the digest from the narrowing it is sent and
/// refuses the job; nothing outside the narrowed grant is read.
#[tokio::test(flavor = "multi_thread")]
async fn a_narrowing_widened_in_the_database_is_refused_by_the_agent() {
    let (w, _reg, orch, agent) = twins_world();
    drop(agent);
    let api = Api::new(&orch);
    let admin = orch.admin.clone();
    std::fs::create_dir_all(w.path("broad/logs")).expect("dir");
    let narrowing = json!({ "fs_read": [w.path("broad/logs").to_str()] });
    let (s, v) = read_narrowed(
        &api,
        &admin,
        "agent:reader",
        "acme-broad",
        &w.path("broad/secret.txt"),
        narrowing,
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let id = v["id"].as_str().expect("id").to_string();
    tamper(
        &orch.database,
        &format!("UPDATE invocations SET narrowing = '{{}}' WHERE id = '{id}'"),
    );
    let _agent = AgentProc::start(&w, "reader");
    let done = api.wait_for(&admin, &id, "failed").await;
    let error = done["result"]["error"].as_str().expect("refusal");
    assert!(error.contains("invocation digest"), "{error}");
    assert!(!done.to_string().contains("the broad secret"), "{done}");
}
