//! Bearer tokens with roles and a lifecycle. Only the sha256 of a token is stored, found by a
//! short prefix (its public handle); the token itself is shown once. A token may expire (set at
//! creation) and may be revoked or rotated (a new token for the same name and role, the old one
//! revoked, in one transaction); an expired or revoked token is refused like an unknown one,
//! and the refusal says why to the audit trail, never to the caller. Every change is audited
//! in the transaction that makes it.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use sha2::{Digest, Sha256};
use sqlx::Row;
use tend_policy::Role;

use crate::audit;
use crate::db::{Db, DbError, now_ms, rfc3339};
use crate::invocation::FlowError;
pub use crate::protocol::tokens::{CreatedToken, TokenInfo};

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub name: String,
    pub role: Role,
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// Milliseconds from now until `ttl` has passed (saturating).
pub fn expiry_ms(ttl: Duration) -> i64 {
    now_ms().saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX))
}

/// Insert a new token inside `tx`; returns it, secret included.
async fn insert(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    name: &str,
    role: Role,
    expires_ms: Option<i64>,
) -> Result<CreatedToken, DbError> {
    let mut prefix = [0u8; 6];
    let mut secret = [0u8; 32];
    let _ = getrandom::fill(&mut prefix);
    let _ = getrandom::fill(&mut secret);
    let prefix = hex::encode(prefix);
    let token = format!("tend_{prefix}_{}", B64URL.encode(secret));
    let created_at = rfc3339(now_ms());
    sqlx::query(
        "INSERT INTO tokens (prefix, hash, name, role, created_at, expires_ms) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&prefix)
    .bind(sha256_hex(&token))
    .bind(name)
    .bind(role.as_str())
    .bind(&created_at)
    .bind(expires_ms)
    .execute(&mut **tx)
    .await?;
    Ok(CreatedToken {
        token,
        prefix,
        name: name.to_string(),
        role: role.as_str().to_string(),
        created_at,
        expires_at: expires_ms.map(rfc3339),
    })
}

/// Create a token for `name` with `role`, expiring at `expires_ms` (unix ms; `None`: until
/// revoked); returns the secret (`tend_<prefix>_<secret>`). The caller audits it (see
/// [`issue`] for the API's audited form).
pub async fn create_token(
    db: &Db,
    name: &str,
    role: Role,
    expires_ms: Option<i64>,
) -> Result<String, DbError> {
    let mut tx = db.begin_write().await?;
    let created = insert(&mut tx, name, role, expires_ms).await?;
    tx.commit().await?;
    Ok(created.token)
}

/// Create a token and its `token.create` audit event (by `by`), together.
pub async fn issue(
    db: &Db,
    by: &str,
    name: &str,
    role: Role,
    expires_ms: Option<i64>,
) -> Result<CreatedToken, DbError> {
    let mut tx = db.begin_write().await?;
    let created = insert(&mut tx, name, role, expires_ms).await?;
    audit::append_tx(
        &mut tx,
        by,
        audit::Action::TokenCreate,
        name,
        serde_json::json!({
            "token": created.prefix, "role": created.role, "expires_at": created.expires_at,
        }),
    )
    .await?;
    tx.commit().await?;
    Ok(created)
}

pub async fn token_count(db: &Db) -> Result<i64, DbError> {
    Ok(sqlx::query("SELECT COUNT(*) AS n FROM tokens")
        .fetch_one(&db.pool)
        .await?
        .try_get::<i64, _>("n")?)
}

const COLUMNS: &str = "prefix, name, role, created_at, expires_ms, revoked_ms, revoked_by";

fn info(row: &sqlx::any::AnyRow) -> Result<TokenInfo, DbError> {
    Ok(TokenInfo {
        prefix: row.try_get("prefix")?,
        name: row.try_get("name")?,
        role: row.try_get("role")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get::<Option<i64>, _>("expires_ms")?.map(rfc3339),
        revoked_at: row.try_get::<Option<i64>, _>("revoked_ms")?.map(rfc3339),
        revoked_by: row.try_get("revoked_by")?,
    })
}

/// Every token's record, oldest first: never a hash or a secret.
pub async fn list(db: &Db) -> Result<Vec<TokenInfo>, DbError> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM tokens ORDER BY created_at, prefix"
    ))
    .fetch_all(&db.pool)
    .await?;
    rows.iter().map(info).collect()
}

/// One token's record.
pub async fn get(db: &Db, prefix: &str) -> Result<Option<TokenInfo>, DbError> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM tokens WHERE prefix = $1"))
        .bind(prefix)
        .fetch_optional(&db.pool)
        .await?;
    row.as_ref().map(info).transpose()
}

fn no_such_token() -> FlowError {
    FlowError::NotFound(
        "no such token: a token prefix is 12 hex digits (GET /api/v1/tokens)".into(),
    )
}

