//! Schema upgrades as an operator meets them: a database made by a release from before
//! versioned migrations (checked-in fixtures, dumped as portable SQL from databases that
//! release made by running) is opened by this release, upgraded in place, and keeps every
//! row, its audit chain and its tokens; the orchestrator then works on it. Orchestrator
//! scenarios run on SQLite and PostgreSQL; the registry index is SQLite.
//!
//! Fixtures (tests/fixtures/):
//! - `orchestrator-pre-migrations.sql`: made by the last release before migrations.
//! - `orchestrator-first-release.sql`: the first release's schema, which lacks tables and
//!   columns added later (and whose audit events are in the v1 form).
//! - `registry-pre-migrations/`: a registry index, its blob and the publisher's key.
//!
//! The databases were made by running that release and dumped with `tests/fixtures/dump.py`
//! (table definitions as stored, one `INSERT` per row), which both backends load.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::orchestrator::{Api, Backend, Orch, publish_levels, tamper};
use crate::registry::{Registry, World, err};
use crate::support::*;

fn fixture(name: &str) -> PathBuf {
    repo_root().join("tests/fixtures").join(name)
}

/// A token written in a fixture's header (`<name> (<role>) <token>`).
fn fixture_token(file: &str, name: &str) -> String {
    let text = std::fs::read_to_string(fixture(file)).expect("fixture");
    let marker = format!("{name} (");
    let rest = text
        .split(&marker)
        .nth(1)
        .unwrap_or_else(|| panic!("no token for {name} in {file}"));
    rest.split_whitespace().nth(1).expect("token").to_string()
}

/// A new database of `backend` holding the fixture's SQL, as the old release left it.
fn load(backend: Backend, w: &World, name: &str, file: &str) -> String {
    let sql = fixture(file);
    match backend {
        Backend::Sqlite => {
            let path = w.path(&format!("{name}.db"));
            sqlite_script(&path, &std::fs::read_to_string(&sql).expect("fixture"));
            format!("sqlite://{}", path.display())
        }
        Backend::Postgres => {
            let base = std::env::var("TEND_TEST_POSTGRES").expect(
                "TEND_TEST_POSTGRES is not set: run the suite with ./scripts/test, which starts PostgreSQL on loopback",
            );
            let unique = w
                .dir
                .path()
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("x")
                .to_lowercase()
                .replace(|c: char| !c.is_ascii_alphanumeric(), "");
            let db = format!("tend_{name}_{unique}");
            tamper(
                &format!("{base}/postgres"),
                &format!("CREATE DATABASE {db}"),
            );
            let url = format!("{base}/{db}");
            let ok = Command::new("psql")
                .args(["-q", "-v", "ON_ERROR_STOP=1", "-1", "-f"])
                .arg(&sql)
                .arg(&url)
                .stdout(Stdio::null())
                .status()
                .expect("psql")
                .success();
            assert!(ok, "loading {file} into PostgreSQL");
            url
        }
    }
}

/// The Python interpreter itself, found once (`python3` may be a slow version-manager shim).
fn python() -> Command {
    static PATH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    Command::new(PATH.get_or_init(|| {
        Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "python3".to_string())
    }))
}

/// Run several SQL statements on `database`, as someone with its disk or credentials could.
fn script(database: &str, sql: &str) {
    if let Some(path) = database.strip_prefix("sqlite://") {
        sqlite_script(Path::new(path), sql);
    } else {
        tamper(database, sql);
    }
}

fn sqlite_script(path: &Path, sql: &str) {
    let ok = python()
        .args([
            "-c",
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.executescript(sys.argv[2]); c.commit()",
        ])
        .arg(path)
        .arg(sql)
        .status()
        .expect("python3")
        .success();
    assert!(ok, "{sql}");
}

/// Rows of a query, one line each, columns separated by `|` (as `psql -A` prints them).
fn rows(database: &str, sql: &str) -> Vec<String> {
    let o = if let Some(path) = database.strip_prefix("sqlite://") {
        python()
            .args([
                "-c",
                "import sqlite3,sys\nfor r in sqlite3.connect(sys.argv[1]).execute(sys.argv[2]): print('|'.join('' if v is None else str(v) for v in r))",
            ])
            .arg(path)
            .arg(sql)
            .output()
    } else {
        Command::new("psql")
            .args(["-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", database, "-c", sql])
            .output()
    }
    .expect("run sql");
    assert!(
        o.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout)
        .expect("utf8")
        .lines()
        .map(str::to_string)
        .collect()
}

