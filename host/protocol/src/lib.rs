//! # tend-protocol — the wire between orchestrator and agent
//!
//! What an agent and the orchestrator say to each other ([`Job`], [`JobResult`], [`Enroll`],
//! ...), the [`Invocation`] a job carries with its [`State`] and [`Approval`]s, the
//! [`invocation_digest`] an approval binds, and how an agent signs every request. A leaf
//! (serde, sha2, ed25519): both ends depend on it, so neither can drift, and the agent links
//! no server code.
//!
//! Every request from an enrolled agent carries
//! `Tend-Agent: <agent id>`, `Tend-Timestamp: <unix ms>`, `Tend-Nonce: <32 hex>` and
//! `Tend-Signature: <base64 ed25519>` over [`signed_message`]. The orchestrator refuses an
//! unknown agent, a bad signature, a timestamp more than [`MAX_SKEW_MS`] away from its clock,
//! and a nonce it has seen before (a replay).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

mod admission;
mod approval;
mod ceiling;
mod invocation;
mod once;
mod plan;
pub mod tokens;

pub use admission::{AdmitError, Runner, VerifiedSkill, admit_job};
pub use approval::{
    Bound, TrustedApprover, approval_facts, approval_message, approval_verifies, canonical_json,
    invocation_digest, parse_public_key, public_key_text, sign_approval,
};
pub use ceiling::{CeilingRefusal, kinds_used};
pub use invocation::{Approval, Invocation, Part, State};
pub use once::{RanError, RanOnce};
pub use plan::{plan_check, plan_not_run, plan_record};
pub use tokens::{CreatedToken, NewToken, RevokedToken, RotateToken, TokenInfo};

pub const AGENT_HEADER: &str = "tend-agent";
pub const TIMESTAMP_HEADER: &str = "tend-timestamp";
pub const NONCE_HEADER: &str = "tend-nonce";
pub const SIGNATURE_HEADER: &str = "tend-signature";

/// Largest accepted difference between an agent's clock and the orchestrator's.
pub const MAX_SKEW_MS: i64 = 60_000;

/// Largest serialized `ExecutionReport` an agent sends: the runtime's own hard bound on a
/// report under the host's maxima (`tend_runtime::MAX_REPORT_JSON_BYTES`; every field of a
/// report is capped). The agent and the orchestrator both assert at compile time that the
/// runtime's bound is exactly this, so the two cannot drift. An agent never sends more: it
/// replaces a bigger report (one made under other maxima) with a bounded stand-in that says
/// why, so no result is refused for its size and wedges the agent's spool.
pub const MAX_REPORT_BYTES: usize = 101_392_295;

/// Largest body the orchestrator accepts on an agent route: a report plus the envelope of a
/// [`JobResult`] (outcome, a bounded refusal).
pub const MAX_RESULT_BYTES: usize = MAX_REPORT_BYTES + 64 * 1024;

/// Longest refusal text an agent sends (a registry error can quote a lot).
pub const MAX_REFUSAL_BYTES: usize = 8 * 1024;

