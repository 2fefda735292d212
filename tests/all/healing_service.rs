//! The second demo, for real: a stopped service is noticed by Prometheus, and its restart (L2)
//! waits for a person, who approves it with their own key through `tend approve`.
//!
//! What is real: the test service (a `prometheus-node-exporter` process on its own loopback
//! port, scraped by Prometheus as job `testsvc`), its stop (the process is killed), Prometheus'
//! `up == 0` rule, Alertmanager, the orchestrator and agent processes, the catalog's
//! tcp-check (diagnosis: the service's port refuses connections) and service-restart, the
//! approver's own ed25519 key (made with `tend key gen`, registered with `tend approver add`),
//! and `resolved` coming back from Prometheus once the service answers again.
//!
//! What stands in: systemd, which this machine does not run (PID 1 is not systemd). A shell
//! script takes `/usr/bin/systemctl`'s place for exactly one unit, `caddy.service`: `restart`
//! starts the test service again (detached, with a pidfile) and `is-active` asks the real
//! process. service-restart is re-signed with exec grants on that script (the same literal
//! arguments as its own manifest's grants on systemctl), as tests/all/catalog/repair.rs does;
//! `service-status` would ask systemd, so the diagnosis is tcp-check on the service's port.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

use crate::agent::{AgentProc, enroll};
use crate::alerts::{Alertmanager, free_port, until_incident};
use crate::healing::{Receiver, millis, now_millis, spawn, steps, until_ready};
use crate::orchestrator::{Api, Backend, Orch, setup};
use crate::registry::{Registry, World, err};
use crate::support::tend;

/// The unit the stand-in manages: one of service-restart's allowlisted units.
const UNIT: &str = "caddy.service";

/// The test service: a node_exporter with no collectors (Go and process metrics only) on
/// `port` — enough for Prometheus' `up` to be real.
fn service_command(port: u16) -> String {
    format!(
        "/usr/bin/prometheus-node-exporter --web.listen-address=127.0.0.1:{port} --collector.disable-defaults"
    )
}

/// The stand-in `systemctl` for [`UNIT`] and the file that records every call to it.
struct StandIn {
    script: PathBuf,
    calls: PathBuf,
    pidfile: PathBuf,
}

impl StandIn {
    fn write(dir: &Path, port: u16) -> StandIn {
        let script = dir.join("systemctl");
        let calls = dir.join("systemctl-calls.txt");
        let pidfile = dir.join("testsvc.pid");
        std::fs::write(
            &script,
            format!(
                r#"#!/bin/sh
# Stands in for systemctl (this machine runs no systemd), for {UNIT} only.
printf '%s\n' "$*" >> '{calls}'
[ "$2" = '{UNIT}' ] || {{ echo "Unit $2 not found." >&2; exit 5; }}
alive() {{ [ -f '{pid}' ] && read -r pid < '{pid}' && kill -0 "$pid" 2>/dev/null; }}
case "$1" in
restart)
  if alive; then kill "$pid"; fi
  /usr/bin/setsid {cmd} </dev/null >/dev/null 2>&1 &
  echo $! > '{pid}'
  exit 0 ;;
is-active)
  if alive; then echo active; exit 0; fi
  echo inactive; exit 3 ;;
esac
echo "unknown command $1" >&2
exit 1
"#,
                calls = calls.display(),
                pid = pidfile.display(),
                cmd = service_command(port),
            ),
        )
        .expect("stand-in");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        StandIn {
            script,
            calls,
            pidfile,
        }
    }

    fn calls(&self) -> String {
        std::fs::read_to_string(&self.calls).unwrap_or_default()
    }
}

impl Drop for StandIn {
    /// Stops the service the stand-in restarted (it is nobody's child).
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.pidfile) {
            let _ = std::process::Command::new("kill").arg(pid.trim()).status();
        }
    }
}

