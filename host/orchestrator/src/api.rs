//! The HTTP API (axum). Handlers are thin: extractors say who is asking ([`Caller`],
//! [`crate::extract::SignedAgent`]) and parse the body ([`ApiJson`]); the handler calls the
//! flow and answers. Errors are one [`ApiError`] shape, `{"error": {"code", "message"}}` (plus
//! `reasons` for a policy refusal) with the right status. A missing or wrong token is 401, too
//! weak a role 403, and both are audited.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

pub use tend_http::{ApiError, ApiJson, ApiResult, ErrorBody};

use crate::audit;
use crate::db::Db;
use crate::extract::{Approver, Caller, Operator, TokenCache, Viewer};
use crate::flow::{self, Submission, SubmitError, Trigger};
use crate::invocation::{self, FlowError, State as InvState};
use crate::metrics::Metrics;
use crate::skills::Catalog;
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
    /// Most hosts one run across a pool may cover, per level L0..L3.
    pub blast_radius: [usize; 4],
    /// The healing policies in force (replaced whole through the API).
    pub healing: crate::healing::Live,
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
    /// Wakes the healing loop (an alert arrived, a job ended).
    pub heal_wake: Arc<Notify>,
    pub(crate) tokens: Arc<TokenCache>,
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
            heal_wake: Arc::new(Notify::new()),
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
}

impl From<FlowError> for ApiError {
    fn from(e: FlowError) -> Self {
        match e {
            FlowError::NotFound(m) => ApiError::new(StatusCode::NOT_FOUND, "not_found", m),
            FlowError::Forbidden(m) => ApiError::new(StatusCode::FORBIDDEN, "forbidden", m),
            FlowError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            FlowError::Invalid(m) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", m)
            }
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
        .merge(crate::approvers::api::routes())
        .merge(crate::token_api::routes())
        .merge(crate::incidents::routes())
        .merge(crate::console::routes())
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .layer(axum::middleware::map_response(
            crate::console::every_response,
        ))
        .with_state(state)
}

/// The OpenAPI 3 document, generated from the handlers and types above.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "Tend orchestrator", description = "Zero-trust decisions, human approvals, jobs and a hash-chained audit trail for Tend skills."),
    paths(readyz, metrics, status, submit, list, show, approve, reject, cancel, audit_list, audit_head,
        crate::agent_api::list, crate::agent_api::remove, crate::agent_api::create_enroll_token, crate::agent_api::enroll,
        crate::approvers::api::register, crate::approvers::api::list, crate::approvers::api::remove,
        crate::token_api::create, crate::token_api::list, crate::token_api::revoke, crate::token_api::rotate,
        crate::incidents::alertmanager, crate::incidents::list_incidents, crate::incidents::show_incident,
        crate::incidents::show_policies, crate::incidents::set_policies,
        crate::console::whoami, crate::console::skills, crate::console::audit_verify),
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
async fn status(State(state): State<AppState>, _: Caller<Viewer>) -> Json<Status> {
    Json(Status {
        version: env!("CARGO_PKG_VERSION").to_string(),
        database: format!("{:?}", state.db.backend).to_lowercase(),
        uptime_s: state.started.elapsed().as_secs(),
        target: state.settings.target.name.clone(),
        worker: state.worker.owner.clone(),
    })
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        let message = e.to_string();
        let (status, code) = match e {
            SubmitError::Flow(e) => return e.into(),
            SubmitError::Denied { reasons, .. } => {
                return ApiError::new(StatusCode::FORBIDDEN, "policy_denied", message)
                    .with_reasons(reasons);
            }
            SubmitError::NoAgentCanRun { reasons, .. } => {
                return ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "no_runner", message)
                    .with_reasons(reasons);
            }
            SubmitError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            SubmitError::InputTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "input_too_large"),
            SubmitError::FieldTooLong { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "field_too_long")
            }
            SubmitError::InvalidTarget(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_target"),
            SubmitError::UnknownTarget(_) => (StatusCode::NOT_FOUND, "unknown_target"),
            SubmitError::UnknownSkill(_) => (StatusCode::NOT_FOUND, "unknown_skill"),
            SubmitError::NotTrusted(_) => (StatusCode::UNPROCESSABLE_ENTITY, "not_trusted"),
            SubmitError::Registry(_) => (StatusCode::BAD_GATEWAY, "registry_unavailable"),
            SubmitError::InvalidInput(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_input"),
            SubmitError::Widens(_) => (StatusCode::UNPROCESSABLE_ENTITY, "widens_grants"),
            SubmitError::BlastRadius { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "blast_radius"),
        };
        ApiError::new(status, code, message)
    }
}

/// The header a submission names its trigger in: `api` (the default) or `cli` (the `tend`
/// command line sends it). Nothing else may be claimed here: a webhook, a schedule or the
/// console have their own entry points.
pub const TRIGGER_HEADER: &str = "tend-trigger";

/// The trigger a submission through the API claims (see [`TRIGGER_HEADER`]).
fn api_trigger(headers: &axum::http::HeaderMap) -> ApiResult<Trigger> {
    match headers.get(TRIGGER_HEADER).map(|v| v.to_str()) {
        None => Ok(Trigger::Api),
        Some(Ok("api")) => Ok(Trigger::Api),
        Some(Ok("cli")) => Ok(Trigger::Cli),
        Some(_) => Err(ApiError::bad_request(
            "the Tend-Trigger header may only be `api` or `cli`",
        )),
    }
}

