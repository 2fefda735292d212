//! # tend-agent — the host stage
//!
//! Runs on every Linux server. Takes jobs from the orchestrator — outbound only, by signed
//! long-poll — and trusts none of them on the orchestrator's word: before a job starts, the
//! agent pulls the skill itself and verifies it against its **own** trust policy, checks that
//! the artifact is the one decided on, recomputes the invocation digest and counts the
//! approvals bound to it, and applies its **local ceiling** (level, publishers, capability
//! kinds). Then it runs the skill through the runtime, renewing its lease, and hands on the
//! `ExecutionReport` through an on-disk spool, so that no result is lost to a crash.

pub mod client;
pub mod config;
pub mod error;
pub mod spool;

// An agent never sends a report bigger than the orchestrator takes; the bound is the runtime's.
const _: () = assert!(tend_protocol::MAX_REPORT_BYTES == tend_runtime::MAX_REPORT_JSON_BYTES);

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tend_protocol::{
    Ceiling, Enroll, Job, JobResult, MAX_REFUSAL_BYTES, MAX_REPORT_BYTES, MAX_RESULT_BYTES,
    is_invocation_id,
};
use tend_registry::client::RegistryClient;
use tend_registry::keys::{self, PublicKey};
use tend_registry::local::LocalStore;
use tend_registry::trust::{TrustPolicy, VerifyOptions};
use tend_runtime::{Export, LimitOverrides, Provenance, Runtime, RuntimeConfig};
use tokio::sync::{Semaphore, watch};

pub use config::AgentConfig;
pub use error::{ConfigError, EnrollError, Refusal, StartError};

/// What `tend agent enroll` needs.
#[derive(Debug, Clone)]
pub struct EnrollRequest {
    pub dir: PathBuf,
    pub orchestrator: String,
    pub token: String,
    pub name: String,
    pub registry: String,
    pub trust: PathBuf,
    pub pools: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub ceiling: Ceiling,
}

/// Make an identity (0600), register with the orchestrator, write `agent.toml`.
pub async fn enroll(req: EnrollRequest) -> Result<AgentConfig, EnrollError> {
    std::fs::create_dir_all(&req.dir).map_err(|source| EnrollError::Dir {
        path: req.dir.clone(),
        source,
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&req.dir, std::fs::Permissions::from_mode(0o700));
    }
    let key_path = AgentConfig::key_path(&req.dir);
    if key_path.exists() || AgentConfig::path(&req.dir).exists() {
        return Err(EnrollError::AlreadyEnrolled(req.dir.clone()));
    }
    TrustPolicy::from_file(&req.trust)?;
    let key = keys::generate()?;
    let hostname = rustix_hostname();
    let body = Enroll {
        token: req.token.clone(),
        name: req.name.clone(),
        hostname,
        os: std::env::consts::OS.to_string(),
        arch: std::env::consts::ARCH.to_string(),
        labels: req.labels.clone(),
        pools: req.pools.clone(),
        public_key: PublicKey(key.verifying_key()).to_string(),
        ceiling: req.ceiling.clone(),
    };
    // The orchestrator checks the same bounds; saying so here names the flag before any request.
    body.check()?;
    let url = format!(
        "{}/api/v1/agents/enroll",
        req.orchestrator.trim_end_matches('/')
    );
    let resp = reqwest::Client::new()
        .post(&url)
        .json(&body)
        .send()
        .await
        .map_err(|e| EnrollError::Unreachable {
            url: url.clone(),
            message: tend_registry::client::error_chain(&e),
        })?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    if !status.is_success() {
        return Err(EnrollError::Refused {
            status: status.as_u16(),
            body: text,
        });
    }
    let enrolled: tend_protocol::Enrolled =
        serde_json::from_str(&text).map_err(|e| EnrollError::Garbled {
            message: e.to_string(),
            body: text.clone(),
        })?;
    keys::write_private_key(&key_path, &key)?;
    let config = AgentConfig {
        orchestrator: req.orchestrator.trim_end_matches('/').to_string(),
        agent_id: enrolled.agent_id,
        name: req.name,
        registry: req.registry,
        trust: std::fs::canonicalize(&req.trust).unwrap_or(req.trust),
        // Where the enroll token placed it, which is what the orchestrator dispatches by.
        pools: enrolled.pools,
        labels: enrolled.labels,
        ceiling: req.ceiling,
        floor: None,
    };
    config.save(&req.dir)?;
    Ok(config)
}

