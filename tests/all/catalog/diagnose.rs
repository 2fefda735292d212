//! Catalog diagnose skills (Rust): memory-pressure, top-processes, log-search,
//! service-status, tcp-check, cert-expiry (replication-lag against real servers: replication.rs).
//!
//! Each is invoked through the runtime with real inputs; its output is checked against its
//! `[output.schema]` and against facts of this machine read independently by the test.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use tend_runtime::{ExecutionReport, LoadedSkill, Outcome, Runtime};

use crate::support::*;

/// The output of an `ok` report, checked against the skill's output schema.
fn ok_output(name: &str, r: &ExecutionReport) -> Value {
    assert_eq!(
        r.outcome,
        Outcome::Ok,
        "{name}: {:?} {:?}",
        r.error,
        r.notes
    );
    let out = r.output.clone().expect("output");
    assert_output_schema(name, &out);
    out
}

async fn run_ok(rt: &Runtime, skill: &LoadedSkill, name: &str, input: &Value) -> Value {
    let r = call(rt, skill, &input.to_string()).await;
    ok_output(name, &r)
}

/// The error code of a `skill_error` report.
fn error_code(r: &ExecutionReport) -> String {
    assert_eq!(r.outcome, Outcome::SkillError, "{:?}", r.output);
    r.error.as_ref().expect("error").code.clone()
}

fn grant_dir(dir: &Path) -> tend_runtime::Manifest {
    diagnose_manifest(&format!("fs_read = [{:?}]", dir.display().to_string()))
}

/// `/proc/meminfo` as `key -> bytes` (values in kB converted).
fn meminfo() -> HashMap<String, u64> {
    std::fs::read_to_string("/proc/meminfo")
        .expect("read /proc/meminfo")
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            let n: u64 = v.split_whitespace().next()?.parse().ok()?;
            let unit = if v.trim_end().ends_with("kB") {
                1024
            } else {
                1
            };
            Some((k.to_string(), n * unit))
        })
        .collect()
}

// ---------------------------------------------------------------- every example

#[tokio::test]
async fn every_example_input_works_with_the_real_manifest() {
    let (rt, _dir) = runtime();
    for name in [
        "memory-pressure",
        "top-processes",
        "log-search",
        "service-status",
        "tcp-check",
        "cert-expiry",
        "replication-lag",
        "dns-check",
    ] {
        let input = std::fs::read_to_string(
            repo_root()
                .join("skills")
                .join(name)
                .join("input.example.json"),
        )
        .expect("input.example.json");
        let skill = load_catalog(&rt, name, None);
        let r = call(&rt, &skill, &input).await;
        ok_output(name, &r);
    }
}

// ---------------------------------------------------------------- memory-pressure

#[tokio::test]
async fn memory_pressure_agrees_with_proc_meminfo() {
    let (rt, _dir) = runtime();
    let skill = load_catalog(&rt, "memory-pressure", None);
    let out = run_ok(&rt, &skill, "memory-pressure", &json!({})).await;
    let info = meminfo();
    assert_eq!(out["memory"]["total_bytes"], json!(info["MemTotal"]));
    assert_eq!(out["swap"]["total_bytes"], json!(info["SwapTotal"]));
    let total = out["memory"]["total_bytes"].as_u64().expect("total");
    let available = out["memory"]["available_bytes"]
        .as_u64()
        .expect("available");
    assert_eq!(
        out["memory"]["used_bytes"],
        json!(total - available),
        "used = total - available"
    );
    // PSI: an object exactly where the kernel exposes it, null elsewhere.
    assert_eq!(
        out["pressure"].is_object(),
        Path::new("/proc/pressure/memory").exists(),
        "{out:#}"
    );
    let vmstat_oom = std::fs::read_to_string("/proc/vmstat")
        .expect("read /proc/vmstat")
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse::<u64>().ok());
    assert_eq!(out["oom_kills"], json!(vmstat_oom));
    // Plenty of memory is available here: ok with the defaults... unless the machine is
    // genuinely short, in which case a reason says so.
    if out["status"] != "ok" {
        assert!(!out["reasons"].as_array().expect("reasons").is_empty());
    }
}

