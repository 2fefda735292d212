//! Alert intake from a real Prometheus Alertmanager (Debian's `prometheus-alertmanager`, which
//! `scripts/test` installs) on loopback: alerts posted to Alertmanager's API reach Tend's
//! webhook with Alertmanager's own payload, grouping, repeats and `resolved` notifications,
//! and become one incident per alert.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::agent::enroll;
use crate::orchestrator::{Api, Backend, Orch, setup};

/// A running Alertmanager, killed when dropped.
pub struct Alertmanager {
    child: Child,
    pub url: String,
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl Alertmanager {
    /// Alertmanager sending every group to Tend's webhook with `token`, at once and again every
    /// two seconds, resolved notifications included.
    pub async fn start(dir: &std::path::Path, tend: &str, token: &str) -> Alertmanager {
        Alertmanager::start_on(dir, tend, token, free_port()).await
    }

    /// [`Alertmanager::start`] on a port chosen beforehand.
    pub async fn start_on(
        dir: &std::path::Path,
        tend: &str,
        token: &str,
        port: u16,
    ) -> Alertmanager {
        let config = dir.join("alertmanager.yml");
        std::fs::write(
            &config,
            format!(
                "route:\n  receiver: tend\n  group_by: ['alertname', 'instance']\n  group_wait: 0s\n  group_interval: 1s\n  repeat_interval: 2s\nreceivers:\n  - name: tend\n    webhook_configs:\n      - url: {tend}/api/v1/alerts/alertmanager\n        send_resolved: true\n        http_config:\n          authorization:\n            credentials: {token}\n"
            ),
        )
        .expect("config");
        let child = Command::new("prometheus-alertmanager")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.path={}", dir.join("am-data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus-alertmanager (Debian's prometheus-alertmanager; scripts/test installs it)");
        let am = Alertmanager {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = http
                .get(format!("{}/-/ready", am.url))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return am;
            }
            assert!(Instant::now() < deadline, "alertmanager never became ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Post alerts to Alertmanager's own API, as Prometheus does.
    pub async fn post(&self, alerts: Value) {
        let resp = reqwest::Client::new()
            .post(format!("{}/api/v2/alerts", self.url))
            .json(&alerts)
            .send()
            .await
            .expect("post alerts");
        assert!(resp.status().is_success(), "{}", resp.status());
    }
}

pub fn now_rfc3339(offset_s: i64) -> String {
    let t = std::time::SystemTime::now()
        .checked_add(Duration::from_secs(offset_s.max(0) as u64))
        .and_then(|t| t.checked_sub(Duration::from_secs((-offset_s).max(0) as u64)))
        .expect("time");
    humantime::format_rfc3339_millis(t).to_string()
}

/// Wait until the incident with `alertname` (and `pred`) is there; returns it.
pub async fn until_incident(
    api: &Api,
    token: &str,
    alertname: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (s, list) = api
            .call("GET", "/api/v1/incidents", Some(token), None)
            .await;
        assert_eq!(s, 200, "{list}");
        if let Some(found) = list
            .as_array()
            .into_iter()
            .flatten()
            .find(|i| i["alertname"] == alertname && pred(i))
        {
            return found.clone();
        }
        assert!(Instant::now() < deadline, "no such incident: {list}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn alertmanager_notifications_become_one_incident_per_alert() {
    let (w, reg) = setup();
    let orch = Orch::start(&w, &reg, Backend::Sqlite, &[]);
    let api = Api::new(&orch);
    let admin = orch.admin.clone();
    let token = orch.token(&w, "alertmanager", "operator");
    let trust = w.path("trust.toml");
    enroll(
        &w,
        &orch,
        &reg,
        "web-1",
        trust.to_str().expect("trust"),
        &["--pool", "web"],
    );
    let am = Alertmanager::start(w.dir.path(), &orch.url, &token).await;

    // A firing alert about an enrolled host: one open incident targeting it.
    let disk = json!([{
        "labels": {"alertname": "DiskFull", "instance": "web-1:9100", "severity": "warning", "mountpoint": "/var/log"},
        "annotations": {"summary": "/var/log is 97% full"},
        "startsAt": now_rfc3339(-5),
        "generatorURL": "http://prometheus.example/graph",
    }]);
    am.post(disk.clone()).await;
    let open = until_incident(&api, &admin, "DiskFull", |i| i["state"] == "open").await;
    assert_eq!(open["target"], "web-1", "{open}");
    assert_eq!(open["alert_status"], "firing", "{open}");
    assert_eq!(
        open["annotations"]["summary"], "/var/log is 97% full",
        "{open}"
    );

    // Alertmanager repeats the notification (and Prometheus re-posts the alert): still one
    // incident, its count going up.
    am.post(disk.clone()).await;
    let repeated = until_incident(&api, &admin, "DiskFull", |i| {
        i["notifications"].as_i64().unwrap_or(0) >= 2
    })
    .await;
    assert_eq!(repeated["id"], open["id"], "{repeated}");
    let (_, list) = api
        .call("GET", "/api/v1/incidents", Some(&admin), None)
        .await;
    let disk_incidents = list
        .as_array()
        .expect("list")
        .iter()
        .filter(|i| i["alertname"] == "DiskFull")
        .count();
    assert_eq!(disk_incidents, 1, "{list}");

    // An alert about a host no agent is enrolled as is escalated, not dropped.
    am.post(json!([{
        "labels": {"alertname": "ServiceDown", "instance": "cache-9:9100"},
        "startsAt": now_rfc3339(-1),
    }]))
    .await;
    let escalated = until_incident(&api, &admin, "ServiceDown", |_| true).await;
    assert_eq!(escalated["state"], "escalated", "{escalated}");
    assert!(
        escalated["escalation"]
            .as_str()
            .unwrap_or_default()
            .contains("instance=cache-9:9100"),
        "{escalated}"
    );

    // The alert ends: Alertmanager sends `resolved`, and the incident is resolved.
    let mut ended = disk.clone();
    ended[0]["endsAt"] = json!(now_rfc3339(-1));
    am.post(ended).await;
    let resolved = until_incident(&api, &admin, "DiskFull", |i| i["state"] == "resolved").await;
    assert_eq!(resolved["id"], open["id"], "{resolved}");
    assert!(resolved["resolved_at"].is_string(), "{resolved}");

    // Each change is in the audit trail, under the token Alertmanager used.
    let (_, page) = api
        .call("GET", "/api/v1/audit?limit=1000", Some(&admin), None)
        .await;
    let events = page["events"].as_array().expect("events").clone();
    for action in ["incident.open", "incident.escalated", "incident.resolved"] {
        assert!(
            events
                .iter()
                .any(|e| e["action"] == action && e["actor"] == "alertmanager"),
            "{action}: {events:?}"
        );
    }
}

/// What Alertmanager retries on: no token, a token too weak, a malformed payload (400 naming
/// the field). None of them stores anything.
#[tokio::test(flavor = "multi_thread")]
async fn a_bad_notification_is_refused_naming_what_and_stores_nothing() {
    let (w, reg) = setup();
    let orch = Orch::start(&w, &reg, Backend::Sqlite, &[]);
    let api = Api::new(&orch);
    let token = orch.token(&w, "alertmanager", "operator");
    let viewer = orch.token(&w, "watcher", "viewer");
    let good = json!({
        "version": "4", "status": "firing", "receiver": "tend", "groupKey": "{}:{}",
        "truncatedAlerts": 0, "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
        "externalURL": "http://am", "alerts": [{
            "status": "firing", "labels": {"alertname": "X", "instance": "h:1"},
            "annotations": {}, "startsAt": "2026-11-29T00:00:00Z",
            "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "", "fingerprint": "0123abcd",
        }],
    });
    let post = |token: Option<String>, body: Value| {
        let api = api.clone();
        async move {
            api.call(
                "POST",
                "/api/v1/alerts/alertmanager",
                token.as_deref(),
                Some(body),
            )
            .await
        }
    };
    assert_eq!(post(None, good.clone()).await.0, 401);
    assert_eq!(post(Some(viewer.clone()), good.clone()).await.0, 403);
    let cases: Vec<(Value, &str)> = vec![
        (json!({"version": "3"}), ""),
        (
            {
                let mut v = good.clone();
                v["version"] = json!("3");
                v
            },
            "version",
        ),
        (
            {
                let mut v = good.clone();
                v["alerts"] = json!([]);
                v
            },
            "alerts",
        ),
        (
            {
                let mut v = good.clone();
                v["alerts"][0]["fingerprint"] = json!("../x");
                v
            },
            "alerts[0].fingerprint",
        ),
        (
            {
                let mut v = good.clone();
                v["alerts"][0]["status"] = json!("maybe");
                v
            },
            "alerts[0].status",
        ),
        (
            {
                let mut v = good.clone();
                v["alerts"][0]["startsAt"] = json!("yesterday");
                v
            },
            "alerts[0].startsAt",
        ),
        (
            {
                let mut v = good.clone();
                v["alerts"][0]["labels"] = json!({"instance": "h"});
                v
            },
            "alerts[0].labels.alertname",
        ),
    ];
    for (body, field) in cases {
        let (s, v) = post(Some(token.clone()), body).await;
        assert_eq!(s, 400, "{v}");
        assert!(v.to_string().contains(field), "{field}: {v}");
    }
    let (_, list) = api
        .call("GET", "/api/v1/incidents", Some(&token), None)
        .await;
    assert_eq!(list, json!([]), "a refused notification stored something");
    let (s, v) = post(Some(token.clone()), good).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["incidents"][0]["change"], "escalated", "{v}");
}

/// An alert that matches a healing policy opens an incident under it, and the policy's
/// diagnose skill runs at once on the alert's host through the one submit flow (trigger
/// `webhook`), its input filled from the alert's labels. An alert that matches no policy
/// opens an incident and runs nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_matching_healing_policy_diagnoses_the_alerts_host() {
    let (w, reg) = setup();
    let token = w.token("ci-look", "publisher");
    let wasm = w.signed_with(
        "acme-look",
        &crate::support::guest("trivial"),
        "[skill]\nname = \"acme-look\"\nversion = \"1.0.0\"\nkind = \"diagnose\"\nlevel = 0\n",
    );
    w.published(&reg.url, &wasm, &token);
    std::fs::write(
        w.path("healing.toml"),
        "[[policy]]\nname = \"disk-full\"\nmatch = { alertname = \"DiskFull\", severity = \"~warning|critical\" }\ndiagnose = [{ skill = \"acme-look\", input = { mount = \"{{labels.mountpoint}}\", why = \"{{annotations.summary}}\" } }]\n",
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
    let am_token = orch.token(&w, "alertmanager", "operator");
    let trust = w.path("trust.toml");
    enroll(
        &w,
        &orch,
        &reg,
        "web-1",
        trust.to_str().expect("trust"),
        &["--pool", "web"],
    );
    let _agent = crate::agent::AgentProc::start(&w, "web-1");
    let am = Alertmanager::start(w.dir.path(), &orch.url, &am_token).await;

    am.post(json!([
        {
            "labels": {"alertname": "DiskFull", "instance": "web-1:9100", "severity": "critical", "mountpoint": "/var/log"},
            "annotations": {"summary": "97% full"},
            "startsAt": now_rfc3339(-2),
        },
        {
            "labels": {"alertname": "DiskFull", "instance": "web-1:9100", "severity": "info", "mountpoint": "/srv"},
            "startsAt": now_rfc3339(-2),
        }
    ]))
    .await;
    let healing = until_incident(&api, &admin, "DiskFull", |i| {
        i["labels"]["mountpoint"] == "/var/log"
            && i["invocations"].as_array().is_some_and(|v| !v.is_empty())
    })
    .await;
    assert_eq!(healing["policy"], "disk-full", "{healing}");
    let id = healing["invocations"][0].as_str().expect("id").to_string();
    let done = api.wait_for(&admin, &id, "succeeded").await;
    assert_eq!(done["trigger"], "webhook", "{done}");
    assert_eq!(done["target"], "agent:web-1", "{done}");
    assert_eq!(done["requester"], "alertmanager", "{done}");
    assert_eq!(
        done["result"]["output"]["echo"]["mount"], "/var/log",
        "{done}"
    );
    assert_eq!(
        done["result"]["output"]["echo"]["why"], "97% full",
        "{done}"
    );
    // `info` does not match `~warning|critical`: an incident, no policy, nothing run.
    let other = until_incident(&api, &admin, "DiskFull", |i| {
        i["labels"]["mountpoint"] == "/srv"
    })
    .await;
    assert_eq!(other["policy"], Value::Null, "{other}");
    assert_eq!(other["invocations"], json!([]), "{other}");

    // A policy file with a typo is refused at start, naming the line and the key.
    std::fs::write(
        w.path("typo.toml"),
        "[[policy]]\nname = \"x\"\nmatch = { alertname = \"A\" }\nauto_hael = true\n",
    )
    .expect("typo");
    let o = w.tend(&[
        "orchestrator",
        "serve",
        "--registry",
        &reg.url,
        "--trust",
        "trust.toml",
        "--database",
        &format!("sqlite://{}", w.path("typo.db").display()),
        "--listen",
        "127.0.0.1:0",
        "--healing-policies",
        "typo.toml",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", crate::registry::err(&o));
    let err = crate::registry::err(&o);
    assert!(
        err.contains("typo.toml:4") && err.contains("auto_hael"),
        "{err}"
    );
}

/// The shipped examples hold: the alert rules pass `promtool check rules`, the healing
/// policies parse, every skill they name is in the catalog, and each input, filled from the
/// labels its rule's alerts carry — and a repair's, from what its diagnose skills say when they
/// run on this machine — is one that skill's input schema accepts.
#[tokio::test]
async fn the_example_rules_and_policies_are_valid_together() {
    let root = crate::support::repo_root();
    let rules = root.join("examples/prometheus/tend-alerts.yml");
    let o = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .expect("promtool (Debian's prometheus; scripts/test installs it)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let policies = tend_orchestrator::healing::load(&root.join("examples/healing/policies.toml"))
        .expect("the example policies parse");
    // Labels as the example rules' alerts carry them.
    let alerts: Vec<std::collections::BTreeMap<String, String>> = [
        vec![
            ("alertname", "ServiceDown"),
            ("name", "nginx.service"),
            ("severity", "critical"),
        ],
        vec![
            ("alertname", "DiskFull"),
            ("mountpoint", "/var/log"),
            ("severity", "warning"),
        ],
        vec![("alertname", "HighCPU"), ("severity", "warning")],
        vec![
            ("alertname", "ConnectionTimeout"),
            ("target", "db-1:5432"),
            ("severity", "warning"),
        ],
    ]
    .into_iter()
    .map(|pairs| {
        pairs
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .chain([("instance".to_string(), "web-1:9100".to_string())])
            .collect()
    })
    .collect();
    for labels in &alerts {
        let p = tend_orchestrator::healing::matching(&policies.policies, labels)
            .unwrap_or_else(|| panic!("no example policy matches {labels:?}"));
        // A repair that reads the diagnosis gets the real one: its diagnose skills run here.
        let mut diagnosis = std::collections::BTreeMap::new();
        let reads_diagnosis =
            p.policy.repair.as_ref().is_some_and(|r| {
                toml::to_string(&r.input).is_ok_and(|t| t.contains("{{diagnosis."))
            });
        if reads_diagnosis {
            let (rt, _dir) = crate::support::runtime();
            for call in &p.policy.diagnose {
                let skill = crate::support::load_catalog(&rt, &call.skill, None);
                let input = tend_orchestrator::healing::fill(
                    &call.input,
                    &tend_orchestrator::healing::Facts {
                        labels,
                        annotations: &Default::default(),
                        diagnosis: &Default::default(),
                    },
                );
                let report = crate::support::call(&rt, &skill, &input.to_string()).await;
                let output = report
                    .output
                    .unwrap_or_else(|| panic!("{} ran: {:?}", call.skill, report.error));
                diagnosis.insert(call.skill.clone(), output);
            }
        }
        let calls = p.policy.diagnose.iter().chain(p.policy.repair.as_ref());
        for call in calls {
            let text =
                std::fs::read_to_string(root.join(format!("skills/{}/skill.toml", call.skill)))
                    .unwrap_or_else(|e| panic!("{}: not in the catalog ({e})", call.skill));
            let manifest = tend_manifest::Manifest::parse(&text, &call.skill).expect("manifest");
            let input = tend_orchestrator::healing::fill(
                &call.input,
                &tend_orchestrator::healing::Facts {
                    labels,
                    annotations: &Default::default(),
                    diagnosis: &diagnosis,
                },
            );
            if let Some(section) = manifest.input {
                let validator = jsonschema::validator_for(&section.schema).expect("schema");
                let errors: Vec<String> = validator
                    .iter_errors(&input)
                    .map(|e| e.to_string())
                    .collect();
                assert!(
                    errors.is_empty(),
                    "{} {}: {input}: {errors:?}",
                    p.policy.name,
                    call.skill
                );
            }
        }
    }
}

/// An alert that fires again after it was resolved is a new episode: its incident opens again
/// (with the labels of the new firing), rather than staying resolved while the alert burns.
#[tokio::test(flavor = "multi_thread")]
async fn an_alert_firing_again_after_it_resolved_reopens_its_incident() {
    let (w, reg) = setup();
    let orch = Orch::start(&w, &reg, Backend::Sqlite, &[]);
    let api = Api::new(&orch);
    let token = orch.token(&w, "alertmanager", "operator");
    let trust = w.path("trust.toml");
    enroll(
        &w,
        &orch,
        &reg,
        "web-1",
        trust.to_str().expect("trust"),
        &["--pool", "web"],
    );
    let notification = |status: &str, summary: &str| {
        json!({
            "version": "4", "status": status, "receiver": "tend", "groupKey": "{}:{}",
            "alerts": [{
                "status": status, "labels": {"alertname": "DiskFull", "instance": "web-1:9100"},
                "annotations": {"summary": summary}, "startsAt": now_rfc3339(-1),
                "fingerprint": "00ff00ff00ff00ff",
            }],
        })
    };
    let send = |body: Value| {
        let (api, token) = (api.clone(), token.clone());
        async move {
            let (s, v) = api
                .call(
                    "POST",
                    "/api/v1/alerts/alertmanager",
                    Some(&token),
                    Some(body),
                )
                .await;
            assert_eq!(s, 200, "{v}");
            v["incidents"][0].clone()
        }
    };
    let first = send(notification("firing", "first")).await;
    assert_eq!(first["change"], "opened", "{first}");
    let gone = send(notification("resolved", "first")).await;
    assert_eq!(
        (gone["change"].as_str(), gone["state"].as_str()),
        (Some("resolved"), Some("resolved"))
    );
    let again = send(notification("firing", "second")).await;
    assert_eq!(again["id"], first["id"], "{again}");
    assert_eq!(
        (again["change"].as_str(), again["state"].as_str()),
        (Some("reopened"), Some("open")),
        "{again}"
    );
    let (_, shown) = api
        .call(
            "GET",
            &format!("/api/v1/incidents/{}", first["id"].as_str().expect("id")),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(shown["state"], "open", "{shown}");
    assert_eq!(shown["resolved_at"], Value::Null, "{shown}");
    assert_eq!(shown["annotations"]["summary"], "second", "{shown}");
    assert_eq!(shown["notifications"], 3, "{shown}");
}
