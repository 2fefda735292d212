//! The orchestrator through its HTTP API, as operators and approvers use it: a real
//! `tend orchestrator serve` (SQLite file) resolving signed skills from a real
//! `tend registry serve`, real tokens, and the built-in local worker running the skills.
//!
//! The invariant: no invocation whose level needs approval reaches `running` without the
//! required number of valid, unexpired, distinct approvals for that exact digest.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::registry::{Registry, World, err};
use crate::support::*;

/// Four skills from the same trivial component, declared at L0..L3; acme-echo has a schema.
pub fn publish_levels(w: &World, reg: &Registry) {
    let token = w.token("ci", "publisher");
    for (name, level) in [
        ("acme-echo", 0),
        ("acme-adjust", 1),
        ("acme-disrupt", 2),
        ("acme-critical", 3),
    ] {
        let schema = if name == "acme-echo" {
            "[input.schema]\ntype = \"object\"\n[input.schema.properties.x]\ntype = \"integer\"\n"
        } else {
            ""
        };
        let wasm = w.signed_with(
            name,
            &guest("trivial"),
            &format!(
                "[skill]\nname = \"{name}\"\nversion = \"1.0.0\"\nkind = \"diagnose\"\nlevel = {level}\n{schema}"
            ),
        );
        w.published(&reg.url, &wasm, &token);
    }
}

/// Which storage an orchestrator under test uses. Every test runs against both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The PostgreSQL server scripts/test starts on loopback (`postgres://postgres@127.0.0.1:PORT`).
fn postgres_base() -> String {
    std::env::var("TEND_TEST_POSTGRES").expect(
        "TEND_TEST_POSTGRES is not set: run the suite with ./scripts/test, which starts PostgreSQL on loopback",
    )
}

/// Run SQL as someone with the database's disk or credentials could.
pub fn tamper(database: &str, sql: &str) {
    let ok = if let Some(path) = database.strip_prefix("sqlite://") {
        Command::new("python3")
            .args([
                "-c",
                "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute(sys.argv[2]); c.commit()",
            ])
            .arg(path)
            .arg(sql)
            .status()
    } else {
        Command::new("psql")
            .args(["-q", "-v", "ON_ERROR_STOP=1", database, "-c", sql])
            .stdout(Stdio::null())
            .status()
    }
    .expect("run sql")
    .success();
    assert!(ok, "{sql}");
}

impl Backend {
    /// A fresh, empty database.
    pub fn database(self, w: &World, name: &str) -> String {
        match self {
            Backend::Sqlite => format!("sqlite://{}", w.path(&format!("{name}.db")).display()),
            Backend::Postgres => {
                let base = postgres_base();
                let db = format!(
                    "tend_{}_{}",
                    name,
                    w.dir
                        .path()
                        .file_name()
                        .and_then(|n| n.to_str())
                        .unwrap_or("x")
                        .to_lowercase()
                        .replace(|c: char| !c.is_ascii_alphanumeric(), "")
                );
                tamper(
                    &format!("{base}/postgres"),
                    &format!("CREATE DATABASE {db}"),
                );
                format!("{base}/{db}")
            }
        }
    }
}

/// Define `name_sqlite` and `name_postgres` tests running `scenario(Backend)`.
macro_rules! on_both_backends {
    ($($name:ident => $scenario:ident),* $(,)?) => {
        mod on {
            $(
                pub mod $name {
                    #[tokio::test(flavor = "multi_thread")]
                    async fn sqlite() {
                        super::super::$scenario(super::super::Backend::Sqlite).await
                    }
                    #[tokio::test(flavor = "multi_thread")]
                    async fn postgres() {
                        super::super::$scenario(super::super::Backend::Postgres).await
                    }
                }
            )*
        }
    };
}

on_both_backends! {
    l0_runs_at_once => an_observe_skill_runs_at_once_and_reports,
    approvals => approvals_bind_one_invocation_and_come_from_someone_else,
    expiry => approvals_expire,
    auth => tokens_roles_and_ceilings,
    audit_verify => audit_verify_names_the_first_bad_event,
    audit_resplit => a_re_split_audit_event_is_named_by_verify,
    refusal_flood => a_flood_of_refused_requests_leaves_a_bounded_audit_trail,
    stored_fields => stored_request_fields_are_bounded,
    stranded_approval => a_retried_approval_completes_a_stranded_decision,
}

/// A running `tend orchestrator serve`, stopped with SIGTERM when dropped.
pub struct Orch {
    child: Child,
    pub url: String,
    pub admin: String,
    pub database: String,
}

impl Orch {
    pub fn start(w: &World, reg: &Registry, backend: Backend, extra: &[&str]) -> Orch {
        let orch = Orch::replica(
            w,
            reg,
            &backend.database(w, "orch"),
            "orch",
            "127.0.0.1:0",
            extra,
        );
        assert!(
            !orch.admin.is_empty(),
            "the first start printed no admin token"
        );
        orch
    }

    /// An orchestrator on an existing database (`admin` is empty unless it is the first).
    pub fn replica(
        w: &World,
        reg: &Registry,
        database: &str,
        name: &str,
        listen: &str,
        extra: &[&str],
    ) -> Orch {
        // Only an argument holder: `spawn` runs the real binary.
        let mut cmd = Command::new("tend");
        cmd.args([
            "--database",
            database,
            "--data-dir",
            &format!("{name}-data"),
            "--listen",
            listen,
        ])
        .args(extra);
        Orch::spawn(w, reg, cmd, database)
    }

