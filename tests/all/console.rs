//! The web console in a real browser: Debian's headless Chromium driven by playwright-core
//! (tests/browser/console.cjs), against a real orchestrator, registry and agent on loopback.
//!
//! An approver signs in, makes an Ed25519 key in the browser (its private half never leaves
//! it), which an admin registers and the agent's trust policy lists; the approver sees a pending
//! L2 repair with its plan, approves it (signed in the page over the digest the page computed),
//! watches it succeed and finds the approval in the audit trail; rejects another with a comment;
//! a viewer cannot approve (no button, and the API refuses even a valid signature); a page
//! shown a tampered invocation refuses to sign, and signatures over another digest are refused.
//! Hostile strings (markup, `</script>`, terminal escapes, direction overrides, very long text)
//! in input, skill output, reasons, comments and alert labels go through every page and must
//! show as text: no script runs, no element is injected, no CSP violation happens.
//! Screenshots go to `$CARGO_TARGET_DIR/console-screenshots/`.

use std::path::PathBuf;
use std::process::Command;

use serde_json::{Value, json};

use crate::agent::{AgentProc, enroll};
use crate::orchestrator::{Api, Backend, Orch, setup};
use crate::registry::{Registry, World};
use crate::support::*;

/// Markup, a script end tag, terminal escapes (colour, window title), a right-to-left override
/// and zero-width characters: what a hostile skill, alert or requester would send.
const HOSTILE: &str = "<img src=x onerror=window.__pwned=1></script><script>window.__pwned=2</script>\u{1b}[31mred\u{1b}]0;title\u{7}\u{202e}evil.exe\u{200b}\"'&amp;";

/// The same without control characters, for a reason (which the API keeps to one line of text).
const HOSTILE_LINE: &str = "<img src=x onerror=window.__pwned=1></script><script>window.__pwned=2</script>\u{202e}evil.exe\u{200b}\"'&amp;";

/// A repair (L2: it may run /bin/echo) whose plan shows the command it would run.
fn publish_fix(w: &World, reg: &Registry) {
    let token = w.token("ci-fix", "publisher");
    let wasm = w.signed_with(
        "acme-fix",
        &guest("repair-exec"),
        "[skill]\nname = \"acme-fix\"\nversion = \"1.0.0\"\nkind = \"repair\"\nlevel = 2\ndescription = \"Runs echo\"\n[capabilities]\nexec = [{ program = \"/bin/echo\", args = [\"{word}\"] }]\n",
    );
    w.published(&reg.url, &wasm, &token);
}

/// Chromium and playwright-core as `scripts/test` installs them (`ensure_console_browser`).
fn browser() -> (PathBuf, PathBuf) {
    let chromium = PathBuf::from("/usr/bin/chromium");
    let modules = target_dir().join("console-node/node_modules");
    assert!(
        chromium.exists() && modules.join("playwright-core").exists(),
        "the console tests need Debian's chromium and playwright-core in {}: run scripts/test (ensure_console_browser in scripts/lib.sh)",
        modules.display()
    );
    (chromium, modules)
}

/// Run one phase of tests/browser/console.cjs; its last stdout line is its JSON answer.
fn drive(w: &World, phase: &str, scene: &Value) -> Value {
    let (chromium, modules) = browser();
    let shots = target_dir().join("console-screenshots");
    std::fs::create_dir_all(&shots).expect("screenshots dir");
    let out = Command::new("node")
        .arg(repo_root().join("tests/browser/console.cjs"))
        .arg(phase)
        .env("NODE_PATH", &modules)
        .env("TEND_CHROMIUM", &chromium)
        .env("TEND_CONSOLE_PROFILE", w.path("browser-profile"))
        .env("TEND_CONSOLE_SHOTS", &shots)
        .env(
            "TEND_CONSOLE_VECTORS",
            repo_root().join("tests/browser/digest-vectors.json"),
        )
        .env("TEND_CONSOLE_SCENE", scene.to_string())
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "browser phase {phase} failed:\n{stderr}\n{stdout}"
    );
    serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap_or_else(|e| {
        panic!("browser phase {phase} answered no JSON ({e}):\n{stdout}\n{stderr}")
    })
}

