//! API tokens over the API, for admins: create (with an optional expiry), list, revoke and
//! rotate. Every change is audited with it ([`crate::auth`]); a revoke takes effect on this
//! replica at once and on every other within [`crate::extract::TokenCache::TTL`].

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tend_policy::Role;

use crate::api::{ApiError, ApiJson, ApiResult, AppState, ErrorBody};
use crate::auth;
use crate::extract::{Admin, Caller};
use crate::protocol::tokens::{self, CreatedToken, NewToken, RevokedToken, RotateToken, TokenInfo};

/// These bodies carry a few short fields.
const BODY_LIMIT: usize = 16 * 1024;

pub fn routes() -> Router<AppState> {
    let small = DefaultBodyLimit::max(BODY_LIMIT);
    Router::new()
        .route("/api/v1/tokens", get(list).post(create).layer(small))
        .route("/api/v1/tokens/{prefix}/revoke", post(revoke).layer(small))
        .route("/api/v1/tokens/{prefix}/rotate", post(rotate).layer(small))
}

fn invalid(e: crate::protocol::FieldError) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
        e.to_string(),
    )
}

/// `expires_in` as an expiry (unix ms), or 422 naming the field.
fn expiry(expires_in: Option<&str>) -> ApiResult<Option<i64>> {
    expires_in
        .map(|v| {
            tokens::parse_lifetime("expires_in", v)
                .map(auth::expiry_ms)
                .map_err(invalid)
        })
        .transpose()
}

/// A token prefix from the path: 12 hex digits, or 404 (not echoed, nothing looked up).
#[derive(Debug)]
pub struct Prefix(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Prefix {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> ApiResult<Self> {
        let not_found = || {
            ApiError::not_found(
                "not_found",
                "no such token: a token prefix is 12 hex digits (GET /api/v1/tokens)",
            )
        };
        let Path(prefix) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| not_found())?;
        if tokens::is_token_prefix(&prefix) {
            Ok(Prefix(prefix))
        } else {
            Err(not_found())
        }
    }
}

/// Create a token; the secret is in this answer only.
#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens", security(("bearer" = [])), request_body = NewToken,
    responses((status = 201, body = CreatedToken), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    Caller(who, ..): Caller<Admin>,
    ApiJson(req): ApiJson<NewToken>,
) -> ApiResult<Response> {
    tokens::check_token_name("name", &req.name).map_err(invalid)?;
    let role: Role = req.role.parse().map_err(|e: String| {
        invalid(crate::protocol::FieldError {
            field: "role".into(),
            why: crate::audit::safe_field(&e, 200),
        })
    })?;
    let expires_ms = expiry(req.expires_in.as_deref())?;
    let created = auth::issue(&state.db, &who.name, &req.name, role, expires_ms).await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

/// Every token's record (never a hash or a secret), oldest first.
#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens", security(("bearer" = [])),
    responses((status = 200, body = [TokenInfo]), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    _: Caller<Admin>,
) -> ApiResult<Json<Vec<TokenInfo>>> {
    Ok(Json(auth::list(&state.db).await?))
}

/// Revoke a token: refused on this replica at once, on every replica within a second.
/// Revoking it again changes nothing and says so (`already_revoked`).
#[utoipa::path(post, path = "/api/v1/tokens/{prefix}/revoke", tag = "tokens", security(("bearer" = [])), params(("prefix" = String, Path)),
    responses((status = 200, body = RevokedToken), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn revoke(
    State(state): State<AppState>,
    Caller(who, ..): Caller<Admin>,
    Prefix(prefix): Prefix,
) -> ApiResult<Json<RevokedToken>> {
    let (token, already_revoked) = auth::revoke(&state.db, &prefix, &who.name).await?;
    state.tokens.forget(&prefix);
    Ok(Json(RevokedToken {
        token,
        already_revoked,
    }))
}

/// Rotate a token: a new one for the same name and role (the secret is in this answer only),
/// and the old one revoked, together.
#[utoipa::path(post, path = "/api/v1/tokens/{prefix}/rotate", tag = "tokens", security(("bearer" = [])), params(("prefix" = String, Path)), request_body = RotateToken,
    responses((status = 201, body = CreatedToken), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn rotate(
    State(state): State<AppState>,
    Caller(who, ..): Caller<Admin>,
    Prefix(prefix): Prefix,
    body: Option<ApiJson<RotateToken>>,
) -> ApiResult<Response> {
    let req = body.map(|ApiJson(b)| b).unwrap_or_default();
    let expires_ms = expiry(req.expires_in.as_deref())?;
    let created = auth::rotate(&state.db, &prefix, &who.name, expires_ms).await?;
    state.tokens.forget(&prefix);
    Ok((StatusCode::CREATED, Json(created)).into_response())
}
