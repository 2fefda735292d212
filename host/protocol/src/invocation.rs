//! An invocation as both ends see it: its [`State`], its [`Approval`]s and the policy verdict
//! it was given. The orchestrator stores and shows it; an agent receives it inside a job and
//! checks it for itself.

use serde::{Deserialize, Serialize};
use tend_policy::Verdict;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum State {
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
    pub const ALL: [State; 9] = [
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
    pub digest: String,
    pub target: String,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub input: serde_json::Value,
    pub reason: String,
    pub requester: String,
    /// What started it: `api`, `cli`, `webhook`, `console`, `mcp` or `schedule`.
    #[serde(default = "api")]
    pub trigger: String,
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
    /// The execution report, once it ran.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub result: Option<serde_json::Value>,
}

fn api() -> String {
    "api".to_string()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Approval {
    pub approver: String,
    pub invocation_digest: String,
    pub at: String,
}

/// The approvals in the form [`tend_policy::admit`] counts them. An unreadable time reads as
/// the end of time, which is after any expiry, so such an approval never counts.
pub fn approval_facts(approvals: &[Approval]) -> Vec<tend_policy::admit::Approval> {
    approvals
        .iter()
        .map(|a| tend_policy::admit::Approval {
            approver: a.approver.clone(),
            invocation_digest: a.invocation_digest.clone(),
            at_ms: humantime::parse_rfc3339(&a.at)
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(i64::MAX, |d| d.as_millis() as i64),
        })
        .collect()
}
