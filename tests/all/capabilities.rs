//! Capabilities are deny-by-default: files, environment, network and programs are reachable
//! only as the manifest grants, and each test has a positive control showing the grant works.

use std::io::{Read, Write};
use std::net::TcpListener;

use serde_json::json;
use tend_runtime::{LoadError, Outcome};

use crate::support::*;

fn read_result(r: &tend_runtime::ExecutionReport) -> (bool, String) {
    let out = r.output.as_ref().expect("output");
    (
        out["read"].as_bool().expect("read flag"),
        out["error"].as_str().unwrap_or_default().to_string(),
    )
}

#[tokio::test]
async fn files_outside_the_grant_cannot_be_read() {
    let (rt, dir) = runtime();
    let granted = dir.path().join("granted");
    std::fs::create_dir_all(granted.join("sub")).expect("mkdir");
    std::fs::write(granted.join("sub/ok.log"), "visible\n").expect("write");
    std::fs::write(dir.path().join("secret.txt"), "secret\n").expect("write");
    std::os::unix::fs::symlink(dir.path().join("secret.txt"), granted.join("escape"))
        .expect("symlink");
    std::os::unix::fs::symlink("/etc", granted.join("etc-link")).expect("symlink");
    let g = granted.display().to_string();
    let skill = rt
        .load(
            &guest_bytes("hostile"),
            Some(diagnose_manifest(&format!("fs_read = [\"{g}\"]"))),
        )
        .expect("load");

    // Positive control: the granted file is readable.
    let r = call(
        &rt,
        &skill,
        &json!({"do":"read","path":format!("{g}/sub/ok.log")}).to_string(),
    )
    .await;
    assert_eq!(read_result(&r), (true, String::new()), "{:?}", r.output);

    for path in [
        "/etc/shadow".to_string(),
        "/etc/passwd".to_string(),
        format!("{g}/../secret.txt"),
        format!("{g}/sub/../../secret.txt"),
        format!("{g}/escape"),
        format!("{g}/etc-link/passwd"),
    ] {
        let r = call(&rt, &skill, &json!({"do":"read","path":path}).to_string()).await;
        assert_eq!(r.outcome, Outcome::Ok);
        let (read, error) = read_result(&r);
        assert!(!read, "{path} was readable: {:?}", r.output);
        assert!(!error.is_empty(), "{path}");
    }
}

#[tokio::test]
async fn without_a_manifest_nothing_is_visible() {
    let (rt, _dir) = runtime();
    let skill = rt.load(&guest_bytes("hostile"), None).expect("load");
    let r = call(&rt, &skill, r#"{"do":"list","path":"/"}"#).await;
    assert!(
        r.output.expect("output")["error"].is_string(),
        "root listed without a grant"
    );
}

#[tokio::test]
async fn read_only_grants_cannot_be_written() {
    let (rt, dir) = runtime();
    let g = dir.path().display().to_string();
    let skill = rt
        .load(
            &guest_bytes("hostile"),
            Some(diagnose_manifest(&format!("fs_read = [\"{g}\"]"))),
        )
        .expect("load");
    let r = call(&rt, &skill, &json!({"do":"list","path":g}).to_string()).await;
    assert!(
        r.output.expect("output")["entries"].is_array(),
        "grant is readable"
    );
    let target = dir.path().join("new.txt");
    let r = call(
        &rt,
        &skill,
        &json!({"do":"write","path":target}).to_string(),
    )
    .await;
    assert_eq!(r.output.expect("output")["written"], false);
    assert!(!target.exists(), "a read-only grant was written through");
}

#[tokio::test]
async fn a_missing_granted_directory_is_a_note_not_a_failure() {
    let (rt, _dir) = runtime();
    let skill = rt
        .load(
            &guest_bytes("hostile"),
            Some(diagnose_manifest("fs_read = [\"/definitely/not/here\"]")),
        )
        .expect("load");
    let r = call(&rt, &skill, r#"{"do":"calls"}"#).await;
    assert_eq!(r.outcome, Outcome::Ok);
    assert!(
        r.notes.iter().any(|n| n.contains("/definitely/not/here")),
        "{:?}",
        r.notes
    );
}

#[tokio::test]
async fn host_environment_is_invisible() {
    // The test process has PATH, HOME, CARGO_* and more; the guest must see none of it.
    assert!(std::env::vars().count() > 3);
    let (rt, _dir) = runtime();
    let skill = rt.load(&guest_bytes("hostile"), None).expect("load");
    let r = call(&rt, &skill, r#"{"do":"env"}"#).await;
    let out = r.output.expect("output");
    assert_eq!(out["vars"], json!([]));
    assert_eq!(out["args"], json!([]));
}

/// A one-shot echo server on loopback; returns its port.
fn echo_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let mut buf = [0u8; 16];
            let n = s.read(&mut buf).unwrap_or(0);
            let _ = s.write_all(&buf[..n]);
        }
    });
    port
}

async fn connect(rt: &tend_runtime::Runtime, caps: &str, addr: &str) -> serde_json::Value {
    let skill = rt
        .load(&guest_bytes("hostile"), Some(diagnose_manifest(caps)))
        .expect("load");
    let r = call(rt, &skill, &json!({"do":"connect","addr":addr}).to_string()).await;
    assert_eq!(r.outcome, Outcome::Ok, "{:?}", r.error);
    r.output.expect("output")
}

