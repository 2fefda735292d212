//! # tend-http — what Tend's HTTP services share
//!
//! Every error from the orchestrator and the registry has one shape,
//! `{"error": {"code", "message", "reasons"?}}` ([`ErrorBody`]), made from one type,
//! [`ApiError`], with the right status. A request body is read by one extractor, [`ApiJson`],
//! whose rejection is an `ApiError` too, so a malformed body reads like every other refusal.
//! Clients (the agent, the CLI) use [`ErrorBody`] alone, without the `server` feature.

use serde::{Deserialize, Serialize};

/// The JSON body of every error answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    /// Stable and machine-readable, e.g. `unauthenticated`, `policy_denied`.
    pub code: String,
    /// For a person: what was wrong and where.
    pub message: String,
    /// A policy refusal's reasons, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasons: Option<Vec<String>>,
}

#[cfg(feature = "server")]
mod server;

#[cfg(feature = "server")]
pub use server::{ApiError, ApiJson, ApiResult, bearer_token};