#[tokio::test]
async fn memory_pressure_thresholds_decide_the_status() {
    let (rt, _dir) = runtime();
    let skill = load_catalog(&rt, "memory-pressure", None);
    // Less than 100 % is always available: critical, with the reason.
    let out = run_ok(
        &rt,
        &skill,
        "memory-pressure",
        &json!({"warn_available_percent": 100, "critical_available_percent": 100}),
    )
    .await;
    assert_eq!(out["status"], "critical");
    let reasons = out["reasons"].as_array().expect("reasons");
    assert!(
        reasons
            .iter()
            .any(|r| r.as_str().expect("str").contains("available memory")),
        "{reasons:?}"
    );
    // Nothing is below 0 % and no PSI average reaches 100 %: ok.
    let out = run_ok(
        &rt,
        &skill,
        "memory-pressure",
        &json!({"warn_available_percent": 0, "critical_available_percent": 0,
                "warn_psi_some_avg10": 100, "critical_psi_some_avg10": 100}),
    )
    .await;
    assert_eq!(out["status"], "ok", "{out:#}");
    assert_eq!(out["reasons"], json!([]));
    // Contradictory thresholds are the caller's mistake, said as such.
    let r = call(
        &rt,
        &skill,
        r#"{"warn_available_percent": 5, "critical_available_percent": 50}"#,
    )
    .await;
    assert_eq!(error_code(&r), "invalid-input");
    let r = call(&rt, &skill, r#"{"warn_available_percent": 101}"#).await;
    assert_eq!(r.outcome, Outcome::InvalidInput);
}

// ---------------------------------------------------------------- top-processes

/// `/proc/<pid>/comm`, if the process still exists.
fn comm(pid: u64) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_string())
}

#[tokio::test]
async fn top_processes_agree_with_proc() {
    let (rt, _dir) = runtime();
    let skill = load_catalog(&rt, "top-processes", None);
    let out = run_ok(
        &rt,
        &skill,
        "top-processes",
        &json!({"limit": 50, "by": "both"}),
    )
    .await;
    assert_eq!(out["memory_total_bytes"], json!(meminfo()["MemTotal"]));
    let (mut agree, mut differ) = (0, 0);
    for list in ["by_cpu", "by_rss"] {
        let procs = out[list].as_array().expect(list);
        assert!(!procs.is_empty() && procs.len() <= 50, "{list}");
        let key = if list == "by_cpu" {
            "cpu_percent"
        } else {
            "rss_bytes"
        };
        let values: Vec<f64> = procs
            .iter()
            .map(|p| p[key].as_f64().expect("number"))
            .collect();
        assert!(
            values.windows(2).all(|w| w[0] >= w[1]),
            "{list} is sorted by {key}, descending: {values:?}"
        );
        for p in procs {
            let pid = p["pid"].as_u64().expect("pid");
            // A process that exited (or a pid reused) meanwhile is not held against the skill.
            // One that exec'd another program since has a new name; a few may.
            match comm(pid) {
                Some(name) if name == p["name"] => agree += 1,
                Some(_) => differ += 1,
                None => {}
            }
        }
    }
    assert!(
        agree > 0 && differ * 10 <= agree,
        "{agree} processes agree with /proc/<pid>/comm, {differ} differ: {out:#}"
    );
    // This test process is alive and has memory: when its RSS beats the smallest listed,
    // it is listed, under its own name.
    let me = std::process::id() as u64;
    let by_rss = out["by_rss"].as_array().expect("by_rss");
    if let Some(p) = by_rss.iter().find(|p| p["pid"] == json!(me)) {
        assert_eq!(p["name"], json!(comm(me).expect("own comm")));
        assert!(p["rss_bytes"].as_u64().expect("rss") > 0);
    }
}

