//! Storage through sqlx's `Any` driver: one SQLite file by default (WAL), PostgreSQL when the
//! URL is `postgres://`, with the same schema and the same queries (`$1` placeholders, portable
//! types: TEXT, BIGINT). Only the job claim differs, where PostgreSQL has `SKIP LOCKED`.

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Executor};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database URL {0:?} is neither sqlite:// nor postgres://")]
    Url(String),
    #[error("database: {0}")]
    Sql(#[from] sqlx::Error),
}

#[derive(Debug, Clone)]
pub struct Db {
    pub pool: AnyPool,
    pub backend: Backend,
}

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS tokens (
        prefix TEXT PRIMARY KEY,
        hash TEXT NOT NULL,
        name TEXT NOT NULL,
        role TEXT NOT NULL,
        created_at TEXT NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS invocations (
        id TEXT PRIMARY KEY,
        skill TEXT NOT NULL,
        version TEXT NOT NULL,
        digest TEXT NOT NULL,
        target TEXT NOT NULL,
        input TEXT NOT NULL,
        reason TEXT NOT NULL,
        requester TEXT NOT NULL,
        level BIGINT NOT NULL,
        approvals_required BIGINT NOT NULL,
        invocation_digest TEXT NOT NULL,
        verdict TEXT NOT NULL,
        state TEXT NOT NULL,
        created_ms BIGINT NOT NULL,
        expires_ms BIGINT NOT NULL,
        queued_ms BIGINT,
        started_ms BIGINT,
        finished_ms BIGINT,
        lease_owner TEXT,
        lease_until_ms BIGINT,
        result TEXT,
        kind TEXT NOT NULL DEFAULT 'diagnose',
        assigned_agent TEXT,
        run_started_ms BIGINT
    )",
    "CREATE INDEX IF NOT EXISTS invocations_state ON invocations (state, created_ms)",
    "CREATE TABLE IF NOT EXISTS approvals (
        invocation_id TEXT NOT NULL,
        approver TEXT NOT NULL,
        invocation_digest TEXT NOT NULL,
        created_ms BIGINT NOT NULL,
        PRIMARY KEY (invocation_id, approver)
    )",
    "CREATE TABLE IF NOT EXISTS audit (
        idx BIGINT PRIMARY KEY,
        at TEXT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        subject TEXT NOT NULL,
        detail TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS agents (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        hostname TEXT NOT NULL,
        os TEXT NOT NULL,
        arch TEXT NOT NULL,
        labels TEXT NOT NULL,
        pools TEXT NOT NULL,
        public_key TEXT NOT NULL,
        ceiling TEXT NOT NULL,
        enrolled_ms BIGINT NOT NULL,
        last_seen_ms BIGINT NOT NULL,
        heartbeat_ms BIGINT NOT NULL,
        running BIGINT NOT NULL,
        capacity BIGINT NOT NULL,
        jobs_ok BIGINT NOT NULL,
        jobs_failed BIGINT NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS enroll_tokens (
        prefix TEXT PRIMARY KEY,
        hash TEXT NOT NULL,
        uses_left BIGINT NOT NULL,
        expires_ms BIGINT NOT NULL,
        created_by TEXT NOT NULL,
        pools TEXT NOT NULL DEFAULT '[]',
        labels TEXT NOT NULL DEFAULT '{}',
        max_level BIGINT NOT NULL DEFAULT 0
    )",
    // Agent names are identities in targets (`agent:NAME`): never two of the same.
    "CREATE UNIQUE INDEX IF NOT EXISTS agents_name ON agents (name)",
    // Nonces of signed agent requests, kept until their timestamp is too old to be accepted.
    "CREATE TABLE IF NOT EXISTS agent_nonces (
        nonce TEXT PRIMARY KEY,
        agent_id TEXT NOT NULL,
        expires_ms BIGINT NOT NULL
    )",
    // One row: the chain's head. Updating it inside each append's transaction serialises
    // appends across orchestrator replicas (a row lock on PostgreSQL, the writer lock on SQLite).
    "CREATE TABLE IF NOT EXISTS audit_head (
        id BIGINT PRIMARY KEY,
        idx BIGINT NOT NULL,
        hash TEXT NOT NULL
    )",
];

impl Db {
    /// Connect and create the schema. `sqlite://path` creates the file (WAL); `postgres://...`
    /// uses an existing database.
    pub async fn connect(url: &str) -> Result<Db, DbError> {
        install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(DbError::Url(url.to_string()));
        };
        let (url, max) = match backend {
            Backend::Sqlite if !url.contains("mode=") => (
                format!("{url}{}mode=rwc", if url.contains('?') { '&' } else { '?' }),
                8,
            ),
            Backend::Sqlite => (url.to_string(), 8),
            Backend::Postgres => (url.to_string(), 16),
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA busy_timeout = 10000").await?;
                        conn.execute("PRAGMA synchronous = NORMAL").await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        for statement in SCHEMA {
            sqlx::query(statement).execute(&pool).await?;
        }
        sqlx::query(
            "INSERT INTO audit_head (id, idx, hash) SELECT 1, 0, $1 WHERE NOT EXISTS (SELECT 1 FROM audit_head WHERE id = 1)",
        )
        .bind(crate::audit::GENESIS)
        .execute(&pool)
        .await?;
        Ok(Db { pool, backend })
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub fn rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// A random id: 16 hex characters with a prefix (`inv_…`).
pub fn random_id(prefix: &str) -> String {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    format!("{prefix}_{}", hex::encode(b))
}
