//! The audit trail: an append-only hash chain. Every decision, approval, rejection, state
//! change, refused token and configuration change is an event; each event's hash is
//! `sha256(prev_hash ‖ canonical event)` (hex), the first `prev_hash` being 64 zeros.
//!
//! The canonical event is defined here once. Each row records the version of the form it was
//! hashed with (`v`), so a chain written by an older release still verifies. `detail` is
//! stored, and hashed, as the exact JSON text written.
//!
//! **v2** (written since the fields became length-prefixed): every value is preceded by its
//! length in bytes, so no content can move a field boundary. A row whose actor carries
//! `"alice\naction approval.grant"` and a row with actor `alice`, action `approval.grant`
//! hash differently.
//!
//! ```text
//! tend-audit/v2
//! index <n, from 1>
//! at <bytes>:<RFC 3339, ms, UTC>
//! actor <bytes>:<name>
//! action <bytes>:<verb.noun>
//! subject <bytes>:<id>
//! detail <bytes>:<JSON>
//! ```
//!
//! **v1** (older releases; verified, never written): one field per line, unescaped, which a
//! line break inside a field could re-split.
//!
//! ```text
//! tend-audit/v1
//! index <n, from 1>
//! at <RFC 3339, ms, UTC>
//! actor <name>
//! action <verb.noun>
//! subject <id>
//! detail <JSON>
//! ```
//!
//! Every field is bounded where it is appended ([`append_tx`]): actor, action and subject are
//! cut to a length and escaped to a safe character set (no control characters or line
//! breaks), and `detail` is capped (long strings and oversize details are truncated with a
//! marker), so no call site can write an unbounded or multi-line field. Refusals of
//! unauthenticated requests go through [`refused`]: recorded as `anonymous`, at most a few per
//! action and window, the rest counted and summarised by one `audit.refusals_suppressed` event.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::db::{Db, DbError, now_ms, rfc3339};

pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The canonical form this release writes.
pub const VERSION: i64 = 2;

/// The actor of every refused unauthenticated request: never a name the caller chose.
pub const ANONYMOUS: &str = "anonymous";

/// Longest actor, action and subject (bytes, after escaping).
pub const MAX_ACTOR: usize = 128;
pub const MAX_ACTION: usize = 64;
pub const MAX_SUBJECT: usize = 256;
/// Longest string inside `detail`, and longest `detail` as a whole (bytes of JSON text).
pub const MAX_DETAIL_STRING: usize = 1024;
pub const MAX_DETAIL: usize = 8 * 1024;

