//! # tend-orchestrator — the decision, approval and job stage
//!
//! Takes an invocation request (`skill@version`, target, input, reason) from an authenticated
//! caller; resolves the skill through the registry and verifies it against its own trust
//! policy; checks the input against the skill's schema; asks [`tend_policy::decide`]; and
//! either queues a job, opens a pending approval bound to the invocation digest, or refuses
//! with reasons. Jobs are claimed with a lease by the built-in local worker (the remote agent
//! uses the same protocol) and run through the runtime; every decision, approval, state change
//! and refused token is appended to a hash-chained audit trail.
//!
//! - [`db`]: sqlx `Any` — SQLite (WAL) by default, PostgreSQL with the same queries.
//! - [`auth`]: bearer tokens with roles, expiry, revocation and rotation; only hashes are
//!   stored. [`token_api`]: the admin routes for them.
//! - [`skills`]: registry resolution with a verified in-memory cache.
//! - [`invocation`]: the state machine, approvals, claims.
//! - [`worker`]: the local worker.
//! - [`audit`]: the hash chain and its verification.
//! - [`flow`]: the one submit flow every trigger calls.
//! - [`healing`]: healing policies; [`heal`]: the healing loop; [`analysis`]: which repair it
//!   submits (the policy's rules, or an LLM choosing among the policy's repairs).
//! - [`api`] + [`agent_api`]: the axum routes, thin; [`extract`]: who is asking (callers with
//!   roles, signed agents); [`metrics`]: `/metrics`.

pub mod agent_api;
pub mod agents;
pub mod analysis;
pub mod api;
pub mod approvers;
pub mod audit;
pub mod auth;
pub mod console;
pub mod db;
pub mod extract;
pub mod fit;
pub mod flow;
pub mod heal;
pub mod healing;
pub mod incidents;
pub mod invocation;
pub mod metrics;
pub mod notify;
pub mod token_api;
pub use tend_protocol as protocol;

// The protocol's report bound is the runtime's, exactly: a report the runtime can make always
// fits an agent's result, and the agent never has to replace one the orchestrator would take.
const _: () = assert!(tend_protocol::MAX_REPORT_BYTES == tend_runtime::MAX_REPORT_JSON_BYTES);
pub mod skills;
pub mod worker;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tend_registry::client::RegistryClient;
use tend_registry::local::LocalStore;
use tend_registry::trust::TrustPolicy;
use tend_runtime::{Runtime, RuntimeConfig};
use tokio::sync::{Notify, watch};

pub use db::Db;

/// How to run an orchestrator.
#[derive(Debug, Clone)]
pub struct Config {
    pub database_url: String,
    pub registry_url: String,
    pub registry_token: Option<String>,
    pub trust: TrustPolicy,
    /// Where pulled skills are kept.
    pub data_dir: PathBuf,
    pub runtime: RuntimeConfig,
    pub approval_ttl: Duration,
    pub target: tend_policy::Target,
    /// Concurrent jobs in the local worker.
    pub workers: usize,
    /// How long running jobs get to finish after a shutdown signal.
    pub shutdown_grace: Duration,
    /// An agent is offline after this long without a sign of life (default 90 s).
    pub offline_after: Duration,
    /// How long an agent's claim lasts before it must be renewed (default 30 s).
    pub agent_lease: Duration,
    /// Floor per agent `env` label.
    pub env_floors: std::collections::BTreeMap<String, tend_policy::Level>,
    /// Most hosts one run across a pool (`all:pool:NAME`) may cover, per level L0..L3.
    pub blast_radius: [usize; 4],
    /// Healing policies: which alerts Tend acts on, and how.
    /// Healing policies from a file; `None`: the last ones set through the API.
    pub healing: Option<healing::Config>,
}

/// Hosts one run across a pool may cover by default, per level L0..L3: wide for reads, one
/// host at a time for what is critical.
pub const DEFAULT_BLAST_RADIUS: [usize; 4] = [100, 25, 5, 1];

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Db(#[from] db::DbError),
    #[error(transparent)]
    Store(#[from] tend_registry::local::LocalError),
    #[error("{0}")]
    Setup(String),
}

/// A ready orchestrator: storage open, worker built. Call [`Orchestrator::serve`].
pub struct Orchestrator {
    pub state: api::AppState,
    config: Config,
}

impl std::fmt::Debug for Orchestrator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Orchestrator").finish_non_exhaustive()
    }
}

