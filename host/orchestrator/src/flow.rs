//! The one submit flow. Every way of starting an invocation — the HTTP API, the CLI, an
//! Alertmanager webhook, the console, an MCP tool call, a schedule — calls [`submit`]:
//!
//! validate → resolve and verify the skill → check the input schema → decide → audit →
//! precompile → store → notify.
//!
//! It knows nothing of HTTP: it takes the services, the trigger, the caller and the request,
//! and returns the recorded [`Invocation`] or a typed [`SubmitError`] (the API turns that into
//! a status; another trigger into whatever it speaks). The trigger is recorded with the
//! invocation and in its audit event.

use serde::Deserialize;
use tend_policy::{Decision, Request};

use crate::api::AppState;
use crate::audit;
use crate::auth::Actor;
use crate::invocation::{self, FlowError, Invocation, NewInvocation, State};
use crate::skills::ResolveError;

/// What started an invocation. Recorded with it and in the audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A request to the HTTP API.
    Api,
    /// The `tend` command line.
    Cli,
    /// An Alertmanager webhook (an incident).
    Webhook,
    /// The web console.
    Console,
    /// An MCP tool call.
    Mcp,
    /// A schedule.
    Schedule,
}

impl Trigger {
    pub const ALL: [Trigger; 6] = [
        Trigger::Api,
        Trigger::Cli,
        Trigger::Webhook,
        Trigger::Console,
        Trigger::Mcp,
        Trigger::Schedule,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Api => "api",
            Trigger::Cli => "cli",
            Trigger::Webhook => "webhook",
            Trigger::Console => "console",
            Trigger::Mcp => "mcp",
            Trigger::Schedule => "schedule",
        }
    }

    pub fn parse(s: &str) -> Option<Trigger> {
        Trigger::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// What the healing loop adds to a submission for an incident: the policy it acts under.
#[derive(Debug, Clone)]
pub struct Healing {
    pub policy: String,
    /// The policy has `auto_heal` and the target allows it for this skill: an L1 repair runs
    /// without a person (after its plan, for the record).
    pub auto_heal: bool,
    /// The policy's `dry_run`: only the repair's plan runs; nothing is applied.
    pub dry_run: bool,
}

/// How the policy sees who asked: a person (whatever the trigger), or a healing policy.
fn policy_trigger(healing: Option<&Healing>) -> tend_policy::Trigger {
    match healing {
        Some(h) => tend_policy::Trigger::Healing {
            policy: h.policy.clone(),
            auto_heal: h.auto_heal,
        },
        None => tend_policy::Trigger::Human,
    }
}

/// A request to run a skill.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Submission {
    pub skill: String,
    #[serde(default)]
    pub version: Option<String>,
    /// `local` (this host), `pool:NAME`, `agent:NAME` or `all:pool:NAME` (every online agent
    /// of the pool); default `local`.
    #[serde(default)]
    pub target: Option<String>,
    #[serde(default = "empty_object")]
    #[schema(value_type = Object)]
    pub input: serde_json::Value,
    /// Why this invocation is wanted (recorded in the audit trail).
    pub reason: String,
    /// Less than the skill's signed manifest grants, for this invocation only: path grants
    /// narrowed to subdirectories, lower limits. Widening is refused.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub narrowing: tend_manifest::Narrowing,
}

fn empty_object() -> serde_json::Value {
    serde_json::json!({})
}

/// Largest stored invocation input (bytes of JSON text).
pub const MAX_INPUT: usize = 64 * 1024;
/// Longest `reason` and reject `comment` (bytes).
pub const MAX_REASON: usize = 1024;
/// Longest target name (`pool:NAME`, `agent:NAME`).
pub const MAX_TARGET: usize = 160;
/// Longest `version`.
pub const MAX_VERSION: usize = 64;

