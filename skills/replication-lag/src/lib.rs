//! replication-lag: how far behind are a PostgreSQL primary's streaming replicas?
//!
//! The skill connects over TCP to each target the operator grants (`capabilities.tcp`),
//! speaks the PostgreSQL wire protocol itself (`postgres-protocol` for the messages, the
//! Simple Query protocol only) and asks `pg_is_in_recovery()`:
//!
//! - On a **primary**: `pg_stat_replication`, one entry per connected replica with its state,
//!   sync state, replay lag in bytes (`pg_current_wal_lsn() - replay_lsn`) and in seconds
//!   (`replay_lag`, null once a replica is idle and caught up).
//! - On a **replica**: the WAL received and replayed (`pg_last_wal_receive_lsn()`,
//!   `pg_last_wal_replay_lsn()`), the bytes between them, the lag in seconds as
//!   postgres_exporter's `pg_replication_lag` computes it (0 when all received WAL is
//!   replayed, else `now() - pg_last_xact_replay_timestamp()`), whether replay is paused, and
//!   the WAL receiver's status (`pg_stat_wal_receiver`).
//!
//! Status per target: `critical` when it cannot be asked (refused, not granted, timed out,
//! authentication failed, a query failed), when a primary has fewer replicas connected than
//! `min_replicas` (default 1: a primary with no replica left has lost its redundancy), or when
//! a lag is over `max_lag_seconds` / `max_lag_bytes`; `warn` when a replica is not streaming
//! (catching up, replay paused, no WAL receiver) or the user may not see the details (grant it
//! `pg_monitor`); `ok` otherwise. The overall status is the worst.
//!
//! Passwords never travel in the input: they come from a libpq-format password file
//! (`passfile`) in a directory the operator grants in `capabilities.fs_read`.

mod pgpass;
mod wire;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tend_sdk::{Diagnose, SkillError};

use pgpass::PassFile;
use wire::{Failure, Params, Session};

const MAX_TARGETS: usize = 10;
const MIN_TIMEOUT_MS: u64 = 100;
const MAX_TIMEOUT_MS: u64 = 10_000;
/// Replicas listed per primary; more are counted in `replicas_connected` only.
const MAX_REPLICAS: usize = 20;
/// Stop starting new targets after this long (the manifest allows 30 s).
const TOTAL_BUDGET: Duration = Duration::from_secs(25);
const MAX_NAME: usize = 63;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    targets: Vec<String>,
    #[serde(default = "default_user")]
    user: String,
    #[serde(default = "default_user")]
    database: String,
    #[serde(default)]
    passfile: Option<String>,
    #[serde(default = "default_lag_seconds")]
    max_lag_seconds: f64,
    #[serde(default = "default_lag_bytes")]
    max_lag_bytes: u64,
    #[serde(default = "default_min_replicas")]
    min_replicas: u32,
    #[serde(default = "default_timeout")]
    timeout_ms: u64,
}

fn default_user() -> String {
    "postgres".into()
}
fn default_lag_seconds() -> f64 {
    30.0
}
fn default_lag_bytes() -> u64 {
    16 * 1024 * 1024
}
fn default_min_replicas() -> u32 {
    1
}
fn default_timeout() -> u64 {
    5000
}

#[derive(Serialize, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Critical,
}

#[derive(Serialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Primary,
    Replica,
}

#[derive(Serialize)]
pub struct Replica {
    application_name: Option<String>,
    client_addr: Option<String>,
    state: Option<String>,
    sync_state: Option<String>,
    lag_bytes: Option<i64>,
    lag_seconds: Option<f64>,
}

#[derive(Serialize)]
pub struct PrimaryView {
    replicas_connected: usize,
    replicas: Vec<Replica>,
}

#[derive(Serialize)]
pub struct WalReceiver {
    status: Option<String>,
    sender: Option<String>,
}

#[derive(Serialize)]
pub struct ReplicaView {
    receive_lsn: Option<String>,
    replay_lsn: Option<String>,
    lag_bytes: Option<i64>,
    lag_seconds: Option<f64>,
    last_replay_age_seconds: Option<f64>,
    replay_paused: Option<bool>,
    wal_receiver: Option<WalReceiver>,
}

#[derive(Serialize)]
pub struct TargetError {
    kind: &'static str,
    message: String,
    sqlstate: Option<String>,
}

