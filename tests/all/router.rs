//! The orchestrator's refusal table, in process: the real router and the real SQLite store,
//! driven with `tower::ServiceExt::oneshot` (no port, no child process). Each refusal answers
//! with its status and the one error shape, and stores nothing. The end-to-end paths stay in
//! `orchestrator.rs`, against a real process.

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use tend_orchestrator::{Config, Orchestrator, api, auth};
use tend_policy::{Level, Role, Target};
use tower::ServiceExt as _;

struct App {
    router: Router,
    state: api::AppState,
    admin: String,
    viewer: String,
    _dir: tempfile::TempDir,
}

async fn app() -> App {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config {
        database_url: format!("sqlite://{}", dir.path().join("o.db").display()),
        // Never contacted by these tests: every refusal comes before the registry.
        registry_url: "http://127.0.0.1:9".into(),
        registry_token: None,
        trust: Default::default(),
        data_dir: dir.path().join("data"),
        runtime: tend_runtime::RuntimeConfig {
            cache_dir: None,
            pooling: false,
            ..Default::default()
        },
        approval_ttl: std::time::Duration::from_secs(3600),
        target: Target {
            name: "local".into(),
            environment: "default".into(),
            floor: Level::L0,
            ceiling: Level::L3,
        },
        workers: 1,
        shutdown_grace: std::time::Duration::from_secs(1),
        offline_after: std::time::Duration::from_secs(90),
        agent_lease: std::time::Duration::from_secs(30),
        env_floors: Default::default(),
        blast_radius: tend_orchestrator::DEFAULT_BLAST_RADIUS,
        healing: None,
    };
    let orch = Orchestrator::open(config).await.expect("open");
    let state = orch.state.clone();
    let admin = auth::create_token(&state.db, "alice", Role::Admin, None)
        .await
        .expect("admin token");
    let viewer = auth::create_token(&state.db, "victor", Role::Viewer, None)
        .await
        .expect("viewer token");
    App {
        router: api::router(state.clone()),
        state,
        admin,
        viewer,
        _dir: dir,
    }
}

