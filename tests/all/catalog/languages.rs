//! Catalog skills written in Python (`load-average`) and JavaScript (`http-check`), tested like
//! the rest: real inputs, output schema, facts checked independently.

use std::io::{Read, Write};
use std::net::TcpListener;

use serde_json::json;
use tend_runtime::Outcome;

use crate::support::*;

#[tokio::test]
async fn load_average_in_python_reports_this_machine() {
    let (rt, _dir) = runtime();
    let skill = load_catalog(&rt, "load-average", None);
    let r = call(
        &rt,
        &skill,
        r#"{"warn_per_cpu": 1.0, "critical_per_cpu": 2.0}"#,
    )
    .await;
    assert_eq!(r.outcome, Outcome::Ok, "{:?} {}", r.error, r.stderr);
    let out = r.output.expect("output");
    assert_output_schema("load-average", &out);
    let cpus = std::thread::available_parallelism().expect("cpus").get() as u64;
    assert_eq!(out["cpu_count"], json!(cpus));
    // The 15-minute average barely moves in a second: compare with /proc/loadavg.
    let proc_15: f64 = std::fs::read_to_string("/proc/loadavg")
        .expect("loadavg")
        .split_whitespace()
        .nth(2)
        .and_then(|v| v.parse().ok())
        .expect("15m");
    let skill_15 = out["load"]["15m"].as_f64().expect("15m");
    assert!(
        (skill_15 - proc_15).abs() < 0.2,
        "skill {skill_15} vs /proc {proc_15}"
    );
    let per_cpu = out["per_cpu"]["15m"].as_f64().expect("per cpu");
    assert!((per_cpu - skill_15 / cpus as f64).abs() < 0.001);
}

#[tokio::test]
async fn load_average_errors_are_skill_errors() {
    let (rt, _dir) = runtime();
    let skill = load_catalog(&rt, "load-average", None);
    let r = call(
        &rt,
        &skill,
        r#"{"warn_per_cpu": 3.0, "critical_per_cpu": 2.0}"#,
    )
    .await;
    assert_eq!(r.outcome, Outcome::SkillError);
    assert_eq!(r.error.expect("error").code, "invalid-input");
}

/// A loopback HTTP server answering every request with 200 and `healthy`; returns its port.
fn http_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\nconnection: close\r\n\r\nhealthy",
            );
        }
    });
    port
}

#[tokio::test]
async fn http_check_in_javascript_checks_granted_endpoints_only() {
    let (rt, _dir) = runtime();
    let port = http_server();
    let (_, real) = catalog_skill("http-check");
    let mut m = real.clone();
    m.capabilities.http = vec![format!("http://127.0.0.1:{port}")];
    let skill = load_catalog(&rt, "http-check", Some(m));
    let input = json!({"targets": [
        {"url": format!("http://127.0.0.1:{port}/health"), "body_contains": "healthy"},
        {"url": format!("http://127.0.0.1:{port}/health"), "body_contains": "sick"},
        {"url": format!("http://127.0.0.1:{}/", port.wrapping_add(1))},
        {"url": "http://169.254.169.254/latest/meta-data/"},
    ], "timeout_ms": 2000});
    let r = call(&rt, &skill, &input.to_string()).await;
    assert_eq!(r.outcome, Outcome::Ok, "{:?} {}", r.error, r.stderr);
    let out = r.output.expect("output");
    assert_output_schema("http-check", &out);
    let results = out["results"].as_array().expect("results");
    assert_eq!(results[0]["ok"], true, "{out:#}");
    assert_eq!(results[0]["status"], 200);
    assert_eq!(results[0]["body_matched"], true);
    assert_eq!(results[1]["ok"], false);
    assert_eq!(results[1]["body_matched"], false);
    for refused in &results[2..] {
        assert_eq!(refused["ok"], false, "{refused}");
        assert!(refused["error"].is_string());
    }
    assert_eq!(out["status"], "failing");
    assert_eq!(
        r.notes
            .iter()
            .filter(|n| n.contains("origin not granted"))
            .count(),
        2,
        "{:?}",
        r.notes
    );
}
