//! The agent side of the API. Agents only ever call out: enroll once with an enroll token, then
//! every request is signed (see [`crate::protocol`]) — heartbeat, long-poll for work, start,
//! renew, release and report. Operators see agents at `GET /api/v1/agents`.

use std::time::{Duration, Instant};

use axum::extract::DefaultBodyLimit;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::agents;
use crate::api::{ApiError, ApiJson, ApiResult, AppState, ErrorBody};
use crate::extract::{Admin, Caller, JobId, SignedAgent, Viewer};
use crate::invocation::{self, Queue};
use crate::protocol::{
    AgentView, Enroll, Enrolled, Heartbeat, Job, JobResult, Jobs, MAX_RESULT_BYTES, Poll,
};

/// Largest body of any agent route but the result: these carry a few small fields.
const SMALL_BODY: usize = 64 * 1024;

pub fn routes() -> Router<AppState> {
    let small = DefaultBodyLimit::max(SMALL_BODY);
    Router::new()
        .route("/api/v1/agents", get(list))
        .route("/api/v1/agents/{id}", delete(remove))
        .route("/api/v1/agents/enroll", post(enroll).layer(small))
        .route(
            "/api/v1/enroll-tokens",
            post(create_enroll_token).layer(small),
        )
        .route("/api/v1/agent/heartbeat", post(heartbeat).layer(small))
        .route("/api/v1/agent/poll", post(poll).layer(small))
        .route("/api/v1/agent/jobs/{id}/start", post(start).layer(small))
        .route("/api/v1/agent/jobs/{id}/renew", post(renew).layer(small))
        .route(
            "/api/v1/agent/jobs/{id}/release",
            post(release).layer(small),
        )
        // The body is read within MAX_RESULT_BYTES, once the sender is known (SignedAgent).
        .route(
            "/api/v1/agent/jobs/{id}/result",
            post(result).layer(DefaultBodyLimit::max(MAX_RESULT_BYTES)),
        )
}

