//! The `dns` capability and the `dns-check` catalog skill. This machine has no network:
//! `localhost` resolves through /etc/hosts, and a name under the reserved `.invalid` TLD fails
//! for real at the resolver (so "not found" is the resolver's answer, not Tend's refusal).

use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener};

use serde_json::{Value, json};
use tend_runtime::{Export, LimitOverrides, Manifest, Outcome, Runtime};

use crate::support::*;

const REFUSAL: &str = "only names granted in capabilities.tcp or capabilities.dns are resolved";

/// dns-check's own manifest with its `dns` grant replaced by `dns`.
fn dns_check_granting(dns: &str) -> Manifest {
    let path = repo_root().join("skills/dns-check/skill.toml");
    let text = std::fs::read_to_string(&path).expect("skill.toml");
    let replaced = text.replace("dns = [\"localhost\"]", &format!("dns = {dns}"));
    assert_ne!(replaced, text, "the default grant is dns = [\"localhost\"]");
    Manifest::parse(&replaced, "dns-check skill.toml").expect("valid manifest")
}

/// Run dns-check on `input`: its (schema-checked) output and the report's notes.
async fn check(rt: &Runtime, manifest: Option<Manifest>, input: Value) -> (Value, Vec<String>) {
    let skill = load_catalog(rt, "dns-check", manifest);
    let r = call(rt, &skill, &input.to_string()).await;
    assert_eq!(r.outcome, Outcome::Ok, "{:?} {:?}", r.error, r.notes);
    let out = r.output.expect("output");
    assert_output_schema("dns-check", &out);
    (out, r.notes)
}

fn addresses(entry: &Value) -> Vec<IpAddr> {
    ["ipv4", "ipv6"]
        .iter()
        .flat_map(|k| entry[k].as_array().expect(k).clone())
        .map(|a| a.as_str().expect("text").parse().expect("an address"))
        .collect()
}

#[tokio::test]
async fn a_granted_name_resolves_to_loopback() {
    let (rt, _dir) = runtime();
    // The example input, with the manifest as shipped (dns = ["localhost"]).
    let example = std::fs::read_to_string(repo_root().join("skills/dns-check/input.example.json"))
        .expect("input.example.json");
    let (out, notes) = check(&rt, None, serde_json::from_str(&example).expect("json")).await;
    assert_eq!(out["status"], "ok", "{out:#}");
    assert!(notes.is_empty(), "{notes:?}");

    // Case and a trailing dot do not matter.
    let (out, _) = check(&rt, None, json!({"names": ["localhost", "LocalHost."]})).await;
    assert_eq!(out["status"], "ok", "{out:#}");
    assert_eq!(
        (out["resolved"].as_u64(), out["failed"].as_u64()),
        (Some(2), Some(0))
    );
    for entry in out["names"].as_array().expect("names") {
        assert_eq!(entry["ok"], true, "{entry}");
        assert_eq!(entry["error"], Value::Null, "{entry}");
        let got = addresses(entry);
        assert!(!got.is_empty(), "{entry}");
        assert!(got.iter().all(IpAddr::is_loopback), "{entry}");
        assert!(
            got.contains(&"127.0.0.1".parse().expect("ip"))
                || got.contains(&"::1".parse().expect("ip")),
            "{entry}"
        );
        assert!(entry["lookup_ms"].as_f64().is_some_and(|ms| ms >= 0.0));
    }
    assert_eq!(out["names"][1]["name"], "LocalHost.");
}

#[tokio::test]
async fn an_unexpected_answer_is_critical_and_says_what_came_back() {
    let (rt, _dir) = runtime();
    let (out, _) = check(
        &rt,
        None,
        json!({"names": ["localhost"], "expect": {"localhost": ["10.0.0.9"]}}),
    )
    .await;
    assert_eq!(out["status"], "critical", "{out:#}");
    let entry = &out["names"][0];
    assert_eq!(entry["ok"], false);
    assert_eq!(entry["expected"], json!(["10.0.0.9"]));
    assert_eq!(entry["missing"], json!(["10.0.0.9"]));
    assert_eq!(entry["error"]["code"], "unexpected-answer");
    let message = entry["error"]["message"].as_str().expect("message");
    assert!(
        message.contains("expected 10.0.0.9") && message.contains("got 127.0.0.1"),
        "{message}"
    );
    // Among the answers is enough: with another expected address it is still critical, and
    // only the missing one is named.
    let (out, _) = check(
        &rt,
        None,
        json!({"names": ["localhost"], "expect": {"localhost": ["127.0.0.1", "10.0.0.9"]}}),
    )
    .await;
    assert_eq!(out["status"], "critical", "{out:#}");
    assert_eq!(out["names"][0]["missing"], json!(["10.0.0.9"]));
}

