//! Attacks on the host agent and its protocol, each reproduced against real processes on
//! loopback and now refused: an impostor enrolling under an existing agent's name, an
//! enrollment placing itself where its token does not allow, unbounded enrollment fields, a
//! result too big for the protocol wedging the spool, job ids that are paths, and results a
//! crash left half-spooled.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::agent::{AgentProc, audit_events, enroll, submit_to};
use crate::orchestrator::{Api, Backend, Orch, setup, tamper};
use crate::registry::err;

/// An enroll token from the API with this scope.
async fn token(api: &Api, admin: &str, scope: Value) -> String {
    let (s, v) = api
        .call("POST", "/api/v1/enroll-tokens", Some(admin), Some(scope))
        .await;
    assert_eq!(s, 201, "{v}");
    v["token"].as_str().expect("token").to_string()
}

/// An enrollment body as `tend agent enroll` sends it, with a fresh key.
fn enrollment(token: &str, name: &str, pools: &[&str], labels: Value, max_level: u8) -> Value {
    let key = tend_registry::keys::generate().expect("key");
    json!({
        "token": token,
        "name": name,
        "hostname": "host-1.example.com",
        "os": "linux",
        "arch": "x86_64",
        "labels": labels,
        "pools": pools,
        "public_key": tend_registry::keys::PublicKey(key.verifying_key()).to_string(),
        "ceiling": { "max_level": max_level },
    })
}

async fn agents(api: &Api, admin: &str) -> Vec<Value> {
    let (s, v) = api.call("GET", "/api/v1/agents", Some(admin), None).await;
    assert_eq!(s, 200, "{v}");
    v.as_array().expect("agents").clone()
}

