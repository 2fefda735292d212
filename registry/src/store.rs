//! The registry's storage: an SQLite index (sqlx) beside content-addressed blobs.
//!
//! ```text
//! <data>/index.db                 skills, tokens (with expiry and revocation), publication log (WAL)
//! <data>/blobs/sha256/<hex>       component bytes, written via temp file + rename
//! ```
//!
//! Publications are serialised by one lock so the log's chain has a single writer. A version
//! once published is immutable.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use serde::Serialize;
use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use tokio::sync::Mutex;

use crate::envelope::{Envelope, sha256_hex};
use crate::publog::{GENESIS, LogEntry};
use crate::trust::Verified;
pub use crate::wire::Entry;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("registry data directory {path}: {message}")]
    Io { path: String, message: String },
    #[error("registry index: {0}")]
    Db(#[from] sqlx::Error),
    #[error(
        "registry index: schema migration {migration} failed, the index is unchanged: {message}"
    )]
    Migration { migration: String, message: String },
    #[error(
        "registry index: it has schema migration {0}, which this release does not know: it was upgraded by a newer Tend"
    )]
    Newer(i64),
    #[error("registry index: schema migrations: {0}")]
    Migrate(sqlx::migrate::MigrateError),
    #[error(
        "{name} {version} is already published with digest {existing}; a published version is immutable (publish a new version)"
    )]
    Conflict {
        name: String,
        version: String,
        existing: String,
    },
    #[error(
        "{name} {version} is already published with these bytes ({digest}) but a different signed manifest; a published version is immutable, its manifest included (publish a new version)"
    )]
    ManifestDiffers {
        name: String,
        version: String,
        digest: String,
    },
}

fn io(path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// Who may do what with a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// May read (needed only on a `--private` registry).
    Viewer,
    /// May read and publish.
    Publisher,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Publisher => "publisher",
        }
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "publisher" => Ok(Role::Publisher),
            other => Err(format!(
                "unknown role {other:?} (expected viewer or publisher)"
            )),
        }
    }
}

/// The caller a token identifies.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

/// Why a presented token is not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// Not one of ours.
    Unknown,
    /// One of ours, but `expired` or `revoked` (`why`): it never works again.
    Dead {
        why: &'static str,
        prefix: String,
        name: String,
    },
}

/// A token's record: never its hash or secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct TokenInfo {
    pub prefix: String,
    pub name: String,
    pub role: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339; null: until revoked.
    pub expires_at: Option<String>,
    /// RFC 3339; null: not revoked.
    pub revoked_at: Option<String>,
    pub revoked_by: Option<String>,
}

