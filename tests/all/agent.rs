//! Host agents as operators run them: real `tend agent run` processes enrolled with a real
//! orchestrator (SQLite) that resolves signed skills from a real registry, all on loopback.
//! Crashes are real too: `kill -9` of an agent mid-job, an orchestrator restarted mid-run.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::orchestrator::{Api, Backend, Orch};
use crate::registry::{Registry, World, err};
use crate::support::*;

/// A `tend agent run` process.
/// The first line of the agent's log (written by its stderr reader) that mentions `what`.
async fn wait_for_line(log: &std::path::Path, what: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(line) = std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .find(|l| l.contains(what))
        {
            return line.to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no line mentioning {what} in {}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub struct AgentProc {
    child: Option<Child>,
    dir: PathBuf,
    cache: PathBuf,
    extra: Vec<String>,
}

impl AgentProc {
    fn spawn(dir: &PathBuf, cache: &PathBuf, extra: &[String]) -> Child {
        let mut child = tend()
            .env("TEND_CACHE_DIR", cache)
            // The default log level: what an operator's journal shows.
            .env_remove("TEND_LOG")
            .env_remove("RUST_LOG")
            .args(["agent", "run", "--dir"])
            .arg(dir)
            .args(["--heartbeat", "500ms", "--grace", "10s"])
            .args(extra)
            .stderr(Stdio::piped())
            .spawn()
            .expect("start agent");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        loop {
            let line = lines
                .next()
                .expect("the agent exited before running")
                .expect("read");
            if line.contains("tend agent running") {
                break;
            }
        }
        let log = dir.with_extension("log");
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .expect("log");
            for l in lines.map_while(Result::ok) {
                let _ = writeln!(f, "{l}");
            }
        });
        child
    }

    pub fn start(w: &World, name: &str) -> AgentProc {
        AgentProc::start_with(w, name, &[])
    }

    pub fn start_with(w: &World, name: &str, extra: &[&str]) -> AgentProc {
        let dir = w.path(&format!("agent-{name}"));
        let cache = w.path("cache");
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let child = AgentProc::spawn(&dir, &cache, &extra);
        AgentProc {
            child: Some(child),
            dir,
            cache,
            extra,
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.child = Some(AgentProc::spawn(&self.dir, &self.cache, &self.extra));
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }
}

/// Enroll `name` with the orchestrator; `extra` adds pools, labels and ceiling flags. The enroll
/// token is made for exactly the pools, labels and level asked for.
pub fn enroll(w: &World, orch: &Orch, reg: &Registry, name: &str, trust: &str, extra: &[&str]) {
    let mut create = vec![
        "agent",
        "token",
        "create",
        "--database",
        &orch.database,
        "--uses",
        "1",
        "--ttl",
        "5m",
    ];
    for pair in extra.windows(2) {
        if ["--pool", "--label", "--max-level"].contains(&pair[0]) {
            create.extend_from_slice(pair);
        }
    }
    let o = w.ok(&create);
    let token = String::from_utf8(o.stdout)
        .expect("utf8")
        .trim()
        .to_string();
    let dir = w.path(&format!("agent-{name}"));
    let mut args = vec![
        "agent",
        "enroll",
        "--orchestrator",
        &orch.url,
        "--token",
        &token,
        "--name",
        name,
        "--registry",
        &reg.url,
        "--trust",
        trust,
        "--dir",
        dir.to_str().expect("dir"),
    ];
    args.extend_from_slice(extra);
    w.ok(&args);
    // The same enroll token cannot enroll a second agent.
    let o = w.tend(&[
        "agent",
        "enroll",
        "--orchestrator",
        &orch.url,
        "--token",
        &token,
        "--trust",
        trust,
        "--dir",
        w.path(&format!("agent-{name}-again"))
            .to_str()
            .expect("dir"),
    ]);
    assert_eq!(o.status.code(), Some(2), "a spent token enrolled again");
    assert!(err(&o).contains("used up"), "{}", err(&o));
}

pub async fn submit_to(
    api: &Api,
    token: &str,
    skill: &str,
    target: &str,
    input: Value,
) -> (u16, Value) {
    api.call(
        "POST",
        "/api/v1/invocations",
        Some(token),
        Some(json!({ "skill": skill, "target": target, "input": input, "reason": "test" })),
    )
    .await
}

pub async fn audit_events(api: &Api, token: &str) -> Vec<Value> {
    let (_, a) = api
        .call("GET", "/api/v1/audit?limit=1000", Some(token), None)
        .await;
    a["events"].as_array().expect("events").clone()
}

/// Poll the audit trail until `action` appears for `id`.
pub async fn wait_audit(api: &Api, token: &str, id: &str, action: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(e) = audit_events(api, token)
            .await
            .into_iter()
            .find(|e| e["subject"] == id && e["action"] == action)
        {
            return e;
        }
        assert!(Instant::now() < deadline, "no {action} for {id}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn count(events: &[Value], id: &str, action: &str) -> usize {
    events
        .iter()
        .filter(|e| e["subject"] == id && e["action"] == action)
        .count()
}

/// A diagnose skill that sleeps until its `secs`-second timeout.
pub fn publish_sleeper(w: &World, reg: &Registry, name: &str, timeout_ms: u32) {
    let token = w.token(&format!("ci-{name}"), "publisher");
    let wasm = w.signed_with(
        name,
        &guest("hostile"),
        &format!(
            "[skill]\nname = \"{name}\"\nversion = \"1.0.0\"\nkind = \"diagnose\"\n[limits]\ntimeout_ms = {timeout_ms}\n"
        ),
    );
    w.published(&reg.url, &wasm, &token);
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_go_to_their_pool_and_agents_report_health() {
    let (w, reg) = crate::orchestrator::setup();
    let orch = Orch::start(&w, &reg, Backend::Sqlite, &[]);
    let api = Api::new(&orch);
    let trust = w.path("trust.toml");
    let trust = trust.to_str().expect("trust");
    enroll(
        &w,
        &orch,
        &reg,
        "web-1",
        trust,
        &[
            "--pool",
            "web",
            "--label",
            "env=staging",
            "--max-level",
            "2",
        ],
    );
    enroll(
        &w,
        &orch,
        &reg,
        "db-1",
        trust,
        &["--pool", "db", "--max-level", "2"],
    );
    let _web = AgentProc::start(&w, "web-1");
    let _db = AgentProc::start(&w, "db-1");
    let admin = orch.admin.clone();

    for (pool, agent) in [("pool:web", "web-1"), ("pool:db", "db-1")] {
        let (s, v) = submit_to(&api, &admin, "acme-echo", pool, json!({"x": 3})).await;
        assert_eq!(s, 201, "{v}");
        let id = v["id"].as_str().expect("id").to_string();
        let done = api.wait_for(&admin, &id, "succeeded").await;
        assert_eq!(done["result"]["output"]["echo"]["x"], 3);
        assert_eq!(done["result"]["provenance"]["trust"], "signed");
        let assigned = audit_events(&api, &admin)
            .await
            .into_iter()
            .find(|e| e["subject"] == id.as_str() && e["action"] == "invocation.assign")
            .expect("assigned");
        assert_eq!(assigned["detail"]["agent"], agent, "{pool} ran elsewhere");
        let started = wait_audit(&api, &admin, &id, "invocation.started").await;
        assert_eq!(started["actor"], agent);
        // At the default log level the agent says one line for the job it ran.
        let log = w.path(&format!("agent-{agent}.log"));
        let line = wait_for_line(&log, &id).await;
        assert!(
            line.contains("job done") && line.contains("acme-echo") && line.contains("outcome=ok"),
            "{line}"
        );
    }
    // An unknown pool is a clear 404.
    let (s, v) = submit_to(&api, &admin, "acme-echo", "pool:nope", json!({})).await;
    assert_eq!(s, 404, "{v}");

    let (s, agents) = api.call("GET", "/api/v1/agents", Some(&admin), None).await;
    assert_eq!(s, 200);
    let agents = agents.as_array().expect("agents");
    assert_eq!(agents.len(), 2);
    for a in agents {
        assert_eq!(a["state"], "online", "{a}");
        assert!(a["health"].as_u64().expect("health") >= 90, "{a}");
        assert_eq!(a["jobs_ok"], 1, "{a}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_refuses_what_its_own_policy_forbids_even_when_approved() {
    let (w, reg) = crate::orchestrator::setup();
    let orch = Orch::start(&w, &reg, Backend::Sqlite, &[]);
    let api = Api::new(&orch);
    let admin = orch.admin.clone();
    let bob = orch.token(&w, "bob", "approver");

    // An agent whose own trust policy does not list the publisher.
    std::fs::write(w.path("strict-trust.toml"), "").expect("trust");
    let strict = w.path("strict-trust.toml");
    enroll(
        &w,
        &orch,
        &reg,
        "strict",
        strict.to_str().expect("p"),
        &["--max-level", "3"],
    );
    // An agent enrolled at L2 whose operator then lowered its local ceiling to L1.
    let trust = w.path("trust.toml");
    enroll(
        &w,
        &orch,
        &reg,
        "careful",
        trust.to_str().expect("p"),
        &["--max-level", "2"],
    );
    let config = w.path("agent-careful/agent.toml");
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(&config, text.replace("max_level = 2", "max_level = 1")).expect("edit");
    // An agent enrolled to let skills read under /etc, whose operator then narrowed that to
    // /var/log, and a skill granted /etc (the orchestrator, going by the enrolled ceiling,
    // lets it through; the agent's own ceiling refuses it).
    enroll(
        &w,
        &orch,
        &reg,
        "narrow",
        trust.to_str().expect("p"),
        &["--allow-capability", "fs_read", "--allow-path", "/etc"],
    );
    let config = w.path("agent-narrow/agent.toml");
    let text = std::fs::read_to_string(&config).expect("config");
    assert!(text.contains("\"/etc\""), "{text}");
    std::fs::write(&config, text.replace("\"/etc\"", "\"/var/log\"")).expect("edit");
    let token = w.token("ci-reader", "publisher");
    let wasm = w.signed_with(
        "acme-reader",
        &guest("trivial"),
        "[skill]\nname = \"acme-reader\"\nversion = \"1.0.0\"\nkind = \"diagnose\"\n[capabilities]\nfs_read = [\"/etc/ssl/certs\"]\n",
    );
    w.published(&reg.url, &wasm, &token);
    let _strict = AgentProc::start(&w, "strict");
    let _careful = AgentProc::start(&w, "careful");
    let _narrow = AgentProc::start(&w, "narrow");
    let (_, v) = submit_to(&api, &admin, "acme-reader", "agent:narrow", json!({})).await;
    let id = v["id"].as_str().expect("id").to_string();
    let done = api.wait_for(&admin, &id, "failed").await;
    let why = done["result"]["error"].as_str().expect("refusal");
    assert!(
        why.contains("/etc/ssl/certs, outside the paths this agent allows"),
        "{why}"
    );

    let (_, v) = submit_to(&api, &admin, "acme-echo", "agent:strict", json!({})).await;
    let id = v["id"].as_str().expect("id").to_string();
    let done = api.wait_for(&admin, &id, "failed").await;
    let why = done["result"]["error"].as_str().expect("refusal");
    assert!(
        why.contains("does not verify here") && why.contains("not a trusted publisher key"),
        "{why}"
    );
    assert_eq!(done["result"]["refused_by_agent"], "strict");

    // The orchestrator approves an L2 job; the agent still says no.
    let (_, v) = submit_to(&api, &admin, "acme-disrupt", "agent:careful", json!({})).await;
    assert_eq!(v["state"], "pending_approval", "{v}");
    let id = v["id"].as_str().expect("id").to_string();
    let (s, _) = api
        .approve(&bob, &id, v["invocation_digest"].as_str().expect("digest"))
        .await;
    assert_eq!(s, 200);
    let done = api.wait_for(&admin, &id, "failed").await;
    let why = done["result"]["error"].as_str().expect("refusal");
    assert!(why.contains("above this agent's ceiling L1"), "{why}");
    let events = audit_events(&api, &admin).await;
    assert_eq!(count(&events, &id, "agent.refused"), 1);
    assert_eq!(
        count(&events, &id, "invocation.started"),
        0,
        "a refused job started"
    );

    // A tampered artifact: the orchestrator verified it before; by the time the agent pulls
    // it, the registry's blob has been swapped. The agent checks the digest itself.
    let (_, v) = submit_to(&api, &admin, "acme-adjust", "agent:careful", json!({})).await;
    let id = v["id"].as_str().expect("id").to_string();
    let digest = v["digest"]
        .as_str()
        .expect("digest")
        .trim_start_matches("sha256:")
        .to_string();
    let blob = w.path(&format!("registry/blobs/sha256/{digest}"));
    let mut bytes = std::fs::read(&blob).expect("blob");
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&blob, bytes).expect("tamper");
    let (s, _) = api
        .approve(&bob, &id, v["invocation_digest"].as_str().expect("d"))
        .await;
    assert_eq!(s, 200);
    let done = api.wait_for(&admin, &id, "failed").await;
    let why = done["result"]["error"].as_str().expect("refusal");
    assert!(why.contains("served a blob whose sha256 is"), "{why}");
    assert_eq!(
        count(&audit_events(&api, &admin).await, &id, "invocation.started"),
        0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn signed_requests_cannot_be_replayed_or_forged() {
    let (w, reg) = crate::orchestrator::setup();
    let orch = Orch::start(&w, &reg, Backend::Sqlite, &[]);
    let trust = w.path("trust.toml");
    enroll(&w, &orch, &reg, "web-1", trust.to_str().expect("p"), &[]);
    let dir = w.path("agent-web-1");
    let config: toml::Value =
        toml::from_str(&std::fs::read_to_string(dir.join("agent.toml")).expect("config"))
            .expect("toml");
    let agent_id = config["agent_id"].as_str().expect("id").to_string();
    let key = tend_registry::keys::read_private_key(&dir.join("agent.key")).expect("key");

    let body = br#"{"interval_ms":1000,"running":0,"capacity":1,"version":"test"}"#;
    let path = "/api/v1/agent/heartbeat";
    let headers = tend_agent::client::sign(&key, &agent_id, "POST", path, body);
    let http = reqwest::Client::new();
    let send = |headers: Vec<(&'static str, String)>, body: &'static [u8]| {
        let mut rb = http.post(format!("{}{path}", orch.url)).body(body);
        for (k, v) in headers {
            rb = rb.header(k, v);
        }
        rb.send()
    };
    let first = send(headers.clone(), body).await.expect("send");
    assert_eq!(first.status().as_u16(), 204);
    // The very same request again.
    let replay = send(headers.clone(), body).await.expect("send");
    assert_eq!(replay.status().as_u16(), 401);
    assert!(replay.text().await.expect("text").contains("already used"));
    // The same headers on another body.
    let other: &'static [u8] = br#"{"interval_ms":1,"running":0,"capacity":1,"version":"x"}"#;
    let tampered = send(
        tend_agent::client::sign(&key, &agent_id, "POST", path, body),
        other,
    )
    .await
    .expect("send");
    assert_eq!(tampered.status().as_u16(), 401);
    assert!(
        tampered
            .text()
            .await
            .expect("text")
            .contains("does not verify")
    );
    // A clock ten minutes off.
    let mut skewed = tend_agent::client::sign(&key, &agent_id, "POST", path, body);
    let old = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("now")
        .as_millis() as i64
        - 600_000)
        .to_string();
    for h in skewed.iter_mut() {
        if h.0 == "tend-timestamp" {
            h.1 = old.clone();
        }
    }
    let r = send(skewed, body).await.expect("send");
    assert_eq!(r.status().as_u16(), 401);
    assert!(
        r.text()
            .await
            .expect("text")
            .contains("fix the agent's clock")
    );
    // All refused and audited.
    let api = Api::new(&orch);
    let refused = audit_events(&api, &orch.admin)
        .await
        .iter()
        .filter(|e| e["action"] == "agent.request_refused")
        .count();
    assert_eq!(refused, 3);
}

/// `kill -9` of an agent mid-job: the lease runs out; a diagnose job is queued again and runs
/// once more, a repair job that had started is `unknown` and never runs again on its own.
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_killed_mid_job_never_runs_a_repair_twice() {
    let (w, reg) = crate::orchestrator::setup();
    publish_sleeper(&w, &reg, "acme-sleep", 2500);
    // A repair skill that runs /bin/sleep (granted exec, so L2).
    let token = w.token("ci-repair", "publisher");
    let wasm = w.signed_with(
        "acme-fix",
        &guest("repair-exec"),
        "[skill]\nname = \"acme-fix\"\nversion = \"1.0.0\"\nkind = \"repair\"\nlevel = 2\n[limits]\ntimeout_ms = 20000\n[capabilities]\nexec = [{ program = \"/bin/sleep\", args = [\"{secs}\"] }]\n",
    );
    w.published(&reg.url, &wasm, &token);
    let orch = Orch::start(&w, &reg, Backend::Sqlite, &["--agent-lease", "1500ms"]);
    let api = Api::new(&orch);
    let admin = orch.admin.clone();
    let bob = orch.token(&w, "bob", "approver");
    let trust = w.path("trust.toml");
    enroll(
        &w,
        &orch,
        &reg,
        "web-1",
        trust.to_str().expect("p"),
        &[
            "--pool",
            "web",
            "--max-level",
            "2",
            "--allow-capability",
            "exec",
        ],
    );
    let mut agent = AgentProc::start(&w, "web-1");

    // Diagnose: killed after it started, queued again, runs to the end once.
    let (_, v) = submit_to(
        &api,
        &admin,
        "acme-sleep",
        "pool:web",
        json!({"do": "sleep"}),
    )
    .await;
    let id = v["id"].as_str().expect("id").to_string();
    wait_audit(&api, &admin, &id, "invocation.started").await;
    agent.restart();
    wait_audit(&api, &admin, &id, "invocation.requeued").await;
    let done = api.wait_for(&admin, &id, "failed").await;
    assert_eq!(done["result"]["outcome"], "timeout", "{done}");
    let events = audit_events(&api, &admin).await;
    assert_eq!(count(&events, &id, "invocation.failed"), 1);

    // Repair: approved, started, agent killed: unknown, escalated, not run again.
    let (_, v) = submit_to(
        &api,
        &admin,
        "acme-fix",
        "pool:web",
        json!({"program": "/bin/sleep", "args": ["10"]}),
    )
    .await;
    let id = v["id"].as_str().expect("id").to_string();
    let v = api.wait_for(&admin, &id, "pending_approval").await;
    api.approve(&bob, &id, v["invocation_digest"].as_str().expect("d"))
        .await;
    wait_audit(&api, &admin, &id, "invocation.started").await;
    agent.restart();
    let unknown = wait_audit(&api, &admin, &id, "invocation.unknown").await;
    assert!(
        unknown["detail"]["why"]
            .as_str()
            .expect("why")
            .contains("Escalated"),
        "{unknown}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let inv = api.get(&admin, &id).await;
    assert_eq!(inv["state"], "unknown", "{inv}");
    assert_eq!(
        count(&audit_events(&api, &admin).await, &id, "invocation.started"),
        1
    );
}

/// The orchestrator restarts while an agent runs a job: the agent spools the result, survives
/// its own `kill -9`, and delivers the result exactly once when both are back.
#[tokio::test(flavor = "multi_thread")]
async fn results_survive_an_orchestrator_restart_and_an_agent_crash() {
    let (w, reg) = crate::orchestrator::setup();
    publish_sleeper(&w, &reg, "acme-sleep", 2000);
    let mut orch = Orch::start(&w, &reg, Backend::Sqlite, &["--agent-lease", "60s"]);
    let admin = orch.admin.clone();
    let database = orch.database.clone();
    let trust = w.path("trust.toml");
    enroll(
        &w,
        &orch,
        &reg,
        "web-1",
        trust.to_str().expect("p"),
        &["--pool", "web"],
    );
    let mut agent = AgentProc::start(&w, "web-1");
    let api = Api::new(&orch);
    let (_, v) = submit_to(
        &api,
        &admin,
        "acme-sleep",
        "pool:web",
        json!({"do": "sleep"}),
    )
    .await;
    let id = v["id"].as_str().expect("id").to_string();
    wait_audit(&api, &admin, &id, "invocation.started").await;
    orch.stop();

    // The job ends while the orchestrator is down: the result waits in the spool.
    let spooled = w.path(&format!("agent-web-1/spool/{id}.json"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !spooled.exists() {
        assert!(Instant::now() < deadline, "no spooled result");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    agent.kill9();

    // Back at the same address, as a real orchestrator would be.
    let listen = orch.url.trim_start_matches("http://").to_string();
    let orch = Orch::replica(
        &w,
        &reg,
        &database,
        "orch",
        &listen,
        &["--agent-lease", "60s"],
    );
    let api = Api::new(&orch);
    agent.restart();
    let done = api.wait_for(&admin, &id, "failed").await;
    assert_eq!(done["result"]["outcome"], "timeout", "{done}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while spooled.exists() {
        assert!(Instant::now() < deadline, "the spool was not emptied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let events = audit_events(&api, &admin).await;
    assert_eq!(
        count(&events, &id, "invocation.failed"),
        1,
        "delivered more than once"
    );
    assert_eq!(
        count(&events, &id, "invocation.started"),
        1,
        "ran more than once"
    );
    let o = w.ok(&["audit", "verify", "--database", &database]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("intact"));
}

#[test]
fn install_systemd_writes_a_hardened_unit() {
    let w = World::new();
    let dir = w.path("agent-x");
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(
        dir.join("agent.toml"),
        "orchestrator = \"http://127.0.0.1:1\"\nagent_id = \"agent_x\"\nname = \"x\"\nregistry = \"http://127.0.0.1:2\"\ntrust = \"/etc/tend/trust.toml\"\n[ceiling]\nmax_level = 1\ncapabilities = [\"fs_read\"]\n",
    )
    .expect("config");
    let unit = w.path("tend-agent.service");
    let o = w.ok(&[
        "agent",
        "install-systemd",
        "--dir",
        dir.to_str().expect("d"),
        "--output",
        unit.to_str().expect("u"),
    ]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("systemctl enable --now tend-agent.service")
    );
    let text = std::fs::read_to_string(&unit).expect("unit");
    for line in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=",
        "ExecStart=",
    ] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }
    // Never overwrites.
    let o = w.tend(&[
        "agent",
        "install-systemd",
        "--dir",
        dir.to_str().expect("d"),
        "--output",
        unit.to_str().expect("u"),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("exists"), "{}", err(&o));
}

/// An agent that stops beating goes offline; removing an agent puts its waiting jobs back in
/// the queue; SIGTERM lets a running job finish and report before the agent exits.
#[tokio::test(flavor = "multi_thread")]
async fn offline_removal_and_graceful_shutdown() {
    let (w, reg) = crate::orchestrator::setup();
    publish_sleeper(&w, &reg, "acme-sleep", 4000);
    let orch = Orch::start(&w, &reg, Backend::Sqlite, &["--agent-offline-after", "2s"]);
    let api = Api::new(&orch);
    let admin = orch.admin.clone();
    let trust = w.path("trust.toml");
    enroll(
        &w,
        &orch,
        &reg,
        "web-1",
        trust.to_str().expect("p"),
        &["--pool", "web"],
    );
    enroll(
        &w,
        &orch,
        &reg,
        "spare",
        trust.to_str().expect("p"),
        &["--pool", "spare"],
    );
    let mut web = AgentProc::start(&w, "web-1");

    // SIGTERM mid-job: the job finishes within the grace period and its result is recorded.
    let (_, v) = submit_to(
        &api,
        &admin,
        "acme-sleep",
        "pool:web",
        json!({"do": "sleep"}),
    )
    .await;
    let id = v["id"].as_str().expect("id").to_string();
    wait_audit(&api, &admin, &id, "invocation.started").await;
    let pid = web.child.as_ref().expect("child").id();
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let status = web.child.take().expect("child").wait().expect("wait");
    assert!(status.success(), "the agent exited with {status}");
    let done = api.get(&admin, &id).await;
    assert_eq!(done["state"], "failed", "{done}");
    assert_eq!(
        done["result"]["outcome"], "timeout",
        "the job ran to its own end: {done}"
    );

    // No heartbeat for longer than --agent-offline-after: offline.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, agents) = api.call("GET", "/api/v1/agents", Some(&admin), None).await;
        let state = agents
            .as_array()
            .expect("agents")
            .iter()
            .find(|a| a["name"] == "web-1")
            .map(|a| a["state"].as_str().unwrap_or("").to_string());
        if state.as_deref() == Some("offline") {
            break;
        }
        assert!(Instant::now() < deadline, "web-1 is still {state:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The spare agent runs one job at a time: a second job assigned to it waits. Deleting the
    // agent puts the waiting job back in the queue (the started one is left to its rules).
    let _spare_proc = AgentProc::start_with(&w, "spare", &["--concurrency", "1"]);
    let (_, v) = submit_to(
        &api,
        &admin,
        "acme-sleep",
        "agent:spare",
        json!({"do": "sleep"}),
    )
    .await;
    let busy = v["id"].as_str().expect("id").to_string();
    wait_audit(&api, &admin, &busy, "invocation.started").await;
    let (_, v) = submit_to(&api, &admin, "acme-echo", "agent:spare", json!({})).await;
    let id = v["id"].as_str().expect("id").to_string();
    wait_audit(&api, &admin, &id, "invocation.assign").await;
    let (_, agents) = api.call("GET", "/api/v1/agents", Some(&admin), None).await;
    let spare = agents
        .as_array()
        .expect("agents")
        .iter()
        .find(|a| a["name"] == "spare")
        .expect("spare")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let (s, v) = api
        .call(
            "DELETE",
            &format!("/api/v1/agents/{spare}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!((s, v["requeued_jobs"].as_u64()), (200, Some(1)), "{v}");
    let inv = api.get(&admin, &id).await;
    assert_eq!(inv["state"], "queued");
    let (_, agents) = api.call("GET", "/api/v1/agents", Some(&admin), None).await;
    assert_eq!(agents.as_array().expect("agents").len(), 1);
}

/// The agent id `tend agent enroll` wrote into `agent-NAME/agent.toml`.
pub fn agent_id(w: &World, name: &str) -> String {
    let text =
        std::fs::read_to_string(w.path(&format!("agent-{name}/agent.toml"))).expect("config");
    let config: toml::Value = toml::from_str(&text).expect("toml");
    config["agent_id"].as_str().expect("agent_id").to_string()
}

/// Wait until the orchestrator sees `name` in `state` (`online`/`offline`).
pub async fn until_agent(api: &Api, token: &str, name: &str, state: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, agents) = api.call("GET", "/api/v1/agents", Some(token), None).await;
        let now = agents
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["name"] == name)
            .map(|a| a["state"].as_str().unwrap_or("").to_string());
        if now.as_deref() == Some(state) {
            return;
        }
        assert!(Instant::now() < deadline, "{name} never {state}: {agents}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