fn rustix_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// How `tend agent run` behaves.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub dir: PathBuf,
    pub heartbeat: Duration,
    pub concurrency: usize,
    pub grace: Duration,
    pub runtime: RuntimeConfig,
}

struct Shared {
    config: AgentConfig,
    client: client::Client,
    registry: RegistryClient,
    trust: TrustPolicy,
    /// The approver keys of this agent's own trust policy: only their signatures count.
    approvers: Vec<tend_protocol::TrustedApprover>,
    /// The approved repairs that ran here (by invocation digest).
    ran: tend_protocol::RanOnce,
    store: LocalStore,
    spool: spool::Spool,
    runtime: Runtime,
    /// Loaded skills by (component digest, signed manifest digest): the same bytes under
    /// another manifest are another skill, with other grants.
    loaded: std::sync::Mutex<
        std::collections::HashMap<(String, String), Arc<tend_runtime::LoadedSkill>>,
    >,
    /// What this agent has already pulled and verified itself, by (name, version, component
    /// digest): a later job for it is not fetched and verified again, but is checked again
    /// against revocations and the rollback floor.
    verified: std::sync::Mutex<
        std::collections::HashMap<(String, String, String), Arc<tend_registry::trust::Verified>>,
    >,
    running: std::sync::atomic::AtomicU32,
    /// One flush at a time: two flushers sending the same result would see the second one
    /// refused (409) and dead-letter a result that was delivered.
    flushing: tokio::sync::Mutex<()>,
}