#[tokio::test]
async fn top_processes_returns_only_what_was_asked() {
    let (rt, _dir) = runtime();
    let skill = load_catalog(&rt, "top-processes", None);
    let out = run_ok(
        &rt,
        &skill,
        "top-processes",
        &json!({"limit": 3, "by": "rss"}),
    )
    .await;
    assert_eq!(out["by"], "rss");
    assert!(out.get("by_cpu").is_none(), "{out:#}");
    assert_eq!(out["by_rss"].as_array().expect("by_rss").len(), 3);
    let out = run_ok(
        &rt,
        &skill,
        "top-processes",
        &json!({"limit": 1, "by": "cpu"}),
    )
    .await;
    assert!(out.get("by_rss").is_none(), "{out:#}");
    assert_eq!(out["by_cpu"].as_array().expect("by_cpu").len(), 1);
    for bad in [r#"{"limit": 0}"#, r#"{"limit": 51}"#, r#"{"by": "memory"}"#] {
        let r = call(&rt, &skill, bad).await;
        assert_eq!(r.outcome, Outcome::InvalidInput, "{bad}");
    }
}

// ---------------------------------------------------------------- log-search

fn write_log(path: &Path, text: &str, age_secs: u64) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, text).expect("write log");
    std::fs::File::options()
        .write(true)
        .open(path)
        .expect("open log")
        .set_modified(SystemTime::now() - Duration::from_secs(age_secs))
        .expect("set mtime");
}

/// `(file name, line number, line)` of each match.
fn hits(out: &Value) -> Vec<(String, u64, String)> {
    out["matches"]
        .as_array()
        .expect("matches")
        .iter()
        .map(|m| {
            let file = Path::new(m["file"].as_str().expect("file"))
                .file_name()
                .expect("file name")
                .to_string_lossy()
                .into_owned();
            (
                file,
                m["line_number"].as_u64().expect("line number"),
                m["line"].as_str().expect("line").to_string(),
            )
        })
        .collect()
}

struct LogTree {
    _granted: tempfile::TempDir,
    _outside: tempfile::TempDir,
    root: String,
    outside: String,
}

fn log_tree() -> LogTree {
    let granted = tempfile::tempdir().expect("tempdir");
    let outside = tempfile::tempdir().expect("tempdir");
    let g = granted.path();
    write_log(
        &g.join("old.log"),
        "alpha\nERROR one\nbeta\nERROR two\ngamma\n",
        3 * 3600,
    );
    write_log(&g.join("app/new.log"), "x\nERROR three\ny\n", 60);
    write_log(&g.join("app/quiet.log"), "all good\nnothing here\n", 3600);
    std::fs::write(g.join("app/blob.log"), b"ERROR\0\x01\x02binary ERROR\n").expect("write blob");
    write_log(&outside.path().join("secret.log"), "ERROR outside\n", 10);
    LogTree {
        root: g.display().to_string(),
        outside: outside.path().display().to_string(),
        _granted: granted,
        _outside: outside,
    }
}

#[tokio::test]
async fn log_search_finds_matches_newest_file_first_with_context() {
    let tree = log_tree();
    let (rt, _dir) = runtime();
    let skill = load_catalog(&rt, "log-search", Some(grant_dir(Path::new(&tree.root))));
    let out = run_ok(
        &rt,
        &skill,
        "log-search",
        &json!({"paths": [tree.root], "pattern": "ERROR", "context": 1}),
    )
    .await;
    assert_eq!(
        hits(&out),
        vec![
            ("new.log".into(), 2, "ERROR three".into()),
            ("old.log".into(), 2, "ERROR one".into()),
            ("old.log".into(), 4, "ERROR two".into()),
        ],
        "{out:#}"
    );
    let m = &out["matches"];
    assert_eq!(m[0]["context_before"], json!(["x"]));
    assert_eq!(m[0]["context_after"], json!(["y"]));
    assert_eq!(m[1]["context_before"], json!(["alpha"]));
    assert_eq!(m[1]["context_after"], json!(["beta"]));
    assert_eq!(m[2]["context_before"], json!(["beta"]));
    assert_eq!(m[2]["context_after"], json!(["gamma"]));
    assert_eq!(out["truncated"], false);
    // new.log, quiet.log, old.log searched; the binary one skipped with a reason.
    assert_eq!(out["files_searched"], 3);
    let skipped = out["skipped"].as_array().expect("skipped");
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert!(
        skipped[0]["path"]
            .as_str()
            .expect("path")
            .ends_with("blob.log")
    );
    assert!(
        skipped[0]["reason"]
            .as_str()
            .expect("reason")
            .contains("binary")
    );

    // Without context, and case-insensitively.
    let out = run_ok(
        &rt,
        &skill,
        "log-search",
        &json!({"paths": [format!("{}/app/new.log", tree.root)], "pattern": "error T", "ignore_case": true}),
    )
    .await;
    assert_eq!(
        hits(&out),
        vec![("new.log".into(), 2, "ERROR three".into())]
    );
    assert_eq!(out["matches"][0]["context_before"], json!([]));
    assert_eq!(out["matches"][0]["context_after"], json!([]));
}