#[derive(Serialize)]
pub struct Target {
    target: String,
    status: Status,
    role: Option<Role>,
    server_version: Option<String>,
    primary: Option<PrimaryView>,
    replica: Option<ReplicaView>,
    /// Why the status is not `ok`, in words.
    reasons: Vec<String>,
    notices: Vec<String>,
    error: Option<TargetError>,
    duration_ms: f64,
}

#[derive(Serialize)]
pub struct Thresholds {
    max_lag_seconds: f64,
    max_lag_bytes: u64,
    min_replicas: u32,
}

#[derive(Serialize)]
pub struct Output {
    status: Status,
    thresholds: Thresholds,
    targets: Vec<Target>,
    duration_ms: f64,
}

/// Split `host:port` (IPv6 in brackets) into its parts.
fn split_target(target: &str) -> Result<(String, u16), String> {
    let (host, port) = target
        .rsplit_once(':')
        .ok_or_else(|| "must be host:port".to_string())?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("port {port:?} must be 1-65535"))?;
    let host = if let Some(inner) = host.strip_prefix('[') {
        let inner = inner
            .strip_suffix(']')
            .ok_or_else(|| "unbalanced '[' in host".to_string())?;
        if inner.parse::<Ipv6Addr>().is_err() {
            return Err(format!("{inner:?} in brackets is not an IPv6 address"));
        }
        inner
    } else if host.contains(':') {
        return Err("an IPv6 address must be written in brackets, e.g. [::1]:5432".into());
    } else {
        host
    };
    if host.is_empty() || host.contains(['/', ' ', '@', '[', ']']) {
        return Err(format!("bad host {host:?}"));
    }
    Ok((host.to_string(), port))
}

fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, Failure> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(vec![
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port),
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), port),
        ]);
    }
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| {
            Failure::Network(format!(
                "cannot resolve {host}: {e} (name lookup is allowed only when the manifest grants a target by name)"
            ))
        })?
        .collect();
    if addrs.is_empty() {
        return Err(Failure::Network(format!("{host} resolved to no address")));
    }
    Ok(addrs)
}

/// Connect to the first address of `host` that answers.
fn connect(
    host: &str,
    port: u16,
    input: &Input,
    passfile: Option<&PassFile>,
    deadline: Instant,
) -> Result<Session, Failure> {
    let password = passfile.and_then(|f| f.lookup(host, port, &input.database, &input.user));
    let mut last = None;
    for addr in resolve(host, port)? {
        let params = Params {
            addr,
            user: &input.user,
            database: &input.database,
            password,
            deadline,
        };
        match Session::connect(&params) {
            Ok(s) => return Ok(s),
            // Only a failure to reach this address is worth trying the next one for.
            Err(e @ (Failure::Refused(_) | Failure::NotGranted(_) | Failure::Network(_))) => {
                last = Some(e)
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| Failure::Network(format!("{host}: no address to try"))))
}

const ROLE_SQL: &str = "SELECT pg_is_in_recovery()::text";

const PRIMARY_SQL: &str = "SELECT application_name, host(client_addr), state, sync_state, \
     pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint, \
     extract(epoch FROM replay_lag)::float8, count(*) OVER ()::bigint \
     FROM pg_stat_replication ORDER BY application_name, client_addr LIMIT 20";

const REPLICA_SQL: &str = "SELECT pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text, \
     greatest(pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()), 0)::bigint, \
     (CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0 \
      ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp()) END)::float8, \
     extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8, \
     pg_is_wal_replay_paused()::text, \
     (SELECT status FROM pg_stat_wal_receiver LIMIT 1), \
     (SELECT sender_host || ':' || sender_port FROM pg_stat_wal_receiver LIMIT 1), \
     (SELECT count(*) FROM pg_stat_wal_receiver)::bigint";

fn col(row: &[Option<String>], i: usize) -> Option<String> {
    row.get(i).cloned().flatten()
}

fn col_i64(row: &[Option<String>], i: usize) -> Option<i64> {
    col(row, i).and_then(|v| v.parse().ok())
}

fn col_f64(row: &[Option<String>], i: usize) -> Option<f64> {
    col(row, i)
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| v.is_finite())
        .map(|v| (v * 1000.0).round() / 1000.0)
}

fn col_bool(row: &[Option<String>], i: usize) -> Option<bool> {
    match col(row, i).as_deref() {
        Some("true" | "t") => Some(true),
        Some("false" | "f") => Some(false),
        _ => None,
    }
}

