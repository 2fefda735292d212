//! An invocation as both ends see it: its [`State`], its [`Approval`]s and the policy verdict
//! it was given. The orchestrator stores and shows it; an agent receives it inside a job and
//! checks it for itself.

use serde::{Deserialize, Serialize};
use tend_manifest::{ManifestLimits, Narrowing};
use tend_policy::{Grants, Verdict};

use crate::Bound;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// A repair that needs approval, waiting for its plan to run on the target first.
    Planning,
    PendingApproval,
    Queued,
    Running,
    Succeeded,
    Failed,
    Rejected,
    Expired,
    Cancelled,
    /// A repair whose agent vanished after it started: it may or may not have acted. Escalated
    /// to a human; never run again on its own.
    Unknown,
}

impl State {
    pub const ALL: [State; 10] = [
        State::Planning,
        State::PendingApproval,
        State::Queued,
        State::Running,
        State::Succeeded,
        State::Failed,
        State::Rejected,
        State::Expired,
        State::Cancelled,
        State::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Planning => "planning",
            State::PendingApproval => "pending_approval",
            State::Queued => "queued",
            State::Running => "running",
            State::Succeeded => "succeeded",
            State::Failed => "failed",
            State::Rejected => "rejected",
            State::Expired => "expired",
            State::Cancelled => "cancelled",
            State::Unknown => "unknown",
        }
    }

    /// Whether it has ended: it will not run (again) on its own. (`unknown` has ended as far as
    /// anyone waiting is concerned: a person must look at the host.)
    pub fn is_final(self) -> bool {
        !matches!(
            self,
            State::Planning | State::PendingApproval | State::Queued | State::Running
        )
    }

    pub fn parse(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

/// An invocation as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Invocation {
    pub id: String,
    pub skill: String,
    pub version: String,
    /// The export it runs: `run`, or `plan` for the plan job of a repair (see `plan_for`).
    #[serde(default = "run")]
    pub export: String,
    /// For a plan job: the repair it plans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_for: Option<String>,
    /// For one host's part of a run across a pool: the invocation it is part of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part_of: Option<String>,
    /// `sha256:<hex>` of the component.
    pub digest: String,
    /// `sha256:<hex>` of the signed manifest.
    #[serde(default)]
    pub manifest_digest: String,
    /// Who signed it, as the orchestrator's trust policy names them (shown, not bound).
    #[serde(default)]
    pub publisher: String,
    /// The id of the publisher key that signed it (bound: every runner checks it is the key
    /// whose signature verified there).
    #[serde(default)]
    pub publisher_key: String,
    pub target: String,
    /// The agents it may run on, fixed at submit: every host of a run across a pool, or the one
    /// host an approval of a `pool:` invocation is for; empty when one runner of the target is
    /// chosen when it runs.
    #[serde(default)]
    pub hosts: Vec<String>,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub input: serde_json::Value,
    /// What the operator narrowed at submit (path grants, limits); empty when nothing.
    #[serde(default, skip_serializing_if = "Narrowing::is_empty")]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub narrowing: Narrowing,
    /// The grants it runs with: the signed manifest's, narrowed.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub grants: Grants,
    /// The limits it runs with: the signed manifest's, lowered.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub limits: ManifestLimits,
    /// A repair's plan record (what its plan job said, or why it did not run), as shown to
    /// approvers and bound into the digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub plan: Option<serde_json::Value>,
    /// After a planned repair ran: where what it did differs from its plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub plan_check: Option<serde_json::Value>,
    pub reason: String,
    pub requester: String,
    /// What started it: `api`, `cli`, `webhook`, `console`, `mcp` or `schedule`.
    #[serde(default = "api")]
    pub trigger: String,
    /// The healing policy it was submitted under (by the healing loop for an incident), if
    /// any. Not bound and not trusted: a runner lets it run without an approval only when it
    /// is L1 and the runner's own `auto_heal` list names the skill.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healing: Option<String>,
    pub level: u8,
    pub approvals_required: u8,
    pub invocation_digest: String,
    pub state: State,
    /// The policy decision: `decision`, `level`, and `reasons` as data.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub verdict: Verdict,
    pub reasons: Vec<String>,
    pub created_at: String,
    pub expires_at: String,
    /// The end of the approval window in unix ms (as bound into the digest).
    #[serde(default)]
    pub expires_ms: i64,
    /// When its runner started running it (absent until then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// When it reached an end state (absent until then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// What the person who ended it said (a reject's comment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    pub approvals: Vec<Approval>,
    /// A run across a pool: each host's part, with its state and outcome.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<Part>,
    /// The execution report, once it ran.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub result: Option<serde_json::Value>,
}

/// One host's part of a run across a pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Part {
    /// The agent's name.
    pub host: String,
    /// The part's own invocation id.
    pub id: String,
    pub state: State,
    /// The run's outcome (`ok`, `skill_error`, ...) or `refused`, once it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
}

fn api() -> String {
    "api".to_string()
}

fn run() -> String {
    "run".to_string()
}

impl Invocation {
    /// What an approval of this invocation binds, from the fields it shows: recompute
    /// [`crate::invocation_digest`] from this, never take `invocation_digest` on trust.
    pub fn bound(&self) -> Bound<'_> {
        Bound {
            skill: &self.skill,
            version: &self.version,
            export: &self.export,
            digest: &self.digest,
            manifest_digest: &self.manifest_digest,
            publisher_key: &self.publisher_key,
            target: &self.target,
            hosts: &self.hosts,
            requester: &self.requester,
            input: &self.input,
            grants: &self.grants,
            limits: &self.limits,
            plan: self.plan.as_ref(),
            expires_ms: self.expires_ms,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Approval {
    /// The approver as the orchestrator knows them (an agent counts the name its own trust
    /// policy gives the key).
    pub approver: String,
    pub invocation_digest: String,
    pub at: String,
    /// `ed25519:<base64>`: the approver's key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// Base64 ed25519 signature over [`crate::approval_message`] of `invocation_digest`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}