/// What an audit event records: a fixed set named by the code, never by a caller. The text
/// form (`verb.noun`) is what the chain stores and hashes, so it never changes for a variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// An API token was created.
    TokenCreate,
    /// An API token was revoked: it stops working on every replica within a second.
    TokenRevoke,
    /// An API token was replaced by a new one for the same name and role; the old one revoked.
    TokenRotate,
    /// An enroll token was created.
    EnrollTokenCreate,
    /// A request without a valid token was refused (recorded as `anonymous`). `detail.why`
    /// says why: `no token`, `unknown token`, or — for a token of ours that no longer works —
    /// `revoked` or `expired`, with the token's prefix and name.
    AuthRefused,
    /// A known caller asked for more than its role allows.
    AuthForbidden,
    /// An invocation was recorded (queued, or pending approval).
    InvocationCreate,
    /// Policy denied a submission; nothing was recorded but this.
    InvocationDenied,
    /// An approval was recorded.
    ApprovalGrant,
    /// An approval was refused.
    ApprovalRefused,
    /// An admin registered an approver's public key.
    ApproverRegister,
    /// An admin removed an approver's public key.
    ApproverRemove,
    /// `planning -> pending_approval`: a repair's plan job ended; its plan record is bound.
    InvocationPlanned,
    /// `pending_approval -> queued`: the approvals are complete.
    InvocationQueued,
    /// `pending_approval -> rejected`.
    InvocationRejected,
    /// `pending_approval -> expired`: no sufficient approval in time.
    InvocationExpired,
    /// `pending_approval | queued -> cancelled`.
    InvocationCancelled,
    /// A queued pool or agent job was assigned to an agent.
    InvocationAssign,
    /// `queued -> running`: a worker or agent claimed the job with a lease.
    InvocationRunning,
    /// An agent's own checks passed and it started a claimed job.
    InvocationStarted,
    /// `running -> queued`: an agent gave back a job it had not started.
    InvocationReleased,
    /// `running -> queued`: a lease ran out where running again is harmless.
    InvocationRequeued,
    /// `running -> unknown`: a started repair's lease ran out; a human must check.
    InvocationUnknown,
    /// `running | unknown -> succeeded`: a result was recorded.
    InvocationSucceeded,
    /// `running | unknown -> failed`: a result was recorded, or the holder is gone.
    InvocationFailed,
    /// An agent enrolled.
    AgentEnroll,
    /// An enrollment was refused.
    AgentEnrollRefused,
    /// A signed agent request was refused (recorded as `anonymous`).
    AgentRequestRefused,
    /// An agent refused to run a job it was given (its own admission check).
    AgentRefused,
    /// An agent was removed; its unstarted jobs went back to the queue.
    AgentDelete,
    /// An alert opened an incident.
    IncidentOpen,
    /// An alert's `resolved` notification resolved its incident.
    IncidentResolved,
    /// An incident was handed to a person (no agent to act on, or the loop could not heal it).
    IncidentEscalated,
    /// The healing loop moved an incident on (diagnosis, repair, verification).
    IncidentStep,
    /// A repair was verified: the incident is healed.
    IncidentHealed,
    /// New healing policies were put in force (through the API, or a changed file at start).
    HealingPoliciesSet,
    /// An orchestrator process started serving.
    OrchestratorStart,
    /// An orchestrator process stopped.
    OrchestratorStop,
    /// Flood control left refusals out of one window; this says how many.
    AuditRefusalsSuppressed,
    /// Written by `tend audit bench` into a scratch database to measure appends.
    BenchAppend,
}

