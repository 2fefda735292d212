//! Attacks on the web console and on `tend up`, each a test that tries to get around one of
//! their trust decisions: characters that hide text from an approver, responses a browser
//! could sniff, frame or cache, hostile ids in the console's hash route and a token revoked
//! mid-session (in Chromium), and a `tend up` directory another local user owns or that a
//! `--reset` would delete under a running `tend up`.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::orchestrator::{Api, Backend, Orch, setup};
use crate::support::*;
use crate::up::{command, command_in, place, start};

/// Run `script` (an ES module) in node with the console's script imported as `app`; its
/// stdout, parsed as JSON.
fn with_console_script(script: &str) -> Value {
    let app = repo_root().join("host/orchestrator/console/app.js");
    let src = format!(
        "import * as app from {};\n{script}",
        serde_json::to_string(&format!("file://{}", app.display())).expect("path")
    );
    let out = Command::new("node")
        .args(["--input-type=module", "-e", &src])
        .output()
        .expect("node (Debian's nodejs, installed by scripts/test)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "node: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).expect("JSON from node")
}

/// A requester who puts `"dry_run\u{ad}": false` in a repair's input shows the approver what
/// reads as `"dry_run": false`... or hides text behind characters that draw nothing. Every
/// such character in server text is written out as `\u{..}` on the console's pages (before
/// this, the soft hyphen, the Arabic letter mark — a direction mark —, line separators,
/// variation selectors, Hangul fillers and tag characters went through as they were).
#[test]
fn characters_that_draw_nothing_are_shown_to_an_approver() {
    let hidden = [
        '\u{ad}',
        '\u{34f}',
        '\u{61c}',
        '\u{115f}',
        '\u{1160}',
        '\u{17b4}',
        '\u{180e}',
        '\u{200b}',
        '\u{200e}',
        '\u{2028}',
        '\u{2029}',
        '\u{202e}',
        '\u{2061}',
        '\u{2066}',
        '\u{206a}',
        '\u{3164}',
        '\u{fe0f}',
        '\u{feff}',
        '\u{ffa0}',
        '\u{fff9}',
        '\u{1bca1}',
        '\u{1d173}',
        '\u{e0001}',
        '\u{e0041}',
        '\u{e007f}',
        '\u{e0100}',
        '\u{1b}',
        '\u{7}',
        '\u{85}',
    ];
    let cases: Vec<String> = hidden.iter().map(|c| format!("dry_run{c}")).collect();
    let shown = with_console_script(&format!(
        "const cases = {};\nconsole.log(JSON.stringify({{ one: cases.map(app.oneLine), multi: cases.map(app.visible), input: app.pretty(app.parseJson(JSON.stringify({{ [cases[0]]: false }}))) }}));",
        serde_json::to_string(&cases).expect("cases")
    ));
    for (i, c) in hidden.iter().enumerate() {
        let want = format!("dry_run\\u{{{:x}}}", *c as u32);
        assert_eq!(shown["one"][i], want.as_str(), "U+{:04X}", *c as u32);
        assert_eq!(shown["multi"][i], want.as_str(), "U+{:04X}", *c as u32);
    }
    // The input as the approval page prints it (pretty JSON, then made visible in a <pre>).
    let input = shown["input"].as_str().expect("input");
    let on_page = with_console_script(&format!(
        "console.log(JSON.stringify(app.visible({})));",
        serde_json::to_string(input).expect("input")
    ));
    assert_eq!(on_page, "{\n  \"dry_run\\u{ad}\": false\n}");
    // Ordinary text is left alone.
    let plain = with_console_script(
        "console.log(JSON.stringify(app.oneLine('café 中文 /var/log — ok ✓')));",
    );
    assert_eq!(plain, "café 中文 /var/log — ok ✓");
}