    /// `tend orchestrator serve` with `cmd`'s arguments after the common ones.
    pub(crate) fn spawn(w: &World, reg: &Registry, cmd: Command, database: &str) -> Orch {
        let database = database.to_string();
        let mut child = tend()
            .current_dir(w.dir.path())
            .env("TEND_CACHE_DIR", w.path("cache"))
            .env("TEND_LOG", "info")
            .args([
                "orchestrator",
                "serve",
                "--registry",
                &reg.url,
                "--trust",
                "trust.toml",
            ])
            .args(cmd.get_args())
            .envs(
                cmd.get_envs()
                    .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned()))),
            )
            .stderr(Stdio::piped())
            .spawn()
            .expect("start orchestrator");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let mut admin = String::new();
        let url = loop {
            let line = lines
                .next()
                .expect("the orchestrator exited before listening")
                .expect("read");
            if let Some(t) = line.split("keep it secret): ").nth(1) {
                admin = t.trim().to_string();
            }
            if let Some(rest) = line.split("listening on ").nth(1) {
                break rest.split_whitespace().next().expect("url").to_string();
            }
        };
        // Its log, shown with TEND_TEST_ORCH_LOG=1 (when a test needs explaining).
        let show = std::env::var_os("TEND_TEST_ORCH_LOG").is_some();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if show {
                    eprintln!("orchestrator: {line}");
                }
            }
        });
        Orch {
            child,
            url,
            admin,
            database,
        }
    }

    pub fn token(&self, w: &World, name: &str, role: &str) -> String {
        let o = w.ok(&[
            "orchestrator",
            "token",
            "create",
            "--role",
            role,
            "--name",
            name,
            "--database",
            &self.database,
        ]);
        let token = String::from_utf8(o.stdout)
            .expect("utf8")
            .trim()
            .to_string();
        remember_token(&token, name);
        if (role == "approver" || role == "admin") && APPROVERS.contains(&name) {
            let key = tend_protocol::public_key_text(&approver_key(name).verifying_key());
            tamper(
                &self.database,
                &format!(
                    "INSERT INTO approver_keys (name, public_key, created_ms, created_by) VALUES ('{name}', '{key}', 0, 'test') ON CONFLICT (name) DO NOTHING"
                ),
            );
        }
        token
    }

    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Orch {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A small API client: (status, body).
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    pub fn new(orch: &Orch) -> Api {
        Api {
            http: reqwest::Client::new(),
            base: orch.url.clone(),
        }
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut rb = self.http.request(
            method.parse().expect("method"),
            format!("{}{path}", self.base),
        );
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let resp = rb.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn submit(&self, token: &str, skill: &str, input: Value) -> (u16, Value) {
        self.call(
            "POST",
            "/api/v1/invocations",
            Some(token),
            Some(json!({ "skill": skill, "input": input, "reason": "test" })),
        )
        .await
    }

    pub async fn get(&self, token: &str, id: &str) -> Value {
        let (s, v) = self
            .call(
                "GET",
                &format!("/api/v1/invocations/{id}"),
                Some(token),
                None,
            )
            .await;
        assert_eq!(s, 200, "{v}");
        v
    }

    /// Approve as the token's owner would with `tend approve`: their key signs `digest`.
    pub async fn approve(&self, token: &str, id: &str, digest: &str) -> (u16, Value) {
        let body = match token_name(token) {
            Some(name) => {
                let (_, signature) = tend_protocol::sign_approval(&approver_key(&name), digest);
                json!({ "invocation_digest": digest, "signature": signature })
            }
            None => json!({ "invocation_digest": digest }),
        };
        self.call(
            "POST",
            &format!("/api/v1/invocations/{id}/approve"),
            Some(token),
            Some(body),
        )
        .await
    }

    /// Poll until the invocation reaches a final state (or `want`), asserting on the way that
    /// it is never `running` without enough approvals.
    pub async fn wait_for(&self, token: &str, id: &str, want: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let v = self.get(token, id).await;
            let state = v["state"].as_str().expect("state").to_string();
            if state == "running" || state == "succeeded" {
                let required = v["approvals_required"].as_u64().expect("n") as usize;
                let requester = v["requester"].as_str().expect("requester");
                let digest = v["invocation_digest"].as_str().expect("digest");
                let mut valid: Vec<&str> = v["approvals"]
                    .as_array()
                    .expect("approvals")
                    .iter()
                    .filter(|a| a["invocation_digest"] == digest && a["approver"] != requester)
                    .map(|a| a["approver"].as_str().expect("approver"))
                    .collect();
                valid.dedup();
                assert!(valid.len() >= required, "ran without approvals: {v}");
            }
            if state == want {
                return v;
            }
            if ["succeeded", "failed", "rejected", "expired", "cancelled"].contains(&state.as_str())
            {
                panic!("reached {state}, not {want}: {v}");
            }
            assert!(Instant::now() < deadline, "still {state}: {v}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

pub fn setup() -> (World, Registry) {
    let w = World::new();
    let reg = Registry::start(&w);
    publish_levels(&w, &reg);
    (w, reg)
}

async fn an_observe_skill_runs_at_once_and_reports(backend: Backend) {
    let (w, reg) = setup();
    let orch = Orch::start(&w, &reg, backend, &[]);
    let api = Api::new(&orch);
    let alice = orch.token(&w, "alice", "operator");

    // The first requests for a skill arrive together: one verified pull serves them all.
    let mut first = tokio::task::JoinSet::new();
    for n in 0..8 {
        let (api, alice) = (api.clone(), alice.clone());
        first.spawn(async move { api.submit(&alice, "acme-echo", json!({"x": n})).await });
    }
    while let Some(r) = first.join_next().await {
        let (s, v) = r.expect("join");
        assert_eq!(s, 201, "{v}");
    }

    let (s, v) = api.submit(&alice, "acme-echo", json!({"x": 7})).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["state"], "queued");
    assert_eq!(v["level"], 0);
    assert_eq!(
        v["reasons"][2], "L0 observe reads only: it runs without approval",
        "{v}"
    );
    let done = api
        .wait_for(&alice, v["id"].as_str().expect("id"), "succeeded")
        .await;
    assert_eq!(done["result"]["output"]["echo"]["x"], 7);
    assert_eq!(done["result"]["provenance"]["trust"], "signed");
    assert_eq!(done["result"]["provenance"]["publisher"], "acme");
    // When it ran is on the invocation; a new one has neither time yet.
    let (started, finished) = (
        done["started_at"].as_str().expect("started_at"),
        done["finished_at"].as_str().expect("finished_at"),
    );
    assert!(
        v["created_at"].as_str().expect("created_at") <= started && started <= finished,
        "{done}"
    );
    assert!(
        v.get("started_at").is_none() && v.get("finished_at").is_none(),
        "{v}"
    );

    // Bad input changes nothing and says what and where.
    let (s, v) = api.submit(&alice, "acme-echo", json!({"x": "seven"})).await;
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["error"]["code"], "invalid_input");
    assert!(
        v["error"]["message"].as_str().expect("m").contains("/x"),
        "{v}"
    );
    let (s, v) = api.submit(&alice, "acme-nothing", json!({})).await;
    assert_eq!(s, 404, "{v}");
    let (s, v) = api
        .call(
            "POST",
            "/api/v1/invocations",
            Some(&alice),
            Some(json!({"skill": "acme-echo", "reason": "x", "grants": ["all"]})),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .expect("m")
            .contains("unknown field `grants`"),
        "{v}"
    );
    let (_, list) = api
        .call("GET", "/api/v1/invocations", Some(&alice), None)
        .await;
    assert_eq!(list["invocations"].as_array().expect("list").len(), 9);
}

async fn approvals_bind_one_invocation_and_come_from_someone_else(backend: Backend) {
    let (w, reg) = setup();
    let orch = Orch::start(&w, &reg, backend, &[]);
    let api = Api::new(&orch);
    let alice = orch.token(&w, "alice", "operator");
    let bob = orch.token(&w, "bob", "approver");
    let carol = orch.token(&w, "carol", "approver");
    let victor = orch.token(&w, "victor", "viewer");

    // L2: one approval by someone other than the requester.
    let (s, inv) = api.submit(&bob, "acme-disrupt", json!({"n": 1})).await;
    assert_eq!(s, 201, "{inv}");
    assert_eq!(inv["state"], "pending_approval");
    assert_eq!(inv["approvals_required"], 1);
    let id = inv["id"].as_str().expect("id");
    let digest = inv["invocation_digest"].as_str().expect("digest");

    // The requester approving their own request.
    let (s, v) = api.approve(&bob, id, digest).await;
    assert_eq!(s, 403, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .expect("m")
            .contains("cannot approve it"),
        "{v}"
    );
    // A viewer, an operator.
    assert_eq!(api.approve(&victor, id, digest).await.0, 403);
    assert_eq!(api.approve(&alice, id, digest).await.0, 403);

    // An approval replayed onto a changed input: another invocation, another digest.
    let (_, other) = api.submit(&bob, "acme-disrupt", json!({"n": 2})).await;
    let other_id = other["id"].as_str().expect("id");
    assert_ne!(other["invocation_digest"], inv["invocation_digest"]);
    let (s, v) = api.approve(&carol, other_id, digest).await;
    assert_eq!(s, 409, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .expect("m")
            .contains("binds one exact invocation"),
        "{v}"
    );
    assert_eq!(api.get(&bob, other_id).await["state"], "pending_approval");

    // A valid approval: queued, then run.
    let (s, v) = api.approve(&carol, id, digest).await;
    assert_eq!(s, 200, "{v}");
    let done = api.wait_for(&bob, id, "succeeded").await;
    assert_eq!(done["approvals"][0]["approver"], "carol");
    // Approving what already ran: a conflict, but for the approver's own retry (idempotent:
    // the current state).
    let (s, v) = api.approve(&alice, id, digest).await;
    assert_eq!(s, 403, "an operator cannot approve: {v}");
    let (s, v) = api.approve(&carol, id, digest).await;
    assert_eq!((s, v["state"].as_str()), (200, Some("succeeded")), "{v}");
    let dave = orch.token(&w, "dave", "approver");
    let (s, v) = api.approve(&dave, id, digest).await;
    assert_eq!(s, 409, "{v}");

    // L3: two distinct approvers; one approver twice does not count twice.
    let (_, crit) = api.submit(&alice, "acme-critical", json!({})).await;
    assert_eq!(crit["approvals_required"], 2, "{crit}");
    let cid = crit["id"].as_str().expect("id");
    let cdigest = crit["invocation_digest"].as_str().expect("digest");
    let (s, v) = api.approve(&bob, cid, cdigest).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["state"], "pending_approval");
    let (s, v) = api.approve(&bob, cid, cdigest).await;
    assert_eq!(
        (s, v["state"].as_str()),
        (200, Some("pending_approval")),
        "{v}"
    );
    assert_eq!(
        v["approvals"].as_array().expect("approvals").len(),
        1,
        "{v}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(api.get(&alice, cid).await["state"], "pending_approval");
    let (s, _) = api.approve(&carol, cid, cdigest).await;
    assert_eq!(s, 200);
    api.wait_for(&alice, cid, "succeeded").await;

    // Reject and cancel, and transitions that do not apply.
    let (_, r) = api.submit(&alice, "acme-adjust", json!({})).await;
    let rid = r["id"].as_str().expect("id");
    assert_eq!(
        r["state"], "pending_approval",
        "L1 by a human needs approval"
    );
    let (s, v) = api
        .call(
            "POST",
            &format!("/api/v1/invocations/{rid}/reject"),
            Some(&bob),
            Some(json!({"comment": "not now"})),
        )
        .await;
    assert_eq!((s, v["state"].as_str()), (200, Some("rejected")), "{v}");
    // The comment is on the invocation, not only in the audit trail.
    assert_eq!(v["comment"], "not now", "{v}");
    assert!(v["finished_at"].is_string(), "{v}");
    let (s, _) = api
        .call(
            "POST",
            &format!("/api/v1/invocations/{rid}/cancel"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(s, 409);
    let (s, v) = api
        .call(
            "POST",
            &format!("/api/v1/invocations/{other_id}/cancel"),
            Some(&carol),
            None,
        )
        .await;
    assert_eq!(s, 403, "only the requester or an admin cancels: {v}");
    let (s, v) = api
        .call(
            "POST",
            &format!("/api/v1/invocations/{other_id}/cancel"),
            Some(&bob),
            None,
        )
        .await;
    assert_eq!((s, v["state"].as_str()), (200, Some("cancelled")), "{v}");

    // Everything above is in the audit trail, and the chain verifies.
    let (_, audit) = api
        .call("GET", "/api/v1/audit?limit=1000", Some(&victor), None)
        .await;
    let actions: Vec<&str> = audit["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["action"].as_str().expect("action"))
        .collect();
    // The refused cancel is in the trail, under the caller who tried.
    assert!(
        audit["events"]
            .as_array()
            .expect("events")
            .iter()
            .any(|e| e["action"] == "auth.forbidden"
                && e["actor"] == "carol"
                && e["subject"] == other_id),
        "a refused cancel was not audited"
    );
    // Every invocation records what started it, with it and in its audit event.
    for e in audit["events"].as_array().expect("events") {
        if e["action"] == "invocation.create" {
            assert_eq!(e["detail"]["trigger"], "api", "{e}");
        }
    }
    let (_, listed) = api
        .call("GET", "/api/v1/invocations", Some(&victor), None)
        .await;
    for inv in listed["invocations"].as_array().expect("invocations") {
        assert_eq!(inv["trigger"], "api", "{inv}");
    }
    for a in [
        "invocation.create",
        "approval.refused",
        "approval.grant",
        "invocation.queued",
        "invocation.running",
        "invocation.succeeded",
        "invocation.rejected",
        "invocation.cancelled",
        "auth.forbidden",
    ] {
        assert!(actions.contains(&a), "{a} not audited: {actions:?}");
    }
    let o = w.ok(&["audit", "verify", "--database", &orch.database]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("audit chain intact"));
}

async fn approvals_expire(backend: Backend) {
    let (w, reg) = setup();
    let orch = Orch::start(&w, &reg, backend, &["--approval-ttl", "300ms"]);
    let api = Api::new(&orch);
    let alice = orch.token(&w, "alice", "operator");
    let bob = orch.token(&w, "bob", "approver");
    let (_, inv) = api.submit(&alice, "acme-disrupt", json!({})).await;
    let id = inv["id"].as_str().expect("id");
    api.wait_for(&alice, id, "expired").await;
    let (s, v) = api
        .approve(&bob, id, inv["invocation_digest"].as_str().expect("d"))
        .await;
    assert_eq!(s, 409, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .expect("m")
            .contains("expired"),
        "{v}"
    );
}

async fn tokens_roles_and_ceilings(backend: Backend) {
    let (w, reg) = setup();
    let orch = Orch::start(
        &w,
        &reg,
        backend,
        &["--ceiling", "2", "--environment", "prod", "--floor", "1"],
    );
    let api = Api::new(&orch);
    let victor = orch.token(&w, "victor", "viewer");
    let alice = orch.token(&w, "alice", "operator");

    let (s, v) = api.call("GET", "/api/v1/status", None, None).await;
    assert_eq!(s, 401, "{v}");
    assert_eq!(v["error"]["code"], "unauthenticated");
    let (s, _) = api
        .call(
            "GET",
            "/api/v1/status",
            Some("tend_000000000000_forged"),
            None,
        )
        .await;
    assert_eq!(s, 401);
    let (s, v) = api.call("GET", "/api/v1/status", Some(&victor), None).await;
    assert_eq!(s, 200, "{v}");
    // The one-time admin token from the first start works.
    let (s, _) = api
        .call("GET", "/api/v1/status", Some(&orch.admin), None)
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        v["database"],
        if backend == Backend::Sqlite {
            "sqlite"
        } else {
            "postgres"
        }
    );

    // A viewer may look but not invoke: the policy says so, with reasons.
    let (s, v) = api.submit(&victor, "acme-echo", json!({})).await;
    assert_eq!(s, 403, "{v}");
    assert_eq!(v["error"]["code"], "policy_denied");
    // The environment floor lifts an L0 skill to L1: it now needs an approval.
    let (s, v) = api.submit(&alice, "acme-echo", json!({})).await;
    assert_eq!(
        (s, v["state"].as_str()),
        (201, Some("pending_approval")),
        "{v}"
    );
    assert!(
        v["reasons"]
            .as_array()
            .expect("reasons")
            .iter()
            .any(|r| r == "target local is in environment prod, whose floor is L1 adjust"),
        "{v}"
    );
    // Above the target's ceiling: refused whatever the approvals.
    let (s, v) = api.submit(&alice, "acme-critical", json!({})).await;
    assert_eq!(s, 403, "{v}");
    assert!(
        v["error"]["reasons"]
            .as_array()
            .expect("reasons")
            .iter()
            .any(|r| r.as_str().expect("r").contains("above the ceiling")),
        "{v}"
    );

    // Failed token uses are audited.
    let (_, audit) = api
        .call("GET", "/api/v1/audit?limit=1000", Some(&victor), None)
        .await;
    let refused = audit["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["action"] == "auth.refused")
        .count();
    assert_eq!(refused, 2, "{audit}");

    // Metrics in the Prometheus text format.
    let (s, metrics) = api.call("GET", "/metrics", None, None).await;
    assert_eq!(s, 200);
    let text = metrics.as_str().expect("text");
    assert!(
        text.contains("tend_decisions_total{decision=\"deny\"} 2"),
        "{text}"
    );
    assert!(text.contains("tend_pending_approvals 1"), "{text}");
    // Prometheus' own linter accepts it (scripts/test installs Debian's prometheus).
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (apt-get install prometheus; scripts/test does)");
    std::io::Write::write_all(&mut promtool.stdin.take().expect("stdin"), text.as_bytes())
        .expect("write");
    let checked = promtool.wait_with_output().expect("promtool");
    assert!(
        checked.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
}

async fn audit_verify_names_the_first_bad_event(backend: Backend) {
    let (w, reg) = setup();
    let orch = Orch::start(&w, &reg, backend, &[]);
    let api = Api::new(&orch);
    let alice = orch.token(&w, "alice", "operator");
    for _ in 0..3 {
        let (_, v) = api.submit(&alice, "acme-echo", json!({})).await;
        api.wait_for(&alice, v["id"].as_str().expect("id"), "succeeded")
            .await;
    }
    let (_, head) = api
        .call("GET", "/api/v1/audit/head", Some(&alice), None)
        .await;
    assert!(head["index"].as_i64().expect("index") >= 10, "{head}");
    let sql = |q: &str| tamper(&orch.database, q);
    let verify = || w.tend(&["audit", "verify", "--database", &orch.database]);
    assert_eq!(verify().status.code(), Some(0));

    // Reordered: events 8 and 9 swap places.
    sql("UPDATE audit SET idx = -1 WHERE idx = 8");
    sql("UPDATE audit SET idx = 8 WHERE idx = 9");
    sql("UPDATE audit SET idx = 9 WHERE idx = -1");
    let o = verify();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err(&o).contains("audit event 8") && err(&o).contains("does not follow event 7"),
        "{}",
        err(&o)
    );
    // Deleted: event 6 is gone (and it is the first problem now).
    sql("DELETE FROM audit WHERE idx = 6");
    let o = verify();
    assert!(err(&o).contains("audit event 6 is missing"), "{}", err(&o));
    // Altered: event 3's actor rewritten (the first problem now).
    sql("UPDATE audit SET actor = 'mallory' WHERE idx = 3");
    let o = verify();
    assert!(
        err(&o).contains("audit event 3") && err(&o).contains("altered"),
        "{}",
        err(&o)
    );
    let o = w.tend(&["audit", "verify", "--database", &orch.database, "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["intact"], false);
}

/// Publish `acme-slow` (the hostile guest told to sleep, stopped by its 1.5 s timeout).
fn publish_slow(w: &World, reg: &Registry) {
    let token = w.token("ci-slow", "publisher");
    let wasm = w.signed_with(
        "acme-slow",
        &guest("hostile"),
        "[skill]\nname = \"acme-slow\"\nversion = \"1.0.0\"\nkind = \"diagnose\"\n[limits]\ntimeout_ms = 1500\n",
    );
    w.published(&reg.url, &wasm, &token);
}

/// SIGTERM: running jobs finish within the grace period; past it they are failed with the
/// reason. Either way no job stays `running` behind a stopped process.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_running_jobs_finish_and_leaves_none_claimed() {
    let (w, reg) = setup();
    publish_slow(&w, &reg);
    for (grace, expect) in [("10s", "timeout"), ("100ms", "interrupted")] {
        let mut orch = Orch::start(&w, &reg, Backend::Sqlite, &["--shutdown-grace", grace]);
        let api = Api::new(&orch);
        let alice = orch.token(&w, &format!("alice-{grace}"), "operator");
        let (_, v) = api
            .submit(&alice, "acme-slow", json!({"do": "sleep"}))
            .await;
        let id = v["id"].as_str().expect("id").to_string();
        api.wait_for(&alice, &id, "running").await;
        orch.stop();
        let db = orch
            .database
            .strip_prefix("sqlite://")
            .expect("sqlite")
            .to_string();
        let row = Command::new("python3")
            .args([
                "-c",
                "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('SELECT state, result FROM invocations WHERE id = ?', (sys.argv[2],)).fetchone())",
            ])
            .arg(&db)
            .arg(&id)
            .output()
            .expect("python3");
        let row = String::from_utf8_lossy(&row.stdout).to_string();
        assert!(row.contains("'failed'"), "grace {grace}: {row}");
        assert!(row.contains(expect), "grace {grace}: {row}");
        for suffix in ["", "-wal", "-shm"] {
            std::fs::remove_file(format!("{db}{suffix}")).ok();
        }
    }
}

/// The OpenAPI document is generated from the code, and schemathesis (PyPI; scripts/test
/// installs it) fuzzes every operation against it: no 5xx, no response that breaks the schema.
#[tokio::test(flavor = "multi_thread")]
async fn the_api_holds_to_its_openapi_document_under_schemathesis() {
    let (w, reg) = setup();
    let orch = Orch::start(&w, &reg, Backend::Sqlite, &[]);
    let api = Api::new(&orch);
    let (s, doc) = api.call("GET", "/api/v1/openapi.json", None, None).await;
    assert_eq!(s, 200);
    assert!(doc["openapi"].as_str().expect("version").starts_with("3."));
    for path in [
        "/api/v1/invocations",
        "/api/v1/invocations/{id}/approve",
        "/api/v1/audit",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} undocumented");
    }
    // Something to find: one queued and one pending invocation.
    api.submit(&orch.admin, "acme-echo", json!({"x": 1})).await;
    api.submit(&orch.admin, "acme-disrupt", json!({})).await;
    // Revoking and rotating tokens last: its stateful phase finds the admin's own prefix in
    // `GET /api/v1/tokens` and revokes it, after which every operation would answer 401.
    for (filter, routes) in [
        ("--exclude-path-regex", "^/api/v1/tokens/"),
        ("--include-path-regex", "^/api/v1/tokens/"),
    ] {
        let o = Command::new("schemathesis")
            .args([
                "run",
                &format!("{}/api/v1/openapi.json", orch.url),
                "--url",
                &orch.url,
                "--header",
                &format!("Authorization: Bearer {}", orch.admin),
                "--checks",
                "not_a_server_error,response_schema_conformance",
                "--max-examples",
                "30",
                "--generation-deterministic",
                filter,
                routes,
            ])
            .current_dir(w.dir.path())
            .env("NO_COLOR", "1")
            .output()
            .expect("schemathesis (pip install schemathesis; scripts/test does)");
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success(),
            "schemathesis found problems ({filter} {routes}):\n{out}{}",
            err(&o)
        );
        assert!(out.contains("passed"), "{out}");
    }
}

/// Two orchestrator replicas on one PostgreSQL database share the queue: every job is claimed
/// (`FOR UPDATE SKIP LOCKED`) and run exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_on_one_postgres_run_each_job_exactly_once() {
    let (w, reg) = setup();
    let first = Orch::start(&w, &reg, Backend::Postgres, &[]);
    let second = Orch::replica(&w, &reg, &first.database, "replica", "127.0.0.1:0", &[]);
    assert!(
        second.admin.is_empty(),
        "only the first start mints an admin token"
    );
    let apis = [Api::new(&first), Api::new(&second)];
    let token = first.admin.clone();
    let mut submitted = tokio::task::JoinSet::new();
    for n in 0..40 {
        let (api, token) = (apis[n % 2].clone(), token.clone());
        submitted.spawn(async move {
            let (s, v) = api.submit(&token, "acme-echo", json!({"x": n})).await;
            assert_eq!(s, 201, "{v}");
            v["id"].as_str().expect("id").to_string()
        });
    }
    let mut ids = Vec::new();
    while let Some(id) = submitted.join_next().await {
        ids.push(id.expect("join"));
    }
    for id in &ids {
        apis[0].wait_for(&token, id, "succeeded").await;
    }
    let (_, audit) = apis[1]
        .call("GET", "/api/v1/audit?limit=1000", Some(&token), None)
        .await;
    let events = audit["events"].as_array().expect("events");
    for id in &ids {
        let runs = events
            .iter()
            .filter(|e| e["subject"] == id.as_str() && e["action"] == "invocation.running")
            .count();
        assert_eq!(runs, 1, "{id} was claimed {runs} times");
    }
    let o = w.ok(&["audit", "verify", "--database", &first.database]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("intact"));
}

/// Every audit event, oldest first.
pub async fn all_events(api: &Api, token: &str) -> Vec<Value> {
    let mut events = Vec::new();
    loop {
        let (s, page) = api
            .call(
                "GET",
                &format!("/api/v1/audit?after={}&limit=1000", events.len()),
                Some(token),
                None,
            )
            .await;
        assert_eq!(s, 200, "{page}");
        let batch = page["events"].as_array().expect("events").clone();
        if batch.is_empty() {
            return events;
        }
        events.extend(batch);
    }
}

/// A well-formed ed25519 public key (the base point): enrollments get past the key check.
const SOME_KEY: &str = "ed25519:WGZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmY=";

/// An unauthenticated enrollment (a forged enroll token) claiming `name` and `hostname`.
async fn forged_enrollment(api: &Api, name: &str, hostname: &str) -> (u16, Value) {
    let sent = api
        .http
        .post(format!("{}/api/v1/agents/enroll", api.base))
        .json(&json!({
            "token": "tendenroll_000000000000_forged", "name": name, "hostname": hostname,
            "os": "linux", "arch": "x86_64", "public_key": SOME_KEY,
            "ceiling": { "max_level": 0 },
        }))
        .send()
        .await;
    match sent {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.json().await.unwrap_or(Value::Null))
        }
        // An oversized body is refused (413) on its headers; the server may close the
        // connection before the client has finished sending it.
        Err(e) if e.is_request() => (413, Value::Null),
        Err(e) => panic!("enroll: {e}"),
    }
}

/// Milliseconds since the Unix epoch, as the orchestrator stores times.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("now")
        .as_millis() as i64
}