#[tokio::test]
async fn log_search_respects_max_matches_keeping_the_most_recent() {
    let tree = log_tree();
    let (rt, _dir) = runtime();
    let skill = load_catalog(&rt, "log-search", Some(grant_dir(Path::new(&tree.root))));
    // Two matches: the newest file's one, then the *last* of the older file.
    let out = run_ok(
        &rt,
        &skill,
        "log-search",
        &json!({"paths": [tree.root], "pattern": "ERROR", "max_matches": 2}),
    )
    .await;
    assert_eq!(
        hits(&out),
        vec![
            ("new.log".into(), 2, "ERROR three".into()),
            ("old.log".into(), 4, "ERROR two".into()),
        ]
    );
    assert_eq!(out["truncated"], true);
    // One match: the newest file's; older files are not even read.
    let out = run_ok(
        &rt,
        &skill,
        "log-search",
        &json!({"paths": [tree.root], "pattern": "ERROR", "max_matches": 1}),
    )
    .await;
    assert_eq!(
        hits(&out),
        vec![("new.log".into(), 2, "ERROR three".into())]
    );
    assert_eq!(out["truncated"], true);
    // Exactly as many as exist: not truncated.
    let out = run_ok(
        &rt,
        &skill,
        "log-search",
        &json!({"paths": [format!("{}/old.log", tree.root)], "pattern": "ERROR", "max_matches": 2}),
    )
    .await;
    assert_eq!(hits(&out).len(), 2);
    assert_eq!(out["truncated"], false);
}