impl Action {
    pub const ALL: [Action; 40] = [
        Action::TokenCreate,
        Action::TokenRevoke,
        Action::TokenRotate,
        Action::EnrollTokenCreate,
        Action::AuthRefused,
        Action::AuthForbidden,
        Action::InvocationCreate,
        Action::InvocationDenied,
        Action::ApprovalGrant,
        Action::ApprovalRefused,
        Action::ApproverRegister,
        Action::ApproverRemove,
        Action::InvocationPlanned,
        Action::InvocationQueued,
        Action::InvocationRejected,
        Action::InvocationExpired,
        Action::InvocationCancelled,
        Action::InvocationAssign,
        Action::InvocationRunning,
        Action::InvocationStarted,
        Action::InvocationReleased,
        Action::InvocationRequeued,
        Action::InvocationUnknown,
        Action::InvocationSucceeded,
        Action::InvocationFailed,
        Action::AgentEnroll,
        Action::AgentEnrollRefused,
        Action::AgentRequestRefused,
        Action::AgentRefused,
        Action::AgentDelete,
        Action::IncidentOpen,
        Action::IncidentResolved,
        Action::IncidentEscalated,
        Action::IncidentStep,
        Action::IncidentHealed,
        Action::HealingPoliciesSet,
        Action::OrchestratorStart,
        Action::OrchestratorStop,
        Action::AuditRefusalsSuppressed,
        Action::BenchAppend,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::TokenCreate => "token.create",
            Action::TokenRevoke => "token.revoke",
            Action::TokenRotate => "token.rotate",
            Action::EnrollTokenCreate => "enroll_token.create",
            Action::AuthRefused => "auth.refused",
            Action::AuthForbidden => "auth.forbidden",
            Action::InvocationCreate => "invocation.create",
            Action::InvocationDenied => "invocation.denied",
            Action::ApprovalGrant => "approval.grant",
            Action::ApprovalRefused => "approval.refused",
            Action::ApproverRegister => "approver.register",
            Action::ApproverRemove => "approver.remove",
            Action::InvocationPlanned => "invocation.planned",
            Action::InvocationQueued => "invocation.queued",
            Action::InvocationRejected => "invocation.rejected",
            Action::InvocationExpired => "invocation.expired",
            Action::InvocationCancelled => "invocation.cancelled",
            Action::InvocationAssign => "invocation.assign",
            Action::InvocationRunning => "invocation.running",
            Action::InvocationStarted => "invocation.started",
            Action::InvocationReleased => "invocation.released",
            Action::InvocationRequeued => "invocation.requeued",
            Action::InvocationUnknown => "invocation.unknown",
            Action::InvocationSucceeded => "invocation.succeeded",
            Action::InvocationFailed => "invocation.failed",
            Action::AgentEnroll => "agent.enroll",
            Action::AgentEnrollRefused => "agent.enroll_refused",
            Action::AgentRequestRefused => "agent.request_refused",
            Action::AgentRefused => "agent.refused",
            Action::AgentDelete => "agent.delete",
            Action::IncidentOpen => "incident.open",
            Action::IncidentResolved => "incident.resolved",
            Action::IncidentEscalated => "incident.escalated",
            Action::IncidentStep => "incident.step",
            Action::IncidentHealed => "incident.healed",
            Action::HealingPoliciesSet => "healing.policies_set",
            Action::OrchestratorStart => "orchestrator.start",
            Action::OrchestratorStop => "orchestrator.stop",
            Action::AuditRefusalsSuppressed => "audit.refusals_suppressed",
            Action::BenchAppend => "bench.append",
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Event {
    pub index: i64,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub subject: String,
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
    pub prev_hash: String,
    pub hash: String,
}

/// The newest event: anchor it elsewhere to detect a rewritten history later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Head {
    pub index: i64,
    pub hash: String,
}

/// The v1 form (older releases): one field per line, unescaped.
pub fn canonical_v1(
    index: i64,
    at: &str,
    actor: &str,
    action: &str,
    subject: &str,
    detail: &str,
) -> String {
    format!(
        "tend-audit/v1\nindex {index}\nat {at}\nactor {actor}\naction {action}\nsubject {subject}\ndetail {detail}\n"
    )
}

/// The v2 form: every value length-prefixed, so it cannot be re-split.
pub fn canonical_v2(
    index: i64,
    at: &str,
    actor: &str,
    action: &str,
    subject: &str,
    detail: &str,
) -> String {
    let mut out = format!("tend-audit/v2\nindex {index}\n");
    for (key, value) in [
        ("at", at),
        ("actor", actor),
        ("action", action),
        ("subject", subject),
        ("detail", detail),
    ] {
        out.push_str(&format!("{key} {}:{value}\n", value.len()));
    }
    out
}

/// The canonical text of an event in form `version`, if this release knows that form.
pub fn canonical(
    version: i64,
    index: i64,
    at: &str,
    actor: &str,
    action: &str,
    subject: &str,
    detail: &str,
) -> Option<String> {
    match version {
        1 => Some(canonical_v1(index, at, actor, action, subject, detail)),
        2 => Some(canonical_v2(index, at, actor, action, subject, detail)),
        _ => None,
    }
}

/// `s` in the safe character set (letters, digits, printable ASCII but `\`, and space),
/// anything else escaped as `\u{hex}` (so distinct inputs stay distinct), cut to `max` bytes
/// with a `…` marker.
pub fn safe_field(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max + 8));
    let mut cut = false;
    for c in s.chars() {
        let piece = if c == ' '
            || (c.is_ascii_graphic() && c != '\\')
            || (!c.is_ascii() && c.is_alphanumeric())
        {
            c.to_string()
        } else {
            format!("\\u{{{:x}}}", c as u32)
        };
        if out.len() + piece.len() > max {
            cut = true;
            break;
        }
        out.push_str(&piece);
    }
    if cut {
        while out.len() + '…'.len_utf8() > max {
            out.pop();
        }
        out.push('…');
    }
    out
}