/// The review's attack: an unauthenticated enrollment whose claimed name carries the lines of
/// an approval, then someone with the database's disk re-splits that row into `approval.grant`
/// by `bob`, keeping its hash. The caller's lines never reach a field (the actor is
/// `anonymous`, every field is one line), and `tend audit verify` names the rewritten event.
async fn a_re_split_audit_event_is_named_by_verify(backend: Backend) {
    let (w, reg) = setup();
    let orch = Orch::start(&w, &reg, backend, &[]);
    let api = Api::new(&orch);
    let alice = orch.token(&w, "alice", "operator");
    let (_, inv) = api.submit(&alice, "acme-disrupt", json!({})).await;
    let id = inv["id"].as_str().expect("id");

    let name = format!("bob\naction approval.grant\nsubject {id}");
    let (s, v) = forged_enrollment(&api, &name, "host\nactor bob").await;
    assert!(s == 403 || s == 422, "{s} {v}");
    let (s, _) = api
        .call(
            "GET",
            "/api/v1/status",
            Some("tend_000000000000_forged"),
            None,
        )
        .await;
    assert_eq!(s, 401);

    let events = all_events(&api, &orch.admin).await;
    for e in &events {
        for field in ["actor", "action", "subject"] {
            let text = e[field].as_str().expect("field");
            assert!(!text.contains('\n'), "a line break in {field}: {e}");
        }
        if e["action"].as_str().expect("action").ends_with("refused") {
            assert_eq!(e["actor"], "anonymous", "a caller chose its actor: {e}");
        }
    }
    assert!(
        !events.iter().any(|e| e["actor"] == "bob"),
        "bob never acted, yet the trail says he did: {events:?}"
    );

    // The re-split: the newest refusal rewritten into bob approving the pending invocation.
    let refusal = events
        .iter()
        .rev()
        .find(|e| e["actor"] == "anonymous")
        .expect("a refusal was audited");
    let idx = refusal["index"].as_i64().expect("index");
    let verify = || w.tend(&["audit", "verify", "--database", &orch.database]);
    assert_eq!(verify().status.code(), Some(0), "{}", err(&verify()));
    tamper(
        &orch.database,
        &format!(
            "UPDATE audit SET actor = 'bob', action = 'approval.grant', subject = '{id}' WHERE idx = {idx}"
        ),
    );
    let o = verify();
    assert_eq!(
        o.status.code(),
        Some(1),
        "the rewrite went unseen: {}",
        err(&o)
    );
    assert!(
        err(&o).contains(&format!("audit event {idx} (approval.grant by bob"))
            && err(&o).contains("altered"),
        "{}",
        err(&o)
    );
}