/// Why a submission was not recorded. Nothing is stored for any of these but `Denied` and
/// `NoAgentCanRun`, which are audited.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("{0}")]
    BadRequest(String),
    #[error("`input` is {0} bytes of JSON; at most {MAX_INPUT} are accepted")]
    InputTooLarge(usize),
    #[error("`{field}` is {len} bytes; at most {max} are accepted")]
    FieldTooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("`target` {0:?} may only hold letters, digits and - _ . : @")]
    InvalidTarget(String),
    #[error("{0}")]
    UnknownTarget(String),
    #[error("{0}")]
    UnknownSkill(String),
    #[error("{0}")]
    NotTrusted(String),
    #[error("{0}")]
    Registry(String),
    #[error("{0}")]
    InvalidInput(String),
    /// The narrowing would widen what the signed manifest grants.
    #[error("{0}")]
    Widens(#[from] tend_manifest::NarrowError),
    /// No agent of the target would accept it (each is named with why, in `reasons`).
    #[error("no agent of {target} would run {skill}: {}", reasons.join("; "))]
    NoAgentCanRun {
        target: String,
        skill: String,
        reasons: Vec<String>,
    },
    #[error("refused by policy: {why}")]
    Denied { why: String, reasons: Vec<String> },
    /// A run across a pool would cover more hosts than its level allows at once.
    #[error(
        "{target} has {hosts} online agents, but an {level} invocation runs on at most {cap} at once (the blast radius, `--blast-radius` on the orchestrator): target fewer hosts (pool:NAME or agent:NAME) or ask an admin to raise it"
    )]
    BlastRadius {
        target: String,
        hosts: usize,
        level: tend_policy::Level,
        cap: usize,
    },
    #[error(transparent)]
    Flow(#[from] FlowError),
}

impl From<crate::db::DbError> for SubmitError {
    fn from(e: crate::db::DbError) -> Self {
        SubmitError::Flow(FlowError::Db(e))
    }
}

/// Submit an invocation for `caller`, started by `trigger`: the whole flow, in order.
pub async fn submit(
    services: &AppState,
    trigger: Trigger,
    caller: &Actor,
    request: Submission,
) -> Result<Invocation, SubmitError> {
    submit_under(services, trigger, caller, request, None).await
}