/// Long strings cut (with a marker naming how long they were), recursively.
fn shorten(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::String(s) if s.len() > MAX_DETAIL_STRING => {
            let mut end = MAX_DETAIL_STRING;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            Value::String(format!("{}…[truncated: {} bytes]", &s[..end], s.len()))
        }
        Value::Array(items) => Value::Array(items.into_iter().map(shorten).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    let k = if k.len() > MAX_DETAIL_STRING {
                        safe_field(&k, MAX_DETAIL_STRING)
                    } else {
                        k
                    };
                    (k, shorten(v))
                })
                .collect(),
        ),
        other => other,
    }
}

/// The JSON text stored for `detail`: at most [`MAX_DETAIL`] bytes. An oversize detail is
/// replaced by `{"truncated": true, "bytes": N, "head": "<the start of its text>"}`.
pub fn bounded_detail(detail: serde_json::Value) -> String {
    let text = shorten(detail).to_string();
    if text.len() <= MAX_DETAIL {
        return text;
    }
    let mut end = MAX_DETAIL / 4;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let marked =
        serde_json::json!({ "truncated": true, "bytes": text.len(), "head": &text[..end] })
            .to_string();
    if marked.len() <= MAX_DETAIL {
        marked
    } else {
        serde_json::json!({ "truncated": true, "bytes": text.len() }).to_string()
    }
}

pub fn chain_hash(prev_hash: &str, canonical: &str) -> String {
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(canonical.as_bytes());
    hex::encode(h.finalize())
}

/// Append one event, atomically with the head update.
pub async fn append(
    db: &Db,
    actor: &str,
    action: Action,
    subject: &str,
    detail: serde_json::Value,
) -> Result<Head, DbError> {
    let mut tx = db.begin_write().await?;
    let head = append_tx(&mut tx, actor, action, subject, detail).await?;
    tx.commit().await?;
    Ok(head)
}

/// Append one event inside the caller's transaction, so that the change it records and the
/// record of it commit together (or not at all). Every field is bounded here (see the module
/// docs), whatever the caller passes.
pub async fn append_tx(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    actor: &str,
    action: Action,
    subject: &str,
    detail: serde_json::Value,
) -> Result<Head, DbError> {
    let actor = safe_field(actor, MAX_ACTOR);
    let action = safe_field(action.as_str(), MAX_ACTION);
    let subject = safe_field(subject, MAX_SUBJECT);
    let detail = bounded_detail(detail);
    let at = rfc3339(now_ms());
    let row = sqlx::query("UPDATE audit_head SET idx = idx + 1 WHERE id = 1 RETURNING idx, hash")
        .fetch_one(&mut **tx)
        .await?;
    let index: i64 = row.try_get("idx")?;
    let prev: String = row.try_get("hash")?;
    let hash = chain_hash(
        &prev,
        &canonical_v2(index, &at, &actor, &action, &subject, &detail),
    );
    sqlx::query(
        "INSERT INTO audit (idx, at, actor, action, subject, detail, prev_hash, hash, v) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(index)
    .bind(&at)
    .bind(&actor)
    .bind(&action)
    .bind(&subject)
    .bind(&detail)
    .bind(&prev)
    .bind(&hash)
    .bind(VERSION)
    .execute(&mut **tx)
    .await?;
    sqlx::query("UPDATE audit_head SET hash = $1 WHERE id = 1")
        .bind(&hash)
        .execute(&mut **tx)
        .await?;
    Ok(Head { index, hash })
}

/// Flood control for refusals of unauthenticated requests: per action, the first
/// `per_window` refusals of each window are written to the chain, the rest only counted; one
/// `audit.refusals_suppressed` event per closed window then says how many were left out. The
/// totals (written or not) are in `/metrics`. Actions are a fixed set named by the code, so
/// this holds a handful of counters whatever callers send.
#[derive(Debug)]
pub struct RefusalGate {
    per_window: u32,
    window: Duration,
    inner: Mutex<GateInner>,
}

#[derive(Debug, Default)]
struct GateInner {
    open: BTreeMap<String, Window>,
    /// Closed windows with suppressed refusals, not yet written.
    closed: Vec<Suppressed>,
    /// Per action: (refused, suppressed), since start.
    totals: BTreeMap<String, (u64, u64)>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    opened: Instant,
    opened_ms: i64,
    recorded: u32,
    suppressed: u64,
}

/// Refusals of one action that a closed window counted but did not write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suppressed {
    pub action: String,
    pub count: u64,
    pub from_ms: i64,
    pub to_ms: i64,
}

