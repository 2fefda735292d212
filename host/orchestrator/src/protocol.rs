//! The agent protocol: what an agent and the orchestrator say to each other, and how an agent
//! signs every request. Shared by both sides so that neither can drift.
//!
//! Every request from an enrolled agent carries
//! `Tend-Agent: <agent id>`, `Tend-Timestamp: <unix ms>`, `Tend-Nonce: <32 hex>` and
//! `Tend-Signature: <base64 ed25519>` over [`signed_message`]. The orchestrator refuses an
//! unknown agent, a bad signature, a timestamp more than [`MAX_SKEW_MS`] away from its clock,
//! and a nonce it has seen before (a replay).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const AGENT_HEADER: &str = "tend-agent";
pub const TIMESTAMP_HEADER: &str = "tend-timestamp";
pub const NONCE_HEADER: &str = "tend-nonce";
pub const SIGNATURE_HEADER: &str = "tend-signature";

/// Largest accepted difference between an agent's clock and the orchestrator's.
pub const MAX_SKEW_MS: i64 = 60_000;

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

/// The digest an approval binds (see docs/orchestrator.md): skill, version, component digest,
/// target, input, granted capabilities, limits and expiry. The agent recomputes it from the
/// manifest it verified itself.
#[allow(clippy::too_many_arguments)]
pub fn invocation_digest(
    skill: &str,
    version: &str,
    digest: &str,
    target: &str,
    input: &serde_json::Value,
    grants: &tend_policy::Grants,
    limits: &serde_json::Value,
    expires_ms: i64,
) -> String {
    let grants = serde_json::to_string(grants).unwrap_or_default();
    let text = format!(
        "tend-invocation/v1\nskill {skill}\nversion {version}\ndigest {digest}\ntarget {target}\ninput {input}\ngrants {grants}\nlimits {limits}\nexpires-ms {expires_ms}\n"
    );
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// What an agent will run whatever the orchestrator says.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Ceiling {
    /// Highest zero-trust level (0-3).
    pub max_level: u8,
    /// Publishers (trust-policy names) whose skills it runs; empty means any it trusts.
    #[serde(default)]
    pub publishers: Vec<String>,
    /// Capability kinds it grants: fs_read, fs_write, exec, services, http, tcp. Empty means
    /// none beyond host facts.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Directories a skill's `fs_read`/`fs_write` grants must stay inside; empty means any
    /// (within the kinds above).
    #[serde(default)]
    pub paths: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
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

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Enrolled {
    pub agent_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    pub interval_ms: u64,
    pub running: u32,
    pub capacity: u32,
    pub version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Jobs {
    pub jobs: Vec<Job>,
}

/// A job handed to an agent: the invocation, with everything the agent needs to check it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Job {
    #[schema(value_type = Object)]
    pub invocation: crate::invocation::Invocation,
    pub kind: String,
    pub expires_ms: i64,
    pub lease_until_ms: i64,
    pub lease_ms: i64,
}

/// What an agent reports for a job.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobResult {
    /// `ran` (with the report) or `refused` (with the reason).
    pub outcome: String,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub report: Option<serde_json::Value>,
    #[serde(default)]
    pub refusal: Option<String>,
}

/// An agent as `GET /api/v1/agents` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
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