async fn pending(api: &Api, alice: &str, input: Value, reason: &str) -> Value {
    let (s, v) = api
        .call(
            "POST",
            "/api/v1/invocations",
            Some(alice),
            Some(json!({ "skill": "acme-fix", "target": "agent:web-1", "input": input, "reason": reason })),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    api.wait_for(alice, v["id"].as_str().expect("id"), "pending_approval")
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_approver_signs_a_planned_repair_in_the_browser_and_hostile_text_stays_text() {
    let (w, reg) = setup();
    publish_fix(&w, &reg);
    let orch = Orch::start(&w, &reg, Backend::Sqlite, &[]);
    let api = Api::new(&orch);
    let alice = orch.token(&w, "alice", "operator");
    // Not one of the test approvers with fixed keys: pat's only key is the browser's.
    let pat = orch.token(&w, "pat", "approver");
    let vera = orch.token(&w, "vera", "viewer");
    let admin = orch.admin.clone();
    let base = json!({ "url": orch.url, "approver": pat, "viewer": vera, "admin": admin });

    // The page serves with its security headers.
    let resp = reqwest::get(format!("{}/", orch.url)).await.expect("GET /");
    let csp = resp.headers()["content-security-policy"]
        .to_str()
        .expect("csp")
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(resp.headers()["x-frame-options"], "DENY");

    // 1. The approver makes a key in the browser; an admin registers it in the console, and
    // the agent's trust policy lists it before the agent starts.
    let key = drive(&w, "key", &base);
    let public_key = key["public_key"].as_str().expect("public key").to_string();
    assert!(
        tend_protocol::parse_public_key(&public_key).is_some(),
        "{key}"
    );
    // The admin registered it on the console's key page.
    let (s, v) = api
        .call("GET", "/api/v1/approvers", Some(&admin), None)
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(
        v.as_array()
            .expect("approvers")
            .iter()
            .any(|a| a["name"] == "pat" && a["public_key"] == public_key.as_str()),
        "{v}"
    );
    let trust = w.path("trust-web.toml");
    std::fs::write(
        &trust,
        std::fs::read_to_string(w.path("trust.toml")).expect("trust")
            + &format!("\n[[approvers]]\nname = \"pat\"\nkey = \"{public_key}\"\n"),
    )
    .expect("agent trust");
    enroll(
        &w,
        &orch,
        &reg,
        "web-1",
        trust.to_str().expect("trust"),
        &[
            "--max-level",
            "2",
            "--allow-capability",
            "exec",
            "--label",
            "role=web",
        ],
    );
    let _agent = AgentProc::start(&w, "web-1");

    // 2. Three planned L2 repairs wait for a person; an alert with hostile labels opens an
    // incident.
    let long = "x".repeat(6000);
    let good = pending(
        &api,
        &alice,
        json!({"program": "/bin/echo", "args": ["hello"], "note": HOSTILE}),
        &format!("disk full {HOSTILE_LINE}"),
    )
    .await;
    let doomed = pending(
        &api,
        &alice,
        json!({"program": "/bin/echo", "args": ["bye"], "plan_shows": [HOSTILE, long]}),
        HOSTILE_LINE,
    )
    .await;
    let guarded = pending(
        &api,
        &alice,
        json!({"program": "/bin/echo", "args": ["reload-workers"]}),
        "web-1 answers 502 since the deploy: reload its workers",
    )
    .await;
    let (s, v) = api
        .call(
            "POST",
            "/api/v1/alerts/alertmanager",
            Some(&alice),
            Some(json!({
                "version": "4", "status": "firing", "receiver": "tend", "groupKey": "{}:hostile",
                "alerts": [{
                    "status": "firing",
                    "labels": { "alertname": format!("DiskFull {HOSTILE}"), "instance": "web-1:9100", "summary": HOSTILE },
                    "annotations": { "description": HOSTILE },
                    "startsAt": crate::alerts::now_rfc3339(-2),
                    "fingerprint": "00000000000c0de5",
                }],
            })),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let incident = v["incidents"][0]["id"]
        .as_str()
        .expect("incident")
        .to_string();
    // A diagnosis that ran at once (L0, the local worker): its output echoes hostile input.
    let (s, v) = api
        .submit(&alice, "acme-echo", json!({"x": 1, "note": HOSTILE}))
        .await;
    assert_eq!(s, 201, "{v}");
    let echo = api
        .wait_for(&alice, v["id"].as_str().expect("id"), "succeeded")
        .await;

    // 3. The browser: approve, watch, audit, reject, a viewer, tampering, every page.
    let mut scene = base.clone();
    scene["good"] = good["id"].clone();
    scene["good_digest"] = good["invocation_digest"].clone();
    scene["doomed"] = doomed["id"].clone();
    scene["doomed_plan"] = doomed["plan"]["invocation"].clone();
    scene["guarded"] = guarded["id"].clone();
    scene["guarded_digest"] = guarded["invocation_digest"].clone();
    scene["incident"] = json!(incident);
    scene["echo"] = echo["id"].clone();
    scene["hostile"] = json!(HOSTILE);
    scene["hostile_line"] = json!(HOSTILE_LINE);
    let report = drive(&w, "main", &scene);

    // What the browser did, as the orchestrator saw it.
    let good = api.get(&alice, good["id"].as_str().expect("id")).await;
    assert_eq!(good["state"], "succeeded", "{good}");
    assert_eq!(good["result"]["output"]["stdout"], "hello\n", "{good}");
    let approval = &good["approvals"][0];
    assert_eq!(approval["approver"], "pat", "{good}");
    assert_eq!(approval["public_key"], public_key.as_str(), "{good}");
    let key = tend_protocol::parse_public_key(&public_key).expect("key");
    assert!(tend_protocol::approval_verifies(
        &key,
        approval["signature"].as_str().expect("signature"),
        good["invocation_digest"].as_str().expect("digest"),
    ));
    let doomed = api.get(&alice, doomed["id"].as_str().expect("id")).await;
    assert_eq!(doomed["state"], "rejected", "{doomed}");
    assert_eq!(doomed["comment"], format!("not now {HOSTILE}"), "{doomed}");
    let guarded = api.get(&alice, guarded["id"].as_str().expect("id")).await;
    assert_eq!(guarded["state"], "pending_approval", "{guarded}");
    assert_eq!(guarded["approvals"], json!([]), "{guarded}");
    let (_, verify) = api
        .call("GET", "/api/v1/audit/verify", Some(&vera), None)
        .await;
    assert_eq!(verify["ok"], true, "{verify}");

    // Someone rewrites the approval's audit event in the database: the audit page says so.
    let altered = crate::agent::audit_events(&api, &vera)
        .await
        .into_iter()
        .find(|e| e["action"] == "approval.grant")
        .expect("the approval is audited")["index"]
        .clone();
    crate::orchestrator::tamper(
        &orch.database,
        &format!("UPDATE audit SET actor = 'mallory' WHERE idx = {altered}"),
    );
    scene["altered"] = altered;
    drive(&w, "broken-audit", &scene);

    eprintln!(
        "console: page weight {} bytes (HTML+JS+CSS), time to interactive {} ms (DOM interactive {} ms) in Chromium; screenshots in {}",
        tend_orchestrator::console::page_weight(),
        report["tti_ms"],
        report["dom_interactive_ms"],
        target_dir().join("console-screenshots").display()
    );
}

/// The console's page and APIs without a browser: the page is public and carries its
/// security headers, its data is not; `whoami`, `skills` and `audit/verify` say what the
/// pages show, and a rewritten audit event is named.
#[tokio::test(flavor = "multi_thread")]
async fn the_console_apis_say_what_the_pages_show() {
    let (w, reg) = setup();
    let orch = Orch::start(&w, &reg, Backend::Sqlite, &[]);
    let api = Api::new(&orch);
    let vera = orch.token(&w, "vera", "viewer");

    for (path, kind) in [
        ("/", "text/html"),
        ("/console/app.js", "text/javascript"),
        ("/console/app.css", "text/css"),
    ] {
        let r = reqwest::get(format!("{}{path}", orch.url))
            .await
            .expect("GET");
        assert_eq!(r.status(), 200, "{path}");
        let h = r.headers();
        assert!(h["content-type"].to_str().expect("ct").starts_with(kind));
        assert_eq!(
            h["content-security-policy"],
            tend_orchestrator::console::CSP,
            "{path}"
        );
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["referrer-policy"], "no-referrer");
        assert_eq!(h["x-frame-options"], "DENY");
    }

    for path in ["/api/v1/whoami", "/api/v1/skills", "/api/v1/audit/verify"] {
        let (s, _) = api.call("GET", path, None, None).await;
        assert_eq!(s, 401, "{path} without a token");
    }
    let (s, me) = api.call("GET", "/api/v1/whoami", Some(&vera), None).await;
    assert_eq!(s, 200, "{me}");
    assert_eq!(me, json!({"name": "vera", "role": "viewer"}));

    let (s, list) = api.call("GET", "/api/v1/skills", Some(&vera), None).await;
    assert_eq!(s, 200, "{list}");
    let skills = list["skills"].as_array().expect("skills");
    let critical = skills
        .iter()
        .find(|s| s["name"] == "acme-critical")
        .expect("acme-critical listed");
    assert_eq!(critical["trusted"], true, "{critical}");
    assert_eq!(critical["publisher"], "acme", "{critical}");
    assert_eq!(critical["declared_level"], 3, "{critical}");
    assert!(
        critical["trust"]
            .as_str()
            .expect("trust")
            .contains("trusts as publisher acme for names starting with acme-"),
        "{critical}"
    );
    assert_eq!(critical["versions"], json!(["1.0.0"]), "{critical}");
    assert!(critical["grants"].is_object(), "{critical}");

    let (_, one) = api
        .call("GET", "/api/v1/skills?name=acme-echo", Some(&vera), None)
        .await;
    let names: Vec<&Value> = one["skills"]
        .as_array()
        .expect("skills")
        .iter()
        .map(|s| &s["name"])
        .collect();
    assert_eq!(names, [&json!("acme-echo")], "{one}");

    let (_, ok) = api
        .call("GET", "/api/v1/audit/verify", Some(&vera), None)
        .await;
    assert_eq!(ok["ok"], true, "{ok}");
    assert!(ok["events"].as_i64().expect("events") >= 2, "{ok}");
    crate::orchestrator::tamper(
        &orch.database,
        "UPDATE audit SET actor = 'mallory' WHERE idx = 2",
    );
    let (_, bad) = api
        .call("GET", "/api/v1/audit/verify", Some(&vera), None)
        .await;
    assert_eq!(bad["ok"], false, "{bad}");
    assert!(
        bad["problem"]
            .as_str()
            .expect("problem")
            .contains("audit event 2"),
        "{bad}"
    );
}

/// A repair the healing loop submitted for an incident and that waits for a person: its
/// approval page names the incident it belongs to (with the alert's labels), and the
/// incident's page tells its story up to the approval.
#[tokio::test(flavor = "multi_thread")]
async fn the_approval_page_names_the_incident_a_repair_belongs_to() {
    let (w, reg) = setup();
    crate::healing::publish_catalog(&w, &reg);
    std::fs::write(
        w.path("healing.toml"),
        r#"
[[policy]]
name = "disk-full"
match = { alertname = "DiskFull" }
diagnose = [{ skill = "acme-disk-usage", input = { warn_percent = 1, critical_percent = 2 } }]
repair = { skill = "acme-clean-old-logs", input = { dir = "{{labels.dir}}", older_than_days = 7 } }
auto_heal = true
"#,
    )
    .expect("policies");
    let orch = Orch::start(
        &w,
        &reg,
        Backend::Sqlite,
        &["--healing-policies", "healing.toml"],
    );
    let api = Api::new(&orch);
    let admin = orch.admin.clone();
    let am = orch.token(&w, "alertmanager", "operator");
    let vera = orch.token(&w, "vera", "viewer");
    // This agent does not let clean-old-logs heal on its own: a person must approve.
    let _agents = crate::healing::agents(&w, &orch, &reg, &[("web-2", false)]);
    let dir = crate::healing::logs(&w, "web-2");
    let mut fired = crate::healing::alert("DiskFull", "web-2", &dir, json!({ "summary": HOSTILE }));
    fired["status"] = json!("firing");
    fired["fingerprint"] = json!("00000000000d15c0");
    let (s, v) = api
        .call(
            "POST",
            "/api/v1/alerts/alertmanager",
            Some(&am),
            Some(json!({
                "version": "4", "status": "firing", "receiver": "tend", "groupKey": "{}:disk",
                "alerts": [fired],
            })),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let waiting = crate::alerts::until_incident(&api, &admin, "DiskFull", |i| {
        crate::healing::steps(i).contains(&"approval".to_string())
    })
    .await;
    let repair = api
        .get(&admin, waiting["repair"].as_str().expect("repair"))
        .await;
    assert_eq!(repair["state"], "pending_approval", "{repair}");

    let scene = json!({
        "url": orch.url, "viewer": vera, "repair": repair["id"], "incident": waiting["id"],
        "digest": repair["invocation_digest"], "hostile": HOSTILE,
    });
    drive(&w, "incident", &scene);
}
