//! Agents as the orchestrator knows them: enrollment (with single-use or counted, expiring
//! enroll tokens), signed-request verification with replay protection, health, dispatch of
//! pool jobs to the healthiest online agent, and the job protocol (claim, start, renew,
//! release, result).

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use sha2::{Digest, Sha256};
use sqlx::Row;
use sqlx::any::AnyRow;
use tend_registry::keys::PublicKey;

use crate::audit::{self, Action};
use crate::db::{Db, DbError, now_ms, random_id, rfc3339};
use crate::invocation::{
    self, Audit, FlowError, Guard, JobOutcome, Runner, Set, State, Target, Transition,
};
use crate::protocol::{AgentView, Ceiling, Enroll, Heartbeat, JobResult, MAX_SKEW_MS};

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// An enrolled agent, as stored.
#[derive(Debug, Clone)]
pub struct Agent {
    pub id: String,
    pub name: String,
    pub hostname: String,
    pub os: String,
    pub arch: String,
    pub labels: BTreeMap<String, String>,
    pub pools: Vec<String>,
    pub public_key: String,
    pub ceiling: Ceiling,
    pub last_seen_ms: i64,
    pub heartbeat_ms: i64,
    pub running: i64,
    pub capacity: i64,
    pub jobs_ok: i64,
    pub jobs_failed: i64,
}

fn agent_from_row(r: &AnyRow) -> Result<Agent, DbError> {
    let labels: String = r.try_get("labels")?;
    let pools: String = r.try_get("pools")?;
    let ceiling: String = r.try_get("ceiling")?;
    Ok(Agent {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        hostname: r.try_get("hostname")?,
        os: r.try_get("os")?,
        arch: r.try_get("arch")?,
        labels: serde_json::from_str(&labels).unwrap_or_default(),
        pools: serde_json::from_str(&pools).unwrap_or_default(),
        public_key: r.try_get("public_key")?,
        ceiling: serde_json::from_str(&ceiling).unwrap_or_default(),
        last_seen_ms: r.try_get("last_seen_ms")?,
        heartbeat_ms: r.try_get("heartbeat_ms")?,
        running: r.try_get("running")?,
        capacity: r.try_get("capacity")?,
        jobs_ok: r.try_get("jobs_ok")?,
        jobs_failed: r.try_get("jobs_failed")?,
    })
}

/// online / degraded / offline and a 0-100 health score.
pub fn health(agent: &Agent, now: i64, offline_after: Duration) -> (&'static str, u8) {
    let age = (now - agent.last_seen_ms).max(0) as f64;
    let beat = agent.heartbeat_ms.max(1) as f64;
    let offline = offline_after.as_millis() as f64;
    let state = if age > offline {
        "offline"
    } else if age > 2.0 * beat {
        "degraded"
    } else {
        "online"
    };
    let fresh = if age <= 1.5 * beat {
        1.0
    } else {
        (1.0 - (age - 1.5 * beat) / (offline - 1.5 * beat).max(1.0)).clamp(0.0, 1.0)
    };
    let total = (agent.jobs_ok + agent.jobs_failed) as f64;
    let success = if total == 0.0 {
        1.0
    } else {
        agent.jobs_ok as f64 / total
    };
    (state, (70.0 * fresh + 30.0 * success).round() as u8)
}

pub fn view(agent: &Agent, offline_after: Duration) -> AgentView {
    let (state, score) = health(agent, now_ms(), offline_after);
    AgentView {
        id: agent.id.clone(),
        name: agent.name.clone(),
        hostname: agent.hostname.clone(),
        os: agent.os.clone(),
        arch: agent.arch.clone(),
        labels: agent.labels.clone(),
        pools: agent.pools.clone(),
        ceiling: agent.ceiling.clone(),
        state: state.to_string(),
        health: score,
        last_seen: rfc3339(agent.last_seen_ms),
        running: agent.running as u32,
        capacity: agent.capacity as u32,
        jobs_ok: agent.jobs_ok as u64,
        jobs_failed: agent.jobs_failed as u64,
    }
}

pub async fn list(db: &Db) -> Result<Vec<Agent>, DbError> {
    let rows = sqlx::query("SELECT * FROM agents ORDER BY name")
        .fetch_all(&db.pool)
        .await?;
    rows.iter().map(agent_from_row).collect()
}

