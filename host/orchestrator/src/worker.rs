//! The built-in local worker: claims queued jobs with a lease, admits each with
//! [`tend_policy::admit`] — the level recomputed from the verified manifest and this target's
//! floor, the approvals that level needs bound to the invocation digest recomputed here, the
//! target's ceiling — never from what the database row says, runs it through the runtime for
//! this host, and records the result (a refusal, with its reason, in the result and the audit).
//! Approvals count only when signed by an approver key in the orchestrator's own trust policy
//! (`[[approvers]]`), exactly as on an agent ([`tend_protocol::admit_job`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tend_runtime::{Export, LimitOverrides, LoadedSkill, Outcome, Provenance, Runtime};
use tokio::sync::{Notify, watch};

use crate::db::Db;
use crate::invocation::{self, Invocation};
use crate::metrics::Metrics;
use crate::skills::{Catalog, Resolved};

pub struct Worker {
    pub db: Db,
    pub catalog: Arc<Catalog>,
    pub runtime: Runtime,
    pub owner: String,
    pub notify: Arc<Notify>,
    pub metrics: Arc<Metrics>,
    /// This host as a target: its environment floor and ceiling apply at admission.
    pub target: tend_policy::Target,
    /// The approver keys of this host's trust policy: only their signatures count.
    approvers: Vec<tend_protocol::TrustedApprover>,
    /// The approved repairs that ran here (by invocation digest, in the data dir).
    ran: Option<tend_protocol::RanOnce>,
    /// Loaded skills by (component digest, signed manifest digest): the same bytes under
    /// another manifest are another skill, with other grants.
    loaded: Mutex<HashMap<(String, String), Arc<LoadedSkill>>>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

/// How long a claim holds before another worker may treat the job as abandoned, beyond the
/// skill's own timeout.
const LEASE_SLACK_MS: i64 = 30_000;

impl Worker {
    pub fn new(
        db: Db,
        catalog: Arc<Catalog>,
        runtime: Runtime,
        owner: String,
        notify: Arc<Notify>,
        metrics: Arc<Metrics>,
        target: tend_policy::Target,
    ) -> Worker {
        Worker {
            db,
            catalog,
            runtime,
            owner,
            notify,
            metrics,
            target,
            approvers: Vec::new(),
            ran: None,
            loaded: Mutex::default(),
        }
    }

    /// Count approvals signed by these keys (and no others), and run each approved repair
    /// once, remembering which in `ran`.
    pub fn with_approvers(
        mut self,
        approvers: Vec<tend_protocol::TrustedApprover>,
        ran: tend_protocol::RanOnce,
    ) -> Worker {
        self.approvers = approvers;
        self.ran = Some(ran);
        self
    }