#[tokio::test]
async fn log_search_finds_nothing_outside_its_grant() {
    let tree = log_tree();
    let (rt, _dir) = runtime();
    let skill = load_catalog(&rt, "log-search", Some(grant_dir(Path::new(&tree.root))));
    let escape = format!("{}/../{}/secret.log", tree.root, {
        Path::new(&tree.outside)
            .file_name()
            .expect("name")
            .to_string_lossy()
    });
    let out = run_ok(
        &rt,
        &skill,
        "log-search",
        &json!({"paths": [tree.outside, escape, format!("{}/missing.log", tree.root)], "pattern": "ERROR"}),
    )
    .await;
    assert_eq!(out["matches"], json!([]), "{out:#}");
    assert_eq!(out["files_searched"], 0);
    let reasons: Vec<&str> = out["skipped"]
        .as_array()
        .expect("skipped")
        .iter()
        .map(|s| s["reason"].as_str().expect("reason"))
        .collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(reasons[0].contains("not under a directory"), "{reasons:?}");
    assert!(reasons[1].contains("outside the granted"), "{reasons:?}");
    assert!(reasons[2].contains("does not exist"), "{reasons:?}");

    // Bad patterns and bounds are refused.
    let r = call(&rt, &skill, r#"{"pattern": "(unclosed"}"#).await;
    assert_eq!(error_code(&r), "invalid-input");
    assert!(r.error.expect("error").message.contains("pattern"));
    // The real manifest's schema bounds max_matches and context.
    let real = load_catalog(&rt, "log-search", None);
    for bad in [
        r#"{"pattern": "x", "max_matches": 1001}"#,
        r#"{"pattern": "x", "context": 11}"#,
        r#"{"pattern": "x", "paths": ["relative/dir"]}"#,
        r#"{"paths": ["/var/log"]}"#,
    ] {
        let r = call(&rt, &real, bad).await;
        assert_eq!(r.outcome, Outcome::InvalidInput, "{bad}");
    }
}

// ---------------------------------------------------------------- service-status

#[tokio::test]
async fn service_status_reports_systemd_absence_or_unit_states() {
    let (rt, _dir) = runtime();
    let skill = load_catalog(&rt, "service-status", None);
    let out = run_ok(
        &rt,
        &skill,
        "service-status",
        &json!({"units": ["ssh.service", "tend-surely-missing.service"]}),
    )
    .await;
    let units = out["units"].as_array().expect("units");
    assert_eq!(units.len(), 2);
    assert_eq!(units[0]["name"], "ssh.service");
    assert_eq!(units[1]["name"], "tend-surely-missing.service");
    if Path::new("/run/systemd/system").is_dir() {
        assert_eq!(out["available"], true, "{out:#}");
        assert_eq!(out["reason"], Value::Null);
        // systemd reports a unit it does not know as not-found: critical.
        assert_eq!(units[1]["load_state"], "not-found", "{out:#}");
        assert_eq!(units[1]["status"], "critical");
        assert_eq!(out["status"], "critical");
    } else {
        assert_eq!(out["available"], false, "{out:#}");
        let reason = out["reason"].as_str().expect("reason");
        assert!(reason.contains("systemd"), "{reason}");
        assert_eq!(out["status"], "unknown");
        for u in units {
            assert_eq!(u["status"], "unknown");
            assert_eq!(u["active_state"], Value::Null);
        }
    }
}

#[tokio::test]
async fn service_status_refuses_bad_unit_names() {
    let (rt, _dir) = runtime();
    let skill = load_catalog(&rt, "service-status", None);
    for bad in [
        r#"{"units": []}"#,
        r#"{"units": ["-H"]}"#,
        r#"{"units": ["a b.service"]}"#,
        r#"{"units": ["x.service", "x.service"]}"#,
        r#"{}"#,
    ] {
        let r = call(&rt, &skill, bad).await;
        assert_eq!(r.outcome, Outcome::InvalidInput, "{bad}");
    }
    // Past the schema (a test manifest has none), the skill checks names itself.
    let bare = load_catalog(&rt, "service-status", Some(diagnose_manifest("")));
    let r = call(&rt, &bare, r#"{"units": ["--now"]}"#).await;
    assert_eq!(error_code(&r), "invalid-input");
}

// ---------------------------------------------------------------- tcp-check

#[tokio::test]
async fn tcp_check_reaches_granted_listeners_only() {
    let open = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let open_addr = open.local_addr().expect("addr");
    // A port that was just free: closed once its listener is dropped.
    let closed_addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    // Listening, but not granted: the sandbox must refuse it.
    let ungranted = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let ungranted_addr = ungranted.local_addr().expect("addr");

    let (rt, _dir) = runtime();
    let skill = load_catalog(
        &rt,
        "tcp-check",
        Some(diagnose_manifest(&format!(
            "tcp = [\"{open_addr}\", \"{closed_addr}\"]"
        ))),
    );
    let out = run_ok(
        &rt,
        &skill,
        "tcp-check",
        &json!({
            "targets": [open_addr.to_string(), closed_addr.to_string(), ungranted_addr.to_string()],
            "timeout_ms": 2000,
        }),
    )
    .await;
    let t = out["targets"].as_array().expect("targets");
    assert_eq!(t.len(), 3);

    assert_eq!(t[0]["target"], json!(open_addr.to_string()));
    assert_eq!(t[0]["reachable"], true, "{out:#}");
    assert_eq!(t[0]["address"], json!(open_addr.to_string()));
    assert!(t[0]["latency_ms"].as_f64().expect("latency") >= 0.0);
    assert_eq!(t[0]["error"], Value::Null);

    assert_eq!(t[1]["reachable"], false, "{out:#}");
    assert_eq!(t[1]["latency_ms"], Value::Null);
    let closed_err = t[1]["error"].as_str().expect("error");
    assert!(
        closed_err.to_lowercase().contains("refused"),
        "{closed_err}"
    );

    assert_eq!(t[2]["reachable"], false, "{out:#}");
    let refused = t[2]["error"].as_str().expect("error");
    assert!(refused.contains("not granted"), "{refused}");

    assert_eq!(out["reachable"], 1);
    assert_eq!(out["unreachable"], 2);
    assert_eq!(out["status"], "warn");
    drop(open);
    drop(ungranted);
}

#[tokio::test]
async fn tcp_check_refuses_malformed_targets() {
    let (rt, _dir) = runtime();
    let skill = load_catalog(&rt, "tcp-check", None);
    for bad in [
        r#"{"targets": []}"#,
        r#"{"targets": ["no-port"]}"#,
        r#"{"targets": ["host:99999x"]}"#,
        r#"{"targets": ["127.0.0.1:22"], "timeout_ms": 0}"#,
    ] {
        let r = call(&rt, &skill, bad).await;
        assert_eq!(r.outcome, Outcome::InvalidInput, "{bad}");
    }
    let bare = load_catalog(&rt, "tcp-check", Some(diagnose_manifest("")));
    for bad in [
        r#"{"targets": ["127.0.0.1:0"]}"#,
        r#"{"targets": ["::1:22"]}"#,
    ] {
        let r = call(&rt, &bare, bad).await;
        assert_eq!(error_code(&r), "invalid-input", "{bad}");
    }
}

// ---------------------------------------------------------------- cert-expiry

/// A self-signed certificate valid for `days`, written as `<dir>/<name>`; its notAfter in
/// RFC 3339 as openssl reports it.
fn make_cert(dir: &Path, name: &str, days: u32) -> String {
    let keys = tempfile::tempdir().expect("tempdir");
    let cert = dir.join(name);
    let status = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days"])
        .arg(days.to_string())
        .args(["-subj", "/CN=tend-test/O=Tend"])
        .arg("-keyout")
        .arg(keys.path().join("key.pem"))
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run openssl (is it installed?)");
    assert!(status.success(), "openssl req failed");
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-enddate", "-dateopt", "iso_8601", "-in"])
        .arg(&cert)
        .output()
        .expect("run openssl x509");
    assert!(out.status.success(), "openssl x509 failed");
    // `notAfter=2026-12-04 15:38:57Z`
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .strip_prefix("notAfter=")
        .expect("notAfter=")
        .replace(' ', "T")
}

#[tokio::test]
async fn cert_expiry_reads_a_fresh_certificate_and_reports_garbage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let not_after = make_cert(dir.path(), "site.pem", 10);
    std::fs::write(
        dir.path().join("garbage.pem"),
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
    )
    .expect("write garbage");
    std::fs::create_dir(dir.path().join("nested")).expect("mkdir");
    std::fs::write(dir.path().join("nested/junk.crt"), b"\x00\x01 not DER").expect("write junk");
    std::fs::write(dir.path().join("notes.txt"), "not a certificate name").expect("write txt");

    let (rt, _dir) = runtime();
    let skill = load_catalog(&rt, "cert-expiry", Some(grant_dir(dir.path())));
    let root = dir.path().display().to_string();
    let out = run_ok(
        &rt,
        &skill,
        "cert-expiry",
        &json!({"paths": [root], "warn_days": 30, "critical_days": 5}),
    )
    .await;
    let certs = out["certificates"].as_array().expect("certificates");
    assert_eq!(certs.len(), 1, "{out:#}");
    let c = &certs[0];
    assert!(c["file"].as_str().expect("file").ends_with("/site.pem"));
    assert_eq!(c["index"], 0);
    assert!(
        c["subject"]
            .as_str()
            .expect("subject")
            .contains("CN=tend-test"),
        "{c}"
    );
    assert_eq!(c["subject"], c["issuer"], "self-signed");
    assert_eq!(c["not_after"], json!(not_after));
    let days = c["days_left"].as_i64().expect("days_left");
    assert!((9..=10).contains(&days), "days_left {days}");
    assert_eq!(c["expired"], false);
    assert_eq!(c["not_yet_valid"], false);
    assert_eq!(c["status"], "warn");
    assert_eq!(out["status"], "warn");
    assert_eq!(out["files_scanned"], 3, "site.pem, garbage.pem, junk.crt");

    let errors = out["errors"].as_array().expect("errors");
    assert_eq!(errors.len(), 2, "{errors:?}");
    let error_for = |suffix: &str| {
        errors
            .iter()
            .find(|e| e["file"].as_str().expect("file").ends_with(suffix))
            .unwrap_or_else(|| panic!("no error entry for {suffix}: {errors:?}"))
    };
    assert!(
        error_for("garbage.pem")["error"]
            .as_str()
            .expect("error")
            .contains("not a valid X.509 certificate")
    );
    assert!(
        error_for("junk.crt")["error"]
            .as_str()
            .expect("error")
            .contains("not a DER certificate")
    );

    // A critical threshold above the days left makes it critical.
    let out = run_ok(
        &rt,
        &skill,
        "cert-expiry",
        &json!({"paths": [format!("{}/site.pem", dir.path().display())], "warn_days": 30, "critical_days": 10}),
    )
    .await;
    assert_eq!(out["certificates"][0]["status"], "critical");
    assert_eq!(out["status"], "critical");
    assert_eq!(out["errors"], json!([]));
    // Below both thresholds: ok.
    let out = run_ok(
        &rt,
        &skill,
        "cert-expiry",
        &json!({"paths": [format!("{}/site.pem", dir.path().display())], "warn_days": 2, "critical_days": 1}),
    )
    .await;
    assert_eq!(out["status"], "ok");
    // Contradictory thresholds are refused.
    let r = call(&rt, &skill, r#"{"warn_days": 1, "critical_days": 10}"#).await;
    assert_eq!(error_code(&r), "invalid-input");
}

#[tokio::test]
async fn cert_expiry_reads_every_certificate_of_a_bundle_and_nothing_outside_its_grant() {
    let dir = tempfile::tempdir().expect("tempdir");
    let outside = tempfile::tempdir().expect("tempdir");
    let first = make_cert(dir.path(), "a.pem", 10);
    let second = make_cert(outside.path(), "b.pem", 400);
    let bundle = format!(
        "{}\n{}",
        std::fs::read_to_string(dir.path().join("a.pem")).expect("read a"),
        std::fs::read_to_string(outside.path().join("b.pem")).expect("read b"),
    );
    std::fs::write(dir.path().join("bundle.crt"), bundle).expect("write bundle");

    let (rt, _dir) = runtime();
    let skill = load_catalog(&rt, "cert-expiry", Some(grant_dir(dir.path())));
    let out = run_ok(
        &rt,
        &skill,
        "cert-expiry",
        &json!({"paths": [
            format!("{}/bundle.crt", dir.path().display()),
            outside.path().display().to_string(),
        ]}),
    )
    .await;
    let certs = out["certificates"].as_array().expect("certificates");
    let got: Vec<(Value, Value)> = certs
        .iter()
        .map(|c| (c["index"].clone(), c["not_after"].clone()))
        .collect();
    // Soonest expiry first.
    assert_eq!(
        got,
        vec![(json!(0), json!(first)), (json!(1), json!(second))]
    );
    assert_eq!(certs[1]["status"], "ok");
    // 9-10 days left against the defaults (warn 30, critical 7).
    assert_eq!(certs[0]["status"], "warn");
    assert_eq!(out["status"], "warn");
    let skipped = out["skipped"].as_array().expect("skipped");
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert!(
        skipped[0]["reason"]
            .as_str()
            .expect("reason")
            .contains("not under a directory"),
        "{skipped:?}"
    );
}
