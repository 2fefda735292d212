//! The HTTP API (axum). Handlers return `Result<_, ApiError>`; errors are
//! `{"error": {"code", "message"}}` (plus `reasons` for a policy refusal) with the right status.
//! A missing or wrong token is 401, too weak a role 403, and both are audited.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tend_policy::{Decision, Request, Role, Trigger};
use tokio::sync::Notify;

use crate::audit;
use crate::auth::{self, Actor};
use crate::db::Db;
use crate::invocation::{self, FlowError, NewInvocation, State as InvState};
use crate::metrics::Metrics;
use crate::skills::{Catalog, ResolveError};
use crate::worker::Worker;

/// What the server was started with that handlers need.
#[derive(Debug, Clone)]
pub struct Settings {
    pub approval_ttl: Duration,
    /// The local host, run by the built-in worker.
    pub target: tend_policy::Target,
    /// An agent is offline after this long without a sign of life.
    pub offline_after: Duration,
    /// How long an agent's claim lasts before it must be renewed.
    pub agent_lease: Duration,
    /// Floor per environment label (`env=prod` on an agent → its floor).
    pub env_floors: std::collections::BTreeMap<String, tend_policy::Level>,
}

#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub catalog: Arc<Catalog>,
    pub worker: Arc<Worker>,
    pub metrics: Arc<Metrics>,
    pub notify: Arc<Notify>,
    pub settings: Arc<Settings>,
    pub started: Instant,
    /// Wakes long-polling agents when work is assigned.
    pub agents_notify: Arc<Notify>,
    tokens: Arc<Mutex<HashMap<String, (Instant, Actor)>>>,
}

impl AppState {
    pub fn new(
        db: Db,
        catalog: Arc<Catalog>,
        worker: Arc<Worker>,
        metrics: Arc<Metrics>,
        notify: Arc<Notify>,
        settings: Settings,
    ) -> AppState {
        AppState {
            db,
            catalog,
            worker,
            metrics,
            notify,
            settings: Arc::new(settings),
            started: Instant::now(),
            agents_notify: Arc::new(Notify::new()),
            tokens: Arc::default(),
        }
    }

    /// Assign waiting agent jobs now and wake long-polling agents.
    pub async fn kick_agents(&self) {
        self.kick_agents_for(None).await;
    }

    /// Assign one invocation (or, with `None`, every waiting one) and wake agents.
    pub async fn kick_agents_for(&self, only: Option<&str>) {
        match crate::agents::dispatch(&self.db, self.settings.offline_after, only).await {
            Ok(_) => self.agents_notify.notify_waiters(),
            Err(e) => tracing::warn!(error = %e, "dispatching agent jobs failed"),
        }
    }

    /// The policy's view of a target: `local`, `pool:NAME` or `agent:NAME`.
    async fn resolve_target(&self, target: &str) -> ApiResult<tend_policy::Target> {
        if target == self.settings.target.name {
            return Ok(self.settings.target.clone());
        }
        let unknown = || {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_target",
                format!(
                    "no target {target:?}: use {:?} (this host), pool:NAME or agent:NAME of an enrolled agent",
                    self.settings.target.name
                ),
            )
        };
        let (kind, name) = target.split_once(':').ok_or_else(unknown)?;
        let all = crate::agents::list(&self.db).await?;
        let members: Vec<_> = all
            .iter()
            .filter(|a| match kind {
                "pool" => a.pools.iter().any(|p| p == name),
                "agent" => a.name == name || a.id == name,
                _ => false,
            })
            .collect();
        if members.is_empty() {
            return Err(unknown());
        }
        let floor_of = |a: &crate::agents::Agent| {
            a.labels
                .get("env")
                .and_then(|e| self.settings.env_floors.get(e))
                .copied()
                .unwrap_or(tend_policy::Level::L0)
        };
        let floor = members
            .iter()
            .map(|a| floor_of(a))
            .max()
            .unwrap_or(tend_policy::Level::L0);
        // The most any member would accept: each agent still enforces its own ceiling.
        let ceiling = members
            .iter()
            .filter_map(|a| tend_policy::Level::try_from(a.ceiling.max_level).ok())
            .max()
            .unwrap_or(tend_policy::Level::L0);
        let environment = members
            .iter()
            .find_map(|a| a.labels.get("env").cloned())
            .unwrap_or_else(|| "default".into());
        Ok(tend_policy::Target {
            name: target.to_string(),
            environment,
            floor,
            ceiling,
        })
    }
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub reasons: Option<Vec<String>>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            reasons: None,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasons: Option<Vec<String>>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
                reasons: self.reasons,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<FlowError> for ApiError {
    fn from(e: FlowError) -> Self {
        match e {
            FlowError::NotFound(m) => ApiError::new(StatusCode::NOT_FOUND, "not_found", m),
            FlowError::Forbidden(m) => ApiError::new(StatusCode::FORBIDDEN, "forbidden", m),
            FlowError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            FlowError::Db(e) => e.into(),
        }
    }
}