/// Lag over a threshold, in words, or None.
fn over(input: &Input, what: &str, bytes: Option<i64>, seconds: Option<f64>) -> Option<String> {
    let mut parts = Vec::new();
    if let Some(b) = bytes.filter(|b| *b > 0 && *b as u64 > input.max_lag_bytes) {
        parts.push(format!("{b} bytes > max_lag_bytes {}", input.max_lag_bytes));
    }
    if let Some(s) = seconds.filter(|s| *s > input.max_lag_seconds) {
        parts.push(format!("{s} s > max_lag_seconds {}", input.max_lag_seconds));
    }
    (!parts.is_empty()).then(|| format!("{what} lags: {}", parts.join(", ")))
}

fn ask_primary(s: &mut Session, input: &Input, t: &mut Target) -> Result<(), Failure> {
    let rows = s.query(PRIMARY_SQL)?;
    let connected = rows
        .rows
        .first()
        .and_then(|r| col_i64(r, 6))
        .map_or(rows.rows.len(), |n| n.max(0) as usize);
    let mut replicas = Vec::new();
    for row in rows.rows.iter().take(MAX_REPLICAS) {
        replicas.push(Replica {
            application_name: col(row, 0).map(|n| tend_sdk::clip(n, MAX_NAME)),
            client_addr: col(row, 1),
            state: col(row, 2),
            sync_state: col(row, 3),
            lag_bytes: col_i64(row, 4),
            lag_seconds: col_f64(row, 5),
        });
    }
    let mut status = Status::Ok;
    if connected < input.min_replicas as usize {
        status = Status::Critical;
        t.reasons.push(if connected == 0 {
            "no replica is connected to this primary".into()
        } else {
            format!(
                "{connected} replica(s) connected, fewer than min_replicas {}",
                input.min_replicas
            )
        });
    }
    for r in &replicas {
        let who = r
            .application_name
            .clone()
            .filter(|n| !n.is_empty())
            .or_else(|| r.client_addr.clone())
            .unwrap_or_else(|| "a replica".into());
        match r.state.as_deref() {
            Some("streaming") => {}
            Some(other) => {
                status = status.max(Status::Warn);
                t.reasons.push(format!("{who} is {other}, not streaming"));
            }
            None => {
                status = status.max(Status::Warn);
                t.reasons.push(format!(
                    "the details of {who} are hidden from user {:?}: grant it pg_monitor",
                    input.user
                ));
            }
        }
        if let Some(why) = over(input, &who, r.lag_bytes, r.lag_seconds) {
            status = Status::Critical;
            t.reasons.push(why);
        }
    }
    t.status = status;
    t.primary = Some(PrimaryView {
        replicas_connected: connected,
        replicas,
    });
    Ok(())
}

fn ask_replica(s: &mut Session, input: &Input, t: &mut Target) -> Result<(), Failure> {
    let rows = s.query(REPLICA_SQL)?;
    let row = rows
        .rows
        .first()
        .ok_or_else(|| Failure::Protocol("the replica query returned no row".into()))?;
    let receivers = col_i64(row, 8).unwrap_or(0);
    let view = ReplicaView {
        receive_lsn: col(row, 0),
        replay_lsn: col(row, 1),
        lag_bytes: col_i64(row, 2),
        lag_seconds: col_f64(row, 3),
        last_replay_age_seconds: col_f64(row, 4),
        replay_paused: col_bool(row, 5),
        wal_receiver: (receivers > 0).then(|| WalReceiver {
            status: col(row, 6),
            sender: col(row, 7).map(|s| tend_sdk::clip(s, 300)),
        }),
    };
    let mut status = Status::Ok;
    if view.replay_paused == Some(true) {
        status = Status::Warn;
        t.reasons
            .push("WAL replay is paused (pg_wal_replay_resume() resumes it)".into());
    }
    match &view.wal_receiver {
        None => {
            status = status.max(Status::Warn);
            t.reasons
                .push("no WAL receiver: this replica is not streaming from a primary".into());
        }
        Some(WalReceiver { status: None, .. }) => {
            status = status.max(Status::Warn);
            t.reasons.push(format!(
                "the WAL receiver's details are hidden from user {:?}: grant it pg_monitor",
                input.user
            ));
        }
        Some(WalReceiver {
            status: Some(st), ..
        }) if st != "streaming" => {
            status = status.max(Status::Warn);
            t.reasons
                .push(format!("the WAL receiver is {st}, not streaming"));
        }
        Some(_) => {}
    }
    if let Some(why) = over(input, "replay", view.lag_bytes, view.lag_seconds) {
        status = Status::Critical;
        t.reasons.push(why);
    }
    t.status = status;
    t.replica = Some(view);
    Ok(())
}