/// Unix time in milliseconds: the clock both ends state timestamps and expiries in.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Whether `id` has the form the orchestrator gives invocations (`inv_` and 16 lower-case hex
/// digits, see `db::random_id`). An agent builds spool paths and URLs from job ids, so anything
/// else — `../../x`, `/abs/path`, `%2F` — is refused before it reaches a path or a URL.
pub fn is_invocation_id(id: &str) -> bool {
    id.strip_prefix("inv_").is_some_and(|hex| {
        hex.len() == 16
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The exact bytes an agent signs for one request.
pub fn signed_message(
    method: &str,
    path: &str,
    timestamp_ms: i64,
    nonce: &str,
    body: &[u8],
) -> Vec<u8> {
    format!(
        "tend-agent-request/v1\n{method}\n{path}\n{timestamp_ms}\n{nonce}\n{}\n",
        hex::encode(Sha256::digest(body))
    )
    .into_bytes()
}

/// The signing headers for one request: `Tend-Agent`, `Tend-Timestamp`, `Tend-Nonce` and
/// `Tend-Signature` over [`signed_message`].
pub fn sign_request(
    key: &SigningKey,
    agent_id: &str,
    method: &str,
    path: &str,
    timestamp_ms: i64,
    nonce: &str,
    body: &[u8],
) -> Vec<(&'static str, String)> {
    let signature = key.sign(&signed_message(method, path, timestamp_ms, nonce, body));
    vec![
        (AGENT_HEADER, agent_id.to_string()),
        (TIMESTAMP_HEADER, timestamp_ms.to_string()),
        (NONCE_HEADER, nonce.to_string()),
        (SIGNATURE_HEADER, B64.encode(signature.to_bytes())),
    ]
}

/// Why a signed request is refused before its agent's records are consulted further.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("timestamp is not unix milliseconds")]
    Timestamp,
    #[error(
        "timestamp is {0} ms from the orchestrator's clock (at most {MAX_SKEW_MS} ms allowed): fix the agent's clock"
    )]
    Skew(i64),
    #[error("nonce must be 16-64 hex characters")]
    Nonce,
    #[error("signature is not base64 of 64 bytes")]
    Encoding,
    #[error("signature does not verify with the agent's enrolled key")]
    Mismatch,
}

/// Check one signed request against the agent's enrolled key at time `now_ms`: the timestamp
/// is fresh, the nonce well-formed and the signature strict-verifies over [`signed_message`].
/// Returns the timestamp; remembering the nonce (replay) is the caller's part.
#[allow(clippy::too_many_arguments)]
pub fn verify_request(
    key: &VerifyingKey,
    method: &str,
    path: &str,
    timestamp: &str,
    nonce: &str,
    signature: &str,
    body: &[u8],
    now_ms: i64,
) -> Result<i64, SignatureError> {
    let ts: i64 = timestamp.parse().map_err(|_| SignatureError::Timestamp)?;
    if (now_ms - ts).abs() > MAX_SKEW_MS {
        return Err(SignatureError::Skew(now_ms - ts));
    }
    if nonce.len() < 16 || nonce.len() > 64 || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(SignatureError::Nonce);
    }
    let sig: [u8; 64] = B64
        .decode(signature)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or(SignatureError::Encoding)?;
    key.verify_strict(
        &signed_message(method, path, ts, nonce, body),
        &Signature::from_bytes(&sig),
    )
    .map_err(|_| SignatureError::Mismatch)?;
    Ok(ts)
}

/// What an agent will run whatever the orchestrator says.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Ceiling {
    /// Highest zero-trust level (0-3).
    pub max_level: u8,
    /// Publishers (trust-policy names) whose skills it runs; empty means any it trusts.
    #[serde(default)]
    pub publishers: Vec<String>,
    /// Capability kinds it grants: fs_read, fs_write, exec, services, http, tcp, dns. Empty
    /// means none beyond host facts.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Directories a skill's `fs_read`/`fs_write` grants must stay inside; empty means any
    /// (within the kinds above).
    #[serde(default)]
    pub paths: Vec<String>,
    /// Skills this host lets run without an approval when a healing policy with `auto_heal`
    /// asks, at L1 at most (the level is still computed here; L2 and above always need their
    /// approvals). Empty: every repair above L0 needs a person's signed approval here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub auto_heal: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Enroll {
    pub token: String,
    pub name: String,
    pub hostname: String,
    pub os: String,
    pub arch: String,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub pools: Vec<String>,
    /// `ed25519:<base64>`
    pub public_key: String,
    pub ceiling: Ceiling,
}

/// A field of an enrollment (or an enroll token) that is out of bounds: nothing is stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {why}")]
pub struct FieldError {
    /// The field, e.g. `hostname` or `labels.env`.
    pub field: String,
    pub why: String,
}