#[utoipa::path(get, path = "/api/v1/agents", tag = "agents", security(("bearer" = [])),
    responses((status = 200, body = [AgentView]), (status = 401, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    _: Caller<Viewer>,
) -> ApiResult<Json<Vec<AgentView>>> {
    let all = agents::list(&state.db).await?;
    Ok(Json(
        all.iter()
            .map(|a| agents::view(a, state.settings.offline_after))
            .collect(),
    ))
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Removed {
    pub requeued_jobs: usize,
}

#[utoipa::path(delete, path = "/api/v1/agents/{id}", tag = "agents", security(("bearer" = [])), params(("id" = String, Path)),
    responses((status = 200, body = Removed), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn remove(
    State(state): State<AppState>,
    Caller(who, ..): Caller<Admin>,
    Path(id): Path<String>,
) -> ApiResult<Json<Removed>> {
    let requeued_jobs = agents::delete(&state.db, &id, &who.name).await?;
    state.kick_agents().await;
    Ok(Json(Removed { requeued_jobs }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewEnrollToken {
    /// How many agents may enroll with it (default 1).
    #[serde(default = "one")]
    pub uses: u32,
    /// Seconds until it expires (default 3600).
    #[serde(default = "hour")]
    pub ttl_s: u64,
    /// Pools an agent enrolled with it may serve (it may ask for fewer; none asked means all).
    #[serde(default)]
    pub pools: Vec<String>,
    /// Labels an agent enrolled with it gets (`env` sets the policy floor of its targets).
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// The highest ceiling level (0-3) an agent enrolled with it may declare (default 0).
    #[serde(default)]
    pub max_level: u8,
}

fn one() -> u32 {
    1
}
fn hour() -> u64 {
    3600
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EnrollToken {
    pub token: String,
}

fn invalid(e: crate::protocol::FieldError) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
        e.to_string(),
    )
}

#[utoipa::path(post, path = "/api/v1/enroll-tokens", tag = "agents", security(("bearer" = [])), request_body = NewEnrollToken,
    responses((status = 201, body = EnrollToken), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create_enroll_token(
    State(state): State<AppState>,
    Caller(who, ..): Caller<Admin>,
    ApiJson(req): ApiJson<NewEnrollToken>,
) -> ApiResult<Response> {
    if req.uses == 0 || req.uses > 10_000 || req.ttl_s == 0 || req.ttl_s > 30 * 86_400 {
        return Err(ApiError::bad_request(
            "uses must be 1-10000 and ttl_s 1-2592000",
        ));
    }
    let scope = agents::TokenScope {
        pools: req.pools,
        labels: req.labels,
        max_level: req.max_level,
    };
    scope.check().map_err(invalid)?;
    let token = agents::create_enroll_token(
        &state.db,
        req.uses,
        Duration::from_secs(req.ttl_s),
        &scope,
        &who.name,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(EnrollToken { token })).into_response())
}

#[utoipa::path(post, path = "/api/v1/agents/enroll", tag = "agents", request_body = Enroll,
    responses((status = 201, body = Enrolled), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn enroll(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<Enroll>,
) -> ApiResult<Response> {
    let enrolled = agents::enroll(&state.db, &req).await.map_err(|e| match e {
        agents::EnrollError::Invalid(e) => invalid(e),
        agents::EnrollError::Flow(e) => e.into(),
    })?;
    Ok((StatusCode::CREATED, Json(enrolled)).into_response())
}

pub async fn heartbeat(State(state): State<AppState>, req: SignedAgent) -> ApiResult<StatusCode> {
    let hb: Heartbeat = req.json()?;
    agents::heartbeat(&state.db, &req.agent, &hb).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Long-poll: hold the request until a job is assigned to this agent or `wait_ms` passes.
pub async fn poll(State(state): State<AppState>, signed: SignedAgent) -> ApiResult<Response> {
    let req: Poll = signed.json()?;
    let agent = signed.agent;
    // A poll is a sign of life too (heartbeats are the regular one).
    agents::seen(&state.db, &agent).await?;
    let deadline = Instant::now() + Duration::from_millis(req.wait_ms.min(30_000));
    let lease_ms = state.settings.agent_lease.as_millis() as i64;
    loop {
        let notified = state.agents_notify.notified();
        let mut jobs = Vec::new();
        while jobs.len() < req.max.clamp(1, 50) as usize {
            let Some(inv) =
                invocation::claim(&state.db, &agent.id, lease_ms, Queue::Agent(&agent.id)).await?
            else {
                break;
            };
            let (kind, expires_ms) = invocation::kind_and_expiry(&state.db, &inv.id).await?;
            jobs.push(Job {
                lease_until_ms: crate::db::now_ms() + lease_ms,
                lease_ms,
                invocation: inv,
                kind,
                expires_ms,
            });
        }
        if !jobs.is_empty() {
            return Ok(Json(Jobs { jobs }).into_response());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
        let _ = tokio::time::timeout(left.min(Duration::from_millis(500)), notified).await;
    }
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Lease {
    pub lease_until_ms: i64,
}

pub async fn start(
    State(state): State<AppState>,
    JobId(id): JobId,
    req: SignedAgent,
) -> ApiResult<StatusCode> {
    agents::start(&state.db, &req.agent, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn renew(
    State(state): State<AppState>,
    JobId(id): JobId,
    req: SignedAgent,
) -> ApiResult<Json<Lease>> {
    let lease_until_ms = agents::renew(
        &state.db,
        &req.agent,
        &id,
        state.settings.agent_lease.as_millis() as i64,
    )
    .await?;
    Ok(Json(Lease { lease_until_ms }))
}

pub async fn release(
    State(state): State<AppState>,
    JobId(id): JobId,
    req: SignedAgent,
) -> ApiResult<StatusCode> {
    agents::release(&state.db, &req.agent, &id).await?;
    state.kick_agents().await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Ack {
    /// `recorded`, or `already recorded` for a repeat.
    pub status: String,
}

pub async fn result(
    State(state): State<AppState>,
    JobId(id): JobId,
    req: SignedAgent,
) -> ApiResult<Json<Ack>> {
    let r: JobResult = req.json()?;
    r.check().map_err(invalid)?;
    let status = agents::report(&state.db, &req.agent, &id, &r).await?;
    // Counted once, when recorded: a repeat ("already recorded") adds nothing.
    if let (Some(report), "recorded") = (&r.report, status) {
        let outcome = report["outcome"].as_str().unwrap_or("trap").to_string();
        // The invocation's decided level, as the local worker counts it.
        let level = invocation::get(&state.db, &id).await.map_or(0, |i| i.level);
        state.metrics.job_finished(
            &outcome,
            level,
            Duration::from_micros(report["duration_us"].as_u64().unwrap_or(0)),
        );
    }
    Ok(Json(Ack {
        status: status.to_string(),
    }))
}