/// Every response of the orchestrator, not only the console's pages: a 404 for a path full of
/// markup, an API error that echoes a hostile id, a refused token, and the answer that holds
/// a new token, carry nosniff, no framing, a CSP that allows nothing, and `Cache-Control:
/// no-store` (before this, only the console's own routes carried any of them).
#[tokio::test(flavor = "multi_thread")]
async fn every_orchestrator_response_forbids_sniffing_framing_and_caching() {
    let (w, reg) = setup();
    let orch = Orch::start(&w, &reg, Backend::Sqlite, &[]);
    let http = reqwest::Client::new();
    let vera = orch.token(&w, "vera", "viewer");
    let hostile = "%3Cscript%3Ealert(1)%3C%2Fscript%3E";
    let cases = [
        ("GET", format!("/{hostile}"), None, None, 404),
        ("GET", format!("/console/{hostile}"), None, None, 404),
        (
            "GET",
            format!("/api/v1/invocations/{hostile}"),
            Some(vera.clone()),
            None,
            404,
        ),
        ("GET", "/api/v1/invocations".to_string(), None, None, 401),
        (
            "GET",
            "/api/v1/invocations?limit=<b>".to_string(),
            Some(vera.clone()),
            None,
            400,
        ),
        (
            "GET",
            "/api/v1/whoami".to_string(),
            Some(vera.clone()),
            None,
            200,
        ),
        (
            "POST",
            "/api/v1/tokens".to_string(),
            Some(orch.admin.clone()),
            Some(json!({"name": "olga", "role": "operator"})),
            201,
        ),
    ];
    for (method, path, token, body, status) in cases {
        let mut rb = http.request(
            method.parse().expect("method"),
            format!("{}{path}", orch.url),
        );
        if let Some(t) = &token {
            rb = rb.bearer_auth(t);
        }
        if let Some(b) = &body {
            rb = rb.json(b);
        }
        let r = rb.send().await.expect("request");
        let h = r.headers().clone();
        let got = r.status().as_u16();
        let text = r.text().await.expect("body");
        assert!(
            got == status || (status == 400 && (got == 400 || got == 422)),
            "{method} {path}: {got} {text}"
        );
        let header = |n: &str| {
            h.get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_else(|| panic!("{method} {path} ({got}) has no {n}: {h:?}"))
                .to_string()
        };
        assert_eq!(header("x-content-type-options"), "nosniff", "{path}");
        assert_eq!(header("x-frame-options"), "DENY", "{path}");
        assert!(
            header("content-security-policy").contains("frame-ancestors 'none'"),
            "{path}"
        );
        assert!(
            header("content-security-policy").contains("default-src 'none'"),
            "{path}"
        );
        assert_eq!(header("cache-control"), "no-store", "{path}");
        assert!(!h.contains_key("set-cookie"), "{path}");
        if let Some(ct) = h.get("content-type") {
            assert!(
                !ct.to_str().expect("ct").starts_with("text/html"),
                "{method} {path} answers HTML: {text}"
            );
        }
    }
    // The console's own page keeps its policy (scripts from this origin), and is not stored
    // with anything secret in it.
    let r = http
        .get(format!("{}/", orch.url))
        .send()
        .await
        .expect("GET /");
    assert_eq!(
        r.headers()["content-security-policy"],
        tend_orchestrator::console::CSP
    );
    let page = r.text().await.expect("page");
    assert!(!page.contains("tend_"), "no token in the page");
}

/// Hostile ids in the console's hash route, a token revoked while the dashboard is open, and
/// sign-out, in Chromium (tests/browser/attacks.cjs). Before this, a malformed escape in the
/// address (`#/inv/%E0%A4%A`) left the page loading for ever with an uncaught error, and a
/// token revoked while the dashboard was open left an error on the dashboard instead of going
/// back to sign-in, and the invocation page printed output, plan and report through JavaScript
/// numbers (an output of 18446744073709551615 showed as 18446744073709552000, 10.0 as 10), and
/// an approval whose window had closed was offered for signing as if it were open.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_routes_and_a_revoked_token_in_the_browser() {
    let (w, reg) = setup();
    let orch = Orch::start(&w, &reg, Backend::Sqlite, &[]);
    let _api = Api::new(&orch);
    let vera = orch.token(&w, "vera", "viewer");
    let doomed = orch.token(&w, "dora", "approver");
    let chromium = std::path::PathBuf::from("/usr/bin/chromium");
    let modules = target_dir().join("console-node/node_modules");
    assert!(
        chromium.exists() && modules.join("playwright-core").exists(),
        "needs Debian's chromium and playwright-core in {}: run scripts/test (ensure_console_browser)",
        modules.display()
    );
    let scene = json!({ "url": orch.url, "viewer": vera, "doomed": doomed, "admin": orch.admin });
    let out = Command::new("node")
        .arg(repo_root().join("tests/browser/attacks.cjs"))
        .arg("router")
        .env("NODE_PATH", &modules)
        .env("TEND_CHROMIUM", &chromium)
        .env("TEND_CONSOLE_PROFILE", w.path("attack-profile"))
        .env("TEND_CONSOLE_SCENE", scene.to_string())
        .output()
        .expect("node");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let answer: Value = serde_json::from_str(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or(""),
    )
    .expect("JSON answer");
    assert!(answer["hashes"].as_u64().expect("hashes") >= 8, "{answer}");
}

