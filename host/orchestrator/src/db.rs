//! Storage through sqlx's `Any` driver: one SQLite file by default (WAL), PostgreSQL when the
//! URL is `postgres://`, with the same schema and the same queries (`$1` placeholders, portable
//! types: TEXT, BIGINT). Only the job claim differs, where PostgreSQL has `SKIP LOCKED`.

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Executor, Row};

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
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
}

#[derive(Debug, Clone)]
pub struct Db {
    pub pool: AnyPool,
    pub backend: Backend,
    /// Flood control for audited refusals of unauthenticated requests (per process).
    pub refusals: std::sync::Arc<crate::audit::RefusalGate>,
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
        run_started_ms BIGINT,
        trigger TEXT NOT NULL DEFAULT 'api'
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
        hash TEXT NOT NULL,
        v BIGINT NOT NULL DEFAULT 1
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
        if backend == Backend::Sqlite {
            secure_sqlite_file(url)?;
        }
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
        migrate(&pool, backend).await?;
        sqlx::query(
            "INSERT INTO audit_head (id, idx, hash) SELECT 1, 0, $1 WHERE NOT EXISTS (SELECT 1 FROM audit_head WHERE id = 1)",
        )
        .bind(crate::audit::GENESIS)
        .execute(&pool)
        .await?;
        if backend == Backend::Sqlite {
            // The WAL and shared-memory files exist now; an older release left them 0644.
            secure_sqlite_file(&url)?;
        }
        Ok(Db {
            pool,
            backend,
            refusals: std::sync::Arc::default(),
        })
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Columns added since the first release, for databases made by an older one. Each step
/// checks first, so it runs once; a concurrent start on PostgreSQL is harmless (`IF NOT
/// EXISTS`).
async fn migrate(pool: &AnyPool, backend: Backend) -> Result<(), DbError> {
    // The canonical form each audit event was hashed with: rows from before are v1.
    match backend {
        Backend::Postgres => {
            sqlx::query("ALTER TABLE audit ADD COLUMN IF NOT EXISTS v BIGINT NOT NULL DEFAULT 1")
                .execute(pool)
                .await?;
        }
        Backend::Sqlite => {
            let has: i64 = sqlx::query(
                "SELECT COUNT(*) AS n FROM pragma_table_info('audit') WHERE name = 'v'",
            )
            .fetch_one(pool)
            .await?
            .try_get("n")?;
            if has == 0 {
                let added = sqlx::query("ALTER TABLE audit ADD COLUMN v BIGINT NOT NULL DEFAULT 1")
                    .execute(pool)
                    .await;
                // Another process may have added it meanwhile.
                if let Err(e) = added
                    && !e.to_string().contains("duplicate column")
                {
                    return Err(e.into());
                }
            }
        }
    }
    Ok(())
}

/// The SQLite database holds inputs, results and the audit trail: its file (and its `-wal` and
/// `-shm` companions) are 0600, created so or tightened at start if an older release left
/// them readable by others. A missing parent directory is created 0700. (An existing parent
/// is left alone: it may be shared, like `/tmp`.)
fn secure_sqlite_file(url: &str) -> Result<(), DbError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
        let Some(path) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .map(|p| p.split('?').next().unwrap_or(p))
            .filter(|p| !p.is_empty() && !p.starts_with(':'))
        else {
            return Ok(());
        };
        let io = |p: &std::path::Path, error| DbError::Io {
            path: p.display().to_string(),
            error,
        };
        let path = std::path::Path::new(path);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && !dir.exists()
        {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| io(dir, e))?;
        }
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(path, e)),
        }
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let file = std::path::PathBuf::from(format!("{}{suffix}", path.display()));
            match std::fs::metadata(&file) {
                Ok(md) if md.permissions().mode() & 0o077 != 0 => {
                    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                        .map_err(|e| io(&file, e))?;
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&file, e)),
            }
        }
    }
    #[cfg(not(unix))]
    let _ = url;
    Ok(())
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