/// A flood of unauthenticated requests with huge and multi-line fields: forged bearer tokens,
/// forged enrollments (a 1.9 MB hostname) and forged agent signatures. The audit trail keeps
/// the first refusals of each kind (as `anonymous`, every field bounded), counts the rest in
/// `/metrics` and, once the window closes, writes one `audit.refusals_suppressed` summary.
async fn a_flood_of_refused_requests_leaves_a_bounded_audit_trail(backend: Backend) {
    let (w, reg) = setup();
    let mut orch = Orch::start(&w, &reg, backend, &[]);
    let api = Api::new(&orch);
    let before = all_events(&api, &orch.admin).await.len();
    let huge = std::sync::Arc::new("h".repeat(1_900_000));
    let http = reqwest::Client::new();
    let mut flood = tokio::task::JoinSet::new();
    for n in 0..40 {
        let (api, huge) = (api.clone(), huge.clone());
        flood.spawn(async move {
            let name = format!("alice\naction approval.grant {n}");
            let hostname = if n < 10 { huge.as_str() } else { "host" };
            forged_enrollment(&api, &name, hostname).await.0
        });
    }
    // Its own client: the server closes a connection whose oversized enrollment it refused
    // unread, and a status request must not be sent on such a pooled connection.
    let status_api = Api::new(&orch);
    for n in 0..150 {
        let api = status_api.clone();
        flood.spawn(async move {
            let token = format!("tend_{n:012}_forged");
            api.call("GET", "/api/v1/status", Some(&token), None)
                .await
                .0
        });
    }
    for n in 0..60 {
        let (http, url) = (http.clone(), orch.url.clone());
        flood.spawn(async move {
            http.post(format!("{url}/api/v1/agent/heartbeat"))
                .header("tend-agent", format!("alice-{n}"))
                .header("tend-timestamp", "0")
                .header("tend-nonce", "00000000000000000000")
                .header("tend-signature", "forged")
                .body("{}")
                .send()
                .await
                .expect("send")
                .status()
                .as_u16()
        });
    }
    while let Some(status) = flood.join_next().await {
        let status = status.expect("join");
        assert!((400..500).contains(&status), "{status}");
    }

    // A fresh client: the server closes a connection whose oversized body it refused unread,
    // and a pooled one may be such a connection.
    let api = Api::new(&orch);
    let events = all_events(&api, &orch.admin).await;
    let new = &events[before..];
    let mut per_action = std::collections::BTreeMap::<String, usize>::new();
    let mut bytes = 0;
    for e in new {
        let action = e["action"].as_str().expect("action");
        if action == "audit.refusals_suppressed" {
            continue;
        }
        *per_action.entry(action.to_string()).or_default() += 1;
        assert_eq!(e["actor"], "anonymous", "{e}");
        let subject = e["subject"].as_str().expect("subject");
        assert!(!subject.contains('\n') && subject.len() <= 256, "{subject}");
        let detail = e["detail"].to_string();
        assert!(detail.len() <= 9 * 1024, "detail of {} bytes", detail.len());
        bytes += detail.len() + subject.len();
    }
    // At most 20 per action and window (two windows, should the flood straddle a boundary).
    for (action, n) in &per_action {
        assert!(*n <= 40, "{n} {action} events: {per_action:?}");
    }
    assert!(
        bytes < 256 * 1024,
        "{bytes} bytes of audit for a refused flood"
    );
    assert!(per_action.get("auth.refused").copied().unwrap_or(0) >= 1);

    // Every refusal is still counted.
    let (_, metrics) = api.call("GET", "/metrics", None, None).await;
    let text = metrics.as_str().expect("text").to_string();
    let metric = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0)
    };
    assert_eq!(
        metric("tend_refusals_total{action=\"auth.refused\"}"),
        150,
        "{text}"
    );
    assert_eq!(
        metric("tend_refusals_total{action=\"agent.request_refused\"}"),
        60,
        "{text}"
    );
    let suppressed = metric("tend_audit_refusals_suppressed_total{action=\"auth.refused\"}");
    assert!(suppressed >= 110, "{text}");

    // Stopping closes the window: the summary is written, and the chain is intact.
    let admin = orch.admin.clone();
    orch.stop();
    let again = Orch::replica(&w, &reg, &orch.database, "again", "127.0.0.1:0", &[]);
    let events = all_events(&Api::new(&again), &admin).await;
    let summarised: u64 = events
        .iter()
        .filter(|e| e["action"] == "audit.refusals_suppressed" && e["subject"] == "auth.refused")
        .map(|e| e["detail"]["suppressed"].as_u64().expect("count"))
        .sum();
    assert_eq!(summarised, suppressed, "{events:?}");
    let o = w.ok(&["audit", "verify", "--database", &orch.database]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("intact"));
}

