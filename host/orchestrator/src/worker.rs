//! The built-in local worker: claims queued jobs with a lease, checks once more that each has
//! the approvals its level needs and that the artifact is the one decided on, runs it through
//! the runtime for this host, and records the result. The remote agent (next stage) speaks the
//! same claim / finish protocol.

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
    loaded: Mutex<HashMap<String, Arc<LoadedSkill>>>,
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
    ) -> Worker {
        Worker {
            db,
            catalog,
            runtime,
            owner,
            notify,
            metrics,
            loaded: Mutex::default(),
        }
    }

    /// Compile (or fetch from the precompile cache) and link a resolved skill, once per digest.
    /// Called when an invocation is accepted, so that running it compiles nothing.
    pub async fn prepare(&self, skill: &Resolved) -> Result<Arc<LoadedSkill>, String> {
        if let Some(l) = self
            .loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&skill.digest)
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
            let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            runtime
                .load_admitted(&bytes, Some(manifest), provenance)
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())??;
        let loaded = Arc::new(loaded);
        self.loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(skill.digest.clone(), loaded.clone());
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
            match invocation::claim(&self.db, &self.owner, lease, invocation::Queue::Local).await {
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
                (
                    false,
                    serde_json::json!({ "error": why }),
                    serde_json::json!({ "error": why }),
                )
            }
        };
        let outcome = summary["outcome"].as_str().unwrap_or("refused").to_string();
        if let Err(e) =
            invocation::finish(&self.db, &inv.id, &self.owner, ok, &result, summary).await
        {
            tracing::error!(error = %e, "recording a job result failed");
        }
        self.metrics
            .job_finished(&outcome, inv.level, started.elapsed());
    }

    async fn execute(&self, inv: &Invocation) -> Result<tend_runtime::ExecutionReport, String> {
        // The invariant, checked where it matters: nothing runs without its approvals.
        if !invocation::sufficiently_approved(&self.db, inv)
            .await
            .map_err(|e| e.to_string())?
        {
            return Err(format!(
                "refused at run time: invocation {} lacks the {} valid approvals its level needs",
                inv.id, inv.approvals_required
            ));
        }
        let skill = self
            .catalog
            .resolve(&inv.skill, Some(&inv.version))
            .await
            .map_err(|e| e.to_string())?;
        if skill.digest != inv.digest {
            return Err(format!(
                "refused at run time: {} {} is now {}, not the {} that was decided on",
                inv.skill, inv.version, skill.digest, inv.digest
            ));
        }
        let loaded = self.prepare(&skill).await?;
        self.runtime
            .invoke(
                &loaded,
                Export::Run,
                &inv.input.to_string(),
                &LimitOverrides::default(),
            )
            .await
            .map_err(|e| e.to_string())
    }
}