/// Run until `shutdown` resolves: then stop polling, let running jobs finish within the grace
/// period, give back claimed jobs that have not started, and flush the spool.
pub async fn run(
    options: RunOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let config = AgentConfig::load(&options.dir)?;
    let key = keys::read_private_key(&AgentConfig::key_path(&options.dir))?;
    let trust = TrustPolicy::from_file(&config.trust)?;
    let approvers = trust
        .approver_keys()
        .into_iter()
        .map(tend_protocol::TrustedApprover::from)
        .collect();
    let ran = tend_protocol::RanOnce::open(&options.dir).map_err(|source| StartError::State {
        path: options.dir.join("ran"),
        source,
    })?;
    let shared = Arc::new(Shared {
        approvers,
        ran,
        client: client::Client::new(&config.orchestrator, &config.agent_id, key),
        registry: RegistryClient::new(&config.registry, None)?,
        trust,
        store: LocalStore::open(&options.dir.join("store"))?,
        spool: spool::Spool::open(&options.dir)?,
        runtime: Runtime::new(options.runtime.clone())?,
        loaded: Default::default(),
        verified: Default::default(),
        running: Default::default(),
        flushing: Default::default(),
        config,
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    tracing::info!(agent = %shared.config.name, orchestrator = %shared.client.base(), "agent running");
    flush_spool(&shared).await;
    let beat = tokio::spawn(heartbeat_loop(
        shared.clone(),
        options.heartbeat,
        options.concurrency,
        stop_rx.clone(),
    ));
    let slots = Arc::new(Semaphore::new(options.concurrency.clamp(1, 50)));
    let mut jobs = tokio::task::JoinSet::new();
    let mut backoff = Duration::from_millis(200);
    let mut stop = stop_rx.clone();
    loop {
        // Wait for one free slot, then take every other free one: one poll may bring that many.
        let first = tokio::select! {
            // The semaphore is never closed; were it, there would be nothing left to run.
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = stop.wait_for(|s| *s) => break,
        };
        let mut permits = vec![first];
        while let Ok(p) = slots.clone().try_acquire_owned() {
            permits.push(p);
        }
        let poll_body = serde_json::json!({ "wait_ms": 25_000, "max": permits.len() });
        let polled = tokio::select! {
            r = shared.client.post("/api/v1/agent/poll", &poll_body) => r,
            _ = stop.wait_for(|s| *s) => break,
        };
        match polled {
            Ok(None) => drop(permits),
            Ok(Some(value)) => {
                backoff = Duration::from_millis(200);
                match serde_json::from_value::<tend_protocol::Jobs>(value) {
                    Ok(batch) => {
                        for job in batch.jobs {
                            let Some(permit) = permits.pop() else { break };
                            let (shared, stop) = (shared.clone(), stop_rx.clone());
                            jobs.spawn(async move {
                                run_job(&shared, job, stop).await;
                                drop(permit);
                            });
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "unreadable jobs from the orchestrator"),
                }
                drop(permits);
            }
            Err(e) => {
                drop(permits);
                tracing::warn!(error = %e, retry_in = ?backoff, "polling failed");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = stop.wait_for(|s| *s) => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                flush_spool(&shared).await;
            }
        }
        while jobs.try_join_next().is_some() {}
    }
    tracing::info!(grace = ?options.grace, "stopping: running jobs get the grace period");
    if tokio::time::timeout(options.grace, async {
        while jobs.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        tracing::warn!(
            "jobs still running after the grace period; their results stay spooled or their leases expire"
        );
        jobs.abort_all();
    }
    beat.abort();
    flush_spool(&shared).await;
    Ok(())
}

async fn heartbeat_loop(
    shared: Arc<Shared>,
    every: Duration,
    capacity: usize,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let body = serde_json::json!({
            "interval_ms": every.as_millis() as u64,
            "running": shared.running.load(std::sync::atomic::Ordering::Relaxed),
            "capacity": capacity as u32,
            "version": env!("CARGO_PKG_VERSION"),
        });
        if let Err(e) = shared.client.post("/api/v1/agent/heartbeat", &body).await {
            tracing::warn!(error = %e, "heartbeat failed");
        } else {
            flush_spool(&shared).await;
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// How many definitive refusals (a 4xx other than authentication) a spooled result gets before
/// it moves to `spool/dead/`.
const REFUSALS_BEFORE_DEAD: u32 = 3;

/// Whether an answer means the orchestrator will never take this result as it is (as opposed
/// to: not now — unreachable, 5xx, an authentication or clock problem, rate limiting).
fn definitive(status: u16) -> bool {
    (400..500).contains(&status) && ![401, 403, 408, 425, 429].contains(&status)
}

/// Send every spooled result, oldest first; remove each once acknowledged. A result the
/// orchestrator refuses for good goes to `spool/dead/` and the flush goes on with the next one,
/// so one bad result never holds up the others; only a transient failure stops the flush.
async fn flush_spool(shared: &Shared) {
    let _one_at_a_time = shared.flushing.lock().await;
    for (id, result) in shared.spool.pending() {
        let path = format!("/api/v1/agent/jobs/{id}/result");
        let body = serde_json::to_value(&result).unwrap_or_default();
        let size = serde_json::to_vec(&body).map_or(usize::MAX, |b| b.len());
        let sent = if size > MAX_RESULT_BYTES {
            // Never sent: the orchestrator takes at most MAX_RESULT_BYTES.
            Err(client::ClientError::Status {
                status: 413,
                path: path.clone(),
                body: format!("the result is {size} bytes; the protocol allows {MAX_RESULT_BYTES}"),
            })
        } else {
            shared.client.post(&path, &body).await
        };
        match sent {
            Ok(_) => {
                tracing::debug!(invocation = %id, "result delivered");
                shared.spool.remove(&id);
            }
            Err(client::ClientError::Status {
                status, body: why, ..
            }) if definitive(status) => {
                // 404/409: the job is gone or not this agent's; size: it can never fit.
                let tries = if status == 404 || status == 409 || size > MAX_RESULT_BYTES {
                    REFUSALS_BEFORE_DEAD
                } else {
                    shared.spool.refused(&id)
                };
                if tries < REFUSALS_BEFORE_DEAD {
                    tracing::warn!(invocation = %id, status, %why, tries, "the orchestrator refused a result; trying the next one");
                    continue;
                }
                match shared.spool.bury(&id) {
                    Ok(to) => tracing::error!(
                        invocation = %id, status, %why, kept = %to.display(),
                        "the orchestrator will not take this result; moved to the dead-letter directory"
                    ),
                    Err(e) => {
                        tracing::error!(invocation = %id, error = %e, "cannot move a refused result aside")
                    }
                }
            }
            Err(e) => {
                tracing::warn!(invocation = %id, error = %e, "result stays spooled");
                return;
            }
        }
    }
}

/// The agent's own checks, in order; `Err` is the refusal (its text is the reason sent). Nothing the orchestrator
/// says about level, approvals needed or trigger is taken on its word: the job is admitted by
/// [`tend_policy::admit`] from the manifest this agent verified itself.
async fn check(shared: &Shared, job: &Job) -> Result<Checked, Refusal> {
    let inv = &job.invocation;
    let ceiling = &shared.config.ceiling;
    // Pull and verify with this host's own trust policy (and its own rollback floors), once
    // per artifact: a later job for the same digest uses what was verified then, checked
    // again against revocations and the versions seen since.
    let key = (inv.skill.clone(), inv.version.clone(), inv.digest.clone());
    let known = shared
        .verified
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&key)
        .cloned();
    let (v, component) = match known {
        Some(v) => {
            shared
                .store
                .with_seen_floors(&shared.trust)?
                .recheck(&inv.skill, &inv.version, &v.digest, &v.key_id)
                .map_err(Refusal::NoLongerTrusted)?;
            (v, None)
        }
        None => {
            let pulled = shared
                .registry
                .pull(
                    &inv.skill,
                    &inv.version,
                    &shared.trust,
                    &shared.store,
                    VerifyOptions::default(),
                )
                .await
                .map_err(Refusal::DoesNotVerify)?;
            let v = Arc::new(pulled.verified);
            if v.digest == inv.digest {
                shared
                    .verified
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key, v.clone());
            }
            (v, Some(pulled.component))
        }
    };
    if v.digest != inv.digest {
        return Err(Refusal::OtherDigest {
            skill: inv.skill.clone(),
            version: inv.version.clone(),
            served: v.digest.clone(),
            decided: inv.digest.clone(),
        });
    }
    // What this invocation may use: the verified manifest, narrowed as the operator asked,
    // within this agent's ceiling (the same rules the orchestrator checks at submit).
    let narrowed = v
        .manifest
        .narrowed(&inv.narrowing)
        .map_err(|e| Refusal::Admission(e.into()))?;
    // A plan job runs read-only with no programs or service actions (the runtime enforces
    // it), so only what it can use is held against this agent's ceiling.
    let mut held = narrowed.clone();
    if inv.export == "plan" {
        let caps = &mut held.capabilities;
        caps.fs_read.append(&mut caps.fs_write);
        caps.exec.clear();
        caps.services = Default::default();
    }
    if let Some(refusal) = ceiling.refuses(&v.publisher, &held) {
        return Err(refusal.into());
    }
    // The approvals must be for this exact invocation, as this agent computes it, signed by
    // approver keys this agent's own trust policy lists, and as many as the level this agent
    // computes needs.
    let (narrowed, admitted) = tend_protocol::admit_job(
        tend_protocol::Runner::Agent {
            name: &shared.config.name,
            id: &shared.config.agent_id,
            pools: &shared.config.pools,
        },
        inv,
        job.expires_ms,
        tend_protocol::VerifiedSkill {
            manifest: &v.manifest,
            manifest_digest: &v.manifest_digest(),
            digest: &v.digest,
            key_id: &v.key_id,
        },
        &shared.approvers,
        &tend_policy::admit::Local {
            name: "this agent",
            environment: shared
                .config
                .labels
                .get("env")
                .map_or("default", String::as_str),
            floor: shared.config.floor(),
            // Checked when agent.toml was loaded; were it not, nothing above L0 would run.
            ceiling: tend_policy::Level::try_from(ceiling.max_level)
                .unwrap_or(tend_policy::Level::L0),
        },
        &ceiling.auto_heal,
        tend_protocol::now_ms(),
    )?;
    tracing::debug!(invocation = %inv.id, level = %admitted.level, approvers = ?admitted.approvers, "admitted");
    // An approved repair runs once here, whatever the orchestrator queues again: recorded
    // just before it starts (see `run_job`).
    let once = admitted.approvals_required > 0
        && inv.export == "run"
        && v.manifest.skill.kind == tend_manifest::SkillKind::Repair;
    let provenance = Provenance::Signed {
        publisher: v.publisher.clone(),
        key_id: v.key_id.clone(),
        digest: v.digest.clone(),
    };
    let loaded_key = (v.digest.clone(), v.manifest_digest());
    let cached = shared
        .loaded
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&loaded_key)
        .cloned();
    let loaded = match cached {
        Some(l) => l,
        None => {
            let runtime = shared.runtime.clone();
            let bytes = match component {
                Some(c) => c,
                None => {
                    let path = shared
                        .store
                        .find(&inv.skill, Some(&inv.version))
                        .ok_or(Refusal::Missing)?
                        .component;
                    std::fs::read(&path).map_err(|source| Refusal::Read { path, source })?
                }
            };
            let (manifest, prov) = (v.manifest.clone(), provenance.clone());
            let l = tokio::task::spawn_blocking(move || {
                runtime.load_admitted(&bytes, Some(manifest), prov)
            })
            .await
            .map_err(|e| Refusal::Load(e.to_string()))?
            .map_err(|e| Refusal::Load(e.to_string()))?;
            let l = Arc::new(l);
            shared
                .loaded
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(loaded_key, l.clone());
            l
        }
    };
    Ok(Checked {
        loaded,
        narrowed,
        once,
    })
}

/// A job [`check`] admitted.
struct Checked {
    loaded: Arc<tend_runtime::LoadedSkill>,
    /// The verified manifest narrowed as the invocation may use it.
    narrowed: tend_manifest::Manifest,
    /// An approved repair: it runs once here ([`tend_protocol::RanOnce`]).
    once: bool,
}

/// A result the protocol can always carry: a refusal cut to [`MAX_REFUSAL_BYTES`], and a report
/// above [`MAX_REPORT_BYTES`] replaced by a small stand-in that says what happened (outcome
/// `output_limit`, the skill's own outcome and the size in the error, the bulky parts
/// dropped). Without this a result the orchestrator cannot take would sit in the spool.
pub fn bounded(mut result: JobResult) -> JobResult {
    if let Some(why) = &mut result.refusal {
        truncate(why, MAX_REFUSAL_BYTES);
    }
    let Some(report) = &result.report else {
        return result;
    };
    let size = serde_json::to_vec(report).map_or(usize::MAX, |b| b.len());
    if size <= MAX_REPORT_BYTES {
        return result;
    }
    let mut outcome = report["outcome"].as_str().unwrap_or("unknown").to_string();
    truncate(&mut outcome, 64);
    let why = format!(
        "the skill ran (its outcome: {outcome}) but its report is {size} bytes, more than the {MAX_REPORT_BYTES} an agent sends: output, logs, stdout and stderr were dropped"
    );
    let mut stand_in = serde_json::json!({
        "outcome": "output_limit",
        "output": null,
        "error": { "code": "report-too-large", "message": why },
        "logs": [], "logs_dropped": 0,
        "stdout": "", "stdout_dropped_bytes": 0,
        "stderr": "", "stderr_dropped_bytes": 0,
        "exec": [],
        "notes": [why],
    });
    // Keep what identifies the run and what it did, when small.
    for (key, max) in [
        ("digest", 256),
        ("skill", 256),
        ("version", 256),
        ("export", 64),
        ("fuel_consumed", 64),
        ("peak_memory_bytes", 64),
        ("duration_us", 64),
        ("limits", 1024),
        ("provenance", 4096),
        ("exec", MAX_REPORT_BYTES / 2),
    ] {
        if let Some(v) = report.get(key)
            && serde_json::to_vec(v).is_ok_and(|b| b.len() <= max)
        {
            stand_in[key] = v.clone();
        }
    }
    result.report = Some(stand_in);
    result
}

/// Cut `s` to at most `max` bytes, on a character boundary, marking the cut.
fn truncate(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push('…');
}

async fn deliver(shared: &Shared, id: &str, result: JobResult) {
    if let Err(e) = shared.spool.put(id, &bounded(result)) {
        tracing::error!(invocation = %id, error = %e, "cannot spool a result");
    }
    flush_spool(shared).await;
}

async fn run_job(shared: &Arc<Shared>, job: Job, stop: watch::Receiver<bool>) {
    let id = job.invocation.id.clone();
    // The id becomes a spool file name and part of every URL about this job: one the
    // orchestrator could not have made is refused before it touches either.
    if !is_invocation_id(&id) {
        tracing::error!(
            invocation = %id.chars().take(80).collect::<String>(),
            "refusing a job whose id is not an invocation id; nothing is written or sent about it"
        );
        return;
    }
    let picked = Instant::now();
    let checked = check(shared, &job).await;
    let refuse = |why: Refusal| {
        tracing::warn!(invocation = %id, %why, "refusing a job");
        JobResult {
            outcome: "refused".into(),
            report: None,
            refusal: Some(why.to_string()),
        }
    };
    let Checked {
        loaded,
        narrowed,
        once,
    } = match checked {
        Ok(x) => x,
        Err(why) => {
            deliver(shared, &id, refuse(why)).await;
            return;
        }
    };
    if *stop.borrow() {
        let _ = shared
            .client
            .post(
                &format!("/api/v1/agent/jobs/{id}/release"),
                &serde_json::json!({}),
            )
            .await;
        return;
    }
    // Recorded only now, so a job given back unstarted (above) can still run here later; and
    // given up again if it cannot be marked started (it did not run).
    let digest = &job.invocation.invocation_digest;
    if once && let Err(e) = shared.ran.claim(digest, job.expires_ms) {
        deliver(shared, &id, refuse(e.into())).await;
        return;
    }
    if let Err(e) = shared
        .client
        .post(
            &format!("/api/v1/agent/jobs/{id}/start"),
            &serde_json::json!({}),
        )
        .await
    {
        tracing::warn!(invocation = %id, error = %e, "could not mark the job started; not running it");
        if once {
            shared.ran.unclaim(digest);
        }
        return;
    }
    shared
        .running
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // Renew the lease while the skill runs.
    let renewer = {
        let (shared, id) = (shared.clone(), id.clone());
        let every = Duration::from_millis((job.lease_ms / 3).max(100) as u64);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = shared
                    .client
                    .post(
                        &format!("/api/v1/agent/jobs/{id}/renew"),
                        &serde_json::json!({}),
                    )
                    .await
                {
                    tracing::warn!(invocation = %id, error = %e, "lease renewal failed");
                }
            }
        })
    };
    let report = shared
        .runtime
        .invoke_narrowed(
            &loaded,
            if job.invocation.export == "plan" {
                Export::Plan
            } else {
                Export::Run
            },
            &job.invocation.input.to_string(),
            &LimitOverrides::default(),
            Some(&narrowed),
        )
        .await;
    renewer.abort();
    shared
        .running
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    let result = match report {
        Ok(report) => JobResult {
            outcome: "ran".into(),
            report: Some(serde_json::to_value(&report).unwrap_or_default()),
            refusal: None,
        },
        Err(e) => JobResult {
            outcome: "refused".into(),
            report: None,
            refusal: Some(format!("the host failed to run it: {e}")),
        },
    };
    let outcome = result
        .report
        .as_ref()
        .and_then(|r| r["outcome"].as_str())
        .unwrap_or(&result.outcome)
        .to_string();
    tracing::info!(
        invocation = %id,
        skill = %job.invocation.skill,
        version = %job.invocation.version,
        %outcome,
        took = ?picked.elapsed(),
        "job done"
    );
    deliver(shared, &id, result).await;
}