impl Orchestrator {
    pub async fn open(config: Config) -> Result<Orchestrator, ServeError> {
        let db = Db::connect(&config.database_url).await?;
        let client = RegistryClient::new(&config.registry_url, config.registry_token.clone())
            .map_err(|e| ServeError::Setup(e.to_string()))?;
        let store = LocalStore::open(&config.data_dir)?;
        let catalog = Arc::new(skills::Catalog::new(client, config.trust.clone(), store));
        let runtime =
            Runtime::new(config.runtime.clone()).map_err(|e| ServeError::Setup(e.to_string()))?;
        let (healing_version, healing) = healing::in_force(&db, config.healing.clone())
            .await
            .map_err(|e| ServeError::Setup(format!("healing policies: {e}")))?;
        let notify = Arc::new(Notify::new());
        let metrics = Arc::new(metrics::Metrics::default());
        let owner = format!(
            "local-worker@{}:{}",
            rustix::system::uname().nodename().to_string_lossy(),
            std::process::id()
        );
        let worker = Arc::new(
            worker::Worker::new(
                db.clone(),
                catalog.clone(),
                runtime,
                owner,
                notify.clone(),
                metrics.clone(),
                config.target.clone(),
            )
            .with_approvers(
                config
                    .trust
                    .approver_keys()
                    .into_iter()
                    .map(tend_protocol::TrustedApprover::from)
                    .collect(),
                tend_protocol::RanOnce::open(&config.data_dir).map_err(|e| {
                    ServeError::Setup(format!("{}: {e}", config.data_dir.join("ran").display()))
                })?,
            ),
        );
        let state = api::AppState::new(
            db,
            catalog,
            worker,
            metrics,
            notify,
            api::Settings {
                approval_ttl: config.approval_ttl,
                target: config.target.clone(),
                offline_after: config.offline_after,
                agent_lease: config.agent_lease,
                env_floors: config.env_floors.clone(),
                blast_radius: config.blast_radius,
                healing: healing::Live::new(healing_version, healing),
            },
        );
        Ok(Orchestrator { state, config })
    }

    /// A one-time admin token if no token exists yet (the first start).
    pub async fn bootstrap_admin(&self) -> Result<Option<String>, ServeError> {
        if auth::token_count(&self.state.db).await? > 0 {
            return Ok(None);
        }
        let token =
            auth::create_token(&self.state.db, "admin", tend_policy::Role::Admin, None).await?;
        audit::append(
            &self.state.db,
            "tend",
            audit::Action::TokenCreate,
            "admin",
            serde_json::json!({ "role": "admin", "why": "first start" }),
        )
        .await?;
        Ok(Some(token))
    }

    /// Serve until `shutdown` resolves: then stop accepting, let running jobs finish within
    /// the grace period, and close storage.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let state = self.state.clone();
        audit::append(
            &state.db,
            "tend",
            audit::Action::OrchestratorStart,
            &state.worker.owner,
            serde_json::json!({
                "target": self.config.target.name, "environment": self.config.target.environment,
                "floor": u8::from(self.config.target.floor), "ceiling": u8::from(self.config.target.ceiling),
                "approval_ttl_ms": self.config.approval_ttl.as_millis() as u64,
                "registry": self.config.registry_url,
            }),
        )
        .await?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let worker = tokio::spawn(
            state
                .worker
                .clone()
                .run(self.config.workers, stop_rx.clone()),
        );
        let housekeeping = tokio::spawn(housekeep(state.clone(), stop_rx.clone()));
        let healing = tokio::spawn(heal::run(state.clone(), stop_rx.clone()));
        let notifying = tokio::spawn(notify::run(state.clone(), stop_rx.clone()));
        let app = api::router(state.clone());
        let mut http_stop = stop_rx.clone();
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = http_stop.wait_for(|s| *s).await;
                })
                .await
        });
        shutdown.await;
        tracing::info!("shutting down: no new work; running jobs get the grace period");
        let _ = stop_tx.send(true);
        let grace = self.config.shutdown_grace;
        if tokio::time::timeout(grace, worker).await.is_err() {
            let why = format!(
                "interrupted: the orchestrator stopped and the job did not finish within the {} grace period; its outcome is unknown",
                humantime::format_duration(grace)
            );
            match invocation::release_owned(&state.db, &state.worker.owner, &why).await {
                Ok(n) => tracing::warn!(
                    jobs = n,
                    ?grace,
                    "jobs still running after the grace period were failed"
                ),
                Err(e) => tracing::error!(error = %e, "releasing running jobs failed"),
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
        housekeeping.abort();
        healing.abort();
        notifying.abort();
        if let Err(e) = audit::flush_all_refusals(&state.db).await {
            tracing::warn!(error = %e, "summarising suppressed refusals failed");
        }
        let _ = audit::append(
            &state.db,
            "tend",
            audit::Action::OrchestratorStop,
            &state.worker.owner,
            serde_json::json!({}),
        )
        .await;
        state.db.close().await;
        Ok(())
    }
}

/// Every 100 ms: expire unapproved invocations, handle expired leases, assign agent jobs and
/// wake agents; every 10 s forget old nonces.
async fn housekeep(state: api::AppState, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        n += 1;
        if let Err(e) = invocation::expire_due(&state.db).await {
            tracing::warn!(error = %e, "expiring invocations failed");
        }
        if let Err(e) = invocation::expire_leases(&state.db).await {
            tracing::warn!(error = %e, "expiring leases failed");
        }
        state.kick_agents().await;
        if n.is_multiple_of(100)
            && let Err(e) = agents::sweep_nonces(&state.db).await
        {
            tracing::warn!(error = %e, "forgetting old nonces failed");
        }
        if n.is_multiple_of(10)
            && let Err(e) = audit::flush_refusals(&state.db).await
        {
            tracing::warn!(error = %e, "summarising suppressed refusals failed");
        }
    }
}
