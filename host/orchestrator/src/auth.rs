//! Bearer tokens with roles. Only the sha256 of a token is stored, found by a short prefix;
//! the token itself is shown once.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use sha2::{Digest, Sha256};
use sqlx::Row;
use tend_policy::Role;

use crate::db::{Db, DbError, now_ms, rfc3339};

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub name: String,
    pub role: Role,
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// Create a token for `name` with `role`; returns the secret (`tend_<prefix>_<secret>`).
pub async fn create_token(db: &Db, name: &str, role: Role) -> Result<String, DbError> {
    let mut prefix = [0u8; 6];
    let mut secret = [0u8; 32];
    let _ = getrandom::fill(&mut prefix);
    let _ = getrandom::fill(&mut secret);
    let prefix = hex::encode(prefix);
    let token = format!("tend_{prefix}_{}", B64URL.encode(secret));
    sqlx::query(
        "INSERT INTO tokens (prefix, hash, name, role, created_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&prefix)
    .bind(sha256_hex(&token))
    .bind(name)
    .bind(role.as_str())
    .bind(rfc3339(now_ms()))
    .execute(&db.pool)
    .await?;
    Ok(token)
}

pub async fn token_count(db: &Db) -> Result<i64, DbError> {
    Ok(sqlx::query("SELECT COUNT(*) AS n FROM tokens")
        .fetch_one(&db.pool)
        .await?
        .try_get::<i64, _>("n")?)
}

/// The actor a token belongs to, if it is one of ours.
pub async fn authenticate(db: &Db, token: &str) -> Result<Option<Actor>, DbError> {
    let Some((prefix, _)) = token
        .strip_prefix("tend_")
        .and_then(|rest| rest.split_once('_'))
    else {
        return Ok(None);
    };
    let Some(row) = sqlx::query("SELECT hash, name, role FROM tokens WHERE prefix = $1")
        .bind(prefix)
        .fetch_optional(&db.pool)
        .await?
    else {
        return Ok(None);
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
        return Ok(None);
    }
    let role: String = row.try_get("role")?;
    Ok(role.parse().ok().map(|role| Actor {
        name: row.try_get("name").unwrap_or_default(),
        role,
    }))
}