/// The columns of `table`, in order.
fn columns(database: &str, table: &str) -> Vec<String> {
    if database.starts_with("sqlite://") {
        rows(
            database,
            &format!("SELECT name FROM pragma_table_info('{table}')"),
        )
    } else {
        rows(
            database,
            &format!(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = '{table}' ORDER BY ordinal_position"
            ),
        )
    }
}

fn has_table(database: &str, table: &str) -> bool {
    let sql = if database.starts_with("sqlite://") {
        format!("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '{table}'")
    } else {
        format!(
            "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = '{table}'"
        )
    };
    rows(database, &sql) == ["1"]
}

/// Everything an old release stored, table by table, in a stable order.
fn contents(database: &str, tables: &[(&str, &str)]) -> Vec<Vec<String>> {
    let cols: Vec<Vec<String>> = tables.iter().map(|(t, _)| columns(database, t)).collect();
    contents_of(database, tables, &cols)
}

/// The rows of `tables`, reading only the columns `cols` (one list per table): what a
/// database held before later migrations added columns.
fn contents_of(database: &str, tables: &[(&str, &str)], cols: &[Vec<String>]) -> Vec<Vec<String>> {
    tables
        .iter()
        .zip(cols)
        .map(|((table, order), cols)| {
            rows(
                database,
                &format!("SELECT {} FROM {table} ORDER BY {order}", cols.join(", ")),
            )
        })
        .collect()
}

/// The orchestrator's migration files: each runs once on every database.
fn orchestrator_migrations() -> usize {
    std::fs::read_dir(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../host/orchestrator/migrations"
    ))
    .expect("migrations")
    .filter(|e| {
        e.as_ref()
            .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "sql"))
    })
    .count()
}

/// `tend audit verify --json`: (exit code, report).
fn verify(w: &World, database: &str) -> (Option<i32>, Value, String) {
    let o = w.tend(&["audit", "verify", "--database", database, "--json"]);
    let report = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    (o.status.code(), report, err(&o))
}

const PRE_MIGRATIONS: &str = "orchestrator-pre-migrations.sql";
const FIRST_RELEASE: &str = "orchestrator-first-release.sql";

const ALL_TABLES: &[(&str, &str)] = &[
    ("tokens", "prefix"),
    ("invocations", "id"),
    ("approvals", "invocation_id, approver"),
    ("audit", "idx"),
    ("audit_head", "id"),
    ("agents", "id"),
    ("enroll_tokens", "prefix"),
    ("agent_nonces", "nonce"),
];

/// Submit acme-echo with a token the old release issued, and see it run.
async fn submit_runs(api: &Api, token: &str) -> String {
    let (s, v) = api.submit(token, "acme-echo", json!({"x": 42})).await;
    assert_eq!(s, 201, "{v}");
    let id = v["id"].as_str().expect("id").to_string();
    let done = api.wait_for(token, &id, "succeeded").await;
    assert_eq!(done["result"]["output"]["echo"]["x"], 42, "{done}");
    id
}

