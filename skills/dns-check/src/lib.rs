//! dns-check: does each name resolve, to what, how fast, and to the addresses it should?
//!
//! Input: `{"names": ["db.example.com"], "expect": {"db.example.com": ["10.0.0.5"]},
//! "timeout_ms": 2000}`: 1-20 host names, optionally per name the addresses that must be among
//! its answers, and a timeout per lookup of 50-10000 ms (default 3000). Only names granted by
//! the manifest's `capabilities.dns` are resolved: the sandbox refuses every other name before
//! any resolver is asked, which is reported as `not-granted`. The skill can connect nowhere.
//!
//! Lookups go through `wasi:sockets/ip-name-lookup` (the host's resolver: /etc/hosts, then
//! DNS, as nsswitch says). All start at once and each is bounded by the timeout, so the whole
//! check takes at most `timeout_ms`.
//!
//! Output: `status` (`ok` when every name resolved with its expected addresses; `critical`
//! when an answer lacks an expected address — traffic would go elsewhere — or no name
//! resolved; `warn` otherwise), `resolved` and `failed` counts, and per name (in input order):
//! `name`, `ok`, `ipv4`, `ipv6`, `lookup_ms`, `expected`, `missing` (expected addresses not
//! among the answers) and `error` (`null`, or `{code, message}` with code `not-granted`,
//! `not-found`, `timeout`, `unexpected-answer`, `invalid-name` or `resolver-failure`).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tend_sdk::{Diagnose, SkillError};
use wasi::clocks::monotonic_clock;
use wasi::io::poll::{Pollable, poll};
use wasi::sockets::instance_network::instance_network;
use wasi::sockets::ip_name_lookup::{ResolveAddressStream, resolve_addresses};
use wasi::sockets::network::{ErrorCode, IpAddress};

const MAX_NAMES: usize = 20;
const MIN_TIMEOUT_MS: u64 = 50;
const MAX_TIMEOUT_MS: u64 = 10_000;
/// Answers kept per address family (the schema's bound).
const MAX_ANSWERS: usize = 32;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    names: Vec<String>,
    #[serde(default)]
    expect: BTreeMap<String, Vec<String>>,
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
struct Problem {
    code: &'static str,
    message: String,
}

#[derive(Serialize)]
struct Answer {
    name: String,
    ok: bool,
    ipv4: Vec<String>,
    ipv6: Vec<String>,
    lookup_ms: f64,
    expected: Option<Vec<String>>,
    missing: Vec<String>,
    error: Option<Problem>,
}

#[derive(Serialize)]
struct Output {
    status: Status,
    resolved: usize,
    failed: usize,
    names: Vec<Answer>,
}

/// How one lookup ended.
enum Outcome {
    Addresses(Vec<IpAddr>),
    Failed(ErrorCode),
    TimedOut,
}

/// A lookup still waiting for its answers.
struct Pending {
    index: usize,
    stream: ResolveAddressStream,
    started: Instant,
    addresses: Vec<IpAddr>,
}