/// acme-tcp-check granted the service's port, and acme-service-restart granted the stand-in
/// for [`UNIT`] (literal arguments, as its own grants on systemctl), both signed by the test
/// publisher the agent trusts.
fn publish(w: &World, reg: &Registry, port: u16, systemctl: &Path) {
    let token = w.token("ci-service", "publisher");
    let root = crate::support::repo_root().join("skills");
    let s = systemctl.display().to_string();
    for skill in ["tcp-check", "service-restart"] {
        let text = std::fs::read_to_string(root.join(skill).join("skill.toml")).expect("manifest");
        let mut text = text.replace(
            &format!("name = \"{skill}\""),
            &format!("name = \"acme-{skill}\""),
        );
        if skill == "tcp-check" {
            text = text.replace(
                "tcp = [\"127.0.0.1:22\"]",
                &format!("tcp = [\"127.0.0.1:{port}\"]"),
            );
        } else {
            let start = text.find("exec = [").expect("exec grants");
            let end = start + text[start..].find("\n]\n").expect("end of exec") + 3;
            text.replace_range(
                start..end,
                &format!(
                    "exec = [\n    {{ program = {s:?}, args = [\"restart\", \"{UNIT}\"] }},\n    {{ program = {s:?}, args = [\"is-active\", \"{UNIT}\"] }},\n]\n"
                ),
            );
            text = text.replace(
                "services = { restart = [\"nginx.service\", \"apache2.service\", \"caddy.service\", \"haproxy.service\"] }",
                &format!("services = {{ restart = [\"{UNIT}\"] }}"),
            );
            assert!(
                !text.contains("program = \"/usr/bin/systemctl\"")
                    && text.contains("restart = [\"caddy"),
                "the test copy grants the stand-in alone: {text}"
            );
        }
        let component = root
            .join(skill)
            .join("dist")
            .join(format!("{skill}-0.1.0.wasm"));
        let wasm = w.signed_with(&format!("acme-{skill}"), &component, &text);
        w.published(&reg.url, &wasm, &token);
    }
}

