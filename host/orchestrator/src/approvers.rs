//! Approver keys: the ed25519 public key an admin registered for each person who approves.
//! The orchestrator accepts an approval from `name` only when its signature verifies against
//! `name`'s key here. That is the orchestrator's own check; the local worker and every agent
//! count an approval only when the key is in their own trust policy as well.

use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::audit::{self, Action};
use crate::auth::Actor;
use crate::db::{Db, now_ms, rfc3339};
use crate::invocation::FlowError;

/// A registered approver key.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApproverKey {
    /// The approver's name: the name of their API token.
    pub name: String,
    /// `ed25519:<base64>`
    pub public_key: String,
    pub created_at: String,
    pub created_by: String,
}

/// Register `name`'s key. A name already registered is a conflict (remove it first: a key
/// change is a deliberate act, audited as two events); so is a key registered to another name.
pub async fn register(
    db: &Db,
    admin: &Actor,
    name: &str,
    public_key: &str,
) -> Result<ApproverKey, FlowError> {
    tend_protocol::check_name("name", name).map_err(|e| FlowError::Invalid(e.to_string()))?;
    let Some(key) = tend_protocol::parse_public_key(public_key.trim()) else {
        return Err(FlowError::Invalid(
            "public_key: not an ed25519:<base64 of 32 bytes> key (`tend key show FILE` prints it)"
                .into(),
        ));
    };
    let public_key = tend_protocol::public_key_text(&key);
    let mut tx = db.begin_write().await?;
    let taken = sqlx::query("SELECT name FROM approver_keys WHERE name = $1 OR public_key = $2")
        .bind(name)
        .bind(&public_key)
        .fetch_optional(&mut *tx)
        .await?;
    if let Some(row) = taken {
        let holder: String = row.try_get("name")?;
        return Err(FlowError::Conflict(if holder == name {
            format!("{name} already has an approver key: remove it first to replace it")
        } else {
            format!("that key is already registered to {holder}: one key is one person")
        }));
    }
    let now = now_ms();
    sqlx::query(
        "INSERT INTO approver_keys (name, public_key, created_ms, created_by) VALUES ($1, $2, $3, $4)",
    )
    .bind(name)
    .bind(&public_key)
    .bind(now)
    .bind(&admin.name)
    .execute(&mut *tx)
    .await?;
    audit::append_tx(
        &mut tx,
        &admin.name,
        Action::ApproverRegister,
        name,
        serde_json::json!({ "public_key": public_key }),
    )
    .await?;
    tx.commit().await?;
    Ok(ApproverKey {
        name: name.to_string(),
        public_key,
        created_at: rfc3339(now),
        created_by: admin.name.clone(),
    })
}

pub async fn list(db: &Db) -> Result<Vec<ApproverKey>, FlowError> {
    let rows = sqlx::query("SELECT * FROM approver_keys ORDER BY name")
        .fetch_all(&db.pool)
        .await?;
    rows.iter()
        .map(|r| {
            Ok(ApproverKey {
                name: r.try_get("name")?,
                public_key: r.try_get("public_key")?,
                created_at: rfc3339(r.try_get("created_ms")?),
                created_by: r.try_get("created_by")?,
            })
        })
        .collect()
}

/// Remove `name`'s key: approvals they give from now on are refused. (Approvals already given
/// stand on the orchestrator; agents decide by their own trust policy.)
pub async fn remove(db: &Db, admin: &Actor, name: &str) -> Result<(), FlowError> {
    let mut tx = db.begin_write().await?;
    let gone = sqlx::query("DELETE FROM approver_keys WHERE name = $1")
        .bind(name)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if gone == 0 {
        return Err(FlowError::NotFound(format!(
            "no approver key registered for {}",
            audit::safe_field(name, 64)
        )));
    }
    audit::append_tx(
        &mut tx,
        &admin.name,
        Action::ApproverRemove,
        name,
        serde_json::json!({}),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// `name`'s registered key, if any.
pub async fn key_of(db: &Db, name: &str) -> Result<Option<String>, FlowError> {
    Ok(
        sqlx::query("SELECT public_key FROM approver_keys WHERE name = $1")
            .bind(name)
            .fetch_optional(&db.pool)
            .await?
            .map(|r| r.try_get("public_key"))
            .transpose()?,
    )
}

/// The admin API for approver keys.
pub mod api {
    use axum::extract::{Path, State};
    use axum::http::StatusCode;
    use axum::routing::{delete, get};
    use axum::{Json, Router};
    use serde::Deserialize;
    use tend_http::{ApiError, ApiJson, ErrorBody};

    use super::ApproverKey;
    use crate::api::{ApiResult, AppState};
    use crate::extract::{Admin, Caller, Viewer};

    pub fn routes() -> Router<AppState> {
        Router::new()
            .route("/api/v1/approvers", get(list).post(register))
            .route("/api/v1/approvers/{name}", delete(remove))
    }

    #[derive(Debug, Deserialize, utoipa::ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct NewApprover {
        /// The approver's name: the name of the API token they approve with.
        pub name: String,
        /// `ed25519:<base64>` (`tend key show FILE` prints it).
        pub public_key: String,
    }

    /// Register an approver's public key (admin).
    #[utoipa::path(post, path = "/api/v1/approvers", tag = "approvals", security(("bearer" = [])), request_body = NewApprover,
        responses((status = 201, body = ApproverKey), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
            (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
    pub async fn register(
        State(state): State<AppState>,
        Caller(who, ..): Caller<Admin>,
        ApiJson(body): ApiJson<NewApprover>,
    ) -> ApiResult<(StatusCode, Json<ApproverKey>)> {
        if body.public_key.len() > 128 {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request",
                format!(
                    "`public_key` is {} bytes; at most 128 are accepted",
                    body.public_key.len()
                ),
            ));
        }
        let key = super::register(&state.db, &who, &body.name, &body.public_key).await?;
        Ok((StatusCode::CREATED, Json(key)))
    }

    /// The registered approver keys.
    #[utoipa::path(get, path = "/api/v1/approvers", tag = "approvals", security(("bearer" = [])),
        responses((status = 200, body = Vec<ApproverKey>), (status = 401, body = ErrorBody)))]
    pub async fn list(
        State(state): State<AppState>,
        _: Caller<Viewer>,
    ) -> ApiResult<Json<Vec<ApproverKey>>> {
        Ok(Json(super::list(&state.db).await?))
    }

    /// Remove an approver's key (admin): their approvals are refused from now on.
    #[utoipa::path(delete, path = "/api/v1/approvers/{name}", tag = "approvals", security(("bearer" = [])), params(("name" = String, Path)),
        responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
    pub async fn remove(
        State(state): State<AppState>,
        Caller(who, ..): Caller<Admin>,
        Path(name): Path<String>,
    ) -> ApiResult<StatusCode> {
        super::remove(&state.db, &who, &name).await?;
        Ok(StatusCode::NO_CONTENT)
    }
}