/// [`submit`], for the healing loop: under a healing policy (its `auto_heal` and `dry_run`).
/// A repair always runs its plan first here, so an incident's record shows what the repair
/// meant to do even when no person had to approve it.
pub async fn submit_under(
    services: &AppState,
    trigger: Trigger,
    caller: &Actor,
    request: Submission,
    healing: Option<&Healing>,
) -> Result<Invocation, SubmitError> {
    validate(&request)?;
    let target = request
        .target
        .clone()
        .unwrap_or_else(|| services.settings.target.name.clone());
    let (policy_target, mut hosts) = resolve_target(services, &target).await?;
    let skill = services
        .catalog
        .resolve(&request.skill, request.version.as_deref())
        .await
        .map_err(|e| match e {
            ResolveError::NotFound(m) => SubmitError::UnknownSkill(m),
            ResolveError::Untrusted(m) => SubmitError::NotTrusted(m),
            ResolveError::Registry(m) => SubmitError::Registry(m),
        })?;
    if let Some(schema) = &skill.input_schema {
        let errors: Vec<String> = schema
            .iter_errors(&request.input)
            .take(3)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        if !errors.is_empty() {
            return Err(SubmitError::InvalidInput(format!(
                "input does not match the input schema of {} {}: {}",
                skill.name,
                skill.version,
                errors.join("; ")
            )));
        }
    }
    let narrowed = skill.manifest.narrowed(&request.narrowing)?;
    let verdict = {
        let _span = tracing::info_span!("decide", skill = %skill.name).entered();
        tend_policy::decide(&Request {
            skill: skill.name.clone(),
            declared: narrowed.declared_level(),
            grants: narrowed.grants(),
            target: policy_target.clone(),
            trigger: policy_trigger(healing),
            requester: caller.name.clone(),
            role: caller.role,
        })
    };
    let (verdict, fitting) = crate::fit::refuse_early(
        services,
        trigger,
        caller,
        &target,
        &skill,
        &narrowed,
        &request.reason,
        verdict,
    )
    .await?;
    services.metrics.decision(match &verdict.decision {
        Decision::Allow => "allow",
        Decision::NeedsApproval { .. } => "needs_approval",
        Decision::Deny(_) => "deny",
    });
    if let Decision::Deny(why) = &verdict.decision {
        audit::append(
            &services.db,
            &caller.name,
            audit::Action::InvocationDenied,
            &skill.name,
            serde_json::json!({
                "skill": skill.name, "version": skill.version, "target": target,
                "reason": request.reason, "trigger": trigger.as_str(),
                "decision": verdict.explain(),
            }),
        )
        .await?;
        return Err(SubmitError::Denied {
            why: why.to_string(),
            reasons: verdict.explain(),
        });
    }
    // An approval of a `pool:` invocation is for one host, chosen now (the best agent that
    // would accept it) and bound into the digest, so the approver sees where it will run and
    // no copy of it can run on another member of the pool. Its plan runs on that host too.
    if target.starts_with("pool:")
        && matches!(verdict.decision, Decision::NeedsApproval { .. })
        && let Some(best) = fitting.first()
    {
        hosts = vec![best.clone()];
    }
    let cap = services.settings.blast_radius[u8::from(verdict.level) as usize];
    if hosts.len() > cap {
        let err = SubmitError::BlastRadius {
            target: target.clone(),
            hosts: hosts.len(),
            level: verdict.level,
            cap,
        };
        audit::append(
            &services.db,
            &caller.name,
            audit::Action::InvocationDenied,
            &skill.name,
            serde_json::json!({
                "skill": skill.name, "version": skill.version, "target": target,
                "reason": request.reason, "trigger": trigger.as_str(), "why": err.to_string(),
            }),
        )
        .await?;
        return Err(err);
    }
    // Compile (or load precompiled) now, off the request path, so the run compiles nothing.
    {
        let worker = services.worker.clone();
        let skill = skill.clone();
        tokio::spawn(async move {
            if let Err(e) = worker.prepare(&skill).await {
                tracing::warn!(skill = %skill.name, error = %e, "precompiling failed");
            }
        });
    }
    let ttl = services.settings.approval_ttl.as_millis() as i64;
    let new = |verdict, export, input, plan, planning| NewInvocation {
        skill: &skill,
        narrowed: &narrowed,
        narrowing: &request.narrowing,
        target: &target,
        hosts: hosts.clone(),
        input,
        reason: &request.reason,
        requester: caller,
        verdict,
        approval_ttl_ms: ttl,
        trigger,
        export,
        plan_for: None,
        plan,
        planning,
        healing: healing.map(|h| h.policy.as_str()),
    };
    let needs_approval = matches!(verdict.decision, Decision::NeedsApproval { .. });
    let repair = skill.manifest.skill.kind == tend_manifest::SkillKind::Repair;
    let dry_run = healing.is_some_and(|h| h.dry_run);
    if !(repair && (needs_approval || healing.is_some())) {
        let inv = invocation::create(
            &services.db,
            new(&verdict, "run", request.input.clone(), None, false),
        )
        .await?;
        notify(services, &inv).await;
        return Ok(inv);
    }
    // A repair that needs approval: its plan runs first, on the target, and is shown to the
    // approvers and bound into the digest. The plan job is decided as what it is — an
    // observation with the repair's grants read-only and no programs — and when even that
    // would need approval, the repair waits for approval with its plan marked as not run.
    if target.starts_with("all:") {
        // One plan per host is not shown yet: say so, and let the approver decide knowing it.
        let plan = tend_protocol::plan_not_run(&[format!(
            "a run across a pool ({target}) does not run its plan first yet: run the plan on one host with pool:NAME or agent:NAME to see it"
        )]);
        let inv = invocation::create(
            &services.db,
            new(&verdict, "run", request.input.clone(), Some(plan), false),
        )
        .await?;
        return Ok(inv);
    }
    let plan_verdict = {
        let _span = tracing::info_span!("decide", skill = %skill.name, export = "plan").entered();
        tend_policy::decide(&Request {
            skill: skill.name.clone(),
            declared: tend_policy::Level::L0,
            grants: narrowed.grants().for_plan(),
            target: policy_target.clone(),
            trigger: policy_trigger(healing),
            requester: caller.name.clone(),
            role: caller.role,
        })
    };
    if dry_run {
        // Plan only: the plan job alone, decided as what it is; nothing is applied.
        let plan_only = invocation::create(
            &services.db,
            new(&plan_verdict, "plan", request.input.clone(), None, false),
        )
        .await?;
        notify(services, &plan_only).await;
        return Ok(plan_only);
    }
    if plan_verdict.decision != Decision::Allow {
        let mut why = vec!["the plan would itself need approval to run here".to_string()];
        why.extend(plan_verdict.explain());
        let plan = tend_protocol::plan_not_run(&why);
        let inv = invocation::create(
            &services.db,
            new(&verdict, "run", request.input.clone(), Some(plan), false),
        )
        .await?;
        return Ok(inv);
    }
    let (repair, plan_job) = invocation::create_planned(
        &services.db,
        new(&verdict, "run", request.input.clone(), None, true),
        new(&plan_verdict, "plan", request.input.clone(), None, false),
    )
    .await?;
    notify(services, &plan_job).await;
    Ok(repair)
}

/// Wake whoever runs a queued invocation: the local worker, or the agents of its target.
async fn notify(services: &AppState, inv: &Invocation) {
    // Queued, or running as the parts of a run across a pool, each queued for its host.
    if matches!(inv.state, State::Queued | State::Running) {
        if inv.target == services.settings.target.name {
            services.notify.notify_waiters();
        } else {
            services.kick_agents_for(Some(&inv.id)).await;
        }
    }
}