#[tokio::test]
async fn expectations_that_name_no_lookup_or_no_address_are_refused() {
    let (rt, _dir) = runtime();
    let skill = load_catalog(&rt, "dns-check", None);
    for (input, want) in [
        (
            json!({"names": ["localhost"], "expect": {"db.example.com": ["10.0.0.5"]}}),
            "expect.db.example.com: not one of the names to look up",
        ),
        (
            json!({"names": ["localhost"], "expect": {"localhost": ["127.0.0.1", "10.0.0"]}}),
            "expect.localhost[1]: \"10.0.0\" is not an IPv4 or IPv6 address",
        ),
    ] {
        let r = call(&rt, &skill, &input.to_string()).await;
        assert_eq!(r.outcome, Outcome::SkillError, "{input}: {:?}", r.output);
        let error = r.error.expect("error");
        assert_eq!(error.code, "invalid-input");
        assert_eq!(error.message, want);
    }
    let ok = call(
        &rt,
        &skill,
        &json!({"names": ["localhost."], "expect": {"LOCALHOST": ["127.0.0.1"]}}).to_string(),
    )
    .await;
    assert_eq!(ok.output.expect("output")["status"], "ok");
}

#[tokio::test]
async fn a_name_not_granted_is_refused_by_the_sandbox() {
    let (rt, _dir) = runtime();
    // The guest asks the host's ip-name-lookup for it directly; Tend refuses it before any
    // resolver is asked (this machine's resolver would answer not-found instead).
    let (out, notes) = check(
        &rt,
        None,
        json!({"names": ["localhost", "secret.attacker.invalid"]}),
    )
    .await;
    assert_eq!(out["status"], "warn", "{out:#}");
    assert_eq!(out["names"][0]["ok"], true);
    let refused = &out["names"][1];
    assert_eq!(refused["ok"], false);
    assert_eq!(refused["error"]["code"], "not-granted", "{refused}");
    assert!(
        refused["error"]["message"].as_str().is_some_and(
            |m| m.contains("secret.attacker.invalid") && m.contains("capabilities.dns")
        ),
        "{refused}"
    );
    assert_eq!(
        notes,
        [format!(
            "name lookup of \"secret.attacker.invalid\" refused: {REFUSAL}"
        )]
    );
    // A wildcard grant covers names under its zone only, whatever they spell.
    let grant = r#"["localhost", "*.internal.example.com"]"#;
    let (out, notes) = check(
        &rt,
        Some(dns_check_granting(grant)),
        json!({"names": ["internal.example.com.attacker.invalid", "internal.example.com"]}),
    )
    .await;
    assert_eq!(out["status"], "critical", "{out:#}");
    for entry in out["names"].as_array().expect("names") {
        assert_eq!(entry["error"]["code"], "not-granted", "{entry}");
    }
    assert_eq!(notes.len(), 2, "{notes:?}");
}

