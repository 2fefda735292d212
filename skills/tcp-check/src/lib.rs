//! tcp-check: can a TCP connection be opened to each target, and how long does it take?
//!
//! Input: `{"targets": ["127.0.0.1:22", "db.internal:5432"], "timeout_ms": 2000}`: 1-20
//! `host:port` targets (IPv6 as `[::1]:22`), and a connect timeout per address of 50-10000 ms
//! (default 3000). Only targets granted by the manifest's `capabilities.tcp` can connect: the
//! sandbox refuses every other address, which is reported as not reachable with that reason.
//!
//! Output: `status` (`ok` when every target is reachable, `critical` when none is, `warn`
//! otherwise), `reachable` and `unreachable` counts, and per target (in input order):
//! `target`, `reachable`, `address` (the socket address that answered or was tried last),
//! `latency_ms` (time to connect, `null` when not reachable) and `error` (`null` when
//! reachable). The whole check stops trying new connections after 25 s; targets left are
//! reported unreachable with that reason.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tend_sdk::{Diagnose, SkillError};

const MAX_TARGETS: usize = 20;
const MIN_TIMEOUT_MS: u64 = 50;
const MAX_TIMEOUT_MS: u64 = 10_000;
/// Stop starting new connection attempts after this long (the manifest allows 30 s).
const TOTAL_BUDGET: Duration = Duration::from_secs(25);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    targets: Vec<String>,
    #[serde(default = "default_timeout")]
    timeout_ms: u64,
}

fn default_timeout() -> u64 {
    3000
}

#[derive(Serialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Status {
    Ok,
    Warn,
    Critical,
}

#[derive(Serialize)]
struct Target {
    target: String,
    reachable: bool,
    address: Option<String>,
    latency_ms: Option<f64>,
    error: Option<String>,
}

#[derive(Serialize)]
struct Output {
    status: Status,
    reachable: usize,
    unreachable: usize,
    targets: Vec<Target>,
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
        return Err("an IPv6 address must be written in brackets, e.g. [::1]:22".into());
    } else {
        host
    };
    if host.is_empty() || host.contains(['/', ' ', '@', '[', ']']) {
        return Err(format!("bad host {host:?}"));
    }
    Ok((host.to_string(), port))
}

fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    if host.eq_ignore_ascii_case("localhost") {
        // The sandbox grants `localhost` as both loopback addresses; no lookup needed.
        return Ok(vec![
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port),
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), port),
        ]);
    }
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| {
            format!("cannot resolve {host}: {e} (name lookup is allowed only when the manifest grants a target by name)")
        })?
        .collect();
    if addrs.is_empty() {
        return Err(format!("{host} resolved to no address"));
    }
    Ok(addrs)
}

fn describe(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::PermissionDenied => format!(
            "{e}: the sandbox refused the connection (this target is not granted in capabilities.tcp)"
        ),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => format!("timed out: {e}"),
        io::ErrorKind::ConnectionRefused => format!("connection refused: {e}"),
        _ => e.to_string(),
    }
}

/// Whether a stream from `connect_timeout` really is connected.
fn connected(stream: &TcpStream) -> io::Result<()> {
    if let Some(e) = stream.take_error()? {
        return Err(e);
    }
    stream.peer_addr().map(|_| ())
}

fn check(target: &str, timeout: Duration, deadline: Instant) -> Target {
    let mut out = Target {
        target: target.to_string(),
        reachable: false,
        address: None,
        latency_ms: None,
        error: None,
    };
    let addrs = match split_target(target).and_then(|(h, p)| resolve(&h, p)) {
        Ok(a) => a,
        Err(e) => {
            out.error = Some(e);
            return out;
        }
    };
    let mut errors = Vec::new();
    for addr in addrs {
        let now = Instant::now();
        if now >= deadline {
            errors.push(format!(
                "{addr}: not tried, the time budget of the check is spent"
            ));
            break;
        }
        let timeout = timeout.min(deadline - now);
        out.address = Some(addr.to_string());
        let start = Instant::now();
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(stream) => {
                let elapsed = start.elapsed();
                // On wasip2, `connect_timeout` can return a stream whose connect failed (the
                // poll reports it writable): the real outcome is the socket's pending error.
                match connected(&stream) {
                    Ok(()) => {
                        out.reachable = true;
                        out.latency_ms =
                            Some((elapsed.as_secs_f64() * 1_000_000.0).round() / 1000.0);
                        out.error = None;
                        return out;
                    }
                    Err(e) => errors.push(format!("{addr}: {}", describe(&e))),
                }
            }
            Err(e) => errors.push(format!("{addr}: {}", describe(&e))),
        }
    }
    out.error = Some(errors.join("; "));
    out
}

struct TcpCheck;

impl Diagnose for TcpCheck {
    type Input = Input;
    type Output = Output;

    fn run(input: Input) -> Result<Output, SkillError> {
        if input.targets.is_empty() || input.targets.len() > MAX_TARGETS {
            return Err(SkillError::new(
                "invalid-input",
                format!("give 1 to {MAX_TARGETS} targets"),
            ));
        }
        if !(MIN_TIMEOUT_MS..=MAX_TIMEOUT_MS).contains(&input.timeout_ms) {
            return Err(SkillError::new(
                "invalid-input",
                format!("timeout_ms must be between {MIN_TIMEOUT_MS} and {MAX_TIMEOUT_MS}"),
            ));
        }
        if let Some((t, e)) = input
            .targets
            .iter()
            .find_map(|t| split_target(t).err().map(|e| (t, e)))
        {
            return Err(SkillError::new(
                "invalid-input",
                format!("target {t:?}: {e}"),
            ));
        }
        let timeout = Duration::from_millis(input.timeout_ms);
        let deadline = Instant::now() + TOTAL_BUDGET;
        let targets: Vec<Target> = input
            .targets
            .iter()
            .map(|t| check(t, timeout, deadline))
            .collect();
        let reachable = targets.iter().filter(|t| t.reachable).count();
        let unreachable = targets.len() - reachable;
        let status = if unreachable == 0 {
            Status::Ok
        } else if reachable == 0 {
            Status::Critical
        } else {
            Status::Warn
        };
        Ok(Output {
            status,
            reachable,
            unreachable,
            targets,
        })
    }
}

tend_sdk::export_diagnose!(TcpCheck);