fn field_error(field: impl Into<String>, why: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        why: why.into(),
    }
}

/// Agent and pool names: `[a-z0-9][a-z0-9.-]{0,62}`. They appear in targets (`agent:NAME`,
/// `pool:NAME`), the audit trail and logs, so they are short and plain; an `_` can never occur,
/// so a name never looks like an agent id.
pub fn check_name(field: &str, value: &str) -> Result<(), FieldError> {
    let ok = (1..=63).contains(&value.len())
        && value
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(field_error(
            field,
            format!(
                "{:?} is not 1-63 characters of a-z, 0-9, '.' and '-' starting with a letter or digit",
                shorten(value)
            ),
        ))
    }
}

/// Text of `max` bytes at most from `allowed` characters (never empty unless `may_be_empty`).
fn check_text(
    field: &str,
    value: &str,
    max: usize,
    may_be_empty: bool,
    allowed: fn(u8) -> bool,
    described: &str,
) -> Result<(), FieldError> {
    if (value.is_empty() && !may_be_empty) || value.len() > max || !value.bytes().all(allowed) {
        return Err(field_error(
            field,
            format!(
                "{:?} is not {}{max} characters of {described}",
                shorten(value),
                if may_be_empty { "0-" } else { "1-" }
            ),
        ));
    }
    Ok(())
}

/// The start of a long value, for an error message that must stay short itself.
fn shorten(value: &str) -> String {
    match value.char_indices().nth(40) {
        Some((i, _)) => format!("{}…", &value[..i]),
        None => value.to_string(),
    }
}

const MAX_LABELS: usize = 32;
const MAX_POOLS: usize = 32;
const MAX_LIST: usize = 32;

/// Pools: at most 32 names.
pub fn check_pools(pools: &[String]) -> Result<(), FieldError> {
    if pools.len() > MAX_POOLS {
        return Err(field_error("pools", format!("at most {MAX_POOLS} pools")));
    }
    pools.iter().try_for_each(|p| check_name("pools", p))
}

/// Labels: at most 32, keys like names (plus `_` and `/`), values up to 128 plain characters.
pub fn check_labels(labels: &std::collections::BTreeMap<String, String>) -> Result<(), FieldError> {
    if labels.len() > MAX_LABELS {
        return Err(field_error(
            "labels",
            format!("at most {MAX_LABELS} labels"),
        ));
    }
    for (k, v) in labels {
        check_text(
            "labels",
            k,
            63,
            false,
            |b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._/-".contains(&b),
            "a-z, 0-9, '.', '_', '/' and '-'",
        )?;
        check_text(
            &format!("labels.{k}"),
            v,
            128,
            true,
            |b| b.is_ascii_alphanumeric() || b"._:/@+-".contains(&b),
            "letters, digits and ._:/@+-",
        )?;
    }
    Ok(())
}

/// The capability kinds a ceiling can allow.
pub const CAPABILITY_KINDS: [&str; 7] = [
    "fs_read", "fs_write", "exec", "services", "http", "tcp", "dns",
];

