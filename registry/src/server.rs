//! The registry's HTTP API (axum). Reads are open unless the registry is `--private`;
//! publishing needs a publisher token, and nothing is stored until the signature verifies
//! against the registry's trust policy.
//!
//! | method | path | |
//! |---|---|---|
//! | GET | `/healthz` | liveness |
//! | GET | `/api/v1/skills?q=` | latest version of each skill (search by name/description) |
//! | GET | `/api/v1/skills/{name}` | every version, newest first |
//! | GET | `/api/v1/skills/{name}/{version\|latest}` | one version, with its envelope |
//! | PUT | `/api/v1/skills/{name}/{version}` | publish: body = component, `Tend-Signature` = base64 envelope |
//! | GET | `/api/v1/blobs/sha256:{hex}` | component bytes |
//! | GET | `/api/v1/log` | the hash-chained publication log and its head |

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;

use crate::envelope::Envelope;
use crate::publog::Checkpoint;
use crate::store::{Caller, Entry, Refused, Role, Store, StoreError};
use crate::trust::{TrustPolicy, VerifyOptions};
pub use crate::wire::{ErrorBody, ErrorDetail, LogResponse, SIGNATURE_HEADER, SkillList};
pub use tend_http::{ApiError, ApiResult};

/// Largest component accepted (64 MiB; a Python skill is ~18 MiB).
pub const MAX_COMPONENT_BYTES: usize = 64 << 20;

#[derive(Debug, Clone)]
pub struct AppState {
    pub store: Arc<Store>,
    /// Publishers whose signatures this registry accepts.
    pub trust: Arc<TrustPolicy>,
    /// Reads need a token too.
    pub private: bool,
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict { .. } => {
                ApiError::new(StatusCode::CONFLICT, "version_immutable", e.to_string())
            }
            StoreError::ManifestDiffers { .. } => {
                ApiError::new(StatusCode::CONFLICT, "manifest_differs", e.to_string())
            }
            e => {
                tracing::error!(error = %e, "registry storage failed");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "storage",
                    "the registry could not read or write its storage",
                )
            }
        }
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/api/v1/skills", get(list))
        .route("/api/v1/skills/{name}", get(versions))
        .route("/api/v1/skills/{name}/{version}", get(show).put(publish))
        .route("/api/v1/blobs/{digest}", get(blob))
        .route("/api/v1/log", get(log))
        .layer(DefaultBodyLimit::max(MAX_COMPONENT_BYTES))
        .with_state(state)
}

/// The caller a bearer token names — or 401. An expired or revoked token gets the same 401 as
/// an unknown one; the log says why (the registry keeps no audit trail of its own).
async fn caller(state: &AppState, headers: &HeaderMap) -> ApiResult<Option<Caller>> {
    let Some(token) = tend_http::bearer_token(headers)? else {
        return Ok(None);
    };
    match state.store.authenticate(token).await? {
        Ok(c) => return Ok(Some(c)),
        Err(Refused::Unknown) => {
            tracing::warn!("request with an unknown registry token refused");
        }
        Err(Refused::Dead { why, prefix, name }) => {
            tracing::warn!(token = %prefix, %name, why, "request with a {why} registry token refused");
        }
    }
    Err(ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        "the token is not valid for this registry",
    ))
}

async fn may_read(state: &AppState, headers: &HeaderMap) -> ApiResult<()> {
    let who = caller(state, headers).await?;
    if state.private && who.is_none() {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "this registry is private: send a viewer or publisher token",
        ));
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    q: Option<String>,
}

async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<ListQuery>,
) -> ApiResult<Json<SkillList>> {
    may_read(&state, &headers).await?;
    let skills = state.store.list(query.q.as_deref()).await?;
    Ok(Json(SkillList { skills }))
}

async fn versions(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<SkillList>> {
    may_read(&state, &headers).await?;
    let skills = state.store.versions(&name).await?;
    if skills.is_empty() {
        return Err(not_found(&name, None));
    }
    Ok(Json(SkillList { skills }))
}

fn not_found(name: &str, version: Option<&str>) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        match version {
            Some(v) => format!("no skill {name} version {v} in this registry"),
            None => format!("no skill named {name} in this registry"),
        },
    )
}

async fn show(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<Json<Entry>> {
    may_read(&state, &headers).await?;
    let v = (version != "latest").then_some(version.as_str());
    state
        .store
        .resolve(&name, v)
        .await?
        .map(Json)
        .ok_or_else(|| not_found(&name, v))
}

async fn publish(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((name, version)): Path<(String, String)>,
    body: Body,
) -> ApiResult<Response> {
    let who = caller(&state, &headers).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "publishing needs a publisher token (Authorization: Bearer <token>)",
        )
    })?;
    if who.role != Role::Publisher {
        tracing::warn!(caller = %who.name, "publish refused: viewer token");
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "token {:?} has role {}; publishing needs the publisher role",
                who.name,
                who.role.as_str()
            ),
        ));
    }
    // Only now, with the caller known to be a publisher, is the body read: an anonymous or
    // read-only caller cannot make the registry buffer up to MAX_COMPONENT_BYTES.
    let body = axum::body::to_bytes(body, MAX_COMPONENT_BYTES)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!(
                    "the component is larger than {} MiB (or the upload was cut short)",
                    MAX_COMPONENT_BYTES >> 20
                ),
            )
        })?;
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", m);
    let envelope_json = headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| B64.decode(v.trim()).ok())
        .ok_or_else(|| {
            bad(format!(
                "missing or undecodable {SIGNATURE_HEADER} header (base64 of the signature envelope)"
            ))
        })?;
    let envelope = Envelope::parse(&envelope_json).map_err(bad)?;
    let verified = state
        .trust
        .verify(
            &body,
            &envelope,
            // A registry keeps every version; rollback protection is the client's.
            VerifyOptions {
                allow_downgrade: true,
            },
        )
        .map_err(|e| {
            tracing::warn!(caller = %who.name, %name, %version, error = %e, "publish refused: not trusted");
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "not_trusted",
                format!("refused: {e}"),
            )
        })?;
    let m = &verified.manifest.skill;
    if m.name != name || m.version != version {
        return Err(bad(format!(
            "the signed manifest is {} {}, but the request publishes {name} {version}",
            m.name, m.version
        )));
    }
    let envelope_text = String::from_utf8_lossy(&envelope_json).into_owned();
    let published = state
        .store
        .publish(&verified, &envelope_text, &body, &who.name)
        .await?;
    tracing::info!(
        caller = %who.name, %name, %version, digest = %verified.digest,
        created = published.created, log_index = published.entry.log_index, "published"
    );
    let status = if published.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(published.entry)).into_response())
}

async fn blob(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(digest): Path<String>,
) -> ApiResult<Response> {
    may_read(&state, &headers).await?;
    let missing = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no blob {digest} in this registry"),
        )
    };
    let path = digest
        .strip_prefix("sha256:")
        .and_then(|hex| state.store.blob_path(hex))
        .ok_or_else(missing)?;
    let bytes = tokio::fs::read(&path).await.map_err(|_| missing())?;
    Ok(([(header::CONTENT_TYPE, "application/wasm")], bytes).into_response())
}

async fn log(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Json<LogResponse>> {
    may_read(&state, &headers).await?;
    let entries = state.store.log().await?;
    let head = entries.last().map(|e| Checkpoint {
        index: e.index,
        hash: e.hash.clone(),
    });
    Ok(Json(LogResponse { entries, head }))
}
