//! Attacks on the self-healing loop: an orchestrator killed between its steps.

use serde_json::json;

use crate::alerts::until_incident;
use crate::healing::{Scene, Served, alert, logs, policy, remaining, steps};

/// Killed after the repair was submitted but before it was counted: on restart the loop
/// follows the repair (not submitting it again) and counts it, so the circuit breaker (one
/// repair an hour) still stops the next one. Without the count, a crash at the wrong moment
/// would let the policy repair more often than it allows.
#[tokio::test(flavor = "multi_thread")]
async fn a_repair_found_after_a_lost_step_still_counts_for_the_circuit_breaker() {
    let scene = Scene::new().await;
    let w = &scene.w;
    let text = format!(
        "{}{}",
        scene.channels(),
        policy("disk-full", "DiskFull", "max_repairs_per_hour = 1")
    );
    let Served {
        orch,
        agents: _agents,
        api,
        admin,
        am,
        ..
    } = scene
        .serve(&text, &[("web-1", true), ("web-2", true)])
        .await;
    let dir = logs(w, "web-1");
    am.post(json!([alert("DiskFull", "web-1", &dir, json!({}))]))
        .await;
    let inc = until_incident(&api, &admin, "DiskFull", |i| i["stage"] == "verifying").await;
    let id = inc["id"].as_str().expect("id").to_string();
    // As if killed after the submission, before the repair was counted and the step saved.
    crate::orchestrator::tamper(&orch.database, "DELETE FROM healing_repairs");
    crate::orchestrator::tamper(
        &orch.database,
        &format!(
            "UPDATE incidents SET stage = 'repair', repair_id = NULL, attempts = 0, due_ms = NULL, verify_until_ms = NULL WHERE id = '{id}'"
        ),
    );
    until_incident(&api, &admin, "DiskFull", |i| {
        i["id"] == id.as_str()
            && i["stage"] == "verifying"
            && steps(i).iter().filter(|s| *s == "repair").count() == 2
    })
    .await;
    let dir2 = logs(w, "web-2");
    am.post(json!([alert("DiskFull", "web-2", &dir2, json!({}))]))
        .await;
    let second = until_incident(&api, &admin, "DiskFull", |i| {
        i["target"] == "web-2" && i["stage"] == "done"
    })
    .await;
    assert_eq!(second["outcome"], "escalated", "{second}");
    assert!(
        second["escalation"]
            .as_str()
            .is_some_and(|e| e.contains("circuit breaker")),
        "{second}"
    );
}

/// An alert whose label climbs out of the directory the repair may write to: the filled
/// input is still held to the skill's grant, so nothing outside it is deleted, even under
/// auto_heal with no person asked.
#[tokio::test(flavor = "multi_thread")]
async fn an_alert_label_cannot_point_a_repair_outside_its_grant() {
    let scene = Scene::new().await;
    let w = &scene.w;
    let text = format!(
        "{}{}",
        scene.channels(),
        policy("disk-full", "DiskFull", "")
    );
    let Served {
        orch: _orch,
        api,
        admin,
        am,
        agents: _agents,
        ..
    } = scene.serve(&text, &[("web-1", true)]).await;
    // Old logs outside the grant (the scratch log root), reached through `..`.
    let victim = logs(w, "web-1").join("..").join("..").join("victim");
    std::fs::create_dir_all(&victim).expect("victim");
    for file in ["app.log.1", "app.log.2.gz"] {
        let path = victim.join(file);
        std::fs::write(&path, b"precious").expect("write");
        std::fs::File::options()
            .write(true)
            .open(&path)
            .expect("open")
            .set_modified(
                std::time::SystemTime::now() - std::time::Duration::from_secs(86_400 * 30),
            )
            .expect("mtime");
    }
    let fired = alert("DiskFull", "web-1", &victim, json!({}));
    am.post(json!([fired])).await;
    let inc = until_incident(&api, &admin, "DiskFull", |i| {
        i["stage"] == "done" || i["stage"] == "verifying"
    })
    .await;
    assert_ne!(inc["outcome"], "healed", "{inc}");
    assert_eq!(
        remaining(&victim),
        vec!["app.log.1".to_string(), "app.log.2.gz".to_string()],
        "nothing outside the grant is deleted: {inc}"
    );
}