impl From<crate::db::DbError> for ApiError {
    fn from(e: crate::db::DbError) -> Self {
        tracing::error!(error = %e, "storage failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "storage",
            "the orchestrator could not read or write its database",
        )
    }
}

fn bad_json(e: JsonRejection) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "bad_request",
        format!("request body: {}", e.body_text()),
    )
}

type ApiResult<T> = Result<T, ApiError>;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/status", get(status))
        .route("/api/v1/invocations", get(list).post(submit))
        .route("/api/v1/invocations/{id}", get(show))
        .route("/api/v1/invocations/{id}/approve", post(approve))
        .route("/api/v1/invocations/{id}/reject", post(reject))
        .route("/api/v1/invocations/{id}/cancel", post(cancel))
        .route("/api/v1/audit", get(audit_list))
        .route("/api/v1/audit/head", get(audit_head))
        .route("/api/v1/openapi.json", get(openapi))
        .merge(crate::agent_api::routes())
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .with_state(state)
}

/// The OpenAPI 3 document, generated from the handlers and types above.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "Tend orchestrator", description = "Zero-trust decisions, human approvals, jobs and a hash-chained audit trail for Tend skills."),
    paths(readyz, metrics, status, submit, list, show, approve, reject, cancel, audit_list, audit_head,
        crate::agent_api::list, crate::agent_api::remove, crate::agent_api::create_enroll_token, crate::agent_api::enroll),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(<ApiDoc as utoipa::OpenApi>::openapi())
}

/// The caller, at least `min` — or 401/403, audited.
pub(crate) async fn actor(
    state: &AppState,
    headers: &HeaderMap,
    min: Role,
    what: &str,
) -> ApiResult<Actor> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let found = match token {
        None => None,
        Some(t) => {
            let cached = state
                .tokens
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(t)
                .filter(|(at, _)| at.elapsed() < Duration::from_secs(10))
                .map(|(_, a)| a.clone());
            match cached {
                Some(a) => Some(a),
                None => {
                    let a = auth::authenticate(&state.db, t).await?;
                    if let Some(a) = &a {
                        state
                            .tokens
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(t.to_string(), (Instant::now(), a.clone()));
                    }
                    a
                }
            }
        }
    };
    let Some(actor) = found else {
        let why = if token.is_some() {
            "unknown token"
        } else {
            "no token"
        };
        audit::refused(
            &state.db,
            audit::Action::AuthRefused,
            what,
            serde_json::json!({ "why": why }),
        )
        .await?;
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            format!("{why}: send `Authorization: Bearer <token>` (tend token create)"),
        ));
    };
    if actor.role < min {
        audit::append(
            &state.db,
            &actor.name,
            audit::Action::AuthForbidden,
            what,
            serde_json::json!({ "role": actor.role.as_str(), "needs": min.as_str() }),
        )
        .await?;
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "{} has role {}; {what} needs {} or above",
                actor.name,
                actor.role.as_str(),
                min.as_str()
            ),
        ));
    }
    Ok(actor)
}

#[utoipa::path(get, path = "/readyz", tag = "health", responses((status = 200, description = "the database answers", body = String), (status = 503, body = ErrorBody)))]
async fn readyz(State(state): State<AppState>) -> Response {
    match sqlx::query("SELECT 1").execute(&state.db.pool).await {
        Ok(_) => "ready\n".into_response(),
        Err(e) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            format!("database unreachable: {e}"),
        )
        .into_response(),
    }
}