async fn a_database_from_before_migrations_upgrades_without_loss(backend: Backend) {
    let w = World::new();
    let reg = Registry::start(&w);
    publish_levels(&w, &reg);
    let database = load(backend, &w, "pre", PRE_MIGRATIONS);
    assert!(!has_table(&database, "_sqlx_migrations"));
    let before = contents(&database, ALL_TABLES);
    let before_cols: Vec<Vec<String>> = ALL_TABLES
        .iter()
        .map(|(t, _)| columns(&database, t))
        .collect();
    assert_eq!(rows(&database, "SELECT COUNT(*) FROM invocations"), ["5"]);
    assert_eq!(rows(&database, "SELECT COUNT(*) FROM audit"), ["26"]);

    // Any command that opens the database upgrades it; the chain still verifies.
    let (code, report, stderr) = verify(&w, &database);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(report["intact"], true, "{report}");
    assert_eq!(report["events"], 26, "{report}");
    assert_eq!(
        rows(
            &database,
            "SELECT version, success FROM _sqlx_migrations ORDER BY version"
        )[0]
        .split('|')
        .next(),
        Some("1")
    );
    // Not a row lost or changed; the only columns added are those later migrations add
    // (0002: what started an invocation, 0003: a reject's comment, 0005: what an approval
    // binds, 0007: the healing policy it was submitted under), and old invocations read as started by the API.
    assert_eq!(contents_of(&database, ALL_TABLES, &before_cols), before);
    let mut want = before_cols[1].clone();
    want.extend(
        [
            "trigger",
            "comment",
            "manifest_digest",
            "publisher",
            "publisher_key",
            "hosts",
            "narrowing",
            "grants",
            "limits",
            "plan",
            "export",
            "plan_for",
            "part_of",
            "healing",
        ]
        .map(String::from),
    );
    assert_eq!(columns(&database, "invocations"), want);
    assert_eq!(
        rows(&database, "SELECT DISTINCT trigger FROM invocations"),
        ["api"]
    );
    // Opening it again changes nothing.
    assert_eq!(verify(&w, &database).0, Some(0));
    assert_eq!(contents_of(&database, ALL_TABLES, &before_cols), before);

    // The orchestrator runs on it: the old tokens, invocations and agent are there, and new
    // work appends to the same chain.
    let mut orch = Orch::replica(&w, &reg, &database, "orch", "127.0.0.1:0", &[]);
    let api = Api::new(&orch);
    let alice = fixture_token(PRE_MIGRATIONS, "alice");
    let (s, list) = api
        .call("GET", "/api/v1/invocations", Some(&alice), None)
        .await;
    assert_eq!(s, 200, "{list}");
    let states: Vec<&str> = list["invocations"]
        .as_array()
        .expect("list")
        .iter()
        .map(|i| i["state"].as_str().expect("state"))
        .collect();
    assert_eq!(states.len(), 5, "{list}");
    // (The half-approved one has expired since the fixture was made.)
    for state in ["succeeded", "rejected"] {
        assert!(states.contains(&state), "{state} missing: {list}");
    }
    let bob = fixture_token(PRE_MIGRATIONS, "bob");
    let (s, agents) = api.call("GET", "/api/v1/agents", Some(&bob), None).await;
    assert_eq!(s, 200, "{agents}");
    assert!(agents.to_string().contains("web-1"), "{agents}");
    submit_runs(&api, &alice).await;
    orch.stop();

    let (code, report, stderr) = verify(&w, &database);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(report["intact"], true, "{report}");
    assert!(report["events"].as_i64().expect("events") > 26, "{report}");
    let after = contents(&database, &[("audit", "idx")]);
    assert_eq!(
        after[0][..26],
        before[3][..],
        "the old events are untouched"
    );
}

async fn a_database_from_the_first_release_gains_what_it_lacks(backend: Backend) {
    let w = World::new();
    let reg = Registry::start(&w);
    publish_levels(&w, &reg);
    let database = load(backend, &w, "first", FIRST_RELEASE);
    assert!(!has_table(&database, "agents"));
    assert!(!columns(&database, "invocations").contains(&"kind".to_string()));
    assert!(!columns(&database, "audit").contains(&"v".to_string()));
    let old = [
        ("tokens", "prefix"),
        ("approvals", "invocation_id, approver"),
    ];
    let old_cols: Vec<Vec<String>> = old.iter().map(|(t, _)| columns(&database, t)).collect();
    let before = contents_of(&database, &old, &old_cols);
    let invocations_before = rows(
        &database,
        "SELECT id, state, result FROM invocations ORDER BY id",
    );
    assert_eq!(rows(&database, "SELECT COUNT(*) FROM invocations"), ["4"]);

    // The v1 events verify after the upgrade: `v` was added with the value they were hashed in.
    let (code, report, stderr) = verify(&w, &database);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(report["events"], 17, "{report}");
    assert_eq!(rows(&database, "SELECT DISTINCT v FROM audit"), ["1"]);
    // Every table and column this release has, with the defaults of the release that added it.
    for table in [
        "agents",
        "enroll_tokens",
        "agent_nonces",
        "approver_keys",
        "incidents",
    ] {
        assert!(has_table(&database, table), "{table}");
    }
    let fresh = load(backend, &w, "fresh", "/dev/null");
    assert_eq!(verify(&w, &fresh).0, Some(0));
    for (table, _) in ALL_TABLES {
        assert_eq!(columns(&database, table), columns(&fresh, table), "{table}");
    }
    assert_eq!(
        rows(&database, "SELECT DISTINCT kind FROM invocations"),
        ["diagnose"]
    );
    // (Tokens gained their lifecycle columns, 0004: read as they were.)
    assert_eq!(contents_of(&database, &old, &old_cols), before);
    assert_eq!(
        rows(
            &database,
            "SELECT id, state, result FROM invocations ORDER BY id"
        ),
        invocations_before
    );

    let mut orch = Orch::replica(&w, &reg, &database, "orch", "127.0.0.1:0", &[]);
    let api = Api::new(&orch);
    submit_runs(&api, &fixture_token(PRE_MIGRATIONS, "alice")).await;
    orch.stop();
    let (code, report, stderr) = verify(&w, &database);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(report["events"].as_i64().expect("events") > 17, "{report}");
    assert_eq!(
        rows(&database, "SELECT DISTINCT v FROM audit ORDER BY v"),
        ["1", "2"],
        "new events in the current form after the old ones"
    );
}