/// Everything checkable without I/O, before anything is resolved or written: every stored
/// field is bounded, and the name and version are well-formed.
fn validate(req: &Submission) -> Result<(), SubmitError> {
    let input = req.input.to_string().len();
    if input > MAX_INPUT {
        return Err(SubmitError::InputTooLarge(input));
    }
    let too_long = |field, len, max| SubmitError::FieldTooLong { field, len, max };
    if req.reason.len() > MAX_REASON {
        return Err(too_long("reason", req.reason.len(), MAX_REASON));
    }
    if let Some(v) = &req.version
        && v.len() > MAX_VERSION
    {
        return Err(too_long("version", v.len(), MAX_VERSION));
    }
    if let Some(t) = &req.target {
        if t.len() > MAX_TARGET {
            return Err(too_long("target", t.len(), MAX_TARGET));
        }
        let allowed = |c: char| c.is_ascii_alphanumeric() || "-_.:@".contains(c);
        if t.is_empty() || !t.chars().all(allowed) {
            return Err(SubmitError::InvalidTarget(audit::safe_field(t, 64)));
        }
    }
    tend_manifest::SkillName::parse(&req.skill)
        .map_err(|e| SubmitError::BadRequest(format!("`skill`: {e}")))?;
    if let Some(v) = &req.version
        && semver::Version::parse(v).is_err()
    {
        return Err(SubmitError::BadRequest(format!(
            "`version` {v:?} is not a semantic version"
        )));
    }
    // The reason is shown to approvers next to what they sign: one line of text, nothing a
    // terminal would act on.
    if let Some((at, c)) = req.reason.char_indices().find(|(_, c)| c.is_control()) {
        return Err(SubmitError::BadRequest(format!(
            "`reason` must be one line of text: it has a control character (U+{:04X}) at byte {at}",
            c as u32
        )));
    }
    if req.reason.trim().is_empty() {
        return Err(SubmitError::BadRequest(
            "`reason` must say why this invocation is wanted".into(),
        ));
    }
    Ok(())
}

/// The policy's view of a target — `local`, `pool:NAME`, `agent:NAME` or `all:pool:NAME` —
/// and, for a run across a pool, its hosts: the names of the pool's online agents, sorted.
async fn resolve_target(
    services: &AppState,
    target: &str,
) -> Result<(tend_policy::Target, Vec<String>), SubmitError> {
    let settings = &services.settings;
    if target == settings.target.name {
        return Ok((settings.target.clone(), Vec::new()));
    }
    let unknown = || {
        SubmitError::UnknownTarget(format!(
            "no target {target:?}: use {:?} (this host), pool:NAME, all:pool:NAME (every online agent of the pool) or agent:NAME of an enrolled agent",
            settings.target.name
        ))
    };
    let (all, rest) = match target.strip_prefix("all:") {
        Some(rest) if rest.starts_with("pool:") => (true, rest),
        Some(_) => return Err(unknown()),
        None => (false, target),
    };
    let name = rest.split_once(':').ok_or_else(unknown)?.1;
    let agents = crate::agents::list(&services.db).await?;
    let mut members = crate::agents::members(&agents, target).ok_or_else(unknown)?;
    let mut hosts = Vec::new();
    if all {
        let now = crate::db::now_ms();
        let enrolled = members.len();
        members.retain(|a| crate::agents::health(a, now, settings.offline_after).0 != "offline");
        if members.is_empty() {
            return Err(SubmitError::UnknownTarget(format!(
                "none of the {enrolled} agents of pool {name} is online: a run across a pool runs on the agents online when it is asked for"
            )));
        }
        hosts = members.iter().map(|a| a.name.clone()).collect();
        hosts.sort();
    }
    let floor_of = |a: &crate::agents::Agent| {
        a.labels
            .get("env")
            .and_then(|e| settings.env_floors.get(e))
            .copied()
            .unwrap_or(tend_policy::Level::L0)
    };
    let floor = members
        .iter()
        .map(|a| floor_of(a))
        .max()
        .unwrap_or(tend_policy::Level::L0);
    // The most any member would accept (each agent still enforces its own ceiling); for a run
    // across a pool, every host must accept it: the least of them.
    let ceilings = members
        .iter()
        .filter_map(|a| tend_policy::Level::try_from(a.ceiling.max_level).ok());
    let ceiling =
        if all { ceilings.min() } else { ceilings.max() }.unwrap_or(tend_policy::Level::L0);
    let environment = members
        .iter()
        .find_map(|a| a.labels.get("env").cloned())
        .unwrap_or_else(|| "default".into());
    Ok((
        tend_policy::Target {
            name: target.to_string(),
            environment,
            floor,
            ceiling,
        },
        hosts,
    ))
}