#[utoipa::path(get, path = "/metrics", tag = "health", responses((status = 200, description = "Prometheus text format", body = String), (status = 500, body = ErrorBody)))]
async fn metrics(State(state): State<AppState>) -> ApiResult<Response> {
    let counts = invocation::counts(&state.db).await?;
    let head = audit::head(&state.db).await?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state
            .metrics
            .render(&counts, head.index, &state.db.refusals.totals()),
    )
        .into_response())
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Status {
    pub version: String,
    pub database: String,
    pub uptime_s: u64,
    pub target: String,
    pub worker: String,
}

#[utoipa::path(get, path = "/api/v1/status", tag = "health", security(("bearer" = [])), responses((status = 200, body = Status), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn status(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Json<Status>> {
    actor(&state, &headers, Role::Viewer, "status").await?;
    Ok(Json(Status {
        version: env!("CARGO_PKG_VERSION").to_string(),
        database: format!("{:?}", state.db.backend).to_lowercase(),
        uptime_s: state.started.elapsed().as_secs(),
        target: state.settings.target.name.clone(),
        worker: state.worker.owner.clone(),
    }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Submit {
    pub skill: String,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub target: Option<String>,
    #[serde(default = "empty_object")]
    #[schema(value_type = Object)]
    pub input: serde_json::Value,
    pub reason: String,
}

fn empty_object() -> serde_json::Value {
    serde_json::json!({})
}

/// Submit an invocation: resolved and verified through the registry, input checked against
/// the skill's schema, then decided: queued (201), pending approval (201) or refused (403).
#[utoipa::path(post, path = "/api/v1/invocations", tag = "invocations", security(("bearer" = [])), request_body = Submit,
    responses((status = 201, body = invocation::Invocation), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody), (status = 502, body = ErrorBody)))]
async fn submit(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<Submit>, JsonRejection>,
) -> ApiResult<Response> {
    let who = actor(&state, &headers, Role::Viewer, "invoking a skill").await?;
    let Json(req) = body.map_err(bad_json)?;
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", m);
    check_submit_bounds(&req)?;
    tend_manifest::SkillName::parse(&req.skill).map_err(|e| bad(format!("`skill`: {e}")))?;
    if let Some(v) = &req.version
        && semver::Version::parse(v).is_err()
    {
        return Err(bad(format!("`version` {v:?} is not a semantic version")));
    }
    if req.reason.trim().is_empty() {
        return Err(bad("`reason` must say why this invocation is wanted".into()));
    }
    let target = req
        .target
        .unwrap_or_else(|| state.settings.target.name.clone());
    let policy_target = state.resolve_target(&target).await?;
    let skill = state
        .catalog
        .resolve(&req.skill, req.version.as_deref())
        .await
        .map_err(|e| match e {
            ResolveError::NotFound(m) => ApiError::new(StatusCode::NOT_FOUND, "unknown_skill", m),
            ResolveError::Untrusted(m) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "not_trusted", m)
            }
            ResolveError::Registry(m) => {
                ApiError::new(StatusCode::BAD_GATEWAY, "registry_unavailable", m)
            }
        })?;
    if let Some(schema) = &skill.input_schema {
        let errors: Vec<String> = schema
            .iter_errors(&req.input)
            .take(3)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        if !errors.is_empty() {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_input",
                format!(
                    "input does not match the input schema of {} {}: {}",
                    skill.name,
                    skill.version,
                    errors.join("; ")
                ),
            ));
        }
    }
    let verdict = {
        let _span = tracing::info_span!("decide", skill = %skill.name).entered();
        tend_policy::decide(&Request {
            skill: skill.name.clone(),
            declared: tend_policy::Level::try_from(skill.manifest.skill.level)
                .unwrap_or(tend_policy::Level::L3),
            grants: skill.manifest.grants(),
            target: policy_target,
            trigger: Trigger::Human,
            requester: who.name.clone(),
            role: who.role,
        })
    };
    let decision = match &verdict.decision {
        Decision::Allow => "allow",
        Decision::NeedsApproval { .. } => "needs_approval",
        Decision::Deny(_) => "deny",
    };
    state.metrics.decision(decision);
    if let Decision::Deny(why) = &verdict.decision {
        audit::append(
            &state.db,
            &who.name,
            audit::Action::InvocationDenied,
            &skill.name,
            serde_json::json!({
                "skill": skill.name, "version": skill.version, "target": target,
                "reason": req.reason, "decision": verdict.explain(),
            }),
        )
        .await?;
        let mut e = ApiError::new(
            StatusCode::FORBIDDEN,
            "policy_denied",
            format!("refused by policy: {why}"),
        );
        e.reasons = Some(verdict.explain());
        return Err(e);
    }
    // Compile (or load precompiled) now, off the request path, so the run compiles nothing.
    {
        let worker = state.worker.clone();
        let skill = skill.clone();
        tokio::spawn(async move {
            if let Err(e) = worker.prepare(&skill).await {
                tracing::warn!(skill = %skill.name, error = %e, "precompiling failed");
            }
        });
    }
    let inv = invocation::create(
        &state.db,
        NewInvocation {
            skill: &skill,
            target: &target,
            input: req.input,
            reason: &req.reason,
            requester: &who,
            verdict: &verdict,
            approval_ttl_ms: state.settings.approval_ttl.as_millis() as i64,
        },
    )
    .await?;
    if inv.state == InvState::Queued {
        if inv.target == state.settings.target.name {
            state.notify.notify_waiters();
        } else {
            state.kick_agents_for(Some(&inv.id)).await;
        }
    }
    Ok((StatusCode::CREATED, Json(inv)).into_response())
}