/// `tend up --reset --yes` aimed at the directory of a `tend up` that is still running (its
/// ports are taken) deletes nothing: the ports are checked first. Before this, the directory
/// (database, audit trail, keys) was deleted and only then was the port found in use.
#[test]
fn a_reset_while_the_ports_are_taken_deletes_nothing() {
    let p = place();
    std::fs::create_dir_all(&p.dir).expect("dir");
    std::fs::set_permissions(&p.dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    std::fs::write(p.dir.join("orchestrator.db"), "the running tend up's data").expect("write");
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = busy.local_addr().expect("addr").to_string();
    let o = command(&p, &["--reset", "--yes", "--listen", &port])
        .stdin(Stdio::null())
        .output()
        .expect("tend up");
    assert_ne!(o.status.code(), Some(0));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&format!("cannot listen on {port}")), "{err}");
    assert_eq!(
        std::fs::read_to_string(p.dir.join("orchestrator.db")).expect("still there"),
        "the running tend up's data",
        "{err}"
    );
}

/// `--reset` with `--dir` a symlink removes the link, never what it points to, and then makes
/// a directory of its own there.
#[test]
fn a_reset_through_a_symlinked_dir_removes_only_the_link() {
    let p = place();
    let elsewhere = p.home.join("precious");
    std::fs::create_dir_all(&elsewhere).expect("mkdir");
    std::fs::write(elsewhere.join("keep"), "mine").expect("write");
    std::os::unix::fs::symlink(&elsewhere, &p.dir).expect("symlink");
    // A catalog that is not there stops it right after the reset: the reset is what is checked.
    let o = command(
        &p,
        &["--reset", "--yes", "--catalog", "/nonexistent/catalog"],
    )
    .stdin(Stdio::null())
    .output()
    .expect("tend up");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_ne!(o.status.code(), Some(0), "{err}");
    assert!(err.contains("removed"), "{err}");
    assert!(!p.dir.is_symlink() && p.dir.is_dir(), "{err}");
    assert_eq!(
        std::fs::read_to_string(elsewhere.join("keep")).expect("kept"),
        "mine"
    );
}

/// A `--dir` that another local user made in advance, or reached through their symlink, or
/// under a directory anyone may write, would let them read the keys or replace the trust
/// policy the local agent obeys. `tend up` refuses each and makes nothing (as root, which
/// could otherwise chmod its way past: before this, a directory owned by another user was
/// taken over as it was).
#[test]
fn a_dir_another_user_could_reach_is_refused() {
    const NOBODY: u32 = 65534;
    let is_root = std::fs::metadata("/proc/self").expect("proc").uid() == 0;
    let p = place();
    let base = p.dir.parent().expect("parent").to_path_buf();
    let run = |dir: &std::path::Path| {
        // A catalog that is not there: had the directory been taken, it stops there rather
        // than running on.
        command_in(&p, dir, &["--catalog", "/nonexistent/catalog"])
            .stdin(Stdio::null())
            .output()
            .expect("tend up")
    };
    let refused = |dir: &std::path::Path, what: &str| {
        let o = run(dir);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_ne!(o.status.code(), Some(0), "{what}: {err}");
        assert!(err.contains("refusing to use"), "{what}: {err}");
        err
    };

    // Writable by anyone, not sticky.
    let open = base.join("open");
    std::fs::create_dir(&open).expect("mkdir");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let err = refused(&open.join("up"), "a world-writable parent");
    assert!(err.contains("writable by others"), "{err}");
    assert!(!open.join("up").exists());

    if is_root {
        // Made by someone else in advance.
        let theirs = base.join("theirs");
        std::fs::create_dir(&theirs).expect("mkdir");
        std::os::unix::fs::chown(&theirs, Some(NOBODY), Some(NOBODY)).expect("chown");
        let err = refused(&theirs, "a directory another user owns");
        assert!(err.contains(&format!("uid {NOBODY}")), "{err}");
        assert_eq!(std::fs::read_dir(&theirs).expect("ls").count(), 0);

        // Their symlink to a directory of ours: they could point it elsewhere later.
        let ours = base.join("ours");
        std::fs::create_dir(&ours).expect("mkdir");
        let link = base.join("link");
        std::os::unix::fs::symlink(&ours, &link).expect("symlink");
        std::os::unix::fs::lchown(&link, Some(NOBODY), Some(NOBODY)).expect("lchown");
        refused(&link, "a symlink another user owns");
        assert_eq!(std::fs::read_dir(&ours).expect("ls").count(), 0);
    }
}

