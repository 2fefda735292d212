//! The catalog in `skills/`: every skill is built once per run and invoked through the runtime
//! with real inputs on this machine; outputs are checked against their `[output.schema]` and
//! against facts read independently by the test.

mod diagnose;
mod languages;
mod repair;

use serde_json::json;
use tend_runtime::Outcome;

use crate::support::*;

#[tokio::test]
async fn disk_usage_agrees_with_statvfs() {
    let (rt, _dir) = runtime();
    let skill = load_catalog(&rt, "disk-usage", None);
    let r = call(
        &rt,
        &skill,
        r#"{"warn_percent": 0, "critical_percent": 100}"#,
    )
    .await;
    assert_eq!(r.outcome, Outcome::Ok, "{:?}", r.error);
    let out = r.output.expect("output");
    assert_output_schema("disk-usage", &out);
    let root = out["filesystems"]
        .as_array()
        .expect("list")
        .iter()
        .find(|f| f["mount_point"] == "/")
        .expect("/ is listed");
    let st = rustix::fs::statvfs("/").expect("statvfs");
    assert_eq!(root["total_bytes"], json!(st.f_blocks * st.f_frsize));
    assert_eq!(root["inodes_total"], json!(st.f_files));
    // warn at 0 %: every filesystem with anything on it is at least `warn`.
    assert_ne!(out["status"], "ok");
}

#[tokio::test]
async fn disk_usage_refuses_input_outside_its_schema() {
    let (rt, _dir) = runtime();
    let skill = load_catalog(&rt, "disk-usage", None);
    for input in [
        r#"{"warn_percent": "high"}"#,
        r#"{"warn_percent": 150}"#,
        r#"{"surprise": 1}"#,
    ] {
        let r = call(&rt, &skill, input).await;
        assert_eq!(r.outcome, Outcome::InvalidInput, "{input}");
        assert!(
            r.error.expect("error").message.contains("input schema"),
            "{input}"
        );
    }
}