impl App {
    /// One request; returns the status and the JSON body (Null when it is not JSON).
    async fn call(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<Body>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req.body(body.unwrap_or_else(Body::empty)).expect("request");
        let res = self.router.clone().oneshot(req).await.expect("infallible");
        let status = res.status();
        let bytes = res.into_body().collect().await.expect("body").to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn json(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Value,
    ) -> (StatusCode, Value) {
        self.call(method, uri, token, Some(Body::from(body.to_string())))
            .await
    }

    async fn stored_invocations(&self) -> usize {
        tend_orchestrator::invocation::list(&self.state.db, None, 1000)
            .await
            .expect("list")
            .len()
    }

    async fn audit(&self) -> Vec<tend_orchestrator::audit::Event> {
        tend_orchestrator::audit::list(&self.state.db, 0, 1000)
            .await
            .expect("audit")
    }
}

/// Every refusal has the one error shape: a code and a message for a person.
fn refused(status: StatusCode, body: &Value, want: StatusCode, code: &str) {
    assert_eq!(status, want, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

fn submission(extra: Value) -> Value {
    let mut body = json!({ "skill": "disk-usage", "reason": "checking the router" });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    body
}

#[tokio::test]
async fn no_token_or_an_unknown_one_is_401_and_audited_as_anonymous() {
    let app = app().await;
    let (s, b) = app.call("GET", "/api/v1/invocations", None, None).await;
    refused(s, &b, StatusCode::UNAUTHORIZED, "unauthenticated");
    let (s, b) = app
        .call(
            "GET",
            "/api/v1/invocations",
            Some("tend_000000000000_nope"),
            None,
        )
        .await;
    refused(s, &b, StatusCode::UNAUTHORIZED, "unauthenticated");
    let refusals: Vec<_> = app
        .audit()
        .await
        .into_iter()
        .filter(|e| e.action == "auth.refused")
        .collect();
    assert_eq!(refusals.len(), 2, "{refusals:?}");
    for e in &refusals {
        assert_eq!(e.actor, "anonymous");
        // The route template, not whatever the caller typed.
        assert_eq!(e.subject, "GET /api/v1/invocations");
    }
}

#[tokio::test]
async fn too_weak_a_role_is_403_naming_the_role_needed() {
    let app = app().await;
    let (s, b) = app
        .json(
            "POST",
            "/api/v1/invocations/inv_0123456789abcdef/approve",
            Some(&app.viewer),
            json!({ "invocation_digest": "00" }),
        )
        .await;
    refused(s, &b, StatusCode::FORBIDDEN, "forbidden");
    let message = b["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("viewer") && message.contains("approver"),
        "{message}"
    );
    assert!(
        app.audit()
            .await
            .iter()
            .any(|e| e.action == "auth.forbidden" && e.actor == "victor"),
        "not audited"
    );
    let (s, b) = app
        .json(
            "POST",
            "/api/v1/enroll-tokens",
            Some(&app.viewer),
            json!({}),
        )
        .await;
    refused(s, &b, StatusCode::FORBIDDEN, "forbidden");
}

#[tokio::test]
async fn what_does_not_exist_is_404() {
    let app = app().await;
    let admin = Some(app.admin.as_str());
    let (s, b) = app
        .call(
            "GET",
            "/api/v1/invocations/inv_0123456789abcdef",
            admin,
            None,
        )
        .await;
    refused(s, &b, StatusCode::NOT_FOUND, "not_found");
    let (s, b) = app.call("GET", "/api/v1/nothing-here", admin, None).await;
    refused(s, &b, StatusCode::NOT_FOUND, "not_found");
    // A job id that is not one of ours is refused before any signature or lookup.
    let (s, b) = app
        .call(
            "POST",
            "/api/v1/agent/jobs/..%2F..%2Fetc/start",
            None,
            Some(Body::from("{}")),
        )
        .await;
    refused(s, &b, StatusCode::NOT_FOUND, "not_found");
    // A target nobody serves, before the registry is asked anything.
    let (s, b) = app
        .json(
            "POST",
            "/api/v1/invocations",
            admin,
            submission(json!({ "target": "pool:nobody" })),
        )
        .await;
    refused(s, &b, StatusCode::NOT_FOUND, "unknown_target");
    assert_eq!(app.stored_invocations().await, 0);
}

#[tokio::test]
async fn a_second_agent_under_a_taken_name_is_409() {
    let app = app().await;
    let (s, b) = app
        .json(
            "POST",
            "/api/v1/enroll-tokens",
            Some(&app.admin),
            json!({ "uses": 2 }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let token = b["token"].as_str().expect("token").to_string();
    let enroll = |key: u8| {
        let key = ed25519_key(key);
        json!({
            "token": token, "name": "web-1", "hostname": "web-1", "os": "linux",
            "arch": "x86_64", "public_key": key, "ceiling": { "max_level": 0 },
        })
    };
    let (s, b) = app
        .json("POST", "/api/v1/agents/enroll", None, enroll(1))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let (s, b) = app
        .json("POST", "/api/v1/agents/enroll", None, enroll(2))
        .await;
    refused(s, &b, StatusCode::CONFLICT, "conflict");
}

fn ed25519_key(seed: u8) -> String {
    use base64::Engine as _;
    let key = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]).verifying_key();
    format!(
        "ed25519:{}",
        base64::engine::general_purpose::STANDARD.encode(key.as_bytes())
    )
}

#[tokio::test]
async fn oversize_requests_are_413_and_store_nothing() {
    let app = app().await;
    let admin = Some(app.admin.as_str());
    let big = "x".repeat(tend_orchestrator::flow::MAX_INPUT + 1);
    let (s, b) = app
        .json(
            "POST",
            "/api/v1/invocations",
            admin,
            submission(json!({ "input": { "x": big } })),
        )
        .await;
    refused(s, &b, StatusCode::PAYLOAD_TOO_LARGE, "input_too_large");
    // A body beyond the server's limit is refused as a whole, by the JSON extractor.
    let huge = submission(json!({ "input": { "x": "y".repeat(3 << 20) } }));
    let (s, b) = app.json("POST", "/api/v1/invocations", admin, huge).await;
    refused(s, &b, StatusCode::PAYLOAD_TOO_LARGE, "too_large");
    assert_eq!(app.stored_invocations().await, 0);
}

#[tokio::test]
async fn malformed_fields_are_422_or_400_naming_the_field() {
    let app = app().await;
    let admin = Some(app.admin.as_str());
    let (s, b) = app
        .json(
            "POST",
            "/api/v1/invocations",
            admin,
            submission(json!({ "target": "pool:web; rm -rf /" })),
        )
        .await;
    refused(s, &b, StatusCode::UNPROCESSABLE_ENTITY, "invalid_target");
    let (s, b) = app
        .json(
            "POST",
            "/api/v1/invocations",
            admin,
            submission(json!({ "reason": "r".repeat(5000) })),
        )
        .await;
    refused(s, &b, StatusCode::UNPROCESSABLE_ENTITY, "field_too_long");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("`reason`")
    );
    let (s, b) = app
        .json(
            "POST",
            "/api/v1/enroll-tokens",
            admin,
            json!({ "pools": ["Not A Pool"] }),
        )
        .await;
    refused(s, &b, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    // Bad JSON, an unknown field and a bad skill name are the caller's mistakes: 400.
    let (s, b) = app
        .call(
            "POST",
            "/api/v1/invocations",
            admin,
            Some(Body::from("{not json")),
        )
        .await;
    refused(s, &b, StatusCode::BAD_REQUEST, "bad_request");
    // An optional body that is sent but malformed is refused, not read as absent.
    let (s, b) = app
        .call(
            "POST",
            "/api/v1/invocations/inv_0123456789abcdef/reject",
            admin,
            Some(Body::from("{\"comment\": ")),
        )
        .await;
    refused(s, &b, StatusCode::BAD_REQUEST, "bad_request");
    let (s, b) = app
        .json(
            "POST",
            "/api/v1/invocations",
            admin,
            submission(json!({ "sudo": true })),
        )
        .await;
    refused(s, &b, StatusCode::BAD_REQUEST, "bad_request");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("sudo"),
        "{b}"
    );
    let (s, b) = app
        .json(
            "POST",
            "/api/v1/invocations",
            admin,
            submission(json!({ "skill": "../etc" })),
        )
        .await;
    refused(s, &b, StatusCode::BAD_REQUEST, "bad_request");
    assert_eq!(app.stored_invocations().await, 0);
}

#[tokio::test]
async fn an_unsigned_agent_request_is_401_and_audited() {
    let app = app().await;
    let (s, b) = app
        .json("POST", "/api/v1/agent/poll", None, json!({ "wait_ms": 0 }))
        .await;
    refused(s, &b, StatusCode::UNAUTHORIZED, "unauthenticated");
    assert!(
        app.audit()
            .await
            .iter()
            .any(|e| e.action == "agent.request_refused" && e.subject == "POST /api/v1/agent/poll"),
        "not audited"
    );
    // A job id spelt with percent-escapes is the same route: the audit names the route
    // template, not what the caller typed.
    let (s, b) = app
        .json(
            "POST",
            "/api/v1/agent/jobs/%69nv_0123456789abcdef/start",
            None,
            json!({}),
        )
        .await;
    refused(s, &b, StatusCode::UNAUTHORIZED, "unauthenticated");
    let subjects: Vec<String> = app
        .audit()
        .await
        .into_iter()
        .filter(|e| e.action == "agent.request_refused")
        .map(|e| e.subject)
        .collect();
    assert_eq!(
        subjects,
        [
            "POST /api/v1/agent/poll",
            "POST /api/v1/agent/jobs/{id}/start"
        ]
    );
}
