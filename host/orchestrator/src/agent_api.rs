//! The agent side of the API. Agents only ever call out: enroll once with an enroll token, then
//! every request is signed (see [`crate::protocol`]) — heartbeat, long-poll for work, start,
//! renew, release and report. Operators see agents at `GET /api/v1/agents`.

use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tend_policy::Role;

use crate::agents::{self, Agent, SignedError};
use crate::api::{ApiError, AppState, ErrorBody, actor};
use crate::audit;
use crate::invocation::{self, Queue};
use crate::protocol::{
    AGENT_HEADER, AgentView, Enroll, Enrolled, Heartbeat, Job, JobResult, Jobs, NONCE_HEADER, Poll,
    SIGNATURE_HEADER, TIMESTAMP_HEADER,
};

type ApiResult<T> = Result<T, ApiError>;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/agents", get(list))
        .route("/api/v1/agents/{id}", delete(remove))
        .route("/api/v1/agents/enroll", post(enroll))
        .route("/api/v1/enroll-tokens", post(create_enroll_token))
        .route("/api/v1/agent/heartbeat", post(heartbeat))
        .route("/api/v1/agent/poll", post(poll))
        .route("/api/v1/agent/jobs/{id}/start", post(start))
        .route("/api/v1/agent/jobs/{id}/renew", post(renew))
        .route("/api/v1/agent/jobs/{id}/release", post(release))
        .route("/api/v1/agent/jobs/{id}/result", post(result))
}

fn bad(m: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_request", m)
}

/// The agent behind a signed request — or 401, audited.
async fn signed(
    state: &AppState,
    headers: &HeaderMap,
    method: &Method,
    path: &str,
    body: &[u8],
) -> ApiResult<Agent> {
    let h = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let agent_id = h(AGENT_HEADER);
    let (timestamp, nonce, signature) = (h(TIMESTAMP_HEADER), h(NONCE_HEADER), h(SIGNATURE_HEADER));
    let verified = agents::verify_request(
        &state.db,
        &agents::SignedRequest {
            agent_id: &agent_id,
            timestamp: &timestamp,
            nonce: &nonce,
            signature: &signature,
            method: method.as_str(),
            path,
            body,
        },
    )
    .await;
    match verified {
        Ok(agent) => Ok(agent),
        Err(SignedError::Db(e)) => Err(e.into()),
        Err(SignedError::Refused(why)) => {
            // Unauthenticated: recorded as `anonymous`; the claimed agent is detail (bounded).
            audit::refused(
                &state.db,
                "agent.request_refused",
                path,
                serde_json::json!({ "why": why, "claimed_agent": agent_id }),
            )
            .await?;
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                format!("signed agent request refused: {why}"),
            ))
        }
    }
}

fn json_body<T: for<'de> Deserialize<'de>>(body: &[u8]) -> ApiResult<T> {
    serde_json::from_slice(body).map_err(|e| bad(format!("request body: {e}")))
}

#[utoipa::path(get, path = "/api/v1/agents", tag = "agents", security(("bearer" = [])),
    responses((status = 200, body = [AgentView]), (status = 401, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> ApiResult<Json<Vec<AgentView>>> {
    actor(&state, &headers, Role::Viewer, "listing agents").await?;
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
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Removed>> {
    let who = actor(&state, &headers, Role::Admin, "removing an agent").await?;
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

#[utoipa::path(post, path = "/api/v1/enroll-tokens", tag = "agents", security(("bearer" = [])), request_body = NewEnrollToken,
    responses((status = 201, body = EnrollToken), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn create_enroll_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let who = actor(&state, &headers, Role::Admin, "creating enroll tokens").await?;
    let req: NewEnrollToken = json_body(&body)?;
    if req.uses == 0 || req.uses > 10_000 || req.ttl_s == 0 || req.ttl_s > 30 * 86_400 {
        return Err(bad("uses must be 1-10000 and ttl_s 1-2592000"));
    }
    let token = agents::create_enroll_token(
        &state.db,
        req.uses,
        Duration::from_secs(req.ttl_s),
        &who.name,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(EnrollToken { token })).into_response())
}

#[utoipa::path(post, path = "/api/v1/agents/enroll", tag = "agents", request_body = Enroll,
    responses((status = 201, body = Enrolled), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn enroll(State(state): State<AppState>, body: Bytes) -> ApiResult<Response> {
    let req: Enroll = json_body(&body)?;
    if req.name.trim().is_empty() || req.name.len() > 128 {
        return Err(bad("name must be 1-128 characters"));
    }
    let agent_id = agents::enroll(&state.db, &req).await?;
    Ok((StatusCode::CREATED, Json(Enrolled { agent_id })).into_response())
}

pub async fn heartbeat(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let agent = signed(
        &state,
        &headers,
        &Method::POST,
        "/api/v1/agent/heartbeat",
        &body,
    )
    .await?;
    let hb: Heartbeat = json_body(&body)?;
    agents::heartbeat(&state.db, &agent, &hb).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Long-poll: hold the request until a job is assigned to this agent or `wait_ms` passes.
pub async fn poll(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let agent = signed(&state, &headers, &Method::POST, "/api/v1/agent/poll", &body).await?;
    let req: Poll = json_body(&body)?;
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
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let path = format!("/api/v1/agent/jobs/{id}/start");
    let agent = signed(&state, &headers, &Method::POST, &path, &body).await?;
    agents::start(&state.db, &agent, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn renew(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Lease>> {
    let path = format!("/api/v1/agent/jobs/{id}/renew");
    let agent = signed(&state, &headers, &Method::POST, &path, &body).await?;
    let lease_until_ms = agents::renew(
        &state.db,
        &agent,
        &id,
        state.settings.agent_lease.as_millis() as i64,
    )
    .await?;
    Ok(Json(Lease { lease_until_ms }))
}

pub async fn release(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let path = format!("/api/v1/agent/jobs/{id}/release");
    let agent = signed(&state, &headers, &Method::POST, &path, &body).await?;
    agents::release(&state.db, &agent, &id).await?;
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
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Ack>> {
    let path = format!("/api/v1/agent/jobs/{id}/result");
    let agent = signed(&state, &headers, &Method::POST, &path, &body).await?;
    let r: JobResult = json_body(&body)?;
    let status = agents::report(&state.db, &agent, &id, &r).await?;
    if let Some(report) = &r.report {
        let outcome = report["outcome"].as_str().unwrap_or("trap").to_string();
        state.metrics.job_finished(
            &outcome,
            0,
            Duration::from_micros(report["duration_us"].as_u64().unwrap_or(0)),
        );
    }
    Ok(Json(Ack {
        status: status.to_string(),
    }))
}