async fn identity_and_placement(backend: Backend) {
    let (w, reg) = setup();
    let orch = Orch::start(&w, &reg, backend, &[]);
    let api = Api::new(&orch);
    let admin = orch.admin.clone();
    let trust = w.path("trust.toml");
    let trust = trust.to_str().expect("trust");
    enroll(
        &w,
        &orch,
        &reg,
        "web-1",
        trust,
        &["--pool", "web", "--max-level", "0"],
    );
    for target in ["agent:web-1", "pool:web"] {
        let (s, v) = submit_to(&api, &admin, "acme-disrupt", target, json!({})).await;
        // No agent of the target would run it (refused at submit, each agent named).
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (422, Some("no_runner")),
            "{v}"
        );
    }

    // An impostor with a token that allows L3 claims the same name: refused, nothing changes.
    let wide = token(
        &api,
        &admin,
        json!({ "pools": ["web"], "max_level": 3, "uses": 2 }),
    )
    .await;
    let o = w.tend(&[
        "agent",
        "enroll",
        "--orchestrator",
        &orch.url,
        "--token",
        &wide,
        "--name",
        "web-1",
        "--registry",
        &reg.url,
        "--trust",
        trust,
        "--pool",
        "web",
        "--max-level",
        "3",
        "--dir",
        w.path("impostor").to_str().expect("dir"),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(
        err(&o).contains("409") && err(&o).contains("already enrolled"),
        "{}",
        err(&o)
    );
    assert!(
        !w.path("impostor/agent.key").exists(),
        "a refused enrollment kept an identity"
    );
    let (s, v) = api
        .call(
            "POST",
            "/api/v1/agents/enroll",
            None,
            Some(enrollment(&wide, "web-1", &["web"], json!({}), 3)),
        )
        .await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(agents(&api, &admin).await.len(), 1);
    for target in ["agent:web-1", "pool:web"] {
        let (s, v) = submit_to(&api, &admin, "acme-disrupt", target, json!({})).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (422, Some("no_runner")),
            "a newcomer raised {target}'s ceiling: {v}"
        );
    }

    // A token fixes pools, labels and the highest level; asking for more is refused.
    let db_token = token(
        &api,
        &admin,
        json!({ "pools": ["db"], "labels": {"env": "prod"}, "max_level": 1 }),
    )
    .await;
    for (body, says) in [
        (
            enrollment(&db_token, "db-1", &["db"], json!({}), 2),
            "above the L1 this enroll token allows",
        ),
        (
            enrollment(&db_token, "db-1", &["web"], json!({}), 1),
            "pool \"web\" is not one this enroll token allows",
        ),
        (
            enrollment(&db_token, "db-1", &[], json!({"env": "dev"}), 0),
            "label env=dev is not one this enroll token gives",
        ),
    ] {
        let (s, v) = api
            .call("POST", "/api/v1/agents/enroll", None, Some(body))
            .await;
        assert_eq!(s, 403, "{v}");
        let m = v["error"]["message"].as_str().expect("message");
        assert!(m.contains(says), "{m}");
    }
    assert_eq!(
        agents(&api, &admin).await.len(),
        1,
        "a refused enrollment was stored"
    );
    // Asking for nothing places the agent where the token says (the token was not spent).
    let (s, v) = api
        .call(
            "POST",
            "/api/v1/agents/enroll",
            None,
            Some(enrollment(&db_token, "db-1", &[], json!({}), 1)),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["pools"], json!(["db"]));
    assert_eq!(v["labels"], json!({"env": "prod"}));
    let all = agents(&api, &admin).await;
    let db1 = all.iter().find(|a| a["name"] == "db-1").expect("db-1");
    assert_eq!(db1["pools"], json!(["db"]));
    assert_eq!(db1["labels"], json!({"env": "prod"}));
    assert_eq!(db1["ceiling"]["max_level"], 1);

    // Token scopes are bounded too.
    for scope in [
        json!({ "pools": ["Web Servers"] }),
        json!({ "labels": {"env": "prod\naction approval.grant"} }),
        json!({ "max_level": 4 }),
    ] {
        let (s, v) = api
            .call("POST", "/api/v1/enroll-tokens", Some(&admin), Some(scope))
            .await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (422, Some("invalid_field")),
            "{v}"
        );
    }
    let o = w.tend(&[
        "agent",
        "token",
        "create",
        "--database",
        &orch.database,
        "--pool",
        "../web",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("pools"), "{}", err(&o));

    // A removed agent's name can be enrolled again.
    let web1 = all.iter().find(|a| a["name"] == "web-1").expect("web-1")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let (s, v) = api
        .call(
            "DELETE",
            &format!("/api/v1/agents/{web1}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = api
        .call(
            "POST",
            "/api/v1/agents/enroll",
            None,
            Some(enrollment(&wide, "web-1", &["web"], json!({}), 2)),
        )
        .await;
    assert_eq!(s, 201, "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_name_is_one_identity_and_the_token_decides_placement_sqlite() {
    identity_and_placement(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_name_is_one_identity_and_the_token_decides_placement_postgres() {
    identity_and_placement(Backend::Postgres).await
}

#[tokio::test(flavor = "multi_thread")]
async fn enrollment_fields_are_bounded_before_anything_is_stored() {
    let (w, reg) = setup();
    let orch = Orch::start(&w, &reg, Backend::Sqlite, &[]);
    let api = Api::new(&orch);
    let admin = orch.admin.clone();
    let t = token(
        &api,
        &admin,
        json!({ "pools": ["web"], "labels": {"env": "prod"} }),
    )
    .await;
    let before = audit_events(&api, &admin).await.len();
    let pools: Vec<String> = (0..33).map(|i| format!("p{i}")).collect();
    let cases: Vec<(&str, Value, &str)> = vec![
        ("name", json!("Web_1"), "name: "),
        ("name", json!("a".repeat(64)), "name: "),
        ("name", json!("../web-1"), "name: "),
        ("name", json!("alice\naction approval.grant"), "name: "),
        ("hostname", json!("h".repeat(254)), "hostname: "),
        ("hostname", json!("host\nactor alice"), "hostname: "),
        ("os", json!("l".repeat(33)), "os: "),
        ("arch", json!("x86 64"), "arch: "),
        ("labels", json!({"Env!": "prod"}), "labels: "),
        ("labels", json!({"env": "prod\nx"}), "labels.env: "),
        ("pools", json!(pools), "pools: "),
        ("pools", json!(["Web"]), "pools: "),
        ("token", json!("t".repeat(200)), "token: "),
    ];
    for (field, value, says) in cases {
        let mut body = enrollment(&t, "web-1", &["web"], json!({"env": "prod"}), 0);
        body[field] = value;
        let (s, v) = api
            .call("POST", "/api/v1/agents/enroll", None, Some(body))
            .await;
        assert_eq!(s, 422, "{field}: {v}");
        assert_eq!(v["error"]["code"], "invalid_field", "{v}");
        let m = v["error"]["message"].as_str().expect("message");
        assert!(m.starts_with(says), "{m}");
        assert!(m.len() < 300, "the error quotes the whole value: {m}");
    }
    // A 1.9 MB hostname is not even read.
    let mut body = enrollment(&t, "web-1", &["web"], json!({}), 0);
    body["hostname"] = json!("h".repeat(1_900_000));
    // The server answers before the body is read, so the client may see the connection close
    // instead of the 413.
    let sent = reqwest::Client::new()
        .post(format!("{}/api/v1/agents/enroll", orch.url))
        .json(&body)
        .send()
        .await;
    if let Ok(r) = sent {
        assert_eq!(r.status().as_u16(), 413);
    }
    assert!(
        agents(&api, &admin).await.is_empty(),
        "something was stored"
    );
    assert_eq!(
        audit_events(&api, &admin).await.len(),
        before,
        "a refused enrollment reached the audit trail"
    );
    // Nothing was spent either: the single-use token still enrolls a well-formed agent.
    let (s, v) = api
        .call(
            "POST",
            "/api/v1/agents/enroll",
            None,
            Some(enrollment(&t, "web-1", &["web"], json!({"env": "prod"}), 0)),
        )
        .await;
    assert_eq!(s, 201, "{v}");
}

/// Every file name under `dir` (recursively), relative to it.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            } else if let Ok(rel) = e.path().strip_prefix(dir) {
                out.push(rel.display().to_string());
            }
        }
    }
    out.sort();
    out
}

async fn until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ok() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One result the orchestrator refuses (422) and one too big for the protocol sit in the spool
/// before a good one: the good one is delivered, the bad ones end in `spool/dead/`.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_result_goes_to_the_dead_letters_and_blocks_nothing() {
    let (w, reg) = setup();
    let orch = Orch::start(&w, &reg, Backend::Sqlite, &[]);
    let api = Api::new(&orch);
    let admin = orch.admin.clone();
    let trust = w.path("trust.toml");
    enroll(&w, &orch, &reg, "web-1", trust.to_str().expect("p"), &[]);
    let spool = w.path("agent-web-1/spool");
    std::fs::create_dir_all(&spool).expect("spool");
    let refused = "inv_00000000000000aa";
    let huge = "inv_00000000000000bb";
    std::fs::write(
        spool.join(format!("{refused}.json")),
        br#"{"outcome":"exploded"}"#,
    )
    .expect("write");
    let big = json!({
        "outcome": "refused",
        // Above the protocol's MAX_RESULT_BYTES: never sent, straight to the dead letters.
        "refusal": "x".repeat(tend_protocol::MAX_RESULT_BYTES),
    });
    std::fs::write(
        spool.join(format!("{huge}.json")),
        serde_json::to_vec(&big).expect("json"),
    )
    .expect("write");
    let _agent = AgentProc::start(&w, "web-1");
    let (s, v) = submit_to(&api, &admin, "acme-echo", "agent:web-1", json!({"x": 1})).await;
    assert_eq!(s, 201, "{v}");
    let id = v["id"].as_str().expect("id").to_string();
    let done = api.wait_for(&admin, &id, "succeeded").await;
    assert_eq!(done["result"]["output"]["echo"]["x"], 1);
    until("the refused results did not reach spool/dead/", || {
        files_under(&spool) == [format!("dead/{refused}.json"), format!("dead/{huge}.json")]
    })
    .await;
    let log = std::fs::read_to_string(w.path("agent-web-1.log")).unwrap_or_default();
    assert!(log.contains("moved to the dead-letter directory"), "{log}");
}