impl Default for RefusalGate {
    fn default() -> Self {
        RefusalGate::new(20, Duration::from_secs(60))
    }
}

impl RefusalGate {
    pub fn new(per_window: u32, window: Duration) -> RefusalGate {
        RefusalGate {
            per_window,
            window,
            inner: Mutex::default(),
        }
    }

    fn close(window: Window, action: &str, to_ms: i64, closed: &mut Vec<Suppressed>) {
        if window.suppressed > 0 {
            closed.push(Suppressed {
                action: action.to_string(),
                count: window.suppressed,
                from_ms: window.opened_ms,
                to_ms,
            });
        }
    }

    /// Count one refusal of `action`; whether it is to be written to the chain.
    pub fn admit(&self, action: &str, now: Instant, now_ms: i64) -> bool {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let GateInner {
            open,
            closed,
            totals,
        } = &mut *g;
        let total = totals.entry(action.to_string()).or_default();
        total.0 += 1;
        let fresh = Window {
            opened: now,
            opened_ms: now_ms,
            recorded: 0,
            suppressed: 0,
        };
        let w = open.entry(action.to_string()).or_insert(fresh);
        if now.saturating_duration_since(w.opened) >= self.window {
            Self::close(*w, action, now_ms, closed);
            *w = fresh;
        }
        if w.recorded < self.per_window {
            w.recorded += 1;
            true
        } else {
            w.suppressed += 1;
            total.1 += 1;
            false
        }
    }

    /// Count one refusal of `action` that is bounded elsewhere (an expired or revoked token:
    /// see `extract::TokenCache`), so `/metrics` still counts every refusal.
    pub fn count(&self, action: &str) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.totals.entry(action.to_string()).or_default().0 += 1;
    }

    /// Windows closed by `now` that left refusals out (taken: each is reported once).
    pub fn take_closed(&self, now: Instant, now_ms: i64) -> Vec<Suppressed> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let GateInner { open, closed, .. } = &mut *g;
        let window = self.window;
        open.retain(|action, w| {
            if now.saturating_duration_since(w.opened) >= window {
                Self::close(*w, action, now_ms, closed);
                false
            } else {
                true
            }
        });
        std::mem::take(closed)
    }

    /// Every open window closed now (at shutdown), so no count is lost.
    pub fn take_all(&self, now_ms: i64) -> Vec<Suppressed> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let GateInner { open, closed, .. } = &mut *g;
        for (action, w) in std::mem::take(open) {
            Self::close(w, &action, now_ms, closed);
        }
        std::mem::take(closed)
    }

    /// Per action: (refused, suppressed) since start.
    pub fn totals(&self) -> Vec<(String, u64, u64)> {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.totals
            .iter()
            .map(|(a, (n, s))| (a.clone(), *n, *s))
            .collect()
    }
}

/// Record the refusal of an unauthenticated request: under [`ANONYMOUS`], never a name the
/// caller chose (a claimed identity belongs in `detail`, where it is bounded), and through the
/// flood gate. Returns whether it was written.
pub async fn refused(
    db: &Db,
    action: Action,
    subject: &str,
    detail: serde_json::Value,
) -> Result<bool, DbError> {
    if !db.refusals.admit(action.as_str(), Instant::now(), now_ms()) {
        return Ok(false);
    }
    append(db, ANONYMOUS, action, subject, detail).await?;
    Ok(true)
}