/// The agents a target names: `pool:NAME` (and `all:pool:NAME`) its pool's members,
/// `agent:NAME` that agent (by name or id); `None` when it names none (or is not such a target).
pub fn members<'a>(all: &'a [Agent], target: &str) -> Option<Vec<&'a Agent>> {
    let target = target.strip_prefix("all:").unwrap_or(target);
    let (kind, name) = target.split_once(':')?;
    let members: Vec<&Agent> = all
        .iter()
        .filter(|a| match kind {
            "pool" => a.pools.iter().any(|p| p == name),
            "agent" => a.name == name || a.id == name,
            _ => false,
        })
        .collect();
    (!members.is_empty()).then_some(members)
}

pub async fn get(db: &Db, id: &str) -> Result<Option<Agent>, DbError> {
    let row = sqlx::query("SELECT * FROM agents WHERE id = $1")
        .bind(id)
        .fetch_optional(&db.pool)
        .await?;
    row.as_ref().map(agent_from_row).transpose()
}

/// What an enroll token lets an agent claim, decided by the admin who creates it: the pools it
/// may serve, the labels it gets (`env` sets the policy floor) and the highest ceiling level it
/// may declare. An agent cannot place itself anywhere else.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenScope {
    pub pools: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub max_level: u8,
}

impl TokenScope {
    pub fn check(&self) -> Result<(), crate::protocol::FieldError> {
        crate::protocol::check_pools(&self.pools)?;
        crate::protocol::check_labels(&self.labels)?;
        if self.max_level > 3 {
            return Err(crate::protocol::FieldError {
                field: "max_level".into(),
                why: "is 0 to 3".into(),
            });
        }
        Ok(())
    }

    /// Where an enrollment lands, or why it asks for more than this token allows. Pools: the
    /// ones asked for, each one the token names (all of the token's if none are asked for).
    /// Labels: always the token's; asking for a different value is refused. Level: at most
    /// the token's.
    pub fn place(&self, req: &Enroll) -> Result<(Vec<String>, BTreeMap<String, String>), String> {
        if req.ceiling.max_level > self.max_level {
            return Err(format!(
                "ceiling max_level {} is above the L{} this enroll token allows",
                req.ceiling.max_level, self.max_level
            ));
        }
        if let Some(p) = req.pools.iter().find(|p| !self.pools.contains(p)) {
            return Err(format!(
                "pool {p:?} is not one this enroll token allows (allowed: {:?})",
                self.pools
            ));
        }
        if let Some((k, v)) = req
            .labels
            .iter()
            .find(|(k, v)| self.labels.get(*k) != Some(*v))
        {
            return Err(format!(
                "label {k}={v} is not one this enroll token gives (it gives: {:?})",
                self.labels
            ));
        }
        let pools = if req.pools.is_empty() {
            self.pools.clone()
        } else {
            let mut p = req.pools.clone();
            p.sort();
            p.dedup();
            p
        };
        Ok((pools, self.labels.clone()))
    }
}

