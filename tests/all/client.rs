//! The operator's command-line client against a real `tend orchestrator serve` (SQLite) on
//! loopback, resolving signed skills from a real registry: `tend login` and contexts, where
//! the server and token come from, `invoke` (with `--wait` and `--json`), `status`,
//! `approvals`, `reject`, `cancel` and `audit show`, as a person at a terminal sees them.

use std::process::Output;

use serde_json::Value;

use crate::orchestrator::{Backend, Orch, publish_levels};
use crate::registry::{Registry, World, err};
use crate::support::*;

/// A world with a registry serving acme-echo (L0, echoes its input; `{"fail": 1}` makes it
/// return a skill error) and acme-disrupt (L2), and an orchestrator resolving from it.
fn setup() -> (World, Registry, Orch) {
    let w = World::new();
    let reg = Registry::start(&w);
    publish_levels(&w, &reg);
    let orch = Orch::start(&w, &reg, Backend::Sqlite, &[]);
    (w, reg, orch)
}

/// `tend ARGS` as an operator runs it: this world's config file, and no server or token from
/// the test's own environment.
fn client(w: &World, args: &[&str], env: &[(&str, &str)]) -> Output {
    tend()
        .current_dir(w.dir.path())
        .env("TEND_CONFIG", w.path("config/tend/config.toml"))
        .env_remove("TEND_URL")
        .env_remove("TEND_TOKEN")
        .env_remove("TEND_CONTEXT")
        .envs(env.iter().copied())
        .args(args)
        .output()
        .expect("run tend")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn ok(w: &World, args: &[&str], env: &[(&str, &str)]) -> Output {
    let o = client(w, args, env);
    assert_eq!(o.status.code(), Some(0), "tend {args:?}: {}", err(&o));
    o
}

/// The invocation id a human answer starts with.
fn id_of(o: &Output) -> String {
    let text = stdout(o);
    text.split_whitespace()
        .find(|w| w.starts_with("inv_"))
        .unwrap_or_else(|| panic!("no invocation id in {text}"))
        .trim_end_matches(':')
        .to_string()
}

#[test]
fn login_contexts_and_where_the_server_comes_from() {
    let (w, _reg, orch) = setup();

    // Nothing configured: the message says how to configure a server.
    let o = client(&w, &["approvals"], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(
        err(&o).contains("no orchestrator configured")
            && err(&o).contains("tend login URL")
            && err(&o).contains("TEND_URL"),
        "{}",
        err(&o)
    );

    // A wrong token is refused at login, and nothing is written.
    let o = client(
        &w,
        &[
            "login",
            &orch.url,
            "--token",
            "tend_wrong",
            "--context",
            "dev",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(err(&o).contains("HTTP 401"), "{}", err(&o));
    assert!(!w.path("config/tend/config.toml").exists());

    // The token from stdin; the file is private and the token never printed.
    let mut child = tend()
        .current_dir(w.dir.path())
        .env("TEND_CONFIG", w.path("config/tend/config.toml"))
        .args(["login", &orch.url, "--context", "dev"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    use std::io::Write;
    writeln!(child.stdin.take().expect("stdin"), "{}", orch.admin).expect("write");
    let o = child.wait_with_output().expect("login");
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert!(err(&o).contains("context dev"), "{}", err(&o));
    assert!(!err(&o).contains(&orch.admin) && !stdout(&o).contains(&orch.admin));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &str| {
            std::fs::metadata(w.path(p))
                .expect("meta")
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("config/tend/config.toml"), 0o600);
        assert_eq!(mode("config/tend"), 0o700);
    }

    // Commands use the current context; `context list` shows it without its token.
    ok(&w, &["approvals"], &[]);
    let o = ok(&w, &["context", "list"], &[]);
    assert!(stdout(&o).contains("dev") && stdout(&o).contains(&orch.url));
    assert!(!stdout(&o).contains(&orch.admin), "{}", stdout(&o));

    // The environment beats the file, and a flag beats the environment.
    let dead = "http://127.0.0.1:9";
    let o = client(&w, &["agents"], &[("TEND_URL", dead), ("TEND_TOKEN", "t")]);
    assert_eq!(o.status.code(), Some(4), "{}", err(&o));
    assert!(
        err(&o).contains("cannot reach the orchestrator at http://127.0.0.1:9"),
        "{}",
        err(&o)
    );
    let o = client(
        &w,
        &["agents", "--url", &orch.url, "--token", &orch.admin],
        &[("TEND_URL", dead), ("TEND_TOKEN", "t")],
    );
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert!(err(&o).contains("no agents enrolled"), "{}", err(&o));

    // A context's token goes only to its own server.
    let o = client(&w, &["agents", "--url", dead], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(
        err(&o).contains("no token for http://127.0.0.1:9"),
        "{}",
        err(&o)
    );

    // A bad token: the server's message, the status, and what to check.
    let o = client(&w, &["agents", "--token", "tend_wrong"], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(
        err(&o).contains("HTTP 401") && err(&o).contains("did not accept the token"),
        "{}",
        err(&o)
    );

    // A config file with a typo names the file and the line.
    std::fs::write(
        w.path("bad.toml"),
        format!(
            "current = \"dev\"\n[contexts.dev]\nurl = \"{}\"\ntokn = \"x\"\n",
            orch.url
        ),
    )
    .expect("write");
    let bad = w.path("bad.toml");
    let o = client(
        &w,
        &["approvals"],
        &[("TEND_CONFIG", bad.to_str().expect("utf8"))],
    );
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(
        err(&o).contains("bad.toml:4") && err(&o).contains("tokn"),
        "{}",
        err(&o)
    );

    // Contexts: use and remove.
    let o = client(&w, &["context", "use", "nope"], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    ok(&w, &["context", "remove", "dev"], &[]);
    let o = client(&w, &["approvals"], &[]);
    assert!(
        err(&o).contains("no orchestrator configured"),
        "{}",
        err(&o)
    );
}

#[test]
fn invoke_wait_status_approvals_reject_cancel_and_audit() {
    let (w, _reg, orch) = setup();
    ok(&w, &["login", &orch.url, "--token", &orch.admin], &[]);

    // L0 runs at once; --wait prints the result and exits 0.
    let o = ok(
        &w,
        &["invoke", "acme-echo", "--input", r#"{"x": 7}"#, "--wait"],
        &[],
    );
    let text = stdout(&o);
    assert!(
        text.contains("acme-echo@1.0.0") && text.contains("queued (L0)"),
        "{text}"
    );
    assert!(
        text.contains("succeeded") && text.contains("\"x\": 7"),
        "{text}"
    );

    // --json: the API's invocation at its end, recorded as started from the command line.
    let o = ok(&w, &["invoke", "acme-echo", "--wait", "--json"], &[]);
    let inv: Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    assert_eq!(inv["state"], "succeeded", "{inv}");
    assert_eq!(inv["trigger"], "cli", "{inv}");
    assert_eq!(inv["result"]["outcome"], "ok", "{inv}");

    // A skill error: --wait exits 1, as `tend run` does.
    let o = client(
        &w,
        &[
            "invoke",
            "acme-echo@1.0.0",
            "--input",
            r#"{"fail": 1}"#,
            "--wait",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(1), "{}", err(&o));
    assert!(stdout(&o).contains("skill_error") && stdout(&o).contains("asked-to-fail"));

    // Input the skill's schema refuses: the server's message, exit 2, nothing recorded.
    let o = client(
        &w,
        &["invoke", "acme-echo", "--input", r#"{"x": "seven"}"#],
        &[],
    );
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(err(&o).contains("HTTP 422"), "{}", err(&o));

    // L2 waits for approval: who must approve and how.
    let o = ok(&w, &["invoke", "acme-disrupt", "--reason", "INC-7"], &[]);
    let pending = id_of(&o);
    let text = stdout(&o);
    assert!(text.contains("pending_approval (L2)"), "{text}");
    assert!(
        text.contains("other than admin") && text.contains(&format!("tend approve {pending}")),
        "{text}"
    );

    let o = ok(&w, &["approvals"], &[]);
    let text = stdout(&o);
    assert!(text.starts_with("ID"), "{text}");
    let row = text
        .lines()
        .find(|l| l.starts_with(&pending))
        .unwrap_or_else(|| panic!("{pending} not listed: {text}"));
    assert!(
        row.contains("acme-disrupt@1.0.0")
            && row.contains("L2")
            && row.contains("0/1")
            && row.contains("admin"),
        "{row}"
    );
    let o = ok(&w, &["approvals", "--json"], &[]);
    let list: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(list["invocations"][0]["id"], pending.as_str());

    // Rejected with a comment (required): status shows it, --wait exits 5.
    let o = client(&w, &["reject", &pending], &[]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "a comment is required: {}",
        err(&o)
    );
    let bob = orch.token(&w, "bob", "approver");
    let o = ok(
        &w,
        &[
            "reject",
            &pending,
            "--comment",
            "not during the sale",
            "--token",
            &bob,
        ],
        &[],
    );
    assert!(stdout(&o).contains("rejected"), "{}", stdout(&o));
    let o = ok(&w, &["status", &pending], &[]);
    let text = stdout(&o);
    assert!(
        text.contains("rejected") && text.contains("not during the sale") && text.contains("INC-7"),
        "{text}"
    );
    assert!(text.contains("admin (via cli)"), "{text}");
    let o = client(&w, &["status", &pending, "--wait"], &[]);
    assert_eq!(o.status.code(), Some(5), "{}", err(&o));
    let o = ok(&w, &["status", &pending, "--json"], &[]);
    let inv: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(inv["comment"], "not during the sale");

    // Cancelled: --wait exits 7.
    let o = ok(&w, &["invoke", "acme-disrupt"], &[]);
    let other = id_of(&o);
    ok(&w, &["cancel", &other], &[]);
    let o = client(&w, &["status", &other, "--wait"], &[]);
    assert_eq!(o.status.code(), Some(7), "{}", err(&o));

    // Not an invocation id: refused before anything is sent.
    let o = client(&w, &["status", "../agents"], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(err(&o).contains("not an invocation id"), "{}", err(&o));
    let o = client(&w, &["status", "inv_0000000000000000"], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(err(&o).contains("HTTP 404"), "{}", err(&o));

    // The audit trail: what happened to the rejected one is there.
    let o = ok(&w, &["audit", "show", "--limit", "50"], &[]);
    let text = stdout(&o);
    assert!(text.starts_with("INDEX"), "{text}");
    assert!(
        text.lines().any(|l| l.contains("invocation.rejected")
            && l.contains(&pending)
            && l.contains("bob")),
        "{text}"
    );
    let o = ok(&w, &["audit", "show", "--json", "-n", "3"], &[]);
    let page: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(page["events"].as_array().map(Vec::len), Some(3), "{page}");

    // Only `api` and `cli` may be claimed as a trigger through the API.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let status = rt.block_on(async {
        reqwest::Client::new()
            .post(format!("{}/api/v1/invocations", orch.url))
            .bearer_auth(&orch.admin)
            .header("tend-trigger", "schedule")
            .json(&serde_json::json!({"skill": "acme-echo", "reason": "t"}))
            .send()
            .await
            .expect("send")
            .status()
            .as_u16()
    });
    assert_eq!(status, 400);
}

/// `tend audit tail` shows the newest events, then each new one as it is appended.
#[test]
fn audit_tail_follows_new_events() {
    use std::io::{BufRead, BufReader};
    let (w, _reg, orch) = setup();
    ok(&w, &["login", &orch.url, "--token", &orch.admin], &[]);
    let mut child = tend()
        .current_dir(w.dir.path())
        .env("TEND_CONFIG", w.path("config/tend/config.toml"))
        .env_remove("TEND_URL")
        .env_remove("TEND_TOKEN")
        .args(["audit", "tail", "-n", "2"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let (tx, lines) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = || {
        lines
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("a line from tend audit tail")
    };
    // The two newest events of a fresh orchestrator: its admin token and its start.
    assert!(next().contains("token.create"));
    assert!(next().contains("orchestrator.start"));
    let o = ok(&w, &["invoke", "acme-disrupt"], &[]);
    let id = id_of(&o);
    let line = next();
    assert!(
        line.contains("invocation.create") && line.contains(&id) && line.contains("admin"),
        "{line}"
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// `bob.key`: bob's approver key (the one every test world's trust policy lists), as
/// `tend key gen` writes keys.
fn write_bob_key(w: &World) -> String {
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    let pem = approver_key("bob")
        .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .expect("pem");
    let path = w.path("bob.key");
    std::fs::write(&path, pem.as_bytes()).expect("key");
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    path.to_str().expect("path").to_string()
}

/// An admin makes tokens and registers bob's approver key with the client; bob approves with
/// `tend approve`, which shows what it signs, asks (or needs `--yes`), signs the digest it
/// recomputed, and refuses to sign when what the server shows does not hash to the digest it
/// states. A revoked token stops working at once.
#[test]
fn approve_signs_what_it_shows_and_tokens_are_managed_with_the_client() {
    let (w, _reg, orch) = setup();
    let admin = [
        ("TEND_URL", orch.url.as_str()),
        ("TEND_TOKEN", orch.admin.as_str()),
    ];
    let make = |name: &str, role: &str| {
        let o = ok(
            &w,
            &[
                "token",
                "create",
                "--name",
                name,
                "--role",
                role,
                "--expires",
                "1h",
            ],
            &admin,
        );
        assert!(err(&o).contains("it is shown only now"), "{}", err(&o));
        stdout(&o).trim().to_string()
    };
    let alice = make("alice", "operator");
    let bob = make("bob", "approver");
    let as_alice = [
        ("TEND_URL", orch.url.as_str()),
        ("TEND_TOKEN", alice.as_str()),
    ];
    let key = write_bob_key(&w);
    let as_bob = [
        ("TEND_URL", orch.url.as_str()),
        ("TEND_TOKEN", bob.as_str()),
        ("TEND_KEY", key.as_str()),
    ];

    let o = ok(
        &w,
        &["invoke", "acme-disrupt", "--reason", "test"],
        &as_alice,
    );
    let id = id_of(&o);
    // Not registered yet: the orchestrator refuses the signature's key.
    let o = client(&w, &["approve", &id, "--yes"], &as_bob);
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(
        err(&o).contains("no approver key is registered for bob"),
        "{}",
        err(&o)
    );
    let o = ok(&w, &["approver", "add", "bob", "--key", &key], &admin);
    assert!(stdout(&o).contains("[[approvers]]"), "{}", stdout(&o));
    assert!(stdout(&ok(&w, &["approver", "list"], &as_alice)).contains("bob"));

    // Without a terminal and without --yes, nobody confirmed: nothing is sent.
    let o = client(&w, &["approve", &id], &as_bob);
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(err(&o).contains("nobody confirmed"), "{}", err(&o));
    let o = ok(&w, &["approve", &id, "--yes"], &as_bob);
    assert!(stdout(&o).contains("approved (1 of 1)"), "{}", stdout(&o));
    let o = client(&w, &["status", &id, "--wait"], &as_alice);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));

    // What the server shows no longer hashes to the digest it states: refused, not signed.
    let o = ok(
        &w,
        &["invoke", "acme-disrupt", "--reason", "test"],
        &as_alice,
    );
    let id = id_of(&o);
    crate::orchestrator::tamper(
        &orch.database,
        &format!("UPDATE invocations SET input = '{{\"shown\": \"other\"}}' WHERE id = '{id}'"),
    );
    let o = client(&w, &["approve", &id, "--yes"], &as_bob);
    assert_eq!(o.status.code(), Some(4), "{}", err(&o));
    assert!(err(&o).contains("refusing to sign"), "{}", err(&o));
    let shown: Value =
        serde_json::from_slice(&ok(&w, &["status", &id, "--json"], &as_alice).stdout)
            .expect("json");
    assert_eq!(shown["approvals"], serde_json::json!([]), "{shown}");

    // Tokens: listed without secrets; revoked, refused at once.
    let o = ok(&w, &["token", "list"], &admin);
    let line = stdout(&o)
        .lines()
        .find(|l| l.contains(" bob "))
        .unwrap_or_else(|| panic!("{}", stdout(&o)))
        .to_string();
    assert!(!stdout(&o).contains(&bob), "a secret was listed");
    let prefix = line.split_whitespace().next().expect("prefix").to_string();
    let o = ok(&w, &["token", "revoke", &prefix], &admin);
    assert!(stdout(&o).contains("is revoked"), "{}", stdout(&o));
    let o = client(&w, &["approvals"], &as_bob);
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(err(&o).contains("HTTP 401"), "{}", err(&o));
    let o = client(&w, &["token", "revoke", "not-a-prefix"], &admin);
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    ok(&w, &["approver", "remove", "bob"], &admin);
}