async fn write_suppressed(db: &Db, all: Vec<Suppressed>) -> Result<(), DbError> {
    for s in all {
        append(
            db,
            "tend",
            Action::AuditRefusalsSuppressed,
            &s.action,
            serde_json::json!({
                "action": s.action, "suppressed": s.count,
                "from": rfc3339(s.from_ms), "to": rfc3339(s.to_ms),
                "why": "flood control: only the first refusals of each window are written one by one",
            }),
        )
        .await?;
    }
    Ok(())
}

/// Write one `audit.refusals_suppressed` event per closed window that left refusals out.
pub async fn flush_refusals(db: &Db) -> Result<(), DbError> {
    write_suppressed(db, db.refusals.take_closed(Instant::now(), now_ms())).await
}

/// At shutdown: summarise every window, closed or not.
pub async fn flush_all_refusals(db: &Db) -> Result<(), DbError> {
    write_suppressed(db, db.refusals.take_all(now_ms())).await
}

pub async fn head(db: &Db) -> Result<Head, DbError> {
    let row = sqlx::query("SELECT idx, hash FROM audit_head WHERE id = 1")
        .fetch_one(&db.pool)
        .await?;
    Ok(Head {
        index: row.try_get("idx")?,
        hash: row.try_get("hash")?,
    })
}

struct Stored {
    event: Event,
    detail_text: String,
    version: i64,
}

async fn rows(db: &Db, after: i64, limit: i64) -> Result<Vec<Stored>, DbError> {
    let rows = sqlx::query(
        "SELECT idx, at, actor, action, subject, detail, prev_hash, hash, v FROM audit WHERE idx > $1 ORDER BY idx LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r| {
            let detail_text: String = r.try_get("detail")?;
            Ok(Stored {
                event: Event {
                    index: r.try_get("idx")?,
                    at: r.try_get("at")?,
                    actor: r.try_get("actor")?,
                    action: r.try_get("action")?,
                    subject: r.try_get("subject")?,
                    detail: serde_json::from_str(&detail_text)
                        .unwrap_or(serde_json::Value::String(detail_text.clone())),
                    prev_hash: r.try_get("prev_hash")?,
                    hash: r.try_get("hash")?,
                },
                detail_text,
                version: r.try_get("v")?,
            })
        })
        .collect()
}

/// Events after `after`, oldest first, at most `limit`.
pub async fn list(db: &Db, after: i64, limit: i64) -> Result<Vec<Event>, DbError> {
    Ok(rows(db, after, limit)
        .await?
        .into_iter()
        .map(|s| s.event)
        .collect())
}

/// What `verify` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub events: i64,
    pub head: Head,
    /// v1 events (older releases) with a line break inside a field: their hash matches, but
    /// the v1 form cannot tell them from an event whose fields were re-split.
    pub ambiguous_v1: Vec<i64>,
}