/// Submit an invocation: resolved and verified through the registry, input checked against
/// the skill's schema, then decided: queued (201), pending approval (201), refused by policy (403)
/// or refused because no agent of a pool/agent target would accept it (422 `no_runner`).
/// A `Tend-Trigger: cli` header records it as started from the command line.
#[utoipa::path(post, path = "/api/v1/invocations", tag = "invocations", security(("bearer" = [])), request_body = Submission,
    params(("tend-trigger" = Option<String>, Header, description = "`api` (default) or `cli`: what started the invocation")),
    responses((status = 201, body = invocation::Invocation), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody), (status = 502, body = ErrorBody)))]
async fn submit(
    State(state): State<AppState>,
    Caller(who, ..): Caller<Viewer>,
    headers: axum::http::HeaderMap,
    ApiJson(request): ApiJson<Submission>,
) -> ApiResult<Response> {
    let trigger = api_trigger(&headers)?;
    let inv = flow::submit(&state, trigger, &who, request).await?;
    Ok((StatusCode::CREATED, Json(inv)).into_response())
}

/// A stored field over its bound: the same 422 a submission's fields get.
fn too_long(field: &'static str, len: usize, max: usize) -> ApiError {
    SubmitError::FieldTooLong { field, len, max }.into()
}

/// An invocation id from the path: anything longer is not one of ours (404, not echoed).
#[derive(Debug)]
struct InvocationId(String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for InvocationId {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> ApiResult<Self> {
        let not_found = || ApiError::not_found("not_found", "no such invocation");
        let Path(id) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| not_found())?;
        if id.len() > 64 {
            return Err(not_found());
        }
        Ok(InvocationId(id))
    }
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
    _: Caller<Viewer>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<InvocationList>> {
    let filter = match q.state.as_deref() {
        None => None,
        Some(s) => Some(
            InvState::parse(s)
                .ok_or_else(|| ApiError::bad_request(format!("unknown state {s:?}")))?,
        ),
    };
    let items = invocation::list(&state.db, filter, q.limit.unwrap_or(100).clamp(1, 1000)).await?;
    Ok(Json(InvocationList { invocations: items }))
}

#[utoipa::path(get, path = "/api/v1/invocations/{id}", tag = "invocations", security(("bearer" = [])), params(("id" = String, Path)),
    responses((status = 200, body = invocation::Invocation), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn show(
    State(state): State<AppState>,
    _: Caller<Viewer>,
    InvocationId(id): InvocationId,
) -> ApiResult<Json<invocation::Invocation>> {
    Ok(Json(invocation::get(&state.db, &id).await?))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApproveBody {
    /// The digest of the invocation the approver reviewed, recomputed by their client.
    pub invocation_digest: String,
    /// Base64 ed25519 signature by the approver's registered key over
    /// `tend-approval/v1\n<invocation_digest>\n`.
    #[serde(default)]
    pub signature: Option<String>,
}

/// Approve one exact invocation: the body names the digest the approver reviewed and carries
/// their signature over it (`tend approve` makes both).
#[utoipa::path(post, path = "/api/v1/invocations/{id}/approve", tag = "approvals", security(("bearer" = [])), params(("id" = String, Path)), request_body = ApproveBody,
    responses((status = 200, body = invocation::Invocation), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn approve(
    State(state): State<AppState>,
    Caller(who, ..): Caller<Approver>,
    InvocationId(id): InvocationId,
    ApiJson(body): ApiJson<ApproveBody>,
) -> ApiResult<Json<invocation::Invocation>> {
    if body.invocation_digest.len() > 128 {
        return Err(too_long(
            "invocation_digest",
            body.invocation_digest.len(),
            128,
        ));
    }
    let Some(signature) = body.signature.as_deref() else {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unsigned_approval",
            "an approval is a signature by your own approver key over the invocation digest: use `tend approve ID`",
        ));
    };
    if signature.len() > 128 {
        return Err(too_long("signature", signature.len(), 128));
    }
    let inv = tracing::Instrument::instrument(
        invocation::approve(&state.db, &id, &who, &body.invocation_digest, signature),
        tracing::info_span!("approve", invocation = %id),
    )
    .await?;
    // Queued, or running as the parts of a run across a pool, each queued for its host.
    if matches!(inv.state, InvState::Queued | InvState::Running) {
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
    Caller(who, ..): Caller<Approver>,
    InvocationId(id): InvocationId,
    body: Option<ApiJson<RejectBody>>,
) -> ApiResult<Json<invocation::Invocation>> {
    let comment = body.map(|ApiJson(b)| b.comment).unwrap_or_default();
    if comment.len() > flow::MAX_REASON {
        return Err(too_long("comment", comment.len(), flow::MAX_REASON));
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
    Caller(who, ..): Caller<Operator>,
    InvocationId(id): InvocationId,
) -> ApiResult<Json<invocation::Invocation>> {
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
    _: Caller<Viewer>,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<AuditPage>> {
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
    _: Caller<Viewer>,
) -> ApiResult<Json<audit::Head>> {
    Ok(Json(audit::head(&state.db).await?))
}