#[tokio::test]
async fn a_name_that_does_not_exist_is_not_found() {
    let (rt, _dir) = runtime();
    let (out, notes) = check(
        &rt,
        Some(dns_check_granting(r#"["localhost", "*.tend.invalid"]"#)),
        json!({"names": ["no-such-host.tend.invalid", "localhost"], "timeout_ms": 10000}),
    )
    .await;
    assert_eq!(out["status"], "warn", "{out:#}");
    let missing = &out["names"][0];
    assert_eq!(missing["error"]["code"], "not-found", "{missing}");
    assert!(
        missing["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("no-such-host.tend.invalid does not resolve")),
        "{missing}"
    );
    assert_eq!(addresses(missing), Vec::<IpAddr>::new());
    // Granted, so the sandbox let it through: no refusal.
    assert!(notes.is_empty(), "{notes:?}");
    assert_eq!(out["names"][1]["ok"], true);
}

/// A server on loopback that echoes what it reads.
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

async fn hostile(rt: &Runtime, caps: &str, input: Value) -> Value {
    let skill = rt
        .load(&guest_bytes("hostile"), Some(diagnose_manifest(caps)))
        .expect("load");
    let r = call(rt, &skill, &input.to_string()).await;
    assert_eq!(r.outcome, Outcome::Ok, "{:?} {}", r.error, r.stderr);
    r.output.expect("output")
}

#[tokio::test]
async fn a_dns_grant_cannot_open_a_connection() {
    let (rt, _dir) = runtime();
    let port = echo_server();
    // Positive control: with a TCP grant this guest reaches the server.
    let out = hostile(
        &rt,
        &format!("tcp = [\"127.0.0.1:{port}\"]"),
        json!({"do": "connect", "addr": format!("127.0.0.1:{port}")}),
    )
    .await;
    assert_eq!(out["connected"], true, "{out}");

    let grant = "dns = [\"localhost\"]";
    // It may look the name up...
    let out = hostile(&rt, grant, json!({"do": "lookup", "addr": "localhost"})).await;
    assert_eq!(out["ok"], true, "{out}");
    // ...and connect to nothing: not the address, not the name it just resolved.
    for addr in [format!("127.0.0.1:{port}"), format!("localhost:{port}")] {
        let out = hostile(&rt, grant, json!({"do": "connect", "addr": addr})).await;
        assert_eq!(out["connected"], false, "{addr}: {out}");
    }
    // Nor look up anything else through the raw interface.
    let out = hostile(
        &rt,
        grant,
        json!({"do": "lookup", "addr": "secret.attacker.invalid"}),
    )
    .await;
    assert_eq!(out["ok"], false, "{out}");
    assert!(
        out["error"]
            .as_str()
            .is_some_and(|e| e.contains("AccessDenied") || e.contains("access-denied")),
        "{out}"
    );
}

#[tokio::test]
async fn a_narrowed_dns_grant_is_what_the_sandbox_enforces() {
    let (rt, _dir) = runtime();
    let signed = dns_check_granting(r#"["localhost", "*.tend.invalid"]"#);
    let skill = load_catalog(&rt, "dns-check", Some(signed.clone()));
    let narrowed = signed
        .narrowed(&tend_manifest::Narrowing {
            dns: Some(vec!["localhost".into()]),
            ..Default::default()
        })
        .expect("a narrowing");
    let input = json!({"names": ["localhost", "no-such-host.tend.invalid"]}).to_string();
    let r = rt
        .invoke_narrowed(
            &skill,
            Export::Run,
            &input,
            &LimitOverrides::default(),
            Some(&narrowed),
        )
        .await
        .expect("the host itself does not fail");
    let out = r.output.expect("output");
    assert_eq!(out["names"][0]["ok"], true, "{out:#}");
    assert_eq!(out["names"][1]["error"]["code"], "not-granted", "{out:#}");
    // Widening is refused before anything runs.
    let err = signed
        .narrowed(&tend_manifest::Narrowing {
            dns: Some(vec!["db.example.com".into()]),
            ..Default::default()
        })
        .expect_err("widens");
    assert!(err.to_string().contains("never widen"), "{err}");
}

/// The example DnsLookupFailing alert, as its rule labels it, matches the `dns-failure`
/// policy, and the input that policy builds for dns-check is one its schema accepts.
#[test]
fn the_example_dns_policy_builds_a_valid_dns_check_input() {
    let root = repo_root();
    let policies = tend_orchestrator::healing::load(&root.join("examples/healing/policies.toml"))
        .expect("the example policies parse");
    let labels: std::collections::BTreeMap<String, String> = [
        ("alertname", "DnsLookupFailing"),
        ("instance", "web-1:9115"),
        ("query_name", "db.example.com"),
        ("severity", "warning"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let p = tend_orchestrator::healing::matching(&policies.policies, &labels)
        .expect("a policy matches");
    assert_eq!(p.policy.name, "dns-failure");
    assert!(p.policy.repair.is_none(), "a person fixes DNS");
    let (_, manifest) = catalog_skill("dns-check");
    let schema = manifest.input.expect("input schema").schema;
    let validator = jsonschema::validator_for(&schema).expect("schema");
    let calls: Vec<_> = p.policy.diagnose.iter().collect();
    assert!(calls.iter().any(|c| c.skill == "dns-check"), "{calls:?}");
    for call in calls.iter().filter(|c| c.skill == "dns-check") {
        let input = tend_orchestrator::healing::fill(
            &call.input,
            &tend_orchestrator::healing::Facts {
                labels: &labels,
                annotations: &Default::default(),
                diagnosis: &Default::default(),
            },
        );
        assert_eq!(input["names"], json!(["db.example.com"]), "{input}");
        let errors: Vec<String> = validator
            .iter_errors(&input)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{input}: {errors:?}");
    }
}

/// Through the orchestrator and a real agent: the agent verifies dns-check, admits it from the
/// manifest it verified (a `dns` grant is L0 and a kind its ceiling must allow) and runs it
/// with exactly the lookups the (narrowed) grant allows.
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_runs_dns_check_with_the_lookups_its_grant_allows() {
    use crate::agent::{AgentProc, enroll, submit_to};
    use crate::orchestrator::{Api, Backend, Orch, setup};

    let (w, reg) = setup();
    let publisher = w.token("ci-dns", "publisher");
    let (bytes, _) = catalog_skill("dns-check");
    let component = w.path("dns-check-built.wasm");
    std::fs::write(&component, bytes).expect("write component");
    let text = std::fs::read_to_string(repo_root().join("skills/dns-check/skill.toml"))
        .expect("skill.toml")
        .replace("name = \"dns-check\"", "name = \"acme-dns\"")
        .replace(
            "dns = [\"localhost\"]",
            "dns = [\"localhost\", \"*.tend.invalid\"]",
        );
    let wasm = w.signed_with("acme-dns", &component, &text);
    w.published(&reg.url, &wasm, &publisher);
    let orch = Orch::start(&w, &reg, Backend::Sqlite, &[]);
    let api = Api::new(&orch);
    let admin = orch.admin.clone();
    let trust = w.path("trust.toml");
    enroll(
        &w,
        &orch,
        &reg,
        "web-1",
        trust.to_str().expect("trust"),
        &["--pool", "web", "--allow-capability", "dns"],
    );
    let _agent = AgentProc::start(&w, "web-1");

    let names =
        json!({"names": ["localhost", "no-such-host.tend.invalid", "secret.attacker.invalid"]});
    let (s, v) = submit_to(&api, &admin, "acme-dns", "agent:web-1", names.clone()).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["level"], 0, "{v}");
    assert_eq!(
        v["grants"]["dns"],
        json!(["localhost", "*.tend.invalid"]),
        "{v}"
    );
    let done = api
        .wait_for(&admin, v["id"].as_str().expect("id"), "succeeded")
        .await;
    let out = &done["result"]["output"];
    let codes: Vec<&Value> = out["names"]
        .as_array()
        .expect("names")
        .iter()
        .map(|n| &n["error"]["code"])
        .collect();
    assert_eq!(
        codes,
        [&Value::Null, &json!("not-found"), &json!("not-granted")],
        "{out:#}"
    );

    // Narrowed to `localhost`: the name under the granted zone is refused on the agent too.
    let (s, v) = api
        .call(
            "POST",
            "/api/v1/invocations",
            Some(&admin),
            Some(json!({
                "skill": "acme-dns", "target": "agent:web-1", "input": names,
                "reason": "test", "narrowing": {"dns": ["localhost"]},
            })),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["grants"]["dns"], json!(["localhost"]), "{v}");
    let done = api
        .wait_for(&admin, v["id"].as_str().expect("id"), "succeeded")
        .await;
    let out = &done["result"]["output"];
    assert_eq!(out["names"][0]["ok"], true, "{out:#}");
    assert_eq!(out["names"][1]["error"]["code"], "not-granted", "{out:#}");
}

/// The sandbox checks a name in the form the resolver would use: case and one trailing dot do
/// not matter; a spelling a resolver would first rewrite into another name (full-width
/// letters or dots, percent-escapes) is refused rather than guessed at, so what is resolved is
/// always what was checked.
#[tokio::test]
async fn raw_lookups_are_checked_in_the_form_they_are_resolved_in() {
    let (rt, _dir) = runtime();
    let grant = "dns = [\"localhost\", \"*.tend.invalid\"]";
    for name in ["LOCALHOST", "localhost."] {
        let out = hostile(&rt, grant, json!({"do": "lookup", "addr": name})).await;
        assert_eq!(out["ok"], true, "{name}: {out}");
    }
    let out = hostile(
        &rt,
        grant,
        json!({"do": "lookup", "addr": "No-Such-Host.TEND.invalid."}),
    )
    .await;
    assert_eq!(out["ok"], false, "{out}");
    assert!(
        out["error"]
            .as_str()
            .is_some_and(|e| e.contains("NameUnresolvable") || e.contains("name-unresolvable")),
        "granted, so the resolver answered: {out}"
    );
    for name in [
        "\u{ff4c}\u{ff4f}\u{ff43}\u{ff41}\u{ff4c}\u{ff48}\u{ff4f}\u{ff53}\u{ff54}",
        "localhost\u{3002}",
        "local%68ost",
        "x.tend.invalid.attacker.invalid",
        "tend.invalid",
    ] {
        let out = hostile(&rt, grant, json!({"do": "lookup", "addr": name})).await;
        assert_eq!(out["ok"], false, "{name:?}: {out}");
        assert!(
            out["error"]
                .as_str()
                .is_some_and(|e| e.contains("AccessDenied") || e.contains("access-denied")),
            "{name:?}: {out}"
        );
    }
}
