//! The audit trail: an append-only hash chain. Every decision, approval, rejection, state
//! change, refused token and configuration change is an event; each event's hash is
//! `sha256(prev_hash ‖ canonical event)` (hex), the first `prev_hash` being 64 zeros.
//!
//! The canonical event is fixed text, defined here once (`detail` is stored, and hashed, as the
//! exact JSON text written):
//!
//! ```text
//! tend-audit/v1
//! index <n, from 1>
//! at <RFC 3339, ms, UTC>
//! actor <name>
//! action <verb.noun>
//! subject <id>
//! detail <JSON>
//! ```

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::db::{Db, DbError, now_ms, rfc3339};

pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Event {
    pub index: i64,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub subject: String,
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
    pub prev_hash: String,
    pub hash: String,
}

/// The newest event: anchor it elsewhere to detect a rewritten history later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Head {
    pub index: i64,
    pub hash: String,
}

pub fn canonical(
    index: i64,
    at: &str,
    actor: &str,
    action: &str,
    subject: &str,
    detail: &str,
) -> String {
    format!(
        "tend-audit/v1\nindex {index}\nat {at}\nactor {actor}\naction {action}\nsubject {subject}\ndetail {detail}\n"
    )
}

pub fn chain_hash(prev_hash: &str, canonical: &str) -> String {
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(canonical.as_bytes());
    hex::encode(h.finalize())
}

/// Append one event, atomically with the head update.
pub async fn append(
    db: &Db,
    actor: &str,
    action: &str,
    subject: &str,
    detail: serde_json::Value,
) -> Result<Head, DbError> {
    let mut tx = db.pool.begin().await?;
    let head = append_tx(&mut tx, actor, action, subject, detail).await?;
    tx.commit().await?;
    Ok(head)
}

/// Append one event inside the caller's transaction, so that the change it records and the
/// record of it commit together (or not at all).
pub async fn append_tx(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    actor: &str,
    action: &str,
    subject: &str,
    detail: serde_json::Value,
) -> Result<Head, DbError> {
    let detail = detail.to_string();
    let at = rfc3339(now_ms());
    let row = sqlx::query("UPDATE audit_head SET idx = idx + 1 WHERE id = 1 RETURNING idx, hash")
        .fetch_one(&mut **tx)
        .await?;
    let index: i64 = row.try_get("idx")?;
    let prev: String = row.try_get("hash")?;
    let hash = chain_hash(
        &prev,
        &canonical(index, &at, actor, action, subject, &detail),
    );
    sqlx::query(
        "INSERT INTO audit (idx, at, actor, action, subject, detail, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(index)
    .bind(&at)
    .bind(actor)
    .bind(action)
    .bind(subject)
    .bind(&detail)
    .bind(&prev)
    .bind(&hash)
    .execute(&mut **tx)
    .await?;
    sqlx::query("UPDATE audit_head SET hash = $1 WHERE id = 1")
        .bind(&hash)
        .execute(&mut **tx)
        .await?;
    Ok(Head { index, hash })
}

pub async fn head(db: &Db) -> Result<Head, DbError> {
    let row = sqlx::query("SELECT idx, hash FROM audit_head WHERE id = 1")
        .fetch_one(&db.pool)
        .await?;
    Ok(Head {
        index: row.try_get("idx")?,
        hash: row.try_get("hash")?,
    })
}

struct Stored {
    event: Event,
    detail_text: String,
}

async fn rows(db: &Db, after: i64, limit: i64) -> Result<Vec<Stored>, DbError> {
    let rows = sqlx::query(
        "SELECT idx, at, actor, action, subject, detail, prev_hash, hash FROM audit WHERE idx > $1 ORDER BY idx LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r| {
            let detail_text: String = r.try_get("detail")?;
            Ok(Stored {
                event: Event {
                    index: r.try_get("idx")?,
                    at: r.try_get("at")?,
                    actor: r.try_get("actor")?,
                    action: r.try_get("action")?,
                    subject: r.try_get("subject")?,
                    detail: serde_json::from_str(&detail_text)
                        .unwrap_or(serde_json::Value::String(detail_text.clone())),
                    prev_hash: r.try_get("prev_hash")?,
                    hash: r.try_get("hash")?,
                },
                detail_text,
            })
        })
        .collect()
}

/// Events after `after`, oldest first, at most `limit`.
pub async fn list(db: &Db, after: i64, limit: i64) -> Result<Vec<Event>, DbError> {
    Ok(rows(db, after, limit)
        .await?
        .into_iter()
        .map(|s| s.event)
        .collect())
}

/// What `verify` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub events: i64,
    pub head: Head,
}

/// Recompute the whole chain; the error names the first altered, deleted or reordered event.
pub async fn verify(db: &Db) -> Result<Result<Report, String>, DbError> {
    let head = head(db).await?;
    let mut prev = GENESIS.to_string();
    let mut expected = 1i64;
    loop {
        let batch = rows(db, expected - 1, 5000).await?;
        if batch.is_empty() {
            break;
        }
        for s in &batch {
            let e = &s.event;
            if e.index != expected {
                return Ok(Err(format!(
                    "audit event {expected} is missing (the next stored event is {}): events were deleted",
                    e.index
                )));
            }
            if e.prev_hash != prev {
                return Ok(Err(format!(
                    "audit event {} ({} by {}) does not follow event {}: events were reordered, replaced or deleted",
                    e.index,
                    e.action,
                    e.actor,
                    e.index - 1
                )));
            }
            let recomputed = chain_hash(
                &e.prev_hash,
                &canonical(
                    e.index,
                    &e.at,
                    &e.actor,
                    &e.action,
                    &e.subject,
                    &s.detail_text,
                ),
            );
            if recomputed != e.hash {
                return Ok(Err(format!(
                    "audit event {} ({} by {} at {}) was altered: its hash does not match its content",
                    e.index, e.action, e.actor, e.at
                )));
            }
            prev = e.hash.clone();
            expected += 1;
        }
    }
    let last = expected - 1;
    if last != head.index || prev != head.hash {
        return Ok(Err(format!(
            "the chain ends at event {last} but its head says {}: the newest events were deleted",
            head.index
        )));
    }
    Ok(Ok(Report { events: last, head }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_vector() {
        let c = canonical(
            1,
            "2026-11-24T00:00:00.000Z",
            "alice",
            "invocation.create",
            "inv_00",
            "{}",
        );
        // sha256("0"*64 + c), computed independently with Python's hashlib.
        assert_eq!(
            chain_hash(GENESIS, &c),
            "1578b85ac54256c9705997c7d7a073d7ee99f4d1a27bd8d1eee42614350fee1b"
        );
    }
}