/// What a first `tend up` makes, seen as a second local user would: nothing readable or
/// writable by anyone else; the registry it serves takes no publication without a publisher
/// token (it has none); and a hand edit of trust.toml's approvers is put back, and said.
#[test]
fn what_tend_up_makes_is_private_and_its_registry_is_closed() {
    let p = place();
    let up = start(&p);
    let mode = |path: &std::path::Path| {
        std::fs::symlink_metadata(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .mode()
            & 0o7777
    };
    assert_eq!(mode(&p.dir), 0o700);
    for f in ["publisher.key", "trust.toml"] {
        assert_eq!(mode(&p.dir.join(f)), 0o600, "{f}");
    }
    let me = p.home.join(".config/tend");
    assert_eq!(mode(&me), 0o700);
    assert_eq!(mode(&me.join("me.key")), 0o600);
    assert_eq!(mode(&me.join("config.toml")), 0o600);
    // Under the 0700 directory, nothing is writable by others either.
    let mut stack = vec![p.dir.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("ls").flatten() {
            let m = mode(&e.path());
            assert_eq!(m & 0o002, 0, "{} is world-writable", e.path().display());
            if e.file_type().expect("type").is_dir() {
                stack.push(e.path());
            }
        }
    }
    // The admin token is in the client config, not in the data directory's files.
    let token = up.value("admin token");
    assert!(token.starts_with("tend_"), "{token}");
    for f in ["trust.toml", "agent/agent.toml"] {
        if let Ok(t) = std::fs::read_to_string(p.dir.join(f)) {
            assert!(!t.contains(&token), "{f}");
        }
    }

    // Nobody publishes into the registry `tend up` serves: no token, or the admin's (an
    // orchestrator token means nothing to the registry).
    let registry = up.value("registry");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    for t in [None, Some(token.as_str())] {
        let status = rt.block_on(async {
            let mut rb = reqwest::Client::new()
                .put(format!("{registry}/api/v1/skills/evil/1.0.0"))
                .body(b"\0asm".to_vec());
            if let Some(t) = t {
                rb = rb.bearer_auth(t);
            }
            rb.send().await.expect("PUT").status().as_u16()
        });
        assert!([401, 403].contains(&status), "publish with {t:?}: {status}");
    }

    // An approver added to trust.toml by hand does not stay: the local agent trusts exactly
    // the approvers registered with the orchestrator, and `tend up` says what it replaced.
    let trust = p.dir.join("trust.toml");
    let mut text = std::fs::read_to_string(&trust).expect("trust");
    let mallory = approver_key("mallory");
    text.push_str(&format!(
        "\n[[approvers]]\nname = \"mallory\"\nkey = \"ed25519:{}\"\n",
        base64_key(&mallory)
    ));
    std::fs::write(&trust, &text).expect("edit trust.toml");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut said = Vec::new();
    loop {
        if let Ok(l) = up.lines.recv_timeout(Duration::from_millis(200)) {
            said.push(l);
        }
        let now = std::fs::read_to_string(&trust).expect("trust");
        if !now.contains("mallory")
            && said
                .iter()
                .any(|l| l.contains("no longer trusting mallory"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "{now}\n{said:#?}");
    }
    up.stop();
}

fn base64_key(k: &ed25519_dalek::SigningKey) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(k.verifying_key().to_bytes())
}