impl Ceiling {
    /// Bounds on what an agent declares about itself.
    pub fn check(&self) -> Result<(), FieldError> {
        if self.max_level > 3 {
            return Err(field_error("ceiling.max_level", "is 0 to 3"));
        }
        if self.publishers.len() > MAX_LIST {
            return Err(field_error(
                "ceiling.publishers",
                format!("at most {MAX_LIST}"),
            ));
        }
        for p in &self.publishers {
            check_text(
                "ceiling.publishers",
                p,
                128,
                false,
                |b| b.is_ascii_alphanumeric() || b"._@-".contains(&b),
                "letters, digits and ._@-",
            )?;
        }
        if let Some(c) = self
            .capabilities
            .iter()
            .find(|c| !CAPABILITY_KINDS.contains(&c.as_str()))
        {
            return Err(field_error(
                "ceiling.capabilities",
                format!("{:?} is not one of {CAPABILITY_KINDS:?}", shorten(c)),
            ));
        }
        if let Some((_, c)) = self
            .capabilities
            .iter()
            .enumerate()
            .find(|(i, c)| self.capabilities[..*i].contains(c))
        {
            return Err(field_error(
                "ceiling.capabilities",
                format!("lists {c} twice"),
            ));
        }
        if self.paths.len() > MAX_LIST {
            return Err(field_error("ceiling.paths", format!("at most {MAX_LIST}")));
        }
        if self.auto_heal.len() > MAX_LIST {
            return Err(field_error(
                "ceiling.auto_heal",
                format!("at most {MAX_LIST}"),
            ));
        }
        for s in &self.auto_heal {
            tend_manifest::SkillName::parse(s)
                .map_err(|e| field_error("ceiling.auto_heal", format!("{:?}: {e}", shorten(s))))?;
        }
        for p in &self.paths {
            if !p.starts_with('/') {
                return Err(field_error(
                    "ceiling.paths",
                    format!("{:?} is not an absolute path", shorten(p)),
                ));
            }
            check_text(
                "ceiling.paths",
                p,
                1024,
                false,
                |b| b.is_ascii_graphic(),
                "printable characters",
            )?;
        }
        Ok(())
    }
}

impl Enroll {
    /// Bounds on every field before anything is stored or audited: an enrollment is not yet
    /// authenticated, so nothing it says may be large or strange.
    pub fn check(&self) -> Result<(), FieldError> {
        check_text(
            "token",
            &self.token,
            128,
            false,
            |b| b.is_ascii_alphanumeric() || b"_-".contains(&b),
            "letters, digits, '_' and '-'",
        )?;
        check_name("name", &self.name)?;
        check_text(
            "hostname",
            &self.hostname,
            253,
            false,
            |b| b.is_ascii_alphanumeric() || b".-_".contains(&b),
            "letters, digits, '.', '-' and '_'",
        )?;
        for (field, value) in [("os", &self.os), ("arch", &self.arch)] {
            check_text(
                field,
                value,
                32,
                false,
                |b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_',
                "a-z, 0-9 and '_'",
            )?;
        }
        check_labels(&self.labels)?;
        check_pools(&self.pools)?;
        check_text(
            "public_key",
            &self.public_key,
            128,
            false,
            |b| b.is_ascii_alphanumeric() || b"+/=:".contains(&b),
            "base64",
        )?;
        self.ceiling.check()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Enrolled {
    pub agent_id: String,
    /// Where the enroll token placed the agent (the orchestrator's record, not its claim).
    #[serde(default)]
    pub pools: Vec<String>,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    pub interval_ms: u64,
    pub running: u32,
    pub capacity: u32,
    pub version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Poll {
    /// How long to hold the request open waiting for a job (long-poll), at most 30 s.
    pub wait_ms: u64,
    /// At most this many jobs in one answer (the agent's free slots; default 1, at most 50).
    #[serde(default = "one")]
    pub max: u32,
}

fn one() -> u32 {
    1
}

/// The answer to a poll that found work.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Jobs {
    pub jobs: Vec<Job>,
}

/// A job handed to an agent: the invocation, with everything the agent needs to check it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Job {
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub invocation: Invocation,
    pub kind: String,
    pub expires_ms: i64,
    pub lease_until_ms: i64,
    pub lease_ms: i64,
}

/// What an agent reports for a job.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct JobResult {
    /// `ran` (with the report) or `refused` (with the reason).
    pub outcome: String,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub report: Option<serde_json::Value>,
    #[serde(default)]
    pub refusal: Option<String>,
}