fn ip(a: IpAddress) -> IpAddr {
    match a {
        IpAddress::Ipv4((a, b, c, d)) => Ipv4Addr::new(a, b, c, d).into(),
        IpAddress::Ipv6((a, b, c, d, e, f, g, h)) => Ipv6Addr::new(a, b, c, d, e, f, g, h).into(),
    }
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

/// Resolve every name at once; each ends with its addresses, its error or the timeout, and
/// the time it took.
fn resolve_all(names: &[String], timeout: Duration) -> Vec<(Outcome, Duration)> {
    let network = instance_network();
    let deadline = monotonic_clock::subscribe_duration(timeout.as_nanos() as u64);
    let mut done: Vec<Option<(Outcome, Duration)>> = names.iter().map(|_| None).collect();
    let mut pending = Vec::new();
    for (index, name) in names.iter().enumerate() {
        let started = Instant::now();
        match resolve_addresses(&network, name) {
            Ok(stream) => pending.push(Pending {
                index,
                stream,
                started,
                addresses: Vec::new(),
            }),
            Err(code) => done[index] = Some((Outcome::Failed(code), started.elapsed())),
        }
    }
    loop {
        // Take every answer that is there; keep the lookups that are still waiting.
        pending.retain_mut(|p| {
            loop {
                match p.stream.resolve_next_address() {
                    Ok(Some(a)) => p.addresses.push(ip(a)),
                    Ok(None) => {
                        let addresses = std::mem::take(&mut p.addresses);
                        done[p.index] = Some((Outcome::Addresses(addresses), p.started.elapsed()));
                        return false;
                    }
                    Err(ErrorCode::WouldBlock) => return true,
                    Err(code) => {
                        done[p.index] = Some((Outcome::Failed(code), p.started.elapsed()));
                        return false;
                    }
                }
            }
        });
        if pending.is_empty() {
            break;
        }
        if deadline.ready() {
            for p in &pending {
                done[p.index] = Some((Outcome::TimedOut, p.started.elapsed()));
            }
            break;
        }
        // Wait for any lookup or the deadline. The pollables are the streams' children: they
        // are dropped before any stream is.
        let ready: Vec<Pollable> = pending.iter().map(|p| p.stream.subscribe()).collect();
        let mut waiting: Vec<&Pollable> = ready.iter().collect();
        waiting.push(&deadline);
        poll(&waiting);
    }
    // Dropping an unfinished stream abandons its lookup.
    drop(pending);
    done.into_iter()
        .map(|d| d.unwrap_or((Outcome::TimedOut, timeout)))
        .collect()
}

fn problem(code: ErrorCode, name: &str) -> Problem {
    match code {
        ErrorCode::AccessDenied => Problem {
            code: "not-granted",
            message: format!(
                "the sandbox refused to look up {name}: it is not granted in capabilities.dns"
            ),
        },
        ErrorCode::NameUnresolvable => Problem {
            code: "not-found",
            message: format!("{name} does not resolve: no such name, or no address for it"),
        },
        ErrorCode::InvalidArgument => Problem {
            code: "invalid-name",
            message: format!("{name} is not a valid host name"),
        },
        ErrorCode::Timeout => Problem {
            code: "timeout",
            message: format!("the resolver timed out looking up {name}"),
        },
        ErrorCode::TemporaryResolverFailure => Problem {
            code: "resolver-failure",
            message: format!("temporary resolver failure looking up {name} (try again)"),
        },
        ErrorCode::PermanentResolverFailure => Problem {
            code: "resolver-failure",
            message: format!(
                "permanent resolver failure looking up {name} (or name lookups are not enabled for this skill)"
            ),
        },
        other => Problem {
            code: "resolver-failure",
            message: format!("looking up {name} failed: {other:?}"),
        },
    }
}

/// `db.example.com.` and `DB.example.com` are one name.
fn key(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

fn answer(
    name: &str,
    outcome: Outcome,
    took: Duration,
    timeout_ms: u64,
    expected: Option<&Vec<IpAddr>>,
) -> Answer {
    let mut out = Answer {
        name: name.to_string(),
        ok: false,
        ipv4: Vec::new(),
        ipv6: Vec::new(),
        lookup_ms: millis(took),
        expected: expected.map(|e| e.iter().map(IpAddr::to_string).collect()),
        missing: Vec::new(),
        error: None,
    };
    let addresses = match outcome {
        Outcome::Addresses(a) => a,
        Outcome::Failed(code) => {
            out.error = Some(problem(code, name));
            out.missing = out.expected.clone().unwrap_or_default();
            return out;
        }
        Outcome::TimedOut => {
            out.error = Some(Problem {
                code: "timeout",
                message: format!("no answer for {name} within {timeout_ms} ms"),
            });
            out.missing = out.expected.clone().unwrap_or_default();
            return out;
        }
    };
    for a in &addresses {
        let family = if a.is_ipv4() {
            &mut out.ipv4
        } else {
            &mut out.ipv6
        };
        let text = a.to_string();
        if family.len() < MAX_ANSWERS && !family.contains(&text) {
            family.push(text);
        }
    }
    if addresses.is_empty() {
        out.error = Some(Problem {
            code: "not-found",
            message: format!("{name} resolved to no address"),
        });
        out.missing = out.expected.clone().unwrap_or_default();
        return out;
    }
    if let Some(expected) = expected {
        out.missing = expected
            .iter()
            .filter(|e| !addresses.contains(e))
            .map(IpAddr::to_string)
            .collect();
    }
    if out.missing.is_empty() {
        out.ok = true;
    } else {
        let got: Vec<&String> = out.ipv4.iter().chain(&out.ipv6).collect();
        out.error = Some(Problem {
            code: "unexpected-answer",
            message: format!(
                "{name}: expected {} among the answers, got {}",
                out.missing.join(", "),
                got.iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    }
    out
}

fn invalid(message: String) -> SkillError {
    SkillError::new("invalid-input", message)
}

/// The expected addresses per name (by [`key`]), checked: every key is one of the names and
/// every address parses.
fn expectations(input: &Input) -> Result<BTreeMap<String, Vec<IpAddr>>, SkillError> {
    let names: Vec<String> = input.names.iter().map(|n| key(n)).collect();
    let mut out = BTreeMap::new();
    for (name, addresses) in &input.expect {
        if !names.contains(&key(name)) {
            return Err(invalid(format!(
                "expect.{name}: not one of the names to look up"
            )));
        }
        let mut parsed = Vec::with_capacity(addresses.len());
        for (i, a) in addresses.iter().enumerate() {
            parsed.push(a.parse::<IpAddr>().map_err(|_| {
                invalid(format!(
                    "expect.{name}[{i}]: {a:?} is not an IPv4 or IPv6 address"
                ))
            })?);
        }
        out.insert(key(name), parsed);
    }
    Ok(out)
}

struct DnsCheck;

impl Diagnose for DnsCheck {
    type Input = Input;
    type Output = Output;

    fn run(input: Input) -> Result<Output, SkillError> {
        if input.names.is_empty() || input.names.len() > MAX_NAMES {
            return Err(invalid(format!("give 1 to {MAX_NAMES} names")));
        }
        if !(MIN_TIMEOUT_MS..=MAX_TIMEOUT_MS).contains(&input.timeout_ms) {
            return Err(invalid(format!(
                "timeout_ms must be between {MIN_TIMEOUT_MS} and {MAX_TIMEOUT_MS}"
            )));
        }
        if let Some(n) = input.names.iter().find(|n| n.is_empty() || n.len() > 254) {
            return Err(invalid(format!("name {n:?}: 1 to 254 characters")));
        }
        let expect = expectations(&input)?;
        let outcomes = resolve_all(&input.names, Duration::from_millis(input.timeout_ms));
        let names: Vec<Answer> = input
            .names
            .iter()
            .zip(outcomes)
            .map(|(name, (outcome, took))| {
                answer(
                    name,
                    outcome,
                    took,
                    input.timeout_ms,
                    expect.get(&key(name)),
                )
            })
            .collect();
        let resolved = names.iter().filter(|a| a.ok).count();
        let failed = names.len() - resolved;
        let wrong = names.iter().any(|a| {
            a.error
                .as_ref()
                .is_some_and(|e| e.code == "unexpected-answer")
        });
        let status = if failed == 0 {
            Status::Ok
        } else if wrong || resolved == 0 {
            Status::Critical
        } else {
            Status::Warn
        };
        Ok(Output {
            status,
            resolved,
            failed,
            names,
        })
    }
}

tend_sdk::export_diagnose!(DnsCheck);