#[tokio::test]
async fn tcp_only_to_granted_addresses() {
    let (rt, _dir) = runtime();
    let port = echo_server();
    let target = format!("127.0.0.1:{port}");

    // Positive controls: the exact address, and `localhost` naming loopback.
    let out = connect(&rt, &format!("tcp = [\"{target}\"]"), &target).await;
    assert_eq!(out["connected"], true, "{out}");
    assert_eq!(out["reply"], "ping\n");
    let out = connect(&rt, &format!("tcp = [\"localhost:{port}\"]"), &target).await;
    assert_eq!(out["connected"], true, "{out}");

    // No grant, a grant for another port, and the metadata address: refused.
    for (caps, addr) in [
        (String::new(), target.clone()),
        (
            format!("tcp = [\"127.0.0.1:{}\"]", port.wrapping_add(1)),
            target.clone(),
        ),
        (String::new(), "169.254.169.254:80".to_string()),
        (
            format!("tcp = [\"{target}\"]"),
            "169.254.169.254:80".to_string(),
        ),
    ] {
        let out = connect(&rt, &caps, &addr).await;
        assert_eq!(out["connected"], false, "{caps} -> {addr}: {out}");
    }
}

#[tokio::test]
async fn exec_only_what_the_allowlist_names() {
    let (rt, _dir) = runtime();
    let m = repair_manifest(
        r#"exec = [{ program = "/bin/echo", args = ["hello", "{who}"] }, { program = "/bin/sleep", args = ["{secs}"] }]"#,
    );
    let skill = rt.load(&guest_bytes("repair-exec"), Some(m)).expect("load");

    let r = call(
        &rt,
        &skill,
        r#"{"program":"/bin/echo","args":["hello","tend"]}"#,
    )
    .await;
    assert_eq!(r.outcome, Outcome::Ok, "{:?}", r.error);
    assert_eq!(r.output.as_ref().expect("out")["stdout"], "hello tend\n");
    assert_eq!(r.exec.len(), 1);
    assert_eq!(r.exec[0].status, Some(0));

    for input in [
        json!({"program":"/bin/sh","args":["-c","id"]}),
        json!({"program":"echo","args":["hello","x"]}),
        json!({"program":"/bin/echo","args":["goodbye","x"]}),
        json!({"program":"/bin/echo","args":["hello","--help"]}),
        json!({"program":"/bin/echo","args":["hello","$(id)"]}),
        json!({"program":"/bin/echo","args":["hello","a","b"]}),
    ] {
        let r = call(&rt, &skill, &input.to_string()).await;
        assert_eq!(r.outcome, Outcome::SkillError, "{input} ran");
        assert_eq!(r.error.as_ref().expect("error").code, "denied");
        assert!(r.exec[0].denied.is_some());
    }

    // A program that outlives its timeout is killed and reported.
    let r = call(
        &rt,
        &skill,
        r#"{"program":"/bin/sleep","args":["30"],"timeout_ms":100}"#,
    )
    .await;
    assert_eq!(r.outcome, Outcome::Ok, "{:?}", r.error);
    assert_eq!(r.output.expect("out")["timed_out"], true);
}

#[tokio::test]
async fn manifest_kind_must_match_the_component_world() {
    let (rt, dir) = runtime();
    let err = rt
        .load(&guest_bytes("repair-exec"), Some(diagnose_manifest("")))
        .expect_err("a repair component with a diagnose manifest");
    assert!(matches!(err, LoadError::KindMismatch { .. }), "{err}");
    let cache = dir.path().join("cache");
    let entries = std::fs::read_dir(&cache).map(|d| d.count()).unwrap_or(0);
    assert_eq!(entries, 0, "nothing cached for a refused component");
}

/// A tiny HTTP server on loopback that answers every request with 200; returns its port.
fn http_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        }
    });
    port
}

async fn http_get(
    rt: &tend_runtime::Runtime,
    caps: &str,
    authority: &str,
) -> (serde_json::Value, Vec<String>) {
    let skill = rt
        .load(&guest_bytes("hostile"), Some(diagnose_manifest(caps)))
        .expect("load");
    let r = call(
        rt,
        &skill,
        &json!({"do":"http","addr":authority}).to_string(),
    )
    .await;
    assert_eq!(r.outcome, Outcome::Ok, "{:?} {}", r.error, r.stderr);
    (r.output.expect("output"), r.notes)
}

#[tokio::test]
async fn http_only_to_granted_origins() {
    let (rt, _dir) = runtime();
    let port = http_server();
    let authority = format!("127.0.0.1:{port}");

    // Positive control: the granted origin answers.
    let (out, _) = http_get(&rt, &format!("http = [\"http://{authority}\"]"), &authority).await;
    assert_eq!(out, json!({"ok": true, "status": 200}));

    // Not granted at all; granted another port; granted https only; and the metadata service.
    for (caps, target) in [
        (String::new(), authority.clone()),
        (
            format!("http = [\"http://127.0.0.1:{}\"]", port.wrapping_add(1)),
            authority.clone(),
        ),
        (
            format!("http = [\"https://{authority}\"]"),
            authority.clone(),
        ),
        (
            format!("http = [\"http://{authority}\"]"),
            "169.254.169.254".to_string(),
        ),
    ] {
        let (out, notes) = http_get(&rt, &caps, &target).await;
        assert_eq!(out["ok"], false, "{caps} -> {target}: {out}");
        assert!(
            out["error"]
                .as_str()
                .expect("error")
                .contains("HttpRequestDenied"),
            "{out}"
        );
        assert!(notes.iter().any(|n| n.contains("denied")), "{notes:?}");
    }
}
