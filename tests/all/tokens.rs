//! Tokens with a lifecycle, as an admin manages them: created with an expiry, listed without
//! their secret, revoked and rotated through `/api/v1/tokens`; an expired or revoked token is
//! refused like an unknown one, and the audit trail says why, once per token and replica per
//! minute. The refusal table runs in process (`oneshot`); revocation across two replicas on
//! one database runs real processes. Registry tokens expire and are revoked too.

use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use tend_orchestrator::{Config, Orchestrator, api, audit, auth};
use tend_policy::{Level, Role, Target};
use tower::ServiceExt as _;

use crate::orchestrator::{Api, Backend, Orch, all_events};
use crate::registry::{Registry, World, err};
use crate::support::*;

struct App {
    router: Router,
    state: api::AppState,
    admin: String,
    operator: String,
    _dir: tempfile::TempDir,
}

async fn app() -> App {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config {
        database_url: format!("sqlite://{}", dir.path().join("o.db").display()),
        // Never contacted: token routes do not resolve skills.
        registry_url: "http://127.0.0.1:9".into(),
        registry_token: None,
        trust: Default::default(),
        data_dir: dir.path().join("data"),
        runtime: tend_runtime::RuntimeConfig {
            cache_dir: None,
            pooling: false,
            ..Default::default()
        },
        approval_ttl: Duration::from_secs(3600),
        target: Target {
            name: "local".into(),
            environment: "default".into(),
            floor: Level::L0,
            ceiling: Level::L3,
        },
        workers: 1,
        shutdown_grace: Duration::from_secs(1),
        offline_after: Duration::from_secs(90),
        agent_lease: Duration::from_secs(30),
        env_floors: Default::default(),
        blast_radius: tend_orchestrator::DEFAULT_BLAST_RADIUS,
        healing: None,
    };
    let orch = Orchestrator::open(config).await.expect("open");
    let state = orch.state.clone();
    let admin = auth::create_token(&state.db, "alice", Role::Admin, None)
        .await
        .expect("admin token");
    let operator = auth::create_token(&state.db, "oscar", Role::Operator, None)
        .await
        .expect("operator token");
    App {
        router: api::router(state.clone()),
        state,
        admin,
        operator,
        _dir: dir,
    }
}