/// A database from the release that introduced agents (before names were unique) holding two
/// agents of one name: the baseline's unique index cannot be built. The upgrade fails, names
/// the migration, and leaves the database exactly as it was; fixed, it upgrades.
async fn a_failed_migration_changes_nothing_and_names_itself(backend: Backend) {
    let w = World::new();
    let database = load(backend, &w, "failing", FIRST_RELEASE);
    // The tables as the release that introduced agents made them, two agents named alike.
    script(
        &database,
        "CREATE TABLE agents (id TEXT PRIMARY KEY, name TEXT NOT NULL, hostname TEXT NOT NULL, os TEXT NOT NULL, arch TEXT NOT NULL, labels TEXT NOT NULL, pools TEXT NOT NULL, public_key TEXT NOT NULL, ceiling TEXT NOT NULL, enrolled_ms BIGINT NOT NULL, last_seen_ms BIGINT NOT NULL, heartbeat_ms BIGINT NOT NULL, running BIGINT NOT NULL, capacity BIGINT NOT NULL, jobs_ok BIGINT NOT NULL, jobs_failed BIGINT NOT NULL);
         CREATE TABLE enroll_tokens (prefix TEXT PRIMARY KEY, hash TEXT NOT NULL, uses_left BIGINT NOT NULL, expires_ms BIGINT NOT NULL, created_by TEXT NOT NULL);
         INSERT INTO enroll_tokens VALUES ('0123456789ab', 'h', 1, 0, 'admin');
         INSERT INTO agents VALUES ('agent_a', 'web-1', 'vm', 'linux', 'x86_64', '{}', '[]', 'k', '{}', 0, 0, 0, 0, 1, 0, 0);
         INSERT INTO agents VALUES ('agent_b', 'web-1', 'vm', 'linux', 'x86_64', '{}', '[]', 'k', '{}', 0, 0, 0, 0, 1, 0, 0);",
    );
    let tables = [
        "tokens",
        "invocations",
        "approvals",
        "audit",
        "audit_head",
        "agents",
        "enroll_tokens",
    ];
    let shape = |database: &str| -> Vec<Vec<String>> {
        tables.iter().map(|t| columns(database, t)).collect()
    };
    let ordered: Vec<(&str, &str)> = tables.iter().map(|t| (*t, "1")).collect();
    let before = (shape(&database), contents(&database, &ordered));

    let (code, _, stderr) = verify(&w, &database);
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains("schema migration 0001 baseline failed, the database is unchanged"),
        "{stderr}"
    );
    assert!(stderr.to_lowercase().contains("unique"), "{stderr}");
    assert!(!has_table(&database, "_sqlx_migrations"));
    assert!(!has_table(&database, "agent_nonces"));
    assert_eq!((shape(&database), contents(&database, &ordered)), before);

    script(&database, "DELETE FROM agents WHERE id = 'agent_b'");
    let (code, _, stderr) = verify(&w, &database);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        rows(
            &database,
            "SELECT prefix, uses_left, pools, labels, max_level FROM enroll_tokens"
        ),
        ["0123456789ab|1|[]|{}|0"]
    );
    assert!(has_table(&database, "agent_nonces"));
}

