//! Storage through sqlx's `Any` driver: one SQLite file by default (WAL), PostgreSQL when the
//! URL is `postgres://`, with the same schema and the same queries (`$1` placeholders, portable
//! types: TEXT, BIGINT). Only the job claim differs, where PostgreSQL has `SKIP LOCKED`. The
//! schema is versioned: `migrations/*.sql`, applied at connect by [`upgrade`].

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
    #[error("schema migration {migration} failed, the database is unchanged: {message}")]
    Migration { migration: String, message: String },
    #[error(
        "the database has schema migration {0}, which this release does not know: it was upgraded by a newer Tend"
    )]
    Newer(i64),
    #[error("schema migrations: {0}")]
    Migrate(sqlx::migrate::MigrateError),
}

#[derive(Debug, Clone)]
pub struct Db {
    pub pool: AnyPool,
    pub backend: Backend,
    /// Flood control for audited refusals of unauthenticated requests (per process).
    pub refusals: std::sync::Arc<crate::audit::RefusalGate>,
}

/// The schema: numbered SQL files in `host/orchestrator/migrations/`, embedded at build time and
/// applied in order by [`upgrade`]. One set serves both backends (portable SQL).
fn migrator() -> sqlx::migrate::Migrator {
    let mut migrator = sqlx::migrate!("./migrations");
    // `upgrade` holds its own lock for the whole transaction. (sqlx's PostgreSQL lock is a
    // session lock that a failed migration would leave held on a pooled connection.)
    migrator.set_locking(false);
    migrator
}

/// Columns that releases before versioned migrations added to a table an older release had
/// already made: `CREATE TABLE IF NOT EXISTS` never added them, so a database started on an
/// old enough release lacks them. Added (with the default those releases declared) before the
/// baseline migration runs on a database without migration history. Frozen: a column added
/// from now on is a migration.
const UNVERSIONED_COLUMNS: &[(&str, &str, &str)] = &[
    // Host agents.
    ("invocations", "kind", "TEXT NOT NULL DEFAULT 'diagnose'"),
    ("invocations", "assigned_agent", "TEXT"),
    ("invocations", "run_started_ms", "BIGINT"),
    // Enroll tokens fix the pools, labels and highest ceiling of the agent they enroll.
    ("enroll_tokens", "pools", "TEXT NOT NULL DEFAULT '[]'"),
    ("enroll_tokens", "labels", "TEXT NOT NULL DEFAULT '{}'"),
    ("enroll_tokens", "max_level", "BIGINT NOT NULL DEFAULT 0"),
    // The canonical form each audit event was hashed with: rows from before v2 are v1.
    ("audit", "v", "BIGINT NOT NULL DEFAULT 1"),
];

/// Key of the PostgreSQL advisory lock that serialises schema upgrades across replicas
/// (`tend` in ASCII).
const UPGRADE_LOCK: i64 = 0x7465_6e64;

impl Db {
    /// Connect and bring the schema up to date ([`upgrade`]). `sqlite://path` creates the file
    /// (WAL); `postgres://...` uses an existing database.
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
        upgrade(&pool, backend).await?;
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

    /// A transaction that reads and then writes: on SQLite it takes the writer lock at once
    /// (`BEGIN IMMEDIATE`, waiting up to the busy timeout), since a read transaction that a
    /// concurrent writer overtakes cannot be upgraded to write (`database is locked`).
    pub async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
        }
    }
}

/// Bring the schema up to date, all or nothing: every pending migration (and, on a database
/// made before migrations existed, its missing columns) in one transaction that holds the
/// upgrade lock: the writer lock on SQLite (`BEGIN IMMEDIATE`), an advisory lock on PostgreSQL,
/// so replicas or CLI commands starting together upgrade once. A failure rolls everything
/// back and names the migration.
async fn upgrade(pool: &AnyPool, backend: Backend) -> Result<(), DbError> {
    let mut tx = match backend {
        Backend::Sqlite => pool.begin_with("BEGIN IMMEDIATE").await?,
        Backend::Postgres => {
            let mut tx = pool.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(UPGRADE_LOCK)
                .execute(&mut *tx)
                .await?;
            tx
        }
    };
    if !table_exists(&mut tx, backend, "_sqlx_migrations").await? {
        adopt_unversioned(&mut tx, backend).await?;
    }
    let migrator = migrator();
    migrator
        .run(&mut *tx)
        .await
        .map_err(|e| migration_error(&migrator, e))?;
    // The chain's head row, under the same lock (two first starts cannot both insert it).
    sqlx::query(
        "INSERT INTO audit_head (id, idx, hash) SELECT 1, 0, $1 WHERE NOT EXISTS (SELECT 1 FROM audit_head WHERE id = 1)",
    )
    .bind(crate::audit::GENESIS)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// A database without migration history (new, or made by a release before migrations): add
/// the columns an old release's tables lack, so that the baseline (all `IF NOT EXISTS`)
/// leaves it exactly as a new database.
async fn adopt_unversioned(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    backend: Backend,
) -> Result<(), DbError> {
    for (table, column, declaration) in UNVERSIONED_COLUMNS {
        if table_exists(tx, backend, table).await?
            && !column_exists(tx, backend, table, column).await?
        {
            // Names and declarations are the constants above, never input.
            sqlx::query(&format!(
                "ALTER TABLE {table} ADD COLUMN {column} {declaration}"
            ))
            .execute(&mut **tx)
            .await?;
        }
    }
    Ok(())
}

async fn table_exists(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    backend: Backend,
    table: &str,
) -> Result<bool, DbError> {
    let sql = match backend {
        Backend::Sqlite => {
            "SELECT COUNT(*) AS n FROM sqlite_master WHERE type = 'table' AND name = $1"
        }
        Backend::Postgres => {
            "SELECT COUNT(*) AS n FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = $1"
        }
    };
    let n: i64 = sqlx::query(sql)
        .bind(table)
        .fetch_one(&mut **tx)
        .await?
        .try_get("n")?;
    Ok(n > 0)
}

async fn column_exists(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    backend: Backend,
    table: &str,
    column: &str,
) -> Result<bool, DbError> {
    let sql = match backend {
        Backend::Sqlite => "SELECT COUNT(*) AS n FROM pragma_table_info($1) WHERE name = $2",
        Backend::Postgres => {
            "SELECT COUNT(*) AS n FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = $1 AND column_name = $2"
        }
    };
    let n: i64 = sqlx::query(sql)
        .bind(table)
        .bind(column)
        .fetch_one(&mut **tx)
        .await?
        .try_get("n")?;
    Ok(n > 0)
}

/// Name the migration that failed, and say plainly when the database is newer than this
/// release.
fn migration_error(migrator: &sqlx::migrate::Migrator, e: sqlx::migrate::MigrateError) -> DbError {
    use sqlx::migrate::MigrateError;
    let name = |version: i64| {
        migrator.iter().find(|m| m.version == version).map_or_else(
            || format!("{version:04}"),
            |m| format!("{version:04} {}", m.description),
        )
    };
    match e {
        MigrateError::ExecuteMigration(error, version) => DbError::Migration {
            migration: name(version),
            message: error.to_string(),
        },
        MigrateError::VersionMissing(version) => DbError::Newer(version),
        MigrateError::VersionMismatch(version) => DbError::Migration {
            migration: name(version),
            message: "the migration applied to this database differs from this release's file of the same number".to_string(),
        },
        other => DbError::Migrate(other),
    }
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
pub use tend_protocol::now_ms;

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