/// The catalog's log-search may return 4 MiB: such a result reaches the orchestrator.
#[tokio::test(flavor = "multi_thread")]
async fn a_four_mib_result_is_delivered() {
    let (w, reg) = setup();
    let token = w.token("ci-flood", "publisher");
    let wasm = w.signed_with(
        "acme-flood",
        &crate::support::guest("hostile"),
        "[skill]\nname = \"acme-flood\"\nversion = \"1.0.0\"\nkind = \"diagnose\"\n[limits]\noutput_kib = 5120\n",
    );
    w.published(&reg.url, &wasm, &token);
    let orch = Orch::start(&w, &reg, Backend::Sqlite, &[]);
    let api = Api::new(&orch);
    let admin = orch.admin.clone();
    let trust = w.path("trust.toml");
    enroll(&w, &orch, &reg, "web-1", trust.to_str().expect("p"), &[]);
    let _agent = AgentProc::start(&w, "web-1");
    let (s, v) = submit_to(
        &api,
        &admin,
        "acme-flood",
        "agent:web-1",
        json!({"do": "flood", "bytes": 4 * 1024 * 1024}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let id = v["id"].as_str().expect("id").to_string();
    let done = api.wait_for(&admin, &id, "succeeded").await;
    assert_eq!(done["result"]["output"]["written"], 4 * 1024 * 1024);
    let stdout = done["result"]["stdout"].as_str().expect("stdout");
    assert!(stdout.len() >= 4 * 1024 * 1024 - 1024, "{}", stdout.len());
    // The agent removes the spooled result once the orchestrator has acknowledged it, which
    // is just after the orchestrator records it.
    let spool = w.path("agent-web-1/spool");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !files_under(&spool).is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(files_under(&spool), Vec::<String>::new());
}

/// Job ids are the orchestrator's to make, but an agent does not take that on trust: a job
/// row whose id is a path never becomes a file.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_id_that_is_a_path_writes_nothing() {
    let (w, reg) = setup();
    let orch = Orch::start(&w, &reg, Backend::Sqlite, &[]);
    let api = Api::new(&orch);
    let admin = orch.admin.clone();
    let trust = w.path("trust.toml");
    enroll(&w, &orch, &reg, "web-1", trust.to_str().expect("p"), &[]);
    let outside = w.path("outside");
    std::fs::create_dir_all(&outside).expect("dir");
    let forged = [
        "../../escaped".to_string(),
        format!("{}/abs", outside.display()),
    ];
    for bad in &forged {
        let (s, v) = submit_to(&api, &admin, "acme-echo", "agent:web-1", json!({})).await;
        assert_eq!(s, 201, "{v}");
        let id = v["id"].as_str().expect("id");
        tamper(
            &orch.database,
            &format!("UPDATE invocations SET id = '{bad}' WHERE id = '{id}'"),
        );
    }
    let before = files_under(w.dir.path());
    let _agent = AgentProc::start(&w, "web-1");
    let log = w.path("agent-web-1.log");
    until("the agent did not refuse the forged jobs", || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("refusing a job whose id is not an invocation id")
            .count()
            >= 2
    })
    .await;
    let written: Vec<String> = files_under(w.dir.path())
        .into_iter()
        .filter(|f| {
            !before.contains(f) && !f.starts_with("agent-web-1/store") && !f.starts_with("cache")
        })
        .filter(|f| f.contains("escaped") || f.contains("abs"))
        .collect();
    assert!(written.is_empty(), "{written:?}");
    assert!(!w.path("escaped.json").exists());
    assert!(files_under(&outside).is_empty());
    assert!(files_under(&w.path("agent-web-1/spool")).is_empty());
}