    /// Compile (or fetch from the precompile cache) and link a resolved skill, once per
    /// (component, signed manifest) pair. Called when an invocation is accepted, so that
    /// running it compiles nothing.
    pub async fn prepare(&self, skill: &Resolved) -> Result<Arc<LoadedSkill>, RunError> {
        let key = (skill.digest.clone(), skill.manifest_digest.clone());
        if let Some(l) = self
            .loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(l.clone());
        }
        let runtime = self.runtime.clone();
        let path = skill.component.clone();
        let manifest = skill.manifest.clone();
        let provenance = Provenance::Signed {
            publisher: skill.publisher.clone(),
            key_id: skill.key_id.clone(),
            digest: skill.digest.clone(),
        };
        let loaded = tokio::task::spawn_blocking(move || {
            let bytes = std::fs::read(&path).map_err(|source| RunError::Read { path, source })?;
            Ok::<_, RunError>(runtime.load_admitted(&bytes, Some(manifest), provenance)?)
        })
        .await
        .map_err(|e| RunError::Task(e.to_string()))??;
        let loaded = Arc::new(loaded);
        self.loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, loaded.clone());
        Ok(loaded)
    }

    /// Run `concurrency` claim loops until `shutdown` turns true; each finishes the job it
    /// holds before it stops.
    pub async fn run(self: Arc<Self>, concurrency: usize, shutdown: watch::Receiver<bool>) {
        let mut tasks = Vec::new();
        for _ in 0..concurrency.max(1) {
            let me = self.clone();
            let shutdown = shutdown.clone();
            tasks.push(tokio::spawn(async move { me.claim_loop(shutdown).await }));
        }
        for t in tasks {
            let _ = t.await;
        }
    }

    async fn claim_loop(&self, mut shutdown: watch::Receiver<bool>) {
        while !*shutdown.borrow() {
            let lease = LEASE_SLACK_MS + tend_runtime::HOST_MAXIMA.timeout_ms as i64;
            match invocation::claim(
                &self.db,
                &self.owner,
                lease,
                invocation::Queue::Local(&self.target.name),
            )
            .await
            {
                Ok(Some(inv)) => {
                    let span = tracing::info_span!("job", invocation = %inv.id, skill = %inv.skill);
                    tracing::Instrument::instrument(self.run_job(inv), span).await
                }
                Ok(None) => {
                    tokio::select! {
                        () = self.notify.notified() => {}
                        () = tokio::time::sleep(Duration::from_millis(100)) => {}
                        _ = shutdown.changed() => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "claiming a job failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    async fn run_job(&self, inv: Invocation) {
        let started = Instant::now();
        let (ok, result, summary) = match self.execute(&inv).await {
            Ok(report) => {
                let ok = report.outcome == Outcome::Ok;
                let summary = serde_json::json!({
                    "outcome": report.outcome.to_string(), "duration_us": report.duration_us,
                    "fuel_consumed": report.fuel_consumed,
                });
                (
                    ok,
                    serde_json::to_value(&report).unwrap_or_default(),
                    summary,
                )
            }
            Err(why) => {
                tracing::warn!(%why, "job refused or failed before running");
                let why = why.to_string();
                (
                    false,
                    serde_json::json!({ "error": why }),
                    serde_json::json!({ "error": why }),
                )
            }
        };
        let outcome = summary["outcome"].as_str().unwrap_or("refused").to_string();
        let outcome_of_job = invocation::JobOutcome {
            succeeded: ok,
            result: &result,
            detail: summary,
            refused: false,
        };
        let runner = invocation::Runner::Worker(&self.owner);
        if let Err(e) = invocation::record_result(&self.db, &inv.id, runner, outcome_of_job).await {
            tracing::error!(error = %e, "recording a job result failed");
        }
        self.metrics
            .job_finished(&outcome, inv.level, started.elapsed());
    }

    async fn execute(&self, inv: &Invocation) -> Result<tend_runtime::ExecutionReport, RunError> {
        let skill = self
            .catalog
            .resolve(&inv.skill, Some(&inv.version))
            .await
            .map_err(RunError::Resolve)?;
        if skill.digest != inv.digest {
            return Err(RunError::OtherDigest {
                skill: inv.skill.clone(),
                version: inv.version.clone(),
                now: skill.digest.clone(),
                decided: inv.digest.clone(),
            });
        }
        // The invariant, checked where it matters: admitted from the verified manifest, the
        // narrowing re-applied to it, approvals signed by keys this host trusts, and this
        // target — not from the row's level, approvals_required, grants or trigger.
        let (_, expires_ms) = invocation::kind_and_expiry(&self.db, &inv.id).await?;
        let (narrowed, admitted) = tend_protocol::admit_job(
            tend_protocol::Runner::Worker {
                target: &self.target.name,
            },
            inv,
            expires_ms,
            tend_protocol::VerifiedSkill {
                manifest: &skill.manifest,
                manifest_digest: &skill.manifest_digest,
                digest: &skill.digest,
                key_id: &skill.key_id,
            },
            &self.approvers,
            &tend_policy::admit::Local {
                name: &format!("target {}", self.target.name),
                environment: &self.target.environment,
                floor: self.target.floor,
                ceiling: self.target.ceiling,
            },
            // Healing acts on enrolled agents only: nothing runs here without its approvals.
            &[],
            crate::db::now_ms(),
        )
        .map_err(RunError::Refused)?;
        tracing::info!(level = %admitted.level, approvers = ?admitted.approvers, "admitted");
        // An approved repair runs once here, whatever is queued again.
        if admitted.approvals_required > 0
            && inv.export == "run"
            && skill.manifest.skill.kind == tend_manifest::SkillKind::Repair
        {
            let ran = self.ran.as_ref().ok_or_else(|| {
                RunError::Task("this worker keeps no record of the repairs it ran".into())
            })?;
            ran.claim(&inv.invocation_digest, expires_ms)
                .map_err(RunError::Ran)?;
        }
        let loaded = self.prepare(&skill).await?;
        self.runtime
            .invoke_narrowed(
                &loaded,
                if inv.export == "plan" {
                    Export::Plan
                } else {
                    Export::Run
                },
                &inv.input.to_string(),
                &LimitOverrides::default(),
                Some(&narrowed),
            )
            .await
            .map_err(RunError::Invoke)
    }
}

/// Why the worker did not run a job; its text is recorded as the job's error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("refused at run time: {0}")]
    Resolve(crate::skills::ResolveError),
    #[error(
        "refused at run time: {skill} {version} is now {now}, not the {decided} that was decided on"
    )]
    OtherDigest {
        skill: String,
        version: String,
        now: String,
        decided: String,
    },
    #[error("refused at run time: {0}")]
    Refused(tend_protocol::AdmitError),
    #[error("refused at run time: {0}")]
    Ran(tend_protocol::RanError),
    #[error(transparent)]
    Flow(#[from] invocation::FlowError),
    #[error("{}: {source}", path.display())]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Load(#[from] tend_runtime::LoadError),
    #[error("{0}")]
    Task(String),
    #[error(transparent)]
    Invoke(tend_runtime::InvokeError),
}