/// What a request stores is bounded before anything is resolved or written: an oversize input
/// is a 413, a long or malformed field a 422 naming it, and nothing is recorded.
async fn stored_request_fields_are_bounded(backend: Backend) {
    let (w, reg) = setup();
    let orch = Orch::start(&w, &reg, backend, &[]);
    let api = Api::new(&orch);
    let alice = orch.token(&w, "alice", "operator");
    let bob = orch.token(&w, "bob", "approver");
    let submit = |body: Value| api.call("POST", "/api/v1/invocations", Some(&alice), Some(body));

    let (s, v) =
        submit(json!({"skill": "acme-echo", "reason": "r", "input": {"x": "i".repeat(100_000)}}))
            .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (413, Some("input_too_large")),
        "{v}"
    );
    let (s, v) = submit(json!({"skill": "acme-echo", "reason": "r".repeat(5000)})).await;
    assert_eq!(s, 422, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .expect("m")
            .contains("`reason`"),
        "{v}"
    );
    let (s, v) =
        submit(json!({"skill": "acme-echo", "reason": "r", "target": "t".repeat(1_000_000)})).await;
    assert_eq!(s, 422, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .expect("m")
            .contains("`target`"),
        "{v}"
    );
    assert!(
        v.to_string().len() < 1000,
        "the answer echoes the field: {} bytes",
        v.to_string().len()
    );
    let (s, v) =
        submit(json!({"skill": "acme-echo", "reason": "r", "target": "pool:a\nactor bob"})).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (422, Some("invalid_target")),
        "{v}"
    );
    let (s, v) = submit(json!({"skill": "acme-echo", "reason": "r", "version": "1.0.0-".to_string() + &"a".repeat(100)})).await;
    assert_eq!(s, 422, "{v}");
    let (_, list) = api
        .call("GET", "/api/v1/invocations", Some(&alice), None)
        .await;
    assert_eq!(
        list["invocations"].as_array().expect("list").len(),
        0,
        "{list}"
    );

    let (_, inv) = api.submit(&alice, "acme-disrupt", json!({})).await;
    let id = inv["id"].as_str().expect("id");
    let (s, v) = api
        .call(
            "POST",
            &format!("/api/v1/invocations/{id}/reject"),
            Some(&bob),
            Some(json!({"comment": "c".repeat(5000)})),
        )
        .await;
    assert_eq!(s, 422, "{v}");
    let (s, v) = api.approve(&bob, id, &"d".repeat(1_000_000)).await;
    assert_eq!(s, 422, "{v}");
    assert_eq!(api.get(&alice, id).await["state"], "pending_approval");

    // A token's name is the actor of all it does: one line, bounded.
    let o = w.tend(&[
        "orchestrator",
        "token",
        "create",
        "--role",
        "approver",
        "--name",
        "carol\naction approval.grant",
        "--database",
        &orch.database,
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(err(&o).contains("not a token name"), "{}", err(&o));
}

/// A crash between an approval's commit and the `pending_approval -> queued` move (possible
/// before both were one transaction) left the invocation stuck and the approver's retries
/// refused with 409. Here that state is made directly; the retry completes it. A double
/// approval by one approver is idempotent and counts once; the list shows approvals.
async fn a_retried_approval_completes_a_stranded_decision(backend: Backend) {
    let (w, reg) = setup();
    let orch = Orch::start(&w, &reg, backend, &[]);
    let api = Api::new(&orch);
    let alice = orch.token(&w, "alice", "operator");
    let bob = orch.token(&w, "bob", "approver");
    let carol = orch.token(&w, "carol", "approver");
    let dave = orch.token(&w, "dave", "approver");

    let (_, inv) = api.submit(&alice, "acme-disrupt", json!({"n": 1})).await;
    let id = inv["id"].as_str().expect("id");
    let digest = inv["invocation_digest"].as_str().expect("digest");
    // What a crash right after the approval's commit left behind (bob's signed approval).
    let (key, signature) = tend_protocol::sign_approval(&approver_key("bob"), digest);
    tamper(
        &orch.database,
        &format!(
            "INSERT INTO approvals (invocation_id, approver, invocation_digest, created_ms, public_key, signature) VALUES ('{id}', 'bob', '{digest}', {}, '{key}', '{signature}')",
            now_ms()
        ),
    );
    let stuck = api.get(&alice, id).await;
    assert_eq!(stuck["state"], "pending_approval", "{stuck}");
    assert_eq!(stuck["approvals"][0]["approver"], "bob", "{stuck}");
    let (s, v) = api.approve(&bob, id, digest).await;
    assert_eq!(s, 200, "the retry was refused: {v}");
    assert_ne!(v["state"], "pending_approval", "{v}");
    let done = api.wait_for(&alice, id, "succeeded").await;
    assert_eq!(
        done["approvals"].as_array().expect("approvals").len(),
        1,
        "{done}"
    );
    // Retrying after it ran: the same answer, the current state, nothing new recorded.
    let (s, v) = api.approve(&bob, id, digest).await;
    assert_eq!((s, v["state"].as_str()), (200, Some("succeeded")), "{v}");
    // Someone who never approved it cannot approve what already ran.
    let (s, v) = api.approve(&dave, id, digest).await;
    assert_eq!(s, 409, "{v}");

    // L3 needs two: one approver twice is idempotent and still counts once.
    let (_, crit) = api.submit(&alice, "acme-critical", json!({})).await;
    let cid = crit["id"].as_str().expect("id");
    let cdigest = crit["invocation_digest"].as_str().expect("digest");
    for _ in 0..2 {
        let (s, v) = api.approve(&bob, cid, cdigest).await;
        assert_eq!(
            (s, v["state"].as_str()),
            (200, Some("pending_approval")),
            "{v}"
        );
        assert_eq!(v["approvals"].as_array().expect("a").len(), 1, "{v}");
    }
    // The list shows the approvals, as the single view does.
    let (_, list) = api
        .call(
            "GET",
            "/api/v1/invocations?state=pending_approval",
            Some(&alice),
            None,
        )
        .await;
    let listed = list["invocations"]
        .as_array()
        .expect("list")
        .iter()
        .find(|i| i["id"] == cid)
        .expect("listed")
        .clone();
    assert_eq!(listed["approvals"][0]["approver"], "bob", "{listed}");
    let (s, v) = api.approve(&carol, cid, cdigest).await;
    assert_eq!(s, 200, "{v}");
    api.wait_for(&alice, cid, "succeeded").await;

    let events = all_events(&api, &orch.admin).await;
    let recovered = events
        .iter()
        .filter(|e| e["action"] == "invocation.queued" && e["subject"] == id)
        .collect::<Vec<_>>();
    assert_eq!(recovered.len(), 1, "{recovered:?}");
    assert!(
        recovered[0]["detail"]["recovered"].is_string(),
        "{recovered:?}"
    );
    let grants = events
        .iter()
        .filter(|e| e["action"] == "approval.grant" && e["subject"] == cid)
        .count();
    assert_eq!(grants, 2, "a repeated approval was recorded twice");
    let o = w.ok(&["audit", "verify", "--database", &orch.database]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("intact"));
}

fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// The default data directory and the SQLite database in it (with its WAL and shared-memory
/// files) hold inputs, results and the audit trail: 0700 and 0600, on a first start and on a
/// directory an older release left 0755 with 0644 files.
#[tokio::test(flavor = "multi_thread")]
async fn the_data_dir_and_database_are_private() {
    let (w, reg) = setup();
    let home = w.path("home");
    let start = || {
        let mut cmd = Command::new("tend");
        cmd.args(["--listen", "127.0.0.1:0"])
            .env("TEND_DATA_DIR", &home)
            .env_remove("TEND_DATABASE_URL");
        Orch::spawn(&w, &reg, cmd, "")
    };
    let db = home.join("orchestrator.db");
    let files =
        ["", "-wal", "-shm"].map(|s| std::path::PathBuf::from(format!("{}{s}", db.display())));
    let check = |when: &str| {
        assert_eq!(mode(&home), 0o700, "{when}: data dir");
        assert_eq!(
            mode(&home.join("orchestrator")),
            0o700,
            "{when}: pulled skills"
        );
        for f in &files {
            assert_eq!(mode(f), 0o600, "{when}: {}", f.display());
        }
    };
    let mut orch = start();
    check("first start");
    // Killed, so the WAL and shared-memory files stay; then modes as an older release left them.
    orch.child.kill().expect("kill");
    orch.child.wait().expect("wait");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    for f in files.iter().filter(|f| f.exists()) {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    let _orch = start();
    check("restart on an older release's files");
}

/// A chain written by an older release (v1 rows, no `v` column) still opens and verifies, new
/// events are written in v2 after it, a v1 event with a line break inside a field is named as
/// ambiguous, and a v2 event relabelled v1 (a downgrade) is refused.
#[tokio::test(flavor = "multi_thread")]
async fn an_older_release_s_audit_chain_still_verifies() {
    let w = World::new();
    let db = w.path("old.db");
    // The old release's audit tables and three v1 events; the second carries the line breaks
    // an unauthenticated enrollment could put into its actor then.
    let script = r#"
import hashlib, sqlite3, sys
c = sqlite3.connect(sys.argv[1])
c.execute("CREATE TABLE audit (idx BIGINT PRIMARY KEY, at TEXT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL, subject TEXT NOT NULL, detail TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL)")
c.execute("CREATE TABLE audit_head (id BIGINT PRIMARY KEY, idx BIGINT NOT NULL, hash TEXT NOT NULL)")
prev = "0" * 64
rows = [("tend", "token.create", "admin", "{}"),
        ("alice\naction approval.grant\nsubject inv_00", "agent.enroll_refused", "host", "{}"),
        ("tend", "orchestrator.stop", "w", "{}")]
for i, (actor, action, subject, detail) in enumerate(rows, 1):
    at = "2026-11-24T00:00:0%d.000Z" % i
    text = "tend-audit/v1\nindex %d\nat %s\nactor %s\naction %s\nsubject %s\ndetail %s\n" % (i, at, actor, action, subject, detail)
    h = hashlib.sha256((prev + text).encode()).hexdigest()
    c.execute("INSERT INTO audit VALUES (?,?,?,?,?,?,?,?)", (i, at, actor, action, subject, detail, prev, h))
    prev = h
c.execute("INSERT INTO audit_head VALUES (1, 3, ?)", (prev,))
c.commit()
"#;
    let ok = Command::new("python3")
        .args(["-c", script])
        .arg(&db)
        .status()
        .expect("python3")
        .success();
    assert!(ok);
    let database = format!("sqlite://{}", db.display());
    let o = w.ok(&["audit", "verify", "--database", &database, "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(
        (v["intact"].as_bool(), v["events"].as_i64()),
        (Some(true), Some(3)),
        "{v}"
    );
    assert_eq!(v["ambiguous_v1"], json!([2]), "{v}");
    let o = w.ok(&["audit", "verify", "--database", &database]);
    assert!(
        err(&o).contains("[2]") && err(&o).contains("re-split"),
        "{}",
        err(&o)
    );

    // A new event on the upgraded database: v2, after the v1 ones, and the chain is intact.
    w.ok(&[
        "orchestrator",
        "token",
        "create",
        "--role",
        "viewer",
        "--name",
        "victor",
        "--database",
        &database,
    ]);
    let forms = Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys; print([r[0] for r in sqlite3.connect(sys.argv[1]).execute('SELECT v FROM audit ORDER BY idx')])",
        ])
        .arg(&db)
        .output()
        .expect("python3");
    assert_eq!(
        String::from_utf8_lossy(&forms.stdout).trim(),
        "[1, 1, 1, 2]"
    );
    let o = w.ok(&["audit", "verify", "--database", &database]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("intact: 4 events"));

    // Relabelling the v2 event as v1 is a rewrite.
    tamper(&database, "UPDATE audit SET v = 1 WHERE idx = 4");
    let o = w.tend(&["audit", "verify", "--database", &database]);
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("audit event 4"), "{}", err(&o));
}

/// An orchestrator serving its own host under another name than `local` (`--target NAME`)
/// runs that host's jobs: its worker claims the jobs of the target it serves as.
#[tokio::test(flavor = "multi_thread")]
async fn a_host_served_under_its_own_name_runs_its_jobs() {
    let (w, reg) = setup();
    let orch = Orch::start(&w, &reg, Backend::Sqlite, &["--target", "db-host"]);
    let api = Api::new(&orch);
    let (s, v) = api.submit(&orch.admin, "acme-echo", json!({"x": 5})).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["target"], "db-host", "{v}");
    let done = api
        .wait_for(&orch.admin, v["id"].as_str().expect("id"), "succeeded")
        .await;
    assert_eq!(done["result"]["output"]["echo"]["x"], 5, "{done}");
}