/// In `tx`: revoke `prefix` unless it is already. Returns its record and whether this revoked it.
async fn revoke_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    prefix: &str,
    by: &str,
) -> Result<(TokenInfo, bool), FlowError> {
    let done = sqlx::query(
        "UPDATE tokens SET revoked_ms = $1, revoked_by = $2 WHERE prefix = $3 AND revoked_ms IS NULL",
    )
    .bind(now_ms())
    .bind(by)
    .bind(prefix)
    .execute(&mut **tx)
    .await
    .map_err(DbError::from)?
    .rows_affected();
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM tokens WHERE prefix = $1"))
        .bind(prefix)
        .fetch_optional(&mut **tx)
        .await
        .map_err(DbError::from)?;
    let token = row
        .as_ref()
        .map(info)
        .transpose()?
        .ok_or_else(no_such_token)?;
    Ok((token, done > 0))
}

/// Revoke the token `prefix` (by `by`), audited with the change. Returns its record and
/// whether it had been revoked already (then nothing changes and nothing is audited).
pub async fn revoke(db: &Db, prefix: &str, by: &str) -> Result<(TokenInfo, bool), FlowError> {
    let mut tx = db.begin_write().await.map_err(DbError::from)?;
    let (token, newly) = revoke_in(&mut tx, prefix, by).await?;
    if !newly {
        return Ok((token, true));
    }
    audit::append_tx(
        &mut tx,
        by,
        audit::Action::TokenRevoke,
        &token.name,
        serde_json::json!({ "token": token.prefix, "role": token.role }),
    )
    .await?;
    tx.commit().await.map_err(DbError::from)?;
    Ok((token, false))
}

/// Replace the token `prefix` (by `by`): a new token for the same name and role, expiring at
/// `expires_ms`, and the old one revoked — one transaction, one `token.rotate` event. A revoked
/// token is not rotated (409: create a new one); an expired one may be.
pub async fn rotate(
    db: &Db,
    prefix: &str,
    by: &str,
    expires_ms: Option<i64>,
) -> Result<CreatedToken, FlowError> {
    let mut tx = db.begin_write().await.map_err(DbError::from)?;
    let (old, newly) = revoke_in(&mut tx, prefix, by).await?;
    if !newly {
        return Err(FlowError::Conflict(format!(
            "token {prefix} was revoked at {} by {}: a revoked token is not rotated; create a new one (POST /api/v1/tokens)",
            old.revoked_at.as_deref().unwrap_or("?"),
            old.revoked_by.as_deref().unwrap_or("?"),
        )));
    }
    let role: Role = old
        .role
        .parse()
        .map_err(|e: String| FlowError::Conflict(format!("token {prefix}: {e}")))?;
    let created = insert(&mut tx, &old.name, role, expires_ms).await?;
    audit::append_tx(
        &mut tx,
        by,
        audit::Action::TokenRotate,
        &old.name,
        serde_json::json!({
            "token": old.prefix, "new_token": created.prefix, "role": created.role,
            "expires_at": created.expires_at,
        }),
    )
    .await?;
    tx.commit().await.map_err(DbError::from)?;
    Ok(created)
}

/// Why a presented token is not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// Not one of ours (no such prefix, wrong secret, or not a token at all).
    Unknown,
    /// One of ours, but expired or revoked: it never works again.
    Dead {
        /// `expired` or `revoked`.
        why: &'static str,
        prefix: String,
        name: String,
        /// When it expired or was revoked (unix ms).
        at_ms: i64,
    },
}

/// A token accepted, and until when at most (its expiry, if it has one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub actor: Actor,
    pub prefix: String,
    pub expires_ms: Option<i64>,
}

/// The actor a token belongs to — or why it is refused.
pub async fn authenticate(db: &Db, token: &str) -> Result<Result<Accepted, Refused>, DbError> {
    let Some((prefix, _)) = token
        .strip_prefix("tend_")
        .and_then(|rest| rest.split_once('_'))
    else {
        return Ok(Err(Refused::Unknown));
    };
    let Some(row) = sqlx::query(
        "SELECT hash, name, role, expires_ms, revoked_ms FROM tokens WHERE prefix = $1",
    )
    .bind(prefix)
    .fetch_optional(&db.pool)
    .await?
    else {
        return Ok(Err(Refused::Unknown));
    };
    let stored: String = row.try_get("hash")?;
    let presented = sha256_hex(token);
    let equal = stored.len() == presented.len()
        && stored
            .bytes()
            .zip(presented.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !equal {
        return Ok(Err(Refused::Unknown));
    }
    let name: String = row.try_get("name")?;
    let expires_ms: Option<i64> = row.try_get("expires_ms")?;
    let revoked_ms: Option<i64> = row.try_get("revoked_ms")?;
    let dead = |why, at_ms| {
        Ok(Err(Refused::Dead {
            why,
            prefix: prefix.to_string(),
            name: name.clone(),
            at_ms,
        }))
    };
    if let Some(at) = revoked_ms {
        return dead("revoked", at);
    }
    if let Some(at) = expires_ms.filter(|at| *at <= now_ms()) {
        return dead("expired", at);
    }
    let role: String = row.try_get("role")?;
    Ok(match role.parse() {
        Ok(role) => Ok(Accepted {
            actor: Actor {
                name: name.clone(),
                role,
            },
            prefix: prefix.to_string(),
            expires_ms,
        }),
        Err(_) => Err(Refused::Unknown),
    })
}