fn ask(s: &mut Session, input: &Input, t: &mut Target) -> Result<(), Failure> {
    let rows = s.query(ROLE_SQL)?;
    let in_recovery = rows
        .rows
        .first()
        .and_then(|r| col_bool(r, 0))
        .ok_or_else(|| Failure::Protocol("pg_is_in_recovery() returned no boolean".into()))?;
    if in_recovery {
        t.role = Some(Role::Replica);
        ask_replica(s, input, t)
    } else {
        t.role = Some(Role::Primary);
        ask_primary(s, input, t)
    }
}

fn check(target: &str, input: &Input, passfile: Option<&PassFile>, deadline: Instant) -> Target {
    let start = Instant::now();
    let mut t = Target {
        target: target.to_string(),
        status: Status::Critical,
        role: None,
        server_version: None,
        primary: None,
        replica: None,
        reasons: Vec::new(),
        notices: Vec::new(),
        error: None,
        duration_ms: 0.0,
    };
    let result = split_target(target)
        .map_err(|e| Failure::Protocol(format!("bad target: {e}")))
        .and_then(|(host, port)| {
            let per_target = Instant::now() + Duration::from_millis(input.timeout_ms);
            let mut s = connect(&host, port, input, passfile, per_target.min(deadline))?;
            t.server_version = s.server_version.clone();
            let asked = ask(&mut s, input, &mut t);
            t.notices = std::mem::take(&mut s.notices);
            s.close();
            asked
        });
    if let Err(f) = result {
        t.status = Status::Critical;
        t.reasons
            .push(format!("cannot ask this server: {}", f.kind()));
        t.error = Some(TargetError {
            kind: f.kind(),
            message: tend_sdk::clip(f.message().to_string(), wire::MAX_TEXT),
            sqlstate: f.sqlstate().map(str::to_string),
        });
    }
    t.duration_ms = millis(start.elapsed());
    t
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

fn invalid(message: String) -> SkillError {
    SkillError::new("invalid-input", message)
}

fn validate(input: &Input) -> Result<(), SkillError> {
    if input.targets.is_empty() || input.targets.len() > MAX_TARGETS {
        return Err(invalid(format!("give 1 to {MAX_TARGETS} targets")));
    }
    if let Some((t, e)) = input
        .targets
        .iter()
        .find_map(|t| split_target(t).err().map(|e| (t, e)))
    {
        return Err(invalid(format!("target {t:?}: {e}")));
    }
    for (field, value) in [("user", &input.user), ("database", &input.database)] {
        if value.is_empty() || value.len() > MAX_NAME || value.contains('\0') {
            return Err(invalid(format!(
                "{field} must be 1-{MAX_NAME} bytes without NUL"
            )));
        }
    }
    if let Some(p) = &input.passfile
        && (!p.starts_with('/') || p.len() > 4096 || p.contains('\0'))
    {
        return Err(invalid(format!("passfile {p:?} must be an absolute path")));
    }
    if !(MIN_TIMEOUT_MS..=MAX_TIMEOUT_MS).contains(&input.timeout_ms) {
        return Err(invalid(format!(
            "timeout_ms must be between {MIN_TIMEOUT_MS} and {MAX_TIMEOUT_MS}"
        )));
    }
    if !(input.max_lag_seconds.is_finite() && input.max_lag_seconds >= 0.0) {
        return Err(invalid("max_lag_seconds must be a number >= 0".into()));
    }
    Ok(())
}

struct ReplicationLag;

impl Diagnose for ReplicationLag {
    type Input = Input;
    type Output = Output;

    fn run(input: Input) -> Result<Output, SkillError> {
        let start = Instant::now();
        validate(&input)?;
        let passfile = match &input.passfile {
            Some(path) => {
                Some(PassFile::read(path).map_err(|e| SkillError::new("passfile-unreadable", e))?)
            }
            None => None,
        };
        let deadline = start + TOTAL_BUDGET;
        let targets: Vec<Target> = input
            .targets
            .iter()
            .map(|t| check(t, &input, passfile.as_ref(), deadline))
            .collect();
        let status = targets.iter().map(|t| t.status).max().unwrap_or(Status::Ok);
        Ok(Output {
            status,
            thresholds: Thresholds {
                max_lag_seconds: input.max_lag_seconds,
                max_lag_bytes: input.max_lag_bytes,
                min_replicas: input.min_replicas,
            },
            targets,
            duration_ms: millis(start.elapsed()),
        })
    }
}

tend_sdk::export_diagnose!(ReplicationLag);
