//! The `replication-lag` catalog skill against the real thing: two PostgreSQL clusters made
//! with Debian's binaries on loopback, a primary and a streaming replica (`pg_basebackup -R`),
//! and the signed skill run by `tend run` with a copy of its manifest that grants their ports
//! (and the directory of a libpq password file). Asserted is what an operator would see: the
//! replica streaming, a lag made real by pausing replay, authentication failures named,
//! ports that refuse, stay silent or are not granted, and a primary left with no replica.
//!
//! PostgreSQL's server binaries are required (`scripts/test` installs Debian's `postgresql`):
//! without them this test fails and says so, it does not pass by skipping.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::*;

/// A password with characters the passfile must escape (`:` and `\`).
const MONITOR_PASSWORD: &str = r"mon:it\or-7f3a";

/// The newest `/usr/lib/postgresql/<version>/bin` holding the server and `pg_basebackup`.
fn postgres_bin() -> PathBuf {
    let mut bins: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            (bin.join("postgres").exists() && bin.join("pg_basebackup").exists())
                .then_some((version, bin))
        })
        .collect();
    bins.sort();
    match bins.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL server binaries are missing (no /usr/lib/postgresql/*/bin/postgres): \
             install Debian's `postgresql` package (scripts/test does) to run the replication-lag test"
        ),
    }
}

/// How to run PostgreSQL's programs: as `postgres` through `runuser` when the tests run as
/// root (the server refuses to run as root), else as ourselves.
struct Pg {
    bin: PathBuf,
    as_root: bool,
}

impl Pg {
    fn new() -> Pg {
        Pg {
            bin: postgres_bin(),
            as_root: rustix::process::geteuid().is_root(),
        }
    }

    fn cmd(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        if self.as_root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        }
    }

    fn run(&self, program: &str, args: &[&str]) -> Output {
        let o = self
            .cmd(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("run {program}: {e}"));
        assert!(
            o.status.success(),
            "{program} {args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        o
    }

    /// One statement through psql as the superuser (trust on loopback), its output trimmed.
    fn sql(&self, port: u16, statement: &str) -> String {
        let o = self.run(
            "psql",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-X",
                "-Atq",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                statement,
            ],
        );
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    /// Poll `statement` until it returns `want` (a readiness check, bounded at 60 s).
    fn wait_for(&self, port: u16, statement: &str, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = self.sql(port, statement);
            if got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "waited 60 s for `{statement}` on port {port} to return {want:?}; it returns {got:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A cluster stopped (immediately) when dropped, even when the test panics.
struct Cluster<'a> {
    pg: &'a Pg,
    data: PathBuf,
    port: u16,
}

impl Cluster<'_> {
    fn start(&self, dir: &Path, extra: &str) {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off -c hba_file={} {extra}",
            self.port,
            dir.display(),
            dir.join("pg_hba.conf").display()
        );
        let log = self.data.with_extension("log");
        self.pg.run(
            "pg_ctl",
            &[
                "-D",
                path(&self.data),
                "-l",
                path(&log),
                "-w",
                "-t",
                "60",
                "-o",
                &options,
                "start",
            ],
        );
    }

    fn stop(&self, mode: &str) {
        let _ = self
            .pg
            .cmd("pg_ctl")
            .args(["-D", path(&self.data), "-m", mode, "-w", "stop"])
            .output();
    }
}

impl Drop for Cluster<'_> {
    fn drop(&mut self) {
        self.stop("immediate");
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The catalog skill signed with a test publisher key, with a copy of its manifest granting
/// `tcp` and the passfile directory; run through `tend run` (verify, then run).
struct SignedSkill {
    dir: PathBuf,
}

impl SignedSkill {
    fn new(dir: &Path, tcp: &[String], passfile_dir: &Path) -> SignedSkill {
        let (bytes, _) = catalog_skill("replication-lag");
        std::fs::write(dir.join("replication-lag.wasm"), bytes).expect("write component");
        let real = std::fs::read_to_string(repo_root().join("skills/replication-lag/skill.toml"))
            .expect("manifest");
        let original = "tcp = [\"127.0.0.1:5432\"]\nfs_read = [\"/etc/tend/pgpass.d\"]";
        assert!(
            real.contains(original),
            "the manifest's default grants moved"
        );
        let grants = tcp
            .iter()
            .map(|t| format!("{t:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        let copy = real.replace(
            original,
            &format!(
                "tcp = [{grants}]\nfs_read = [{:?}]",
                passfile_dir.display().to_string()
            ),
        );
        std::fs::write(dir.join("skill.toml"), copy).expect("write manifest");
        let tend_in = |args: &[&str]| {
            let o = tend()
                .current_dir(dir)
                .args(args)
                .output()
                .expect("run tend");
            assert!(
                o.status.success(),
                "tend {args:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            o
        };
        tend_in(&["key", "gen", "--out", "publisher.key"]);
        tend_in(&[
            "skill",
            "sign",
            "replication-lag.wasm",
            "--manifest",
            "skill.toml",
            "--key",
            "publisher.key",
        ]);
        let shown = tend_in(&["key", "show", "publisher.key", "--json"]);
        let key: Value = serde_json::from_slice(&shown.stdout).expect("key json");
        std::fs::write(
            dir.join("trust.toml"),
            format!(
                "[[publishers]]\nname = \"test\"\nkey = \"{}\"\nprefixes = [\"replication-\"]\n",
                key["public_key"].as_str().expect("public key")
            ),
        )
        .expect("trust");
        SignedSkill {
            dir: dir.to_path_buf(),
        }
    }

    /// Run with `input`; the whole report (exit status 0 is asserted).
    fn run(&self, input: &Value) -> Value {
        let o = tend()
            .current_dir(&self.dir)
            .args(["run", "replication-lag.wasm", "--trust", "trust.toml"])
            .arg("--cache-dir")
            .arg(self.dir.join("cache"))
            .arg("--input")
            .arg(input.to_string())
            .arg("--json")
            .output()
            .expect("run tend");
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(
            !stdout.contains(MONITOR_PASSWORD) && !stdout.contains("mon:it"),
            "a password reached the report: {stdout}"
        );
        let report: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
            panic!(
                "tend run printed no report ({e}): {}",
                String::from_utf8_lossy(&o.stderr)
            )
        });
        assert_eq!(report["provenance"]["trust"], "signed", "{report:#}");
        assert_eq!(report["provenance"]["publisher"], "test");
        report
    }

    /// Run and return the checked output of an `ok` report.
    fn output(&self, input: &Value) -> Value {
        let report = self.run(input);
        assert_eq!(report["outcome"], "ok", "{report:#}");
        let out = report["output"].clone();
        assert_output_schema("replication-lag", &out);
        out
    }
}

/// The entry for `target` in an output.
fn target<'a>(out: &'a Value, target: &str) -> &'a Value {
    out["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .find(|t| t["target"] == target)
        .unwrap_or_else(|| panic!("{target} is not in the output: {out:#}"))
}

fn reasons(t: &Value) -> String {
    t["reasons"]
        .as_array()
        .expect("reasons")
        .iter()
        .filter_map(Value::as_str)
        .collect::<Vec<_>>()
        .join("; ")
}

#[test]
fn replication_lag_reads_a_real_primary_and_its_streaming_replica() {
    let pg = Pg::new();
    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = scratch.path();
    if pg.as_root {
        let ok = Command::new("chown")
            .args(["postgres:", path(dir)])
            .status()
            .expect("chown");
        assert!(ok.success(), "chown the scratch dir to postgres");
    }
    // SCRAM for the monitoring role (the passfile path), MD5 and cleartext for two more, trust
    // for the superuser the test itself uses and for replication.
    std::fs::write(
        dir.join("pg_hba.conf"),
        "host all monitor 127.0.0.1/32 scram-sha-256\n\
         host all md5user 127.0.0.1/32 md5\n\
         host all clearuser 127.0.0.1/32 password\n\
         host all postgres 127.0.0.1/32 trust\n\
         host replication postgres 127.0.0.1/32 trust\n",
    )
    .expect("pg_hba.conf");

    let primary = Cluster {
        pg: &pg,
        data: dir.join("primary"),
        port: free_port(),
    };
    pg.run(
        "initdb",
        &[
            "-D",
            path(&primary.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
        ],
    );
    primary.start(dir, "-c wal_level=replica -c max_wal_senders=4");
    pg.sql(
        primary.port,
        &format!(
            "CREATE ROLE monitor LOGIN PASSWORD '{MONITOR_PASSWORD}' IN ROLE pg_monitor; \
             SET password_encryption = 'md5'; \
             CREATE ROLE md5user LOGIN PASSWORD 'md5-secret' IN ROLE pg_monitor; \
             CREATE ROLE clearuser LOGIN PASSWORD 'clear-secret';"
        ),
    );

    let replica = Cluster {
        pg: &pg,
        data: dir.join("replica"),
        port: free_port(),
    };
    pg.run(
        "pg_basebackup",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &primary.port.to_string(),
            "-U",
            "postgres",
            "-D",
            path(&replica.data),
            "-R",
            "-X",
            "stream",
            "--no-sync",
        ],
    );
    replica.start(dir, "-c cluster_name=tend-replica");
    pg.wait_for(
        primary.port,
        "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
        "1",
    );

    // The passfile: a comment, a line for another port, wildcards, escapes.
    let pass_dir = dir.join("pgpass.d");
    std::fs::create_dir(&pass_dir).expect("mkdir");
    let escaped = MONITOR_PASSWORD.replace('\\', r"\\").replace(':', r"\:");
    std::fs::write(
        pass_dir.join("pgpass"),
        format!(
            "# host:port:database:user:password\n\
             127.0.0.1:1:*:monitor:not-this-one\n\
             127.0.0.1:*:postgres:monitor:{escaped}\n\
             *:*:*:md5user:md5-secret\n\
             *:*:*:clearuser:clear-secret\n"
        ),
    )
    .expect("passfile");
    std::fs::write(pass_dir.join("wrong"), "*:*:*:monitor:a-wrong-password\n").expect("passfile");
    let passfile = path(&pass_dir.join("pgpass")).to_string();

    // Three more ports: nothing listening; listening but never answering; not granted.
    let closed = free_port();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_port = silent.local_addr().expect("addr").port();
    let ungranted = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let ungranted_port = ungranted.local_addr().expect("addr").port();
    // And one that is not PostgreSQL: it greets like an SSH server.
    let ssh = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let ssh_port = ssh.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        use std::io::Write;
        for mut conn in ssh.incoming().flatten() {
            let _ = conn.write_all(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n");
        }
    });

    let p = format!("127.0.0.1:{}", primary.port);
    let r = format!("127.0.0.1:{}", replica.port);
    let closed_t = format!("127.0.0.1:{closed}");
    let silent_t = format!("127.0.0.1:{silent_port}");
    let ungranted_t = format!("127.0.0.1:{ungranted_port}");
    let ssh_t = format!("127.0.0.1:{ssh_port}");
    let skill_dir = dir.join("skill");
    std::fs::create_dir(&skill_dir).expect("mkdir");
    let skill = SignedSkill::new(
        &skill_dir,
        &[
            p.clone(),
            r.clone(),
            closed_t.clone(),
            silent_t.clone(),
            ssh_t.clone(),
        ],
        &pass_dir,
    );

    // 1. Healthy: the primary lists its replica streaming; the replica is in recovery and
    //    streams from the primary. Logged in as a pg_monitor role with SCRAM-SHA-256.
    let out = skill.output(&json!({
        "targets": [p, r], "user": "monitor", "passfile": passfile,
    }));
    assert_eq!(out["status"], "ok", "{out:#}");
    let tp = target(&out, &p);
    assert_eq!(tp["role"], "primary", "{tp:#}");
    assert_eq!(tp["status"], "ok", "{tp:#}");
    assert_eq!(tp["error"], Value::Null);
    assert!(tp["server_version"].is_string());
    assert_eq!(tp["primary"]["replicas_connected"], 1, "{tp:#}");
    let listed = &tp["primary"]["replicas"][0];
    assert_eq!(listed["application_name"], "tend-replica", "{tp:#}");
    assert_eq!(listed["client_addr"], "127.0.0.1");
    assert_eq!(listed["state"], "streaming");
    assert_eq!(listed["sync_state"], "async");
    assert!(listed["lag_bytes"].as_i64().expect("lag bytes") >= 0);
    let tr = target(&out, &r);
    assert_eq!(tr["role"], "replica", "{tr:#}");
    assert_eq!(tr["status"], "ok", "{tr:#}");
    assert_eq!(tr["replica"]["replay_paused"], false);
    assert_eq!(tr["replica"]["wal_receiver"]["status"], "streaming");
    assert_eq!(tr["replica"]["wal_receiver"]["sender"], json!(p));
    assert!(tr["replica"]["replay_lsn"].is_string());

    // 2. MD5 and cleartext passwords work too; a role without pg_monitor sees no details, and
    //    is told so.
    let out = skill.output(&json!({
        "targets": [p], "user": "md5user", "passfile": passfile,
    }));
    assert_eq!(target(&out, &p)["status"], "ok", "{out:#}");
    assert_eq!(target(&out, &p)["primary"]["replicas_connected"], 1);
    let out = skill.output(&json!({
        "targets": [p], "user": "clearuser", "passfile": passfile,
    }));
    let tp = target(&out, &p);
    assert_eq!(tp["status"], "warn", "{tp:#}");
    assert_eq!(tp["primary"]["replicas"][0]["state"], Value::Null);
    assert!(reasons(tp).contains("pg_monitor"), "{tp:#}");

    // 3. What cannot be asked is named per target: a wrong password (the server's message),
    //    no password at all, nothing listening, a server that never answers, a port the
    //    manifest does not grant, a peer that is not PostgreSQL, a database that does not exist.
    let out = skill.output(&json!({
        "targets": [p, closed_t, silent_t, ungranted_t],
        "user": "monitor",
        "passfile": path(&pass_dir.join("wrong")),
        "timeout_ms": 500,
    }));
    assert_eq!(out["status"], "critical", "{out:#}");
    let e = &target(&out, &p)["error"];
    assert_eq!(e["kind"], "auth_failed", "{out:#}");
    assert_eq!(e["sqlstate"], "28P01");
    assert!(
        e["message"]
            .as_str()
            .expect("message")
            .contains("password authentication failed for user \"monitor\""),
        "{e:#}"
    );
    assert_eq!(
        target(&out, &closed_t)["error"]["kind"],
        "connection_refused"
    );
    assert_eq!(target(&out, &silent_t)["error"]["kind"], "timeout");
    let refused = &target(&out, &ungranted_t)["error"];
    assert_eq!(refused["kind"], "not_granted", "{out:#}");
    assert!(
        refused["message"]
            .as_str()
            .expect("message")
            .contains("not granted in capabilities.tcp"),
        "{refused:#}"
    );
    for t in out["targets"].as_array().expect("targets") {
        assert_eq!(t["status"], "critical", "{t:#}");
        assert_eq!(t["role"], Value::Null, "{t:#}");
    }
    let out = skill.output(&json!({"targets": [ssh_t], "timeout_ms": 2000}));
    let e = &target(&out, &ssh_t)["error"];
    assert_eq!(e["kind"], "protocol_error", "{out:#}");
    assert!(
        e["message"]
            .as_str()
            .expect("message")
            .contains("does not look like a PostgreSQL server"),
        "{e:#}"
    );
    let out = skill.output(&json!({"targets": [p], "database": "no_such_db"}));
    let e = &target(&out, &p)["error"];
    assert_eq!(e["kind"], "server_error", "{out:#}");
    assert_eq!(e["sqlstate"], "3D000");
    assert!(
        e["message"]
            .as_str()
            .expect("message")
            .contains("no_such_db"),
        "{e:#}"
    );
    let out = skill.output(&json!({"targets": [p], "user": "monitor"}));
    let e = &target(&out, &p)["error"];
    assert_eq!(e["kind"], "auth_failed", "{out:#}");
    assert!(
        e["message"].as_str().expect("message").contains("passfile"),
        "{e:#}"
    );
    // A passfile outside the granted directory is a clear error, not a silent trust login.
    let report = skill.run(&json!({
        "targets": [p], "user": "monitor", "passfile": "/etc/postgresql-common/pgpass",
    }));
    assert_eq!(report["outcome"], "skill_error", "{report:#}");
    assert_eq!(report["error"]["code"], "passfile-unreadable");

    // 4. A real lag: replay paused on the replica while the primary writes a few MiB of WAL.
    pg.sql(primary.port, "CREATE TABLE filler (n int, pad text)");
    pg.wait_for(
        replica.port,
        "SELECT to_regclass('filler') IS NOT NULL",
        "t",
    );
    pg.sql(replica.port, "SELECT pg_wal_replay_pause()");
    pg.wait_for(
        replica.port,
        "SELECT pg_get_wal_replay_pause_state()",
        "paused",
    );
    pg.sql(
        primary.port,
        "INSERT INTO filler SELECT n, repeat('x', 40) FROM generate_series(1, 100000) n",
    );
    pg.wait_for(
        replica.port,
        "SELECT pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()) > 2097152",
        "t",
    );
    let mib = 1024 * 1024;
    let out = skill.output(&json!({
        "targets": [p, r], "user": "monitor", "passfile": passfile, "max_lag_bytes": mib,
    }));
    assert_eq!(out["status"], "critical", "{out:#}");
    let tr = target(&out, &r);
    assert_eq!(tr["status"], "critical", "{tr:#}");
    assert_eq!(tr["replica"]["replay_paused"], true);
    assert!(tr["replica"]["lag_bytes"].as_i64().expect("bytes") > 2 * mib);
    assert!(tr["replica"]["lag_seconds"].as_f64().expect("seconds") > 0.0);
    assert!(reasons(tr).contains("max_lag_bytes"), "{tr:#}");
    assert!(reasons(tr).contains("paused"), "{tr:#}");
    let tp = target(&out, &p);
    assert_eq!(tp["status"], "critical", "{tp:#}");
    assert!(
        tp["primary"]["replicas"][0]["lag_bytes"]
            .as_i64()
            .expect("bytes")
            > 2 * mib,
        "{tp:#}"
    );
    // Under the default thresholds (16 MiB, 30 s) the same lag is only a paused replica.
    let out = skill.output(&json!({
        "targets": [r], "user": "monitor", "passfile": passfile,
    }));
    assert_eq!(target(&out, &r)["status"], "warn", "{out:#}");
    // A seconds threshold is crossed on its own.
    let out = skill.output(&json!({
        "targets": [r], "user": "monitor", "passfile": passfile,
        "max_lag_seconds": 0, "max_lag_bytes": 1099511627776_u64,
    }));
    let tr = target(&out, &r);
    assert_eq!(tr["status"], "critical", "{tr:#}");
    assert!(reasons(tr).contains("max_lag_seconds"), "{tr:#}");
    pg.sql(replica.port, "SELECT pg_wal_replay_resume()");

    // 5. The replica stops: the primary has no replica left (critical), the replica's port
    //    refuses.
    replica.stop("fast");
    pg.wait_for(
        primary.port,
        "SELECT count(*) FROM pg_stat_replication",
        "0",
    );
    let out = skill.output(&json!({
        "targets": [p, r], "user": "monitor", "passfile": passfile,
    }));
    assert_eq!(out["status"], "critical", "{out:#}");
    let tp = target(&out, &p);
    assert_eq!(tp["status"], "critical", "{tp:#}");
    assert_eq!(tp["primary"]["replicas_connected"], 0);
    assert!(reasons(tp).contains("no replica"), "{tp:#}");
    assert_eq!(target(&out, &r)["error"]["kind"], "connection_refused");
    // A server meant to stand alone says so with min_replicas 0.
    let out = skill.output(&json!({
        "targets": [p], "user": "monitor", "passfile": passfile, "min_replicas": 0,
    }));
    assert_eq!(out["status"], "ok", "{out:#}");

    drop(silent);
    drop(ungranted);
}

/// The shipped `ReplicationLag` alert rule and its healing policy fit the skill: an alert as
/// the rule fires it matches the `replication-lag` policy, which diagnoses with this skill
/// (and repairs nothing: a lag goes to a person), and the input filled from the alert is one
/// the skill's input schema accepts.
#[test]
fn the_replication_lag_example_policy_fits_the_skill() {
    let root = repo_root();
    let rules =
        std::fs::read_to_string(root.join("examples/prometheus/tend-alerts.yml")).expect("rules");
    assert!(
        rules.contains("alert: ReplicationLag"),
        "the rule is shipped"
    );
    let policies = tend_orchestrator::healing::load(&root.join("examples/healing/policies.toml"))
        .expect("the example policies parse");
    let labels: std::collections::BTreeMap<String, String> = [
        ("alertname", "ReplicationLag"),
        ("severity", "warning"),
        ("instance", "db-2:9187"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let p = tend_orchestrator::healing::matching(&policies.policies, &labels)
        .expect("a policy matches ReplicationLag");
    assert_eq!(p.policy.name, "replication-lag");
    assert!(
        p.policy.repair.is_none(),
        "a lag is escalated, not repaired"
    );
    assert_eq!(p.policy.diagnose.len(), 1);
    let call = &p.policy.diagnose[0];
    assert_eq!(call.skill, "replication-lag");
    let (_, manifest) = catalog_skill("replication-lag");
    let schema = manifest.input.expect("an input schema").schema;
    let input = tend_orchestrator::healing::fill(
        &call.input,
        &tend_orchestrator::healing::Facts {
            labels: &labels,
            annotations: &Default::default(),
            diagnosis: &Default::default(),
        },
    );
    let validator = jsonschema::validator_for(&schema).expect("schema");
    let errors: Vec<String> = validator
        .iter_errors(&input)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{input}: {errors:?}");
    // The passfile it names is under the directory the manifest grants.
    let passfile = input["passfile"].as_str().expect("a passfile");
    assert!(
        manifest
            .capabilities
            .fs_read
            .iter()
            .any(|d| passfile.starts_with(&format!("{d}/"))),
        "{passfile} is not under a granted directory"
    );
}