/// A new enroll token: usable `uses` times until `ttl` has passed, placing agents within
/// `scope`. Only its hash is stored.
pub async fn create_enroll_token(
    db: &Db,
    uses: u32,
    ttl: Duration,
    scope: &TokenScope,
    by: &str,
) -> Result<String, DbError> {
    let mut prefix = [0u8; 6];
    let mut secret = [0u8; 24];
    let _ = getrandom::fill(&mut prefix);
    let _ = getrandom::fill(&mut secret);
    let prefix = hex::encode(prefix);
    let token = format!("tendenroll_{prefix}_{}", B64URL.encode(secret));
    let expires = now_ms() + ttl.as_millis() as i64;
    let mut tx = db.begin_write().await?;
    sqlx::query(
        "INSERT INTO enroll_tokens (prefix, hash, uses_left, expires_ms, created_by, pools, labels, max_level) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&prefix)
    .bind(sha256_hex(&token))
    .bind(uses as i64)
    .bind(expires)
    .bind(by)
    .bind(serde_json::to_string(&scope.pools).unwrap_or_default())
    .bind(serde_json::to_string(&scope.labels).unwrap_or_default())
    .bind(i64::from(scope.max_level))
    .execute(&mut *tx)
    .await?;
    audit::append_tx(
        &mut tx,
        by,
        Action::EnrollTokenCreate,
        &prefix,
        serde_json::json!({
            "uses": uses, "expires_at": rfc3339(expires),
            "pools": scope.pools, "labels": scope.labels, "max_level": scope.max_level,
        }),
    )
    .await?;
    tx.commit().await?;
    Ok(token)
}

/// Enroll an agent with an enroll token (spending one use). The request's fields are bounded
/// ([`Enroll::check`]) before anything is stored; the name must be free; pools, labels and the
/// ceiling level must be within what the token allows.
pub async fn enroll(db: &Db, req: &Enroll) -> Result<crate::protocol::Enrolled, EnrollError> {
    let refused = |why: &str| FlowError::Forbidden(format!("enrollment refused: {why}"));
    req.check()?;
    let prefix = req
        .token
        .strip_prefix("tendenroll_")
        .and_then(|r| r.split_once('_'))
        .map(|(p, _)| p.to_string())
        .ok_or_else(|| refused("not an enroll token"))?;
    if req.public_key.parse::<PublicKey>().is_err() {
        return Err(FlowError::Conflict("public_key is not an ed25519:<base64> key".into()).into());
    }
    let mut tx = db.begin_write().await?;
    // Spend one use atomically: only a matching, unexpired token with uses left.
    let spent = sqlx::query(
        "UPDATE enroll_tokens SET uses_left = uses_left - 1 WHERE prefix = $1 AND hash = $2 AND uses_left > 0 AND expires_ms > $3",
    )
    .bind(&prefix)
    .bind(sha256_hex(&req.token))
    .bind(now_ms())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if spent != 1 {
        tx.rollback().await?;
        // Unauthenticated: recorded as `anonymous`; what it claimed is detail (bounded).
        audit::refused(
            db,
            Action::AgentEnrollRefused,
            "enroll",
            serde_json::json!({
                "why": "unknown, used-up or expired enroll token",
                "claimed_name": req.name, "claimed_hostname": req.hostname,
            }),
        )
        .await?;
        return Err(refused("the enroll token is unknown, used up or expired").into());
    }
    let row = sqlx::query("SELECT pools, labels, max_level FROM enroll_tokens WHERE prefix = $1")
        .bind(&prefix)
        .fetch_one(&mut *tx)
        .await?;
    let (pools, labels, max_level): (String, String, i64) =
        (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
    let scope = TokenScope {
        pools: serde_json::from_str(&pools).unwrap_or_default(),
        labels: serde_json::from_str(&labels).unwrap_or_default(),
        max_level: u8::try_from(max_level).unwrap_or(0).min(3),
    };
    let (pools, labels) = match scope.place(req) {
        Ok(placed) => placed,
        Err(why) => {
            // Nothing spent: the token stays usable for an enrollment within its scope.
            tx.rollback().await?;
            // Recorded under the token that was shown, never the name the caller chose
            // (which goes, checked and bounded, in the detail).
            audit::append(
                db,
                &format!("enroll-token:{prefix}"),
                Action::AgentEnrollRefused,
                "enroll",
                serde_json::json!({
                    "why": why, "claimed_name": req.name, "claimed_hostname": req.hostname,
                }),
            )
            .await?;
            return Err(refused(&why).into());
        }
    };
    let taken = sqlx::query("SELECT id FROM agents WHERE name = $1")
        .bind(&req.name)
        .fetch_optional(&mut *tx)
        .await?;
    if let Some(row) = taken {
        tx.rollback().await?;
        let id: String = row.try_get(0)?;
        return Err(name_taken(&req.name, &id).into());
    }
    let id = random_id("agent");
    let now = now_ms();
    let inserted = sqlx::query(
        "INSERT INTO agents (id, name, hostname, os, arch, labels, pools, public_key, ceiling, enrolled_ms, last_seen_ms, heartbeat_ms, running, capacity, jobs_ok, jobs_failed) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
    )
    .bind(&id)
    .bind(&req.name)
    .bind(&req.hostname)
    .bind(&req.os)
    .bind(&req.arch)
    .bind(serde_json::to_string(&labels).unwrap_or_default())
    .bind(serde_json::to_string(&pools).unwrap_or_default())
    .bind(&req.public_key)
    .bind(serde_json::to_string(&req.ceiling).unwrap_or_default())
    .bind(now)
    .bind(now)
    .bind(30_000i64)
    .bind(0i64)
    .bind(0i64)
    .bind(0i64)
    .bind(0i64)
    .execute(&mut *tx)
    .await;
    match inserted {
        Ok(_) => {}
        // Two enrollments of one name at once: the unique index lets only one in.
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            tx.rollback().await?;
            return Err(name_taken(&req.name, "another agent").into());
        }
        Err(e) => return Err(FlowError::from(e).into()),
    }
    audit::append_tx(
        &mut tx,
        &req.name,
        Action::AgentEnroll,
        &id,
        serde_json::json!({
            "hostname": req.hostname, "os": req.os, "arch": req.arch, "labels": labels,
            "pools": pools, "ceiling": req.ceiling, "public_key": req.public_key,
            "enroll_token": prefix,
        }),
    )
    .await?;
    tx.commit().await?;
    Ok(crate::protocol::Enrolled {
        agent_id: id,
        pools,
        labels,
    })
}

/// Why an enrollment was not taken.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// A field out of bounds (422): nothing was stored or spent.
    #[error("{0}")]
    Invalid(#[from] crate::protocol::FieldError),
    #[error(transparent)]
    Flow(#[from] FlowError),
}

impl From<DbError> for EnrollError {
    fn from(e: DbError) -> Self {
        EnrollError::Flow(e.into())
    }
}

impl From<sqlx::Error> for EnrollError {
    fn from(e: sqlx::Error) -> Self {
        EnrollError::Flow(e.into())
    }
}

fn name_taken(name: &str, id: &str) -> FlowError {
    FlowError::Conflict(format!(
        "an agent named {name:?} is already enrolled ({id}): agent names are unique; remove it first (DELETE /api/v1/agents/{{id}}) to enroll it again, or choose another --name"
    ))
}

/// Why a signed request was refused.
#[derive(Debug, thiserror::Error)]
pub enum SignedError {
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// The parts of a signed agent request.
#[derive(Debug)]
pub struct SignedRequest<'a> {
    pub agent_id: &'a str,
    pub timestamp: &'a str,
    pub nonce: &'a str,
    pub signature: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub body: &'a [u8],
}

/// Verify a signed agent request; returns the agent. Refuses unknown agents, bad signatures,
/// clock skew beyond the limit and replayed nonces (each refusal is audited by the caller).
pub async fn verify_request(db: &Db, req: &SignedRequest<'_>) -> Result<Agent, SignedError> {
    let SignedRequest {
        agent_id,
        timestamp,
        nonce,
        signature,
        method,
        path,
        body,
    } = *req;
    let refuse = |m: String| SignedError::Refused(m);
    let agent = get(db, agent_id)
        .await?
        .ok_or_else(|| refuse(format!("unknown agent {agent_id}")))?;
    let key: PublicKey = agent
        .public_key
        .parse()
        .map_err(|_| refuse("stored agent key is unreadable".into()))?;
    let ts = tend_protocol::verify_request(
        &key.0,
        method,
        path,
        timestamp,
        nonce,
        signature,
        body,
        now_ms(),
    )
    .map_err(|e| refuse(e.to_string()))?;
    let fresh =
        sqlx::query("INSERT INTO agent_nonces (nonce, agent_id, expires_ms) VALUES ($1, $2, $3)")
            .bind(nonce)
            .bind(&agent.id)
            .bind(ts + 2 * MAX_SKEW_MS)
            .execute(&db.pool)
            .await;
    if fresh.is_err() {
        return Err(refuse(format!(
            "nonce {nonce} was already used: a replayed request"
        )));
    }
    Ok(agent)
}

pub async fn heartbeat(db: &Db, agent: &Agent, hb: &Heartbeat) -> Result<(), DbError> {
    sqlx::query(
        "UPDATE agents SET last_seen_ms = $1, heartbeat_ms = $2, running = $3, capacity = $4 WHERE id = $5",
    )
    .bind(now_ms())
    .bind(hb.interval_ms.clamp(100, 3_600_000) as i64)
    .bind(hb.running as i64)
    .bind(hb.capacity as i64)
    .bind(&agent.id)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// Any signed request is also a sign of life.
pub async fn seen(db: &Db, agent: &Agent) -> Result<(), DbError> {
    sqlx::query("UPDATE agents SET last_seen_ms = $1 WHERE id = $2")
        .bind(now_ms())
        .bind(&agent.id)
        .execute(&db.pool)
        .await?;
    Ok(())
}

/// Assign queued `pool:` and `agent:` jobs that have no live agent to the healthiest online
/// agent that may take them. Returns how many were (re)assigned.
/// `only`: just this invocation (on submit), else every waiting one (housekeeping).
pub async fn dispatch(
    db: &Db,
    offline_after: Duration,
    only: Option<&str>,
) -> Result<usize, DbError> {
    let rows = match only {
        Some(id) => {
            sqlx::query(
                "SELECT id, target, level, assigned_agent, hosts FROM invocations WHERE id = $1 AND state = $2 AND target <> 'local'",
            )
            .bind(id)
            .bind(State::Queued.as_str())
            .fetch_all(&db.pool)
            .await?
        }
        None => {
            sqlx::query(
                "SELECT id, target, level, assigned_agent, hosts FROM invocations WHERE state = $1 AND target <> 'local' ORDER BY created_ms LIMIT 500",
            )
            .bind(State::Queued.as_str())
            .fetch_all(&db.pool)
            .await?
        }
    };
    if rows.is_empty() {
        return Ok(0);
    }
    let now = now_ms();
    let agents = list(db).await?;
    let live: Vec<(&Agent, u8)> = agents
        .iter()
        .filter_map(|a| {
            let (state, score) = health(a, now, offline_after);
            (state != "offline").then_some((a, score))
        })
        .collect();
    let mut n = 0;
    for r in rows {
        let id: String = r.try_get("id")?;
        let target: String = r.try_get("target")?;
        let level: i64 = r.try_get("level")?;
        let assigned: Option<String> = r.try_get("assigned_agent")?;
        if assigned
            .as_deref()
            .is_some_and(|a| live.iter().any(|(l, _)| l.id == a))
        {
            continue;
        }
        // A `pool:` invocation approved for one host (its bound host list) goes there only.
        let hosts: Vec<String> = r
            .try_get::<Option<String>, _>("hosts")?
            .and_then(|h| serde_json::from_str(&h).ok())
            .unwrap_or_default();
        let fits = |a: &Agent| {
            let named = match target.split_once(':') {
                Some(("pool", p)) => a.pools.iter().any(|x| x == p),
                Some(("agent", name)) => a.name == name || a.id == name,
                _ => false,
            };
            named
                && i64::from(a.ceiling.max_level) >= level
                && (hosts.is_empty() || hosts.contains(&a.name))
        };
        let best = live
            .iter()
            .filter(|(a, _)| fits(a))
            .max_by_key(|(a, score)| (*score, -(a.running)));
        let Some((agent, score)) = best else { continue };
        let assign = Transition {
            target: Target::Id(&id),
            from: &[(State::Queued, &[])],
            to: State::Queued,
            set: &[Set::AssignedTo(&agent.id)],
            audit: vec![Audit {
                actor: "tend",
                action: Action::InvocationAssign,
                detail: serde_json::json!({ "agent": agent.name, "agent_id": agent.id, "health": score, "previous": assigned }),
            }],
        };
        match invocation::apply(db, &assign).await {
            Ok(_) => n += 1,
            Err(FlowError::Db(e)) => return Err(e),
            // A conflict: claimed, cancelled or assigned meanwhile, so nothing to do.
            Err(_) => {}
        }
    }
    Ok(n)
}

/// Mark a claimed job as started (after the agent's own checks passed), while its lease holds:
/// a start after the lease ran out is refused, so the sweep can requeue a job that never started
/// without racing a holder that starts it.
pub async fn start(db: &Db, agent: &Agent, id: &str) -> Result<(), FlowError> {
    invocation::apply(
        db,
        &Transition::new(
            id,
            &[(
                State::Running,
                &[Guard::HeldBy(&agent.id), Guard::LeaseHoldsAt(now_ms())],
            )],
            State::Running,
            &[Set::StartedNow],
            vec![Audit {
                actor: &agent.name,
                action: Action::InvocationStarted,
                detail: serde_json::json!({ "agent_id": agent.id }),
            }],
        ),
    )
    .await?;
    Ok(())
}

/// Extend the lease on a job this agent holds (not audited: nothing changes but the time).
pub async fn renew(db: &Db, agent: &Agent, id: &str, lease_ms: i64) -> Result<i64, FlowError> {
    let until = now_ms() + lease_ms;
    invocation::apply(
        db,
        &Transition::new(
            id,
            &[(State::Running, &[Guard::HeldBy(&agent.id)])],
            State::Running,
            &[Set::LeaseUntil(until)],
            Vec::new(),
        ),
    )
    .await?;
    Ok(until)
}

/// Give back a claimed job that has not started (graceful shutdown).
pub async fn release(db: &Db, agent: &Agent, id: &str) -> Result<(), FlowError> {
    invocation::apply(
        db,
        &Transition::new(
            id,
            &[(
                State::Running,
                &[Guard::HeldBy(&agent.id), Guard::NotStarted],
            )],
            State::Queued,
            &[Set::NoLease, Set::UnassignedIfPool],
            vec![Audit {
                actor: &agent.name,
                action: Action::InvocationReleased,
                detail: serde_json::json!({ "why": "the agent is shutting down" }),
            }],
        ),
    )
    .await?;
    Ok(())
}

/// Record what an agent reports. Exactly once: the first report for a job held by this agent
/// (or a late one for a job marked `unknown`) is recorded, by the path every result takes
/// ([`invocation::record_result`]); a repeat is acknowledged and changes nothing.
pub async fn report(
    db: &Db,
    agent: &Agent,
    id: &str,
    result: &JobResult,
) -> Result<&'static str, FlowError> {
    let inv = invocation::get(db, id).await?;
    if matches!(inv.state, State::Succeeded | State::Failed) {
        return Ok("already recorded");
    }
    let (ok, body, refused) = match result.outcome.as_str() {
        "ran" => {
            let report = result.report.clone().unwrap_or_default();
            let ok = report["outcome"] == "ok";
            (ok, report, false)
        }
        "refused" => {
            let why = result
                .refusal
                .clone()
                .unwrap_or_else(|| "refused without a reason".into());
            (
                false,
                serde_json::json!({ "refused_by_agent": agent.name, "error": why }),
                true,
            )
        }
        other => {
            return Err(FlowError::Conflict(format!(
                "outcome {other:?} is neither ran nor refused"
            )));
        }
    };
    let detail = serde_json::json!({
        "agent": agent.name,
        "outcome": body.get("outcome").cloned().unwrap_or(serde_json::Value::Null),
        "refusal": result.refusal, "late": inv.state == State::Unknown,
    });
    invocation::record_result(
        db,
        id,
        Runner::Agent {
            id: &agent.id,
            name: &agent.name,
        },
        JobOutcome {
            succeeded: ok,
            result: &body,
            detail,
            refused,
        },
    )
    .await?;
    Ok("recorded")
}

/// Delete an agent; its queued and unstarted jobs go back to the queue.
pub async fn delete(db: &Db, id: &str, by: &str) -> Result<usize, FlowError> {
    let mut tx = db.begin_write().await?;
    let gone = sqlx::query("DELETE FROM agents WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if gone != 1 {
        tx.rollback().await?;
        return Err(FlowError::NotFound(format!("no agent {id}")));
    }
    // Its queued jobs and the ones it claimed but never started go back to the queue, for
    // any agent; `agent.delete` records how many.
    let jobs = sqlx::query(
        "SELECT id FROM invocations WHERE assigned_agent = $1 AND (state = $2 OR (state = $3 AND run_started_ms IS NULL))",
    )
    .bind(id)
    .bind(State::Queued.as_str())
    .bind(State::Running.as_str())
    .fetch_all(&mut *tx)
    .await?;
    let mut requeued = 0u64;
    for job in jobs {
        let job: String = job.try_get("id")?;
        let back = Transition {
            target: Target::Id(&job),
            from: &[
                (State::Queued, &[Guard::AssignedTo(id)]),
                (State::Running, &[Guard::AssignedTo(id), Guard::NotStarted]),
            ],
            to: State::Queued,
            set: &[Set::Unassigned, Set::NoLease],
            audit: Vec::new(),
        };
        match invocation::apply_in(&mut tx, &back).await {
            Ok(_) => requeued += 1,
            Err(FlowError::Conflict(_) | FlowError::NotFound(_)) => {}
            Err(e) => {
                tx.rollback().await?;
                return Err(e);
            }
        }
    }
    audit::append_tx(
        &mut tx,
        by,
        Action::AgentDelete,
        id,
        serde_json::json!({ "requeued_jobs": requeued }),
    )
    .await?;
    tx.commit().await?;
    Ok(requeued as usize)
}

/// Forget nonces too old to be accepted again anyway.
pub async fn sweep_nonces(db: &Db) -> Result<(), DbError> {
    sqlx::query("DELETE FROM agent_nonces WHERE expires_ms < $1")
        .bind(now_ms())
        .execute(&db.pool)
        .await?;
    Ok(())
}