/// Largest stored invocation input (bytes of JSON text).
pub const MAX_INPUT: usize = 64 * 1024;
/// Longest `reason` and reject `comment` (bytes).
pub const MAX_REASON: usize = 1024;
/// Longest target name (`pool:NAME`, `agent:NAME`).
pub const MAX_TARGET: usize = 160;
/// Longest `version`.
pub const MAX_VERSION: usize = 64;

fn too_long(field: &str, len: usize, max: usize) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "field_too_long",
        format!("`{field}` is {len} bytes; at most {max} are accepted"),
    )
}

/// Every field of a submission that is stored is bounded before anything is resolved or
/// written: 413 for an oversize input, 422 naming the field otherwise.
fn check_submit_bounds(req: &Submit) -> ApiResult<()> {
    let input = req.input.to_string().len();
    if input > MAX_INPUT {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "input_too_large",
            format!("`input` is {input} bytes of JSON; at most {MAX_INPUT} are accepted"),
        ));
    }
    if req.reason.len() > MAX_REASON {
        return Err(too_long("reason", req.reason.len(), MAX_REASON));
    }
    if let Some(v) = &req.version
        && v.len() > MAX_VERSION
    {
        return Err(too_long("version", v.len(), MAX_VERSION));
    }
    if let Some(t) = &req.target {
        if t.len() > MAX_TARGET {
            return Err(too_long("target", t.len(), MAX_TARGET));
        }
        let allowed = |c: char| c.is_ascii_alphanumeric() || "-_.:@".contains(c);
        if t.is_empty() || !t.chars().all(allowed) {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_target",
                format!(
                    "`target` {:?} may only hold letters, digits and - _ . : @",
                    audit::safe_field(t, 64)
                ),
            ));
        }
    }
    Ok(())
}

/// An invocation id from the path: anything longer is not one of ours (404, not echoed).
fn check_id(id: &str) -> ApiResult<()> {
    if id.len() > 64 {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such invocation",
        ));
    }
    Ok(())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only invocations in this state
    state: Option<String>,
    /// At most this many, newest first (1-1000, default 100)
    limit: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InvocationList {
    pub invocations: Vec<invocation::Invocation>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditPage {
    pub events: Vec<audit::Event>,
    pub head: audit::Head,
}

#[utoipa::path(get, path = "/api/v1/invocations", tag = "invocations", security(("bearer" = [])), params(ListQuery),
    responses((status = 200, body = InvocationList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<InvocationList>> {
    actor(&state, &headers, Role::Viewer, "listing invocations").await?;
    let filter = match q.state.as_deref() {
        None => None,
        Some(s) => Some(InvState::parse(s).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("unknown state {s:?}"),
            )
        })?),
    };
    let items = invocation::list(&state.db, filter, q.limit.unwrap_or(100).clamp(1, 1000)).await?;
    Ok(Json(InvocationList { invocations: items }))
}

