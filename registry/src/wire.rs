//! What the registry's HTTP API says, shared by the server and the client (which an agent
//! links without any server code).

use serde::{Deserialize, Serialize};

use crate::publog::{Checkpoint, LogEntry};

pub use tend_http::{ErrorBody, ErrorDetail};

/// The header that carries the signature envelope on publish (base64 of its JSON).
pub const SIGNATURE_HEADER: &str = "tend-signature";

/// One published version, as the index and the API show it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub name: String,
    pub version: String,
    pub kind: String,
    pub level: u8,
    pub description: String,
    /// `sha256:<hex>` of the component.
    pub digest: String,
    pub size: u64,
    pub key_id: String,
    pub publisher: String,
    pub published_by: String,
    pub published_at: String,
    pub log_index: u64,
    /// The signature envelope (JSON text) exactly as published.
    pub envelope: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SkillList {
    pub skills: Vec<Entry>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct LogResponse {
    pub entries: Vec<LogEntry>,
    /// The newest entry: anchor it elsewhere to detect a rewritten history later.
    pub head: Option<Checkpoint>,
}