impl App {
    async fn call(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
        let res = self
            .router
            .clone()
            .oneshot(req.body(body).expect("request"))
            .await
            .expect("infallible");
        let status = res.status();
        let bytes = res.into_body().collect().await.expect("body").to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// `GET /metrics`, as text.
    async fn metrics(&self) -> String {
        let req = Request::builder()
            .uri("/metrics")
            .body(Body::empty())
            .expect("request");
        let res = self.router.clone().oneshot(req).await.expect("infallible");
        let bytes = res.into_body().collect().await.expect("body").to_bytes();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// `GET /api/v1/status` with `token`: whether it is accepted.
    async fn works(&self, token: &str) -> StatusCode {
        self.call("GET", "/api/v1/status", Some(token), None)
            .await
            .0
    }

    async fn create(&self, body: Value) -> (StatusCode, Value) {
        self.call("POST", "/api/v1/tokens", Some(&self.admin), Some(body))
            .await
    }

    async fn list(&self) -> Vec<Value> {
        let (s, v) = self
            .call("GET", "/api/v1/tokens", Some(&self.admin), None)
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v.as_array().expect("a list").clone()
    }

    async fn audit(&self) -> Vec<audit::Event> {
        audit::list(&self.state.db, 0, 10_000).await.expect("audit")
    }
}

/// The prefix of a `tend_<prefix>_<secret>` token.
fn prefix_of(token: &str) -> &str {
    token
        .strip_prefix("tend_")
        .and_then(|r| r.split('_').next())
        .expect("a tend_ token")
}

/// Refusals of the token `prefix` recorded in the audit trail, and why.
fn refusals_of(events: &[audit::Event], prefix: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.action == "auth.refused" && e.detail["token"] == prefix)
        .map(|e| e.detail["why"].as_str().unwrap_or("").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_is_created_with_an_expiry_and_listed_without_its_secret() {
    let app = app().await;
    let (s, made) = app
        .create(json!({ "name": "ci-bot", "role": "operator", "expires_in": "30d" }))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{made}");
    let token = made["token"].as_str().expect("token");
    assert_eq!(made["prefix"], prefix_of(token));
    assert_eq!(
        (&made["name"], &made["role"]),
        (&json!("ci-bot"), &json!("operator"))
    );
    let (created, expires) = (
        made["created_at"].as_str().expect("created_at"),
        made["expires_at"].as_str().expect("expires_at"),
    );
    assert!(created < expires, "{made}");
    assert_eq!(app.works(token).await, StatusCode::OK);

    // Without an expiry it lives until revoked.
    let (s, forever) = app.create(json!({ "name": "ops", "role": "viewer" })).await;
    assert_eq!(s, StatusCode::CREATED, "{forever}");
    assert_eq!(forever["expires_at"], Value::Null);

    let listed = app.list().await;
    let text = Value::Array(listed.clone()).to_string();
    assert!(!text.contains(token), "the secret is listed: {text}");
    assert!(!text.contains("hash"), "{text}");
    let ci = listed
        .iter()
        .find(|t| t["prefix"] == made["prefix"])
        .expect("listed");
    assert_eq!(
        ci,
        &json!({
            "prefix": made["prefix"], "name": "ci-bot", "role": "operator", "created_at": created,
            "expires_at": expires, "revoked_at": null, "revoked_by": null,
        })
    );
    assert_eq!(listed.len(), 4, "alice, oscar, ci-bot and ops: {text}");

    let events = app.audit().await;
    let create = events
        .iter()
        .find(|e| e.action == "token.create" && e.detail["token"] == made["prefix"])
        .expect("token.create audited");
    assert_eq!(
        (create.actor.as_str(), create.subject.as_str()),
        ("alice", "ci-bot")
    );
    assert_eq!(create.detail["expires_at"], expires);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_token_is_refused_like_an_unknown_one_and_audited_once() {
    let app = app().await;
    let (s, made) = app
        .create(json!({ "name": "brief", "role": "viewer", "expires_in": "1ms" }))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{made}");
    let token = made["token"].as_str().expect("token");
    // Its expiry was set before it was stored; let the clock pass it.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (s, expired) = app.call("GET", "/api/v1/status", Some(token), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (_, unknown) = app
        .call(
            "GET",
            "/api/v1/status",
            Some("tend_0123456789ab_nope"),
            None,
        )
        .await;
    assert_eq!(expired, unknown, "the caller learns nothing more");
    for _ in 0..5 {
        assert_eq!(app.works(token).await, StatusCode::UNAUTHORIZED);
    }
    // The trail says why, once: the repeats are counted, not written.
    let events = app.audit().await;
    assert_eq!(refusals_of(&events, prefix_of(token)), ["expired"]);
    // `/metrics` counts every refusal: the unknown token's and the expired one's six.
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("tend_refusals_total{action=\"auth.refused\"} 7"),
        "{metrics}"
    );
    let e = events
        .iter()
        .find(|e| e.detail["token"] == prefix_of(token) && e.action == "auth.refused")
        .expect("refusal");
    assert_eq!(
        (e.actor.as_str(), &e.detail["name"]),
        (audit::ANONYMOUS, &json!("brief"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_token_is_refused_at_once_and_revoking_again_says_so() {
    let app = app().await;
    let (_, made) = app
        .create(json!({ "name": "ops", "role": "operator" }))
        .await;
    let token = made["token"].as_str().expect("token");
    let prefix = prefix_of(token).to_string();
    // In this replica's cache now.
    assert_eq!(app.works(token).await, StatusCode::OK);

    let uri = format!("/api/v1/tokens/{prefix}/revoke");
    let (s, revoked) = app.call("POST", &uri, Some(&app.admin), None).await;
    assert_eq!(s, StatusCode::OK, "{revoked}");
    assert_eq!(revoked["already_revoked"], false);
    assert_eq!(revoked["revoked_by"], "alice");
    assert!(revoked["revoked_at"].is_string(), "{revoked}");
    // The replica that revoked it refuses it from the next request.
    assert_eq!(app.works(token).await, StatusCode::UNAUTHORIZED);

    let (s, again) = app.call("POST", &uri, Some(&app.admin), None).await;
    assert_eq!(s, StatusCode::OK, "{again}");
    assert_eq!(again["already_revoked"], true);
    assert_eq!(again["revoked_at"], revoked["revoked_at"]);

    for uri in [
        "/api/v1/tokens/0123456789ab/revoke",
        "/api/v1/tokens/..%2F..%2Fetc/revoke",
        "/api/v1/tokens/ABCDEF012345/revoke",
    ] {
        let (s, v) = app.call("POST", uri, Some(&app.admin), None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{uri}: {v}");
        assert_eq!(v["error"]["code"], "not_found");
    }

    let events = app.audit().await;
    let revokes: Vec<_> = events
        .iter()
        .filter(|e| e.action == "token.revoke")
        .collect();
    assert_eq!(
        revokes.len(),
        1,
        "revoking again changes nothing: {revokes:?}"
    );
    assert_eq!(
        (revokes[0].actor.as_str(), revokes[0].subject.as_str()),
        ("alice", "ops")
    );
    assert_eq!(revokes[0].detail["token"], prefix.as_str());
    assert_eq!(refusals_of(&events, &prefix), ["revoked"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn rotation_gives_a_new_token_for_the_same_name_and_role_and_revokes_the_old() {
    let app = app().await;
    let (_, old) = app
        .create(json!({ "name": "deploy", "role": "approver" }))
        .await;
    let old_token = old["token"].as_str().expect("token");
    let old_prefix = prefix_of(old_token).to_string();
    assert_eq!(app.works(old_token).await, StatusCode::OK);

    let uri = format!("/api/v1/tokens/{old_prefix}/rotate");
    let (s, new) = app
        .call(
            "POST",
            &uri,
            Some(&app.admin),
            Some(json!({ "expires_in": "90d" })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{new}");
    let new_token = new["token"].as_str().expect("token");
    assert_ne!(new_token, old_token);
    assert_eq!(
        (&new["name"], &new["role"]),
        (&json!("deploy"), &json!("approver"))
    );
    assert!(new["expires_at"].is_string(), "{new}");
    assert_eq!(app.works(new_token).await, StatusCode::OK);
    assert_eq!(app.works(old_token).await, StatusCode::UNAUTHORIZED);

    let listed = app.list().await;
    let old_record = listed
        .iter()
        .find(|t| t["prefix"] == old_prefix.as_str())
        .expect("old");
    assert_eq!(old_record["revoked_by"], "alice");

    // A revoked token is not rotated again (create a new one); without a body, no expiry.
    let (s, v) = app.call("POST", &uri, Some(&app.admin), None).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let new_uri = format!(
        "/api/v1/tokens/{}/rotate",
        new["prefix"].as_str().expect("p")
    );
    let (s, newer) = app.call("POST", &new_uri, Some(&app.admin), None).await;
    assert_eq!(s, StatusCode::CREATED, "{newer}");
    assert_eq!(newer["expires_at"], Value::Null);
    assert_eq!(app.works(new_token).await, StatusCode::UNAUTHORIZED);

    let events = app.audit().await;
    let rotate = events
        .iter()
        .find(|e| e.action == "token.rotate" && e.detail["token"] == old_prefix.as_str())
        .expect("token.rotate audited");
    assert_eq!(rotate.actor, "alice");
    assert_eq!(rotate.detail["new_token"], new["prefix"]);
    assert_eq!(
        app.list().await.len(),
        5,
        "alice, oscar and three of deploy"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn only_an_admin_manages_tokens_and_nothing_changes_otherwise() {
    let app = app().await;
    let target = prefix_of(&app.admin).to_string();
    let before = app.list().await;
    let audit_before = app.audit().await.len();
    for (method, uri, body) in [
        ("GET", "/api/v1/tokens".to_string(), None),
        (
            "POST",
            "/api/v1/tokens".to_string(),
            Some(json!({ "name": "sneaky", "role": "admin" })),
        ),
        ("POST", format!("/api/v1/tokens/{target}/revoke"), None),
        ("POST", format!("/api/v1/tokens/{target}/rotate"), None),
    ] {
        let (s, v) = app
            .call(method, &uri, Some(&app.operator), body.clone())
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{method} {uri}: {v}");
        assert_eq!(v["error"]["code"], "forbidden");
        let (s, _) = app.call(method, &uri, None, body).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{method} {uri}");
    }
    assert_eq!(app.list().await, before);
    assert_eq!(app.works(&app.admin).await, StatusCode::OK);
    // Only the refusals were recorded (4 forbidden by oscar; the anonymous ones too).
    let events = app.audit().await;
    let new: Vec<&str> = events[audit_before..]
        .iter()
        .map(|e| e.action.as_str())
        .collect();
    assert!(
        new.iter()
            .all(|a| *a == "auth.forbidden" || *a == "auth.refused"),
        "{new:?}"
    );
    assert_eq!(new.iter().filter(|a| **a == "auth.forbidden").count(), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_bodies_are_refused_naming_the_field_and_store_nothing() {
    let app = app().await;
    let before = app.list().await;
    let long = "n".repeat(65);
    for (body, status, field) in [
        (json!({ "name": "x", "role": "superuser" }), 422, "role"),
        (json!({ "name": long, "role": "viewer" }), 422, "name"),
        (json!({ "name": "", "role": "viewer" }), 422, "name"),
        (json!({ "name": "a\nb", "role": "viewer" }), 422, "name"),
        (
            json!({ "name": "x", "role": "viewer", "expires_in": "soon" }),
            422,
            "expires_in",
        ),
        (
            json!({ "name": "x", "role": "viewer", "expires_in": "0s" }),
            422,
            "expires_in",
        ),
        (
            json!({ "name": "x", "role": "viewer", "expires_in": "99999d" }),
            422,
            "expires_in",
        ),
        (
            json!({ "name": "x", "role": "viewer", "colour": "red" }),
            400,
            "colour",
        ),
        (json!({ "role": "viewer" }), 400, "name"),
        (
            json!({ "name": "x", "role": "viewer", "expires_in": 30 }),
            400,
            "expires_in",
        ),
    ] {
        let (s, v) = app.create(body.clone()).await;
        assert_eq!(s.as_u16(), status, "{body}: {v}");
        let message = v["error"]["message"].as_str().expect("message");
        assert!(message.contains(field), "{body}: {message}");
    }
    let prefix = prefix_of(&app.operator);
    let (s, v) = app
        .call(
            "POST",
            &format!("/api/v1/tokens/{prefix}/rotate"),
            Some(&app.admin),
            Some(json!({ "expires_in": "whenever" })),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .expect("m")
            .contains("expires_in")
    );
    assert_eq!(app.list().await, before, "nothing stored or revoked");
    assert_eq!(app.works(&app.operator).await, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_token_routes_are_in_the_openapi_document() {
    let app = app().await;
    let (s, doc) = app.call("GET", "/api/v1/openapi.json", None, None).await;
    assert_eq!(s, StatusCode::OK);
    for (path, method) in [
        ("/api/v1/tokens", "get"),
        ("/api/v1/tokens", "post"),
        ("/api/v1/tokens/{prefix}/revoke", "post"),
        ("/api/v1/tokens/{prefix}/rotate", "post"),
    ] {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} undocumented"
        );
    }
    for schema in [
        "NewToken",
        "CreatedToken",
        "TokenInfo",
        "RotateToken",
        "RevokedToken",
    ] {
        assert!(doc["components"]["schemas"][schema].is_object(), "{schema}");
    }
}

/// `GET /api/v1/status` on `api` with `token`.
async fn status(api: &Api, token: &str) -> u16 {
    api.call("GET", "/api/v1/status", Some(token), None).await.0
}

/// Revoked on one replica, a token stops working on both within a second; each replica
/// audits its refusal once, however often the token is tried; the chain stays intact.
async fn a_revoked_token_stops_on_every_replica_within_a_second(backend: Backend) {
    let w = World::new();
    let reg = Registry::start(&w);
    let first = Orch::start(&w, &reg, backend, &[]);
    let second = Orch::replica(&w, &reg, &first.database, "replica", "127.0.0.1:0", &[]);
    let (a, b) = (Api::new(&first), Api::new(&second));
    let (s, made) = a
        .call(
            "POST",
            "/api/v1/tokens",
            Some(&first.admin),
            Some(json!({ "name": "ops", "role": "operator" })),
        )
        .await;
    assert_eq!(s, 201, "{made}");
    let token = made["token"].as_str().expect("token");
    let prefix = made["prefix"].as_str().expect("prefix");
    // Both replicas serve it (and hold it in their caches).
    assert_eq!(
        (status(&a, token).await, status(&b, token).await),
        (200, 200)
    );

    let (s, revoked) = a
        .call(
            "POST",
            &format!("/api/v1/tokens/{prefix}/revoke"),
            Some(&first.admin),
            None,
        )
        .await;
    assert_eq!(s, 200, "{revoked}");
    let revoked_at = Instant::now();
    for (replica, api) in [("the first replica", &a), ("the second replica", &b)] {
        loop {
            let s = status(api, token).await;
            if s == 401 {
                break;
            }
            assert_eq!(s, 200);
            assert!(
                revoked_at.elapsed() < Duration::from_secs(1),
                "{replica} still accepts the revoked token a second after the revoke"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // And it stays refused, on both; each replica writes its refusal once.
    for _ in 0..5 {
        assert_eq!(
            (status(&a, token).await, status(&b, token).await),
            (401, 401)
        );
    }
    let events = all_events(&b, &first.admin).await;
    let revoke = events
        .iter()
        .filter(|e| e["action"] == "token.revoke" && e["detail"]["token"] == prefix)
        .count();
    assert_eq!(revoke, 1);
    let refusals: Vec<&Value> = events
        .iter()
        .filter(|e| e["action"] == "auth.refused" && e["detail"]["token"] == prefix)
        .collect();
    assert_eq!(refusals.len(), 2, "one per replica: {refusals:?}");
    for e in &refusals {
        assert_eq!(e["detail"]["why"], "revoked", "{e}");
        assert_eq!(e["detail"]["name"], "ops", "{e}");
        assert_eq!(e["actor"], audit::ANONYMOUS, "{e}");
    }
    let o = w.ok(&["audit", "verify", "--database", &first.database]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("intact"));
}

#[tokio::test(flavor = "multi_thread")]
async fn revocation_on_two_sqlite_replicas() {
    a_revoked_token_stops_on_every_replica_within_a_second(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn revocation_on_two_postgres_replicas() {
    a_revoked_token_stops_on_every_replica_within_a_second(Backend::Postgres).await;
}

/// `tend registry token list --json`.
fn registry_tokens(w: &World) -> Vec<Value> {
    let o = w.ok(&["registry", "token", "list", "--data", "registry", "--json"]);
    serde_json::from_slice(&o.stdout).expect("json")
}

fn registry_prefix(token: &str) -> &str {
    token
        .strip_prefix("tendreg_")
        .and_then(|r| r.split('_').next())
        .expect("a tendreg_ token")
}

/// Registry tokens: an expired or revoked publisher token cannot publish; the list shows
/// each token's lifecycle and never a secret.
#[test]
fn revoked_and_expired_registry_tokens_cannot_publish() {
    let w = World::new();
    let reg = Registry::start(&w);
    let wasm = w.signed("echo", &guest("trivial"), "acme-echo", "1.0.0");

    let o = w.ok(&[
        "registry",
        "token",
        "create",
        "--data",
        "registry",
        "--name",
        "brief",
        "--role",
        "publisher",
        "--expires",
        "1ms",
    ]);
    let brief = String::from_utf8(o.stdout)
        .expect("utf8")
        .trim()
        .to_string();
    std::thread::sleep(Duration::from_millis(20));
    let o = w.publish(&reg.url, &wasm, &brief);
    assert_ne!(o.status.code(), Some(0));
    assert!(
        err(&o).contains("not valid for this registry"),
        "{}",
        err(&o)
    );

    let ci = w.token("ci", "publisher");
    w.published(&reg.url, &wasm, &ci);
    let o = w.ok(&[
        "registry",
        "token",
        "revoke",
        "--data",
        "registry",
        registry_prefix(&ci),
    ]);
    assert!(err(&o).contains("revoked token"), "{}", err(&o));
    let next = w.signed("echo2", &guest("trivial"), "acme-echo", "1.0.1");
    let o = w.publish(&reg.url, &next, &ci);
    assert_ne!(o.status.code(), Some(0), "a revoked token published");
    assert!(
        err(&o).contains("not valid for this registry"),
        "{}",
        err(&o)
    );
    // Revoking again changes nothing and says so; an unknown or malformed prefix is refused.
    let o = w.ok(&[
        "registry",
        "token",
        "revoke",
        "--data",
        "registry",
        registry_prefix(&ci),
    ]);
    assert!(err(&o).contains("already revoked"), "{}", err(&o));
    for bad in ["0123456789ab", "../x"] {
        let o = w.tend(&["registry", "token", "revoke", "--data", "registry", bad]);
        assert_ne!(o.status.code(), Some(0), "{bad}");
    }

    // Rotation: a new token for the same name and role publishes; the old one no longer does,
    // and a revoked token is not rotated.
    let rotating = w.token("rotating", "publisher");
    let o = w.ok(&[
        "registry",
        "token",
        "rotate",
        "--data",
        "registry",
        registry_prefix(&rotating),
        "--expires",
        "1h",
    ]);
    let rotated = String::from_utf8(o.stdout)
        .expect("utf8")
        .trim()
        .to_string();
    assert_ne!(rotated, rotating);
    let third = w.signed("echo3", &guest("trivial"), "acme-echo", "1.0.2");
    assert_ne!(
        w.publish(&reg.url, &third, &rotating).status.code(),
        Some(0)
    );
    w.published(&reg.url, &third, &rotated);
    let o = w.tend(&[
        "registry",
        "token",
        "rotate",
        "--data",
        "registry",
        registry_prefix(&rotating),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(err(&o).contains("is revoked"), "{}", err(&o));

    let listed = registry_tokens(&w);
    let text = Value::Array(listed.clone()).to_string();
    assert!(
        !text.contains(&ci) && !text.contains(&brief) && !text.contains("hash"),
        "{text}"
    );
    let by_name = |n: &str| {
        listed
            .iter()
            .find(|t| t["name"] == n)
            .unwrap_or_else(|| panic!("{n}: {text}"))
            .clone()
    };
    let (brief_rec, ci_rec) = (by_name("brief"), by_name("ci"));
    assert!(brief_rec["expires_at"].is_string(), "{brief_rec}");
    assert_eq!(brief_rec["revoked_at"], Value::Null);
    assert_eq!(ci_rec["expires_at"], Value::Null);
    assert!(ci_rec["revoked_at"].is_string(), "{ci_rec}");
    assert_eq!(ci_rec["revoked_by"], "local-admin");
    assert_eq!(ci_rec["prefix"], registry_prefix(&ci));

    // Bad input names the flag and stores nothing.
    for (flag, args) in [
        ("--expires", ["--name", "x", "--expires", "soon"]),
        ("--name", ["--name", "a b", "--expires", "1d"]),
    ] {
        let mut all = vec![
            "registry",
            "token",
            "create",
            "--data",
            "registry",
            "--role",
            "publisher",
        ];
        all.extend(args);
        let o = w.tend(&all);
        assert_ne!(o.status.code(), Some(0), "{all:?}");
        assert!(err(&o).contains(flag), "{}", err(&o));
    }
    assert_eq!(registry_tokens(&w).len(), listed.len());
    // A mistyped data directory is refused, not made.
    let o = w.tend(&["registry", "token", "list", "--data", "nowhere"]);
    assert_ne!(o.status.code(), Some(0));
    assert!(!w.path("nowhere").exists());
}