/// An agent killed between writing a result and renaming it leaves a complete temp file: it
/// is delivered at the next start; a temp file cut short is removed.
#[tokio::test(flavor = "multi_thread")]
async fn a_result_a_crash_left_in_a_temp_file_is_delivered_at_start() {
    let (w, reg) = setup();
    let orch = Orch::start(&w, &reg, Backend::Sqlite, &[]);
    let api = Api::new(&orch);
    let admin = orch.admin.clone();
    let trust = w.path("trust.toml");
    enroll(&w, &orch, &reg, "web-1", trust.to_str().expect("p"), &[]);
    let config: toml::Value =
        toml::from_str(&std::fs::read_to_string(w.path("agent-web-1/agent.toml")).expect("config"))
            .expect("toml");
    let agent_id = config["agent_id"].as_str().expect("id").to_string();
    // A job this agent held and ran when it was killed.
    let (s, v) = submit_to(&api, &admin, "acme-echo", "agent:web-1", json!({"x": 5})).await;
    assert_eq!(s, 201, "{v}");
    let id = v["id"].as_str().expect("id").to_string();
    tamper(
        &orch.database,
        &format!(
            "UPDATE invocations SET state = 'running', lease_owner = '{agent_id}', assigned_agent = '{agent_id}', lease_until_ms = 99999999999999, run_started_ms = 1 WHERE id = '{id}'"
        ),
    );
    let spool = w.path("agent-web-1/spool");
    std::fs::create_dir_all(&spool).expect("spool");
    let result = serde_json::to_vec(&json!({
        "outcome": "ran",
        "report": { "outcome": "ok", "output": { "recovered": true } },
    }))
    .expect("json");
    std::fs::write(spool.join(format!(".{id}.Ab12Cd.tmp")), &result).expect("tmp");
    std::fs::write(
        spool.join(".inv_0000000000000001.Zz98Yy.tmp"),
        &result[..result.len() / 2],
    )
    .expect("tmp");
    let _agent = AgentProc::start(&w, "web-1");
    let done = api.wait_for(&admin, &id, "succeeded").await;
    assert_eq!(done["result"]["output"]["recovered"], true, "{done}");
    until("the spool was not emptied", || {
        files_under(&spool).is_empty()
    })
    .await;
}