fn token_info(r: &sqlx::sqlite::SqliteRow) -> TokenInfo {
    TokenInfo {
        prefix: r.get("prefix"),
        name: r.get("name"),
        role: r.get("role"),
        created_at: r.get("created_at"),
        expires_at: r.get::<Option<i64>, _>("expires_ms").map(rfc3339_ms),
        revoked_at: r.get::<Option<i64>, _>("revoked_ms").map(rfc3339_ms),
        revoked_by: r.get("revoked_by"),
    }
}

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn rfc3339_ms(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The outcome of a publish: a new entry, or the same bytes published again (a no-op).
#[derive(Debug, Clone, Serialize)]
pub struct Published {
    pub entry: Entry,
    pub created: bool,
}

#[derive(Debug)]
pub struct Store {
    pool: SqlitePool,
    blobs: PathBuf,
    publish_lock: Mutex<()>,
}

/// The index schema: numbered SQL files in `registry/migrations/`, embedded at build time.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Apply pending migrations, all or nothing, holding the writer lock (`BEGIN IMMEDIATE`) so
/// that two processes opening one index upgrade it once. An index made before migrations
/// existed has every table the baseline declares (`IF NOT EXISTS`, so a no-op there).
async fn upgrade(pool: &SqlitePool) -> Result<(), StoreError> {
    use sqlx::migrate::MigrateError;
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let name = |version: i64| {
        MIGRATOR.iter().find(|m| m.version == version).map_or_else(
            || format!("{version:04}"),
            |m| format!("{version:04} {}", m.description),
        )
    };
    MIGRATOR.run(&mut *tx).await.map_err(|e| match e {
        MigrateError::ExecuteMigration(error, version) => StoreError::Migration {
            migration: name(version),
            message: error.to_string(),
        },
        MigrateError::VersionMissing(version) => StoreError::Newer(version),
        MigrateError::VersionMismatch(version) => StoreError::Migration {
            migration: name(version),
            message: "the migration applied to this index differs from this release's file of the same number".to_string(),
        },
        other => StoreError::Migrate(other),
    })?;
    tx.commit().await?;
    Ok(())
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

impl Store {
    /// Open (creating if needed, mode 0700) a registry data directory.
    pub async fn open(dir: &Path) -> Result<Store, StoreError> {
        let blobs = dir.join("blobs").join("sha256");
        std::fs::create_dir_all(&blobs).map_err(|e| io(&blobs, e))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| io(dir, e))?;
        }
        let options = SqliteConnectOptions::new()
            .filename(dir.join("index.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(std::time::Duration::from_secs(5));
        let pool: SqlitePool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        upgrade(&pool).await?;
        Ok(Store {
            pool,
            blobs,
            publish_lock: Mutex::new(()),
        })
    }

    /// Create a token, expiring at `expires_ms` (unix ms; `None`: until revoked); returns the
    /// secret, shown once. Only its sha256 is stored.
    pub async fn create_token(
        &self,
        name: &str,
        role: Role,
        expires_ms: Option<i64>,
    ) -> Result<String, StoreError> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| io(&self.blobs, e))?;
        let mut prefix = [0u8; 6];
        getrandom::fill(&mut prefix).map_err(|e| io(&self.blobs, e))?;
        let prefix = hex::encode(prefix);
        let token = format!("tendreg_{prefix}_{}", B64URL.encode(secret));
        sqlx::query(
            "INSERT INTO tokens (prefix, hash, name, role, created_at, expires_ms) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&prefix)
        .bind(sha256_hex(token.as_bytes()))
        .bind(name)
        .bind(role.as_str())
        .bind(now_rfc3339())
        .bind(expires_ms)
        .execute(&self.pool)
        .await?;
        Ok(token)
    }

    /// Every token's record, oldest first: never a hash or a secret.
    pub async fn tokens(&self) -> Result<Vec<TokenInfo>, StoreError> {
        let rows = sqlx::query(
            "SELECT prefix, name, role, created_at, expires_ms, revoked_ms, revoked_by FROM tokens ORDER BY created_at, prefix",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(token_info).collect())
    }

    /// Revoke the token `prefix` (by `by`): refused from the next request on (lookups are not
    /// cached). Returns its record and whether it had been revoked already; `None` for an
    /// unknown prefix.
    pub async fn revoke_token(
        &self,
        prefix: &str,
        by: &str,
    ) -> Result<Option<(TokenInfo, bool)>, StoreError> {
        let done = sqlx::query(
            "UPDATE tokens SET revoked_ms = ?, revoked_by = ? WHERE prefix = ? AND revoked_ms IS NULL",
        )
        .bind(now_ms())
        .bind(by)
        .bind(prefix)
        .execute(&self.pool)
        .await?
        .rows_affected();
        let row = sqlx::query(
            "SELECT prefix, name, role, created_at, expires_ms, revoked_ms, revoked_by FROM tokens WHERE prefix = ?",
        )
        .bind(prefix)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| (token_info(&r), done == 0)))
    }

    /// The caller a bearer token identifies, or why it is refused. Every request looks its
    /// token up (no cache), so a revocation holds from the next request.
    pub async fn authenticate(&self, token: &str) -> Result<Result<Caller, Refused>, StoreError> {
        let Some(prefix) = token
            .strip_prefix("tendreg_")
            .and_then(|rest| rest.split_once('_'))
            .map(|(p, _)| p)
        else {
            return Ok(Err(Refused::Unknown));
        };
        let row = sqlx::query(
            "SELECT hash, name, role, expires_ms, revoked_ms FROM tokens WHERE prefix = ?",
        )
        .bind(prefix)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(Err(Refused::Unknown));
        };
        let stored: String = row.get("hash");
        if !constant_time_eq(stored.as_bytes(), sha256_hex(token.as_bytes()).as_bytes()) {
            return Ok(Err(Refused::Unknown));
        }
        let name: String = row.get("name");
        let dead = |why| {
            Ok(Err(Refused::Dead {
                why,
                prefix: prefix.to_string(),
                name: name.clone(),
            }))
        };
        if row.get::<Option<i64>, _>("revoked_ms").is_some() {
            return dead("revoked");
        }
        if row
            .get::<Option<i64>, _>("expires_ms")
            .is_some_and(|at| at <= now_ms())
        {
            return dead("expired");
        }
        let role: String = row.get("role");
        Ok(Ok(Caller {
            name,
            role: role.parse().unwrap_or(Role::Viewer),
        }))
    }

    pub fn blob_path(&self, digest_hex: &str) -> Option<PathBuf> {
        (digest_hex.len() == 64 && digest_hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| self.blobs.join(digest_hex.to_ascii_lowercase()))
    }

    /// Store a verified component: blob first (content-addressed, temp + rename), then the
    /// index row and the log entry in one transaction.
    pub async fn publish(
        &self,
        verified: &Verified,
        envelope_json: &str,
        component: &[u8],
        by: &str,
    ) -> Result<Published, StoreError> {
        let _guard = self.publish_lock.lock().await;
        let name = &verified.manifest.skill.name;
        let version = &verified.manifest.skill.version;
        if let Some(existing) = self.resolve(name, Some(version)).await? {
            // The same bytes are the same publication only under the same signed manifest: the
            // manifest holds the grants and the level, so a "re-publish" that changes them is a
            // new version, never a no-op that leaves the caller believing it was accepted.
            let same_manifest = Envelope::parse(existing.envelope.as_bytes())
                .is_ok_and(|old| old.manifest == verified.manifest_text);
            if existing.digest == verified.digest && !same_manifest {
                return Err(StoreError::ManifestDiffers {
                    name: name.to_string(),
                    version: version.clone(),
                    digest: existing.digest,
                });
            }
            if existing.digest == verified.digest {
                return Ok(Published {
                    entry: existing,
                    created: false,
                });
            }
            return Err(StoreError::Conflict {
                name: name.to_string(),
                version: version.clone(),
                existing: existing.digest,
            });
        }
        let hex = verified.digest.trim_start_matches("sha256:");
        let path = self.blobs.join(hex);
        if !path.exists() {
            let mut tmp =
                tempfile::NamedTempFile::new_in(&self.blobs).map_err(|e| io(&self.blobs, e))?;
            std::io::Write::write_all(&mut tmp, component).map_err(|e| io(&path, e))?;
            tmp.as_file().sync_all().map_err(|e| io(&path, e))?;
            tmp.persist(&path).map_err(|e| io(&path, e.error))?;
        }

        // The writer lock from the start: this transaction reads the log's head and then
        // appends, and SQLite cannot make a reader wait for the lock it upgrades to.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let last = sqlx::query("SELECT idx, hash FROM publication_log ORDER BY idx DESC LIMIT 1")
            .fetch_optional(&mut *tx)
            .await?;
        let (index, prev) = match last {
            Some(row) => (
                row.get::<i64, _>("idx") as u64 + 1,
                row.get::<String, _>("hash"),
            ),
            None => (1, GENESIS.to_string()),
        };
        let published_at = now_rfc3339();
        let log = LogEntry::next(
            index,
            &prev,
            name,
            version,
            &verified.digest,
            &verified.key_id,
            &published_at,
        );
        sqlx::query(
            "INSERT INTO publication_log (idx, name, version, digest, key_id, published_at, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(index as i64)
        .bind(name.as_str())
        .bind(version)
        .bind(&verified.digest)
        .bind(&verified.key_id)
        .bind(&published_at)
        .bind(&log.prev_hash)
        .bind(&log.hash)
        .execute(&mut *tx)
        .await?;
        let m = &verified.manifest.skill;
        let entry = Entry {
            name: name.to_string(),
            version: version.clone(),
            kind: m.kind.to_string(),
            level: m.level,
            description: m.description.clone(),
            digest: verified.digest.clone(),
            size: component.len() as u64,
            key_id: verified.key_id.clone(),
            publisher: verified.publisher.clone(),
            published_by: by.to_string(),
            published_at,
            log_index: index,
            envelope: envelope_json.to_string(),
        };
        sqlx::query(
            "INSERT INTO skills (name, version, kind, level, description, digest, size, key_id, publisher, published_by, published_at, log_index, envelope) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&entry.name)
        .bind(&entry.version)
        .bind(&entry.kind)
        .bind(entry.level as i64)
        .bind(&entry.description)
        .bind(&entry.digest)
        .bind(entry.size as i64)
        .bind(&entry.key_id)
        .bind(&entry.publisher)
        .bind(&entry.published_by)
        .bind(&entry.published_at)
        .bind(entry.log_index as i64)
        .bind(&entry.envelope)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Published {
            entry,
            created: true,
        })
    }

    /// One version of a skill; `None` as the version means the highest release (or the highest
    /// pre-release when there is no release).
    pub async fn resolve(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<Option<Entry>, StoreError> {
        let rows = match version {
            Some(v) => {
                sqlx::query("SELECT * FROM skills WHERE name = ? AND version = ?")
                    .bind(name)
                    .bind(v)
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                sqlx::query("SELECT * FROM skills WHERE name = ?")
                    .bind(name)
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        Ok(latest(rows.iter().map(entry_from_row).collect()))
    }

    /// Every version of a skill, newest first.
    pub async fn versions(&self, name: &str) -> Result<Vec<Entry>, StoreError> {
        let rows = sqlx::query("SELECT * FROM skills WHERE name = ?")
            .bind(name)
            .fetch_all(&self.pool)
            .await?;
        let mut all: Vec<Entry> = rows.iter().map(entry_from_row).collect();
        all.sort_by_key(|e| std::cmp::Reverse(sort_key(&e.version)));
        Ok(all)
    }

    /// The latest version of every skill whose name or description contains `query`.
    pub async fn list(&self, query: Option<&str>) -> Result<Vec<Entry>, StoreError> {
        let rows = sqlx::query("SELECT * FROM skills ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        let q = query.map(str::to_lowercase);
        let mut by_name: std::collections::BTreeMap<String, Vec<Entry>> = Default::default();
        for e in rows.iter().map(entry_from_row) {
            let hit = q
                .as_deref()
                .is_none_or(|q| e.name.contains(q) || e.description.to_lowercase().contains(q));
            if hit {
                by_name.entry(e.name.clone()).or_default().push(e);
            }
        }
        Ok(by_name.into_values().filter_map(latest).collect())
    }

    /// The whole publication log, oldest first.
    pub async fn log(&self) -> Result<Vec<LogEntry>, StoreError> {
        let rows = sqlx::query("SELECT * FROM publication_log ORDER BY idx")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(|r| LogEntry {
                index: r.get::<i64, _>("idx") as u64,
                name: r.get("name"),
                version: r.get("version"),
                digest: r.get("digest"),
                key_id: r.get("key_id"),
                published_at: r.get("published_at"),
                prev_hash: r.get("prev_hash"),
                hash: r.get("hash"),
            })
            .collect())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn entry_from_row(r: &sqlx::sqlite::SqliteRow) -> Entry {
    Entry {
        name: r.get("name"),
        version: r.get("version"),
        kind: r.get("kind"),
        level: r.get::<i64, _>("level") as u8,
        description: r.get("description"),
        digest: r.get("digest"),
        size: r.get::<i64, _>("size") as u64,
        key_id: r.get("key_id"),
        publisher: r.get("publisher"),
        published_by: r.get("published_by"),
        published_at: r.get("published_at"),
        log_index: r.get::<i64, _>("log_index") as u64,
        envelope: r.get("envelope"),
    }
}

/// Releases sort above pre-releases; unparsable versions (none are accepted) sort lowest.
fn sort_key(v: &str) -> (bool, Option<semver::Version>) {
    let parsed = semver::Version::parse(v).ok();
    (parsed.as_ref().is_some_and(|p| p.pre.is_empty()), parsed)
}

fn latest(entries: Vec<Entry>) -> Option<Entry> {
    entries.into_iter().max_by_key(|e| sort_key(&e.version))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