#[utoipa::path(get, path = "/api/v1/invocations/{id}", tag = "invocations", security(("bearer" = [])), params(("id" = String, Path)),
    responses((status = 200, body = invocation::Invocation), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn show(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<invocation::Invocation>> {
    actor(&state, &headers, Role::Viewer, "reading an invocation").await?;
    check_id(&id)?;
    Ok(Json(invocation::get(&state.db, &id).await?))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApproveBody {
    /// The digest of the invocation the approver reviewed.
    pub invocation_digest: String,
}

/// Approve one exact invocation: the body names the digest the approver reviewed.
#[utoipa::path(post, path = "/api/v1/invocations/{id}/approve", tag = "approvals", security(("bearer" = [])), params(("id" = String, Path)), request_body = ApproveBody,
    responses((status = 200, body = invocation::Invocation), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn approve(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<ApproveBody>, JsonRejection>,
) -> ApiResult<Json<invocation::Invocation>> {
    let who = actor(&state, &headers, Role::Approver, "approving").await?;
    check_id(&id)?;
    let Json(body) = body.map_err(bad_json)?;
    if body.invocation_digest.len() > 128 {
        return Err(too_long(
            "invocation_digest",
            body.invocation_digest.len(),
            128,
        ));
    }
    let inv = tracing::Instrument::instrument(
        invocation::approve(&state.db, &id, &who, &body.invocation_digest),
        tracing::info_span!("approve", invocation = %id),
    )
    .await?;
    if inv.state == InvState::Queued {
        state.notify.notify_waiters();
        state.kick_agents_for(Some(&inv.id)).await;
    }
    Ok(Json(inv))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RejectBody {
    #[serde(default)]
    pub comment: String,
}

#[utoipa::path(post, path = "/api/v1/invocations/{id}/reject", tag = "approvals", security(("bearer" = [])), params(("id" = String, Path)), request_body = RejectBody,
    responses((status = 200, body = invocation::Invocation), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn reject(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Option<Json<RejectBody>>,
) -> ApiResult<Json<invocation::Invocation>> {
    let who = actor(&state, &headers, Role::Approver, "rejecting").await?;
    check_id(&id)?;
    let comment = body.map(|Json(b)| b.comment).unwrap_or_default();
    if comment.len() > MAX_REASON {
        return Err(too_long("comment", comment.len(), MAX_REASON));
    }
    Ok(Json(
        invocation::reject(&state.db, &id, &who, &comment).await?,
    ))
}

#[utoipa::path(post, path = "/api/v1/invocations/{id}/cancel", tag = "invocations", security(("bearer" = [])), params(("id" = String, Path)),
    responses((status = 200, body = invocation::Invocation), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn cancel(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<invocation::Invocation>> {
    let who = actor(&state, &headers, Role::Operator, "cancelling").await?;
    check_id(&id)?;
    Ok(Json(invocation::cancel(&state.db, &id, &who).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct AuditQuery {
    /// Events after this index (default 0)
    after: Option<i64>,
    /// At most this many (1-1000, default 100)
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", security(("bearer" = [])), params(AuditQuery),
    responses((status = 200, body = AuditPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn audit_list(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<AuditPage>> {
    actor(&state, &headers, Role::Viewer, "reading the audit trail").await?;
    let events = audit::list(
        &state.db,
        q.after.unwrap_or(0).max(0),
        q.limit.unwrap_or(100).clamp(1, 1000),
    )
    .await?;
    let head = audit::head(&state.db).await?;
    Ok(Json(AuditPage { events, head }))
}

#[utoipa::path(get, path = "/api/v1/audit/head", tag = "audit", security(("bearer" = [])),
    responses((status = 200, body = audit::Head), (status = 401, body = ErrorBody)))]
async fn audit_head(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> ApiResult<Json<audit::Head>> {
    actor(&state, &headers, Role::Viewer, "reading the audit head").await?;
    Ok(Json(audit::head(&state.db).await?))
}