/// Recompute the whole chain; the error names the first altered, deleted or reordered event.
pub async fn verify(db: &Db) -> Result<Result<Report, String>, DbError> {
    let head = head(db).await?;
    let mut prev = GENESIS.to_string();
    let mut expected = 1i64;
    let mut newest_form = 1i64;
    let mut ambiguous_v1 = Vec::new();
    loop {
        let batch = rows(db, expected - 1, 5000).await?;
        if batch.is_empty() {
            break;
        }
        for s in &batch {
            let e = &s.event;
            let who = format!(
                "{} by {}",
                safe_field(&e.action, MAX_ACTION),
                safe_field(&e.actor, MAX_ACTOR)
            );
            if e.index != expected {
                return Ok(Err(format!(
                    "audit event {expected} is missing (the next stored event is {}): events were deleted",
                    e.index
                )));
            }
            if e.prev_hash != prev {
                return Ok(Err(format!(
                    "audit event {} ({who}) does not follow event {}: events were reordered, replaced or deleted",
                    e.index,
                    e.index - 1
                )));
            }
            // A release never goes back to an older form: a v1 row after a v2 one was rewritten.
            if s.version < newest_form {
                return Ok(Err(format!(
                    "audit event {} ({who}) claims the v{} form after v{newest_form} events: it was altered",
                    e.index, s.version
                )));
            }
            newest_form = s.version;
            let Some(text) = canonical(
                s.version,
                e.index,
                &e.at,
                &e.actor,
                &e.action,
                &e.subject,
                &s.detail_text,
            ) else {
                return Ok(Err(format!(
                    "audit event {} ({who}) is in form v{}, which this release does not know: it was altered, or written by a newer release",
                    e.index, s.version
                )));
            };
            if chain_hash(&e.prev_hash, &text) != e.hash {
                return Ok(Err(format!(
                    "audit event {} ({who} at {}) was altered: its hash does not match its content",
                    e.index,
                    safe_field(&e.at, 64)
                )));
            }
            if s.version == 1
                && [&e.actor, &e.action, &e.subject, &s.detail_text]
                    .iter()
                    .any(|f| f.contains('\n'))
            {
                ambiguous_v1.push(e.index);
            }
            prev = e.hash.clone();
            expected += 1;
        }
    }
    let last = expected - 1;
    if last != head.index || prev != head.hash {
        return Ok(Err(format!(
            "the chain ends at event {last} but its head says {}: the newest events were deleted",
            head.index
        )));
    }
    Ok(Ok(Report {
        events: last,
        head,
        ambiguous_v1,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const AT: &str = "2026-11-24T00:00:00.000Z";

    // Every expected hash below is sha256("0"*64 + canonical text), computed independently
    // with Python's hashlib.

    #[test]
    fn fixed_vector_v1() {
        let c = canonical_v1(1, AT, "alice", "invocation.create", "inv_00", "{}");
        assert_eq!(
            chain_hash(GENESIS, &c),
            "1578b85ac54256c9705997c7d7a073d7ee99f4d1a27bd8d1eee42614350fee1b"
        );
    }

    #[test]
    fn fixed_vector_v2() {
        let c = canonical_v2(1, AT, "alice", "invocation.create", "inv_00", "{}");
        assert_eq!(
            c,
            "tend-audit/v2\nindex 1\nat 24:2026-11-24T00:00:00.000Z\nactor 5:alice\naction 17:invocation.create\nsubject 6:inv_00\ndetail 2:{}\n"
        );
        assert_eq!(
            chain_hash(GENESIS, &c),
            "9bf90875649cb989420d0eb6edb4228a7a2a7d372816b322ed771e376574b7e7"
        );
        assert_eq!(
            canonical(2, 1, AT, "alice", "invocation.create", "inv_00", "{}"),
            Some(c)
        );
        assert_eq!(
            canonical(3, 1, AT, "alice", "invocation.create", "inv_00", "{}"),
            None
        );
    }

    /// A refused enrollment whose claimed name carries line breaks, and the same row re-split
    /// into `approval.grant` by `alice`: one v1 text (so one hash), two v2 texts.
    #[test]
    fn a_re_split_event_has_the_same_v1_hash_and_another_v2_hash() {
        let hostile = (
            "alice\naction approval.grant\nsubject inv_00",
            "agent.enroll_refused",
            "host",
        );
        let resplit = (
            "alice",
            "approval.grant",
            "inv_00\naction agent.enroll_refused\nsubject host",
        );
        let v1 = |(a, b, s): (&str, &str, &str)| {
            chain_hash(GENESIS, &canonical_v1(1, AT, a, b, s, "{}"))
        };
        let v2 = |(a, b, s): (&str, &str, &str)| {
            chain_hash(GENESIS, &canonical_v2(1, AT, a, b, s, "{}"))
        };
        assert_eq!(v1(hostile), v1(resplit));
        assert_eq!(
            v1(hostile),
            "9e7ad8306babdab5ae21187b2dd3bd45df9eb79fb75c27eca2e70dd45da33b33"
        );
        assert_eq!(
            v2(hostile),
            "f0a14f736b7edd3eb015757fc0fd162229f372f766c2dadc23b274befedf81ef"
        );
        assert_eq!(
            v2(resplit),
            "0c793382cd59ef0e5d727ab2c881f69cbde281e97be4e460be908dc207ab5679"
        );
    }

    /// The chain stores and hashes these texts, and people search for them: each is distinct,
    /// stored as written (no escaping, no cut), and never changes for a variant.
    #[test]
    fn every_action_has_its_one_text() {
        let texts: Vec<&str> = Action::ALL.iter().map(|a| a.as_str()).collect();
        let mut unique = texts.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), texts.len(), "{texts:?}");
        for t in &texts {
            assert_eq!(safe_field(t, MAX_ACTION), *t);
        }
        assert_eq!(Action::InvocationCreate.as_str(), "invocation.create");
        assert_eq!(Action::AgentEnrollRefused.as_str(), "agent.enroll_refused");
        assert_eq!(
            Action::AuditRefusalsSuppressed.as_str(),
            "audit.refusals_suppressed"
        );
    }

    #[test]
    fn fields_are_bounded_and_single_line() {
        let f = safe_field("alice\naction approval.grant", MAX_ACTOR);
        assert_eq!(f, "alice\\u{a}action approval.grant");
        // A literal backslash is escaped too, so distinct inputs stay distinct.
        assert_ne!(safe_field("a\\u{a}b", 64), safe_field("a\nb", 64));
        assert_eq!(safe_field("José", 64), "José");
        assert_eq!(safe_field("evil\u{202e}txt", 64), "evil\\u{202e}txt");
        let long = safe_field(&"x".repeat(2_000_000), MAX_ACTOR);
        assert!(long.len() <= MAX_ACTOR && long.ends_with('…'), "{long}");
        let long = safe_field(&"\n".repeat(1000), MAX_SUBJECT);
        assert!(long.len() <= MAX_SUBJECT && !long.contains('\n'));

        let d = bounded_detail(serde_json::json!({ "hostname": "h".repeat(1_900_000) }));
        assert!(d.len() <= MAX_DETAIL, "{}", d.len());
        assert!(d.contains("truncated: 1900000 bytes"), "{d}");
        let many: Vec<String> = (0..1000).map(|_| "y".repeat(1000)).collect();
        let d = bounded_detail(serde_json::json!({ "labels": many }));
        assert!(d.len() <= MAX_DETAIL, "{}", d.len());
        let v: serde_json::Value = serde_json::from_str(&d).expect("still JSON");
        assert_eq!(v["truncated"], true);
        assert_eq!(bounded_detail(serde_json::json!({"a": 1})), r#"{"a":1}"#);
    }

    #[test]
    fn the_refusal_gate_writes_the_first_of_each_window_and_counts_the_rest() {
        let gate = RefusalGate::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        let admitted = (0..100)
            .filter(|_| gate.admit("auth.refused", t0, 1_000))
            .count();
        assert_eq!(admitted, 3);
        assert!(gate.admit("agent.enroll_refused", t0, 1_000), "per action");
        // Nothing to report while the window is open.
        assert!(
            gate.take_closed(t0 + Duration::from_secs(59), 59_000)
                .is_empty()
        );
        let closed = gate.take_closed(t0 + Duration::from_secs(60), 61_000);
        assert_eq!(
            closed,
            vec![Suppressed {
                action: "auth.refused".into(),
                count: 97,
                from_ms: 1_000,
                to_ms: 61_000
            }]
        );
        assert!(
            gate.take_closed(t0 + Duration::from_secs(61), 62_000)
                .is_empty(),
            "reported once"
        );
        // A new window writes again; a window closed by a refusal is reported too.
        let t1 = t0 + Duration::from_secs(120);
        assert!(gate.admit("auth.refused", t1, 121_000));
        for _ in 0..5 {
            gate.admit("auth.refused", t1, 121_000);
        }
        assert!(gate.admit("auth.refused", t1 + Duration::from_secs(60), 181_000));
        assert_eq!(gate.take_all(200_000).len(), 1);
        assert_eq!(
            gate.totals(),
            vec![
                ("agent.enroll_refused".to_string(), 1, 0),
                ("auth.refused".to_string(), 107, 100)
            ]
        );
    }
}