/// `tend ARGS` as a person at a terminal runs it, with `env` (server, token, key).
fn person(w: &World, args: &[&str], env: &[(&str, &str)]) -> Output {
    tend()
        .current_dir(w.dir.path())
        .env("TEND_CONFIG", w.path("config/tend/config.toml"))
        .env_remove("TEND_URL")
        .env_remove("TEND_TOKEN")
        .env_remove("TEND_KEY")
        .env_remove("TEND_CONTEXT")
        .envs(env.iter().copied())
        .args(args)
        .output()
        .expect("run tend")
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Prometheus' current value of `up{job="testsvc"}`, if it has one.
async fn up(prometheus: &str) -> Option<String> {
    let v: Value = reqwest::Client::new()
        .get(format!("{prometheus}/api/v1/query"))
        .query(&[("query", "up{job=\"testsvc\"}")])
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    v["data"]["result"][0]["value"][1]
        .as_str()
        .map(str::to_string)
}

async fn until_up(prometheus: &str, want: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while up(prometheus).await.as_deref() != Some(want) {
        assert!(
            std::time::Instant::now() < deadline,
            "Prometheus never saw up{{job=\"testsvc\"}} == {want}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

fn answers(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// A stopped service: Prometheus' `up == 0` fires `ServiceDown`, Alertmanager sends it to Tend,
/// tcp-check finds the port refusing connections, and service-restart (L2) is planned and then
/// waits: nothing is restarted, and the escalation channel is told the `tend approve` command.
/// The identity that opened the incident (the repair's requester) cannot approve it; a person
/// with their own registered key can, through `tend approve`. The agent restarts the service,
/// Prometheus sees it up, Alertmanager sends `resolved`, and the incident is healed. Its
/// timeline is printed (docs/self-healing.md quotes it).
#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_service_is_restarted_once_a_person_approves() {
    let (w, reg) = setup();
    let rx = Receiver::start().await;
    let svc_port = free_port();
    let am_port = free_port();
    let stand_in = StandIn::write(w.dir.path(), svc_port);
    publish(&w, &reg, svc_port, &stand_in.script);

    // Rosa, the person who approves, makes her own key; the agent's trust policy lists it.
    w.ok(&["key", "gen", "--out", "rosa.key"]);
    let shown: Value =
        serde_json::from_slice(&w.ok(&["key", "show", "rosa.key", "--json"]).stdout).expect("json");
    let trust = w.path("trust.toml");
    let mut policy_text = std::fs::read_to_string(&trust).expect("trust");
    policy_text.push_str(&format!(
        "\n[[approvers]]\nname = \"rosa\"\nkey = \"{}\"\n",
        shown["public_key"].as_str().expect("public key")
    ));
    std::fs::write(&trust, policy_text).expect("trust");

    std::fs::write(
        w.path("healing.toml"),
        format!(
            r#"[alertmanager]
url = "http://127.0.0.1:{am_port}"
silence = true

[[channel]]
name = "hook"
kind = "webhook"
url = "{rx}/hook"

[[channel]]
name = "people"
kind = "webhook"
url = "{rx}/people"

[[policy]]
name = "service-down"
match = {{ alertname = "ServiceDown", job = "testsvc" }}
diagnose = [{{ skill = "acme-tcp-check", input = {{ targets = ["{{{{labels.instance}}}}"], timeout_ms = 1000 }} }}]
repair = {{ skill = "acme-service-restart", input = {{ unit = "{{{{labels.unit}}}}", systemctl = {script:?} }} }}
max_retries = 0
verify = "resolved"
verify_timeout = "2m"
notify = ["hook"]
escalate = ["people"]
"#,
            rx = rx.url,
            script = stand_in.script.display().to_string(),
        ),
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
            "tcp",
            "--allow-capability",
            "exec",
            "--allow-capability",
            "services",
        ],
    );
    let _agent = AgentProc::start(&w, "web-1");
    let _am = Alertmanager::start_on(w.dir.path(), &orch.url, &am_token, am_port).await;

    // The service runs (as its init system would have started it at boot).
    let args: Vec<String> = service_command(svc_port)
        .split_whitespace()
        .skip(1)
        .map(String::from)
        .collect();
    let mut service = spawn(
        "prometheus-node-exporter",
        &args,
        "Debian's prometheus-node-exporter",
    );
    std::fs::write(&stand_in.pidfile, service.0.id().to_string()).expect("pidfile");
    until_ready(
        &format!("http://127.0.0.1:{svc_port}/metrics"),
        "the test service",
    )
    .await;

    std::fs::write(
        w.path("rules.yml"),
        "groups:\n  - name: tend-demo-service\n    rules:\n      - alert: ServiceDown\n        expr: up{job=\"testsvc\"} == 0\n        for: 1s\n        labels:\n          severity: critical\n        annotations:\n          summary: \"{{ $labels.unit }} on {{ $labels.host }} does not answer\"\n",
    )
    .expect("rules");
    std::fs::write(
        w.path("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [{:?}]\nalerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['127.0.0.1:{am_port}']\nscrape_configs:\n  - job_name: testsvc\n    scrape_timeout: 500ms\n    static_configs:\n      - targets: ['127.0.0.1:{svc_port}']\n        labels:\n          host: web-1\n          unit: {UNIT}\n",
            w.path("rules.yml").display().to_string()
        ),
    )
    .expect("prometheus.yml");
    let prom_port = free_port();
    let prometheus = format!("http://127.0.0.1:{prom_port}");
    let _prometheus = spawn(
        "prometheus",
        &[
            format!("--config.file={}", w.path("prometheus.yml").display()),
            format!("--storage.tsdb.path={}", w.path("tsdb").display()),
            format!("--web.listen-address=127.0.0.1:{prom_port}"),
            "--rules.alert.resend-delay=1s".into(),
        ],
        "Debian's prometheus",
    );
    until_ready(&format!("{prometheus}/-/ready"), "prometheus").await;
    until_up(&prometheus, "1").await;

    // Stop the service, for real.
    let stopped_at = now_millis();
    service.0.kill().expect("stop the service");
    service.0.wait().expect("stopped");
    assert!(!answers(svc_port));

    // Diagnosed, planned, and waiting for a person: nothing restarted yet.
    let waiting = until_incident(&api, &admin, "ServiceDown", |i| {
        steps(i).contains(&"approval".to_string())
    })
    .await;
    assert_eq!(waiting["target"], "web-1", "{waiting}");
    assert_eq!(waiting["stage"], "repairing", "{waiting}");
    assert_eq!(waiting["labels"]["unit"], UNIT, "{waiting}");
    let id = waiting["id"].as_str().expect("id").to_string();
    let repair_id = waiting["repair"].as_str().expect("repair").to_string();
    let repair = api.get(&admin, &repair_id).await;
    assert_eq!(repair["state"], "pending_approval", "{repair}");
    assert_eq!(repair["level"], 2, "{repair}");
    assert_eq!(repair["approvals_required"], 1, "{repair}");
    assert_eq!(repair["requester"], "alertmanager", "{repair}");
    let script = stand_in.script.display().to_string();
    assert_eq!(
        repair["plan"]["output"]["command"],
        serde_json::json!([script, "restart", UNIT]),
        "the plan says exactly what would run: {repair}"
    );
    let diagnosed = waiting["story"]
        .as_array()
        .expect("story")
        .iter()
        .find(|s| s["step"] == "diagnosed")
        .expect("diagnosed")
        .clone();
    assert!(
        diagnosed.to_string().contains("critical"),
        "tcp-check found the port refusing connections: {diagnosed}"
    );
    assert_eq!(stand_in.calls(), "", "nothing ran before a person approved");
    assert!(!answers(svc_port), "the service is still down");
    assert_eq!(up(&prometheus).await.as_deref(), Some("0"));

    // The person is told what to run.
    rx.until("the approver is asked", |r| {
        r.bodies("people")
            .iter()
            .any(|b| b["incident"] == id.as_str() && b["event"] == "approval_needed")
    })
    .await;
    let asked = rx
        .bodies("people")
        .into_iter()
        .find(|b| b["incident"] == id.as_str() && b["event"] == "approval_needed")
        .expect("asked");
    let told = asked["text"].as_str().expect("text").to_string();
    let command = format!("tend approve {repair_id}");
    assert!(told.contains(&command), "{told}");

    // The identity that opened the incident requested the repair: it cannot approve it, even
    // holding the approver role and a key.
    let as_admin = [
        ("TEND_URL", orch.url.as_str()),
        ("TEND_TOKEN", admin.as_str()),
    ];
    let make = |name: &str| {
        let o = person(
            &w,
            &[
                "token",
                "create",
                "--name",
                name,
                "--role",
                "approver",
                "--expires",
                "1h",
            ],
            &as_admin,
        );
        assert_eq!(o.status.code(), Some(0), "{}", err(&o));
        text(&o).trim().to_string()
    };
    let key = w.path("rosa.key").display().to_string();
    let o = person(&w, &["approver", "add", "rosa", "--key", &key], &as_admin);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let itself = make("alertmanager");
    let o = person(
        &w,
        &["approve", &repair_id, "--yes"],
        &[
            ("TEND_URL", orch.url.as_str()),
            ("TEND_TOKEN", itself.as_str()),
            ("TEND_KEY", key.as_str()),
        ],
    );
    assert_ne!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        err(&o).contains("someone other than the requester"),
        "{}",
        err(&o)
    );
    assert_eq!(
        api.get(&admin, &repair_id).await["state"],
        "pending_approval"
    );
    assert_eq!(stand_in.calls(), "");

    // Rosa runs the command she was told, with her own key.
    let rosa = make("rosa");
    let mut argv: Vec<&str> = command.split_whitespace().skip(1).collect();
    argv.push("--yes");
    let approved_at = now_millis();
    let o = person(
        &w,
        &argv,
        &[
            ("TEND_URL", orch.url.as_str()),
            ("TEND_TOKEN", rosa.as_str()),
            ("TEND_KEY", key.as_str()),
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert!(text(&o).contains("approved (1 of 1)"), "{}", text(&o));

    // The agent restarts it, Prometheus sees it up, Alertmanager says resolved: healed.
    let healed = until_incident(&api, &admin, "ServiceDown", |i| i["stage"] == "done").await;
    assert_eq!(healed["outcome"], "healed", "{healed}");
    assert_eq!(healed["state"], "resolved", "{healed}");
    assert_eq!(healed["attempts"], 1, "{healed}");
    assert_eq!(
        stand_in.calls(),
        format!("restart {UNIT}\nis-active {UNIT}\n")
    );
    assert!(answers(svc_port), "the service is back");
    assert_eq!(up(&prometheus).await.as_deref(), Some("1"));
    let done = api.get(&admin, &repair_id).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["approvals"][0]["approver"], "rosa", "{done}");
    assert_eq!(done["result"]["output"]["state"], "active", "{done}");
    assert_eq!(done["result"]["output"]["success"], true, "{done}");
    // The story: the diagnosis, the plan shown with the approval request, who approved, the
    // repair's result, and the proof (Alertmanager's word that the alert resolved).
    let story = steps(&healed);
    let mut wanted = [
        "diagnosing",
        "diagnosed",
        "repair",
        "approval",
        "repaired",
        "healed",
    ]
    .into_iter()
    .peekable();
    for step in &story {
        if wanted.peek() == Some(&step.as_str()) {
            wanted.next();
        }
    }
    assert_eq!(wanted.next(), None, "{story:?}");
    assert_eq!(
        story.last().map(String::as_str),
        Some("healed"),
        "{story:?}"
    );
    let entry = |name: &str| {
        healed["story"]
            .as_array()
            .expect("story")
            .iter()
            .find(|s| s["step"] == name)
            .expect("step")
            .clone()
    };
    assert_eq!(
        entry("approval")["data"]["plan"]["command"],
        serde_json::json!([script, "restart", UNIT]),
        "{healed}"
    );
    let repaired = entry("repaired");
    assert_eq!(
        repaired["data"]["approved_by"],
        serde_json::json!(["rosa"]),
        "{repaired}"
    );
    assert!(
        repaired["text"]
            .as_str()
            .is_some_and(|t| t.contains("approved by rosa")),
        "{repaired}"
    );
    rx.until("healed is told", |r| {
        r.events(&id).contains(&"healed".to_string())
    })
    .await;

    // The timeline (printed, not asserted: a test never asserts a time). The story's entries
    // carry the orchestrator's clock, the repair's start the agent's: one machine here.
    let at = |t: &Value| millis(t) as i128;
    let fired = at(&healed["first_seen_at"]);
    let waiting = at(&entry("approval")["at"]);
    let approved = approved_at as i128;
    let running = at(&done["started_at"]);
    let resolved = at(&entry("healed")["at"]);
    eprintln!(
        "service demo timeline: stopped → alert at Tend {} ms; alert → waiting for approval {} ms; approved → restart running {} ms; restart running → healed {} ms; approved → healed {} ms",
        fired - stopped_at as i128,
        waiting - fired,
        running - approved,
        resolved - running,
        resolved - approved,
    );
}