impl JobResult {
    /// What the orchestrator takes: `ran` with a report object, or `refused` with a reason of
    /// at most [`MAX_REFUSAL_BYTES`] (it is recorded in the audit trail).
    pub fn check(&self) -> Result<(), FieldError> {
        if self
            .refusal
            .as_ref()
            .is_some_and(|r| r.len() > MAX_REFUSAL_BYTES)
        {
            return Err(field_error(
                "refusal",
                format!("is more than {MAX_REFUSAL_BYTES} bytes"),
            ));
        }
        match self.outcome.as_str() {
            "ran" if self.report.as_ref().is_some_and(|r| r.is_object()) => {}
            "ran" => {
                return Err(field_error(
                    "report",
                    "a `ran` result carries a report object",
                ));
            }
            "refused" if self.refusal.is_some() => {}
            "refused" => return Err(field_error("refusal", "a `refused` result says why")),
            other => {
                return Err(field_error(
                    "outcome",
                    format!("{:?} is neither ran nor refused", shorten(other)),
                ));
            }
        }
        Ok(())
    }
}

/// An agent as `GET /api/v1/agents` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AgentView {
    pub id: String,
    pub name: String,
    pub hostname: String,
    pub os: String,
    pub arch: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub pools: Vec<String>,
    pub ceiling: Ceiling,
    /// online, degraded or offline
    pub state: String,
    /// 0-100, from heartbeat freshness and recent job success.
    pub health: u8,
    pub last_seen: String,
    pub running: u32,
    pub capacity: u32,
    pub jobs_ok: u64,
    pub jobs_failed: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7u8; 32])
    }

    fn header<'a>(h: &'a [(&'static str, String)], name: &str) -> &'a str {
        h.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_default()
    }

    #[test]
    fn a_signed_request_verifies_and_any_change_is_refused() {
        let now = 1_800_000_000_000;
        let nonce = "00112233445566778899aabbccddeeff";
        let h = sign_request(
            &key(),
            "agt_1",
            "POST",
            "/api/v1/agent/poll",
            now,
            nonce,
            b"{}",
        );
        let public = key().verifying_key();
        let check = |method: &str, path: &str, body: &[u8], at: i64| {
            verify_request(
                &public,
                method,
                path,
                header(&h, TIMESTAMP_HEADER),
                header(&h, NONCE_HEADER),
                header(&h, SIGNATURE_HEADER),
                body,
                at,
            )
        };
        assert_eq!(check("POST", "/api/v1/agent/poll", b"{}", now), Ok(now));
        assert_eq!(
            check("POST", "/api/v1/agent/heartbeat", b"{}", now),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            check("POST", "/api/v1/agent/poll", b"{ }", now),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            check("POST", "/api/v1/agent/poll", b"{}", now + MAX_SKEW_MS + 1),
            Err(SignatureError::Skew(MAX_SKEW_MS + 1))
        );
        let other = SigningKey::from_bytes(&[8u8; 32]).verifying_key();
        assert_eq!(
            verify_request(
                &other,
                "POST",
                "/api/v1/agent/poll",
                header(&h, TIMESTAMP_HEADER),
                nonce,
                header(&h, SIGNATURE_HEADER),
                b"{}",
                now
            ),
            Err(SignatureError::Mismatch)
        );
    }

    /// The canonical texts are fixed: a change here breaks every agent in the field and every
    /// approval given, so it must be a deliberate new version.
    #[test]
    fn canonical_forms_have_fixed_vectors() {
        assert_eq!(
            String::from_utf8(signed_message("GET", "/x", 5, "ab", b"")).unwrap_or_default(),
            "tend-agent-request/v1\nGET\n/x\n5\nab\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n"
        );
    }

    #[test]
    fn invocation_ids_are_checked_before_they_become_paths() {
        assert!(is_invocation_id("inv_0123456789abcdef"));
        for bad in [
            "inv_0123456789ABCDEF",
            "../../x",
            "inv_",
            "inv_0123456789abcdef0",
        ] {
            assert!(!is_invocation_id(bad), "{bad}");
        }
    }
}