/// The systemd unit `tend agent install-systemd` writes.
pub fn systemd_unit(tend: &Path, dir: &Path, ceiling: &Ceiling) -> String {
    let writes = ceiling.capabilities.iter().any(|c| c == "fs_write");
    let exec = ceiling
        .capabilities
        .iter()
        .any(|c| c == "exec" || c == "services");
    format!(
        "# Written by `tend agent install-systemd`.\n\
[Unit]\n\
Description=Tend host agent (runs approved diagnostic and repair skills)\n\
Documentation=https://example.invalid/tend/docs/agent.md\n\
After=network-online.target\n\
Wants=network-online.target\n\
\n\
[Service]\n\
ExecStart={tend} agent run --dir {dir}\n\
Restart=always\n\
RestartSec=2\n\
TimeoutStopSec=40\n\
KillSignal=SIGTERM\n\
NoNewPrivileges=yes\n\
PrivateTmp=yes\n\
ProtectHome=read-only\n\
ProtectSystem={protect}\n\
ReadWritePaths={dir}\n\
ProtectKernelTunables=yes\n\
ProtectKernelModules=yes\n\
ProtectControlGroups=yes\n\
RestrictSUIDSGID=yes\n\
LockPersonality=yes\n\
RestrictRealtime=yes\n\
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6\n\
SystemCallArchitectures=native\n\
MemoryDenyWriteExecute=no\n\
{exec_note}\
\n\
[Install]\n\
WantedBy=multi-user.target\n",
        tend = tend.display(),
        dir = dir.display(),
        // Repair skills that write files need the system writable; read-only otherwise.
        protect = if writes { "full" } else { "strict" },
        exec_note = if exec {
            "# exec/services are allowed: skills may run allowlisted programs (e.g. systemctl),\n# so no CapabilityBoundingSet is set here. Narrow it to what those programs need.\n"
        } else {
            "CapabilityBoundingSet=\nAmbientCapabilities=\n"
        },
    )
}