/// Processes that open one new database at the same moment (replicas, CLI commands) upgrade
/// it once between them, and every one of them works.
async fn starts_at_once_upgrade_once(backend: Backend) {
    let w = World::new();
    let database = match backend {
        Backend::Sqlite => format!("sqlite://{}", w.path("together.db").display()),
        Backend::Postgres => load(backend, &w, "together", "/dev/null"),
    };
    let children: Vec<_> = (0..6)
        .map(|n| {
            tend()
                .args([
                    "orchestrator",
                    "token",
                    "create",
                    "--role",
                    "viewer",
                    "--name",
                ])
                .arg(format!("v{n}"))
                .args(["--database", &database])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn")
        })
        .collect();
    for child in children {
        let o = child.wait_with_output().expect("wait");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert_eq!(
        rows(&database, "SELECT COUNT(*) FROM _sqlx_migrations"),
        [orchestrator_migrations().to_string()]
    );
    assert_eq!(rows(&database, "SELECT COUNT(*) FROM tokens"), ["6"]);
    let (code, report, stderr) = verify(&w, &database);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(report["events"], 6, "{report}");
}

mod on {
    use super::*;

    macro_rules! both {
        ($($name:ident => $scenario:ident),* $(,)?) => {$(
            pub mod $name {
                #[tokio::test(flavor = "multi_thread")]
                async fn sqlite() {
                    super::$scenario(super::Backend::Sqlite).await
                }
                #[tokio::test(flavor = "multi_thread")]
                async fn postgres() {
                    super::$scenario(super::Backend::Postgres).await
                }
            }
        )*};
    }

    both! {
        upgrade_pre_migrations => a_database_from_before_migrations_upgrades_without_loss,
        upgrade_first_release => a_database_from_the_first_release_gains_what_it_lacks,
        failed_migration => a_failed_migration_changes_nothing_and_names_itself,
        starts_at_once => starts_at_once_upgrade_once,
    }
}

/// A database a newer release has upgraded is refused, with the reason, and left alone.
#[test]
fn a_database_from_a_newer_release_is_refused() {
    let w = World::new();
    let database = format!("sqlite://{}", w.path("newer.db").display());
    // Made by this release (`audit verify` reads only databases that exist).
    w.ok(&[
        "orchestrator",
        "token",
        "create",
        "--name",
        "v",
        "--role",
        "viewer",
        "--database",
        &database,
    ]);
    assert_eq!(verify(&w, &database).0, Some(0));
    script(
        &database,
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) VALUES (9999, 'from the future', 1, X'00', 0)",
    );
    let (code, _, stderr) = verify(&w, &database);
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains("schema migration 9999, which this release does not know"),
        "{stderr}"
    );
}

/// A registry index from before migrations: upgraded on open, its skills still list and pull
/// (signature, digest and publication log checked by the client as ever).
#[test]
fn a_registry_index_from_before_migrations_upgrades_without_loss() {
    let w = World::new();
    let dir = fixture("registry-pre-migrations");
    std::fs::copy(dir.join("trust.toml"), w.path("trust.toml")).expect("trust");
    let data = w.path("registry");
    std::fs::create_dir_all(data.join("blobs/sha256")).expect("mkdir");
    for e in std::fs::read_dir(dir.join("blobs/sha256")).expect("blobs") {
        let e = e.expect("entry");
        std::fs::copy(e.path(), data.join("blobs/sha256").join(e.file_name())).expect("blob");
    }
    let index = data.join("index.db");
    sqlite_script(
        &index,
        &std::fs::read_to_string(dir.join("index.sql")).expect("index.sql"),
    );
    let database = format!("sqlite://{}", index.display());
    let tables = [
        ("tokens", "prefix"),
        ("skills", "name, version"),
        ("publication_log", "idx"),
    ];
    let before = contents(&database, &tables);
    let before_cols: Vec<Vec<String>> = tables.iter().map(|(t, _)| columns(&database, t)).collect();
    assert_eq!(rows(&database, "SELECT COUNT(*) FROM skills"), ["3"]);

    let reg = Registry::start(&w);
    assert_eq!(
        rows(
            &database,
            "SELECT version FROM _sqlx_migrations ORDER BY version"
        ),
        ["1", "2"]
    );
    // Not a row lost or changed; tokens gain their lifecycle columns (0002), empty: the old
    // tokens never expire and are not revoked.
    assert_eq!(contents_of(&database, &tables, &before_cols), before);
    assert_eq!(
        rows(
            &database,
            "SELECT COUNT(*) FROM tokens WHERE expires_ms IS NULL AND revoked_ms IS NULL"
        ),
        [before[0].len().to_string()]
    );
    let o = w.ok(&["skill", "list", "--registry", &reg.url, "--json"]);
    let listed = String::from_utf8_lossy(&o.stdout);
    for name in ["acme-echo", "acme-disrupt", "acme-critical"] {
        assert!(listed.contains(name), "{name}: {listed}");
    }
    let o = w.ok(&[
        "skill",
        "pull",
        "acme-echo@1.0.0",
        "--registry",
        &reg.url,
        "--json",
    ]);
    let pulled: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(pulled["publisher"], "acme", "{pulled}");
    // A new token is issued and stored beside the old ones.
    w.token("ci-after-upgrade", "publisher");
    assert_eq!(
        rows(&database, "SELECT COUNT(*) FROM tokens"),
        [(before[0].len() + 1).to_string()]
    );
}
