//! `Runtime`: load (check, compile or fetch from cache) and invoke skills.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::Instrument;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Engine, Store, Trap};
use wasmtime_wasi_http::WasiHttpCtx;

use crate::bindings::SkillError;
use crate::bindings::diagnose::DiagnosePre;
use crate::bindings::repair::RepairPre;
use crate::cache::{self, CacheError, ComponentCache};
use crate::capabilities::{self, HostNotes, exec::ExecPolicy, log::LogBuffer};
use crate::engine::{self, EpochTicker};
use crate::limits::{HOST_MAXIMA, LimitOverrides, Limits, StoreLimiter};
use crate::manifest::{Manifest, SkillKind};
use crate::report::{ExecutionReport, Export, Outcome, ReportError};
use crate::state::SkillState;

/// How to build a [`Runtime`].
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Where precompiled components are kept; `None` disables the disk cache.
    pub cache_dir: Option<PathBuf>,
    /// Use the pooling allocator (falls back to on-demand if it cannot reserve memory).
    pub pooling: bool,
    /// The host's ceilings; manifests and flags are clamped to these.
    pub maxima: Limits,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            cache_dir: Some(cache::default_dir()),
            pooling: true,
            maxima: HOST_MAXIMA,
        }
    }
}

/// A component that could not be loaded. Nothing is written to the cache when loading fails.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("not a WebAssembly file (no \\0asm header)")]
    NotWasm,
    #[error(
        "a core WebAssembly module, not a component: build for the wasm32-wasip2 target (or wrap it with `wasm-tools component new`)"
    )]
    CoreModule,
    #[error("invalid component: {0}")]
    Invalid(String),
    #[error("not a Tend skill: {0}")]
    WrongWorld(String),
    #[error(
        "the manifest declares kind = \"{manifest}\" but the component targets the {component} world"
    )]
    KindMismatch {
        manifest: SkillKind,
        component: SkillKind,
    },
    #[error("component needs imports this host does not provide: {0}")]
    MissingImport(String),
    #[error(
        "the component's digest sha256:{actual} is not the sha256:{verified} that was verified: refusing to compile bytes that were not checked"
    )]
    NotVerified { verified: String, actual: String },
    #[error(transparent)]
    Cache(#[from] CacheError),
}

/// Where a component came from, as the trust stage (tend-registry) established it. Recorded in
/// every [`ExecutionReport`]; for a signed artifact the runtime also checks that the bytes it
/// compiles are the very bytes whose digest was verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(tag = "trust", rename_all = "snake_case")]
pub enum Provenance {
    /// The signature verified against the trust policy.
    Signed {
        publisher: String,
        key_id: String,
        /// `sha256:<hex>` that was verified.
        digest: String,
    },
    /// The operator explicitly ran an unsigned component (`--insecure-unsigned`).
    InsecureUnsigned,
}

/// The host failed (as opposed to the skill).
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    #[error("`plan` exists only for repair skills; this is a diagnose skill")]
    NoPlan,
    #[error("host at capacity: {0}")]
    Busy(String),
    #[error("host error: {0}")]
    Host(String),
}

/// Counters that show where components came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RuntimeStats {
    /// Components compiled by Cranelift in this process.
    pub compiles: u64,
    /// Components loaded from the on-disk precompile cache.
    pub disk_cache_hits: u64,
    /// Components already in memory (same digest loaded before).
    pub memory_cache_hits: u64,
    pub instantiations: u64,
}

#[derive(Debug, Default)]
struct Counters {
    compiles: AtomicU64,
    disk_cache_hits: AtomicU64,
    memory_cache_hits: AtomicU64,
    instantiations: AtomicU64,
}

enum SkillPre {
    Diagnose(DiagnosePre<SkillState>),
    Repair(RepairPre<SkillState>),
}

/// A verified, compiled, linked skill, ready to instantiate (`InstancePre` inside).
pub struct LoadedSkill {
    digest: String,
    kind: SkillKind,
    manifest: Option<Arc<Manifest>>,
    pre: SkillPre,
    exec: ExecPolicy,
    input_schema: Option<Arc<jsonschema::Validator>>,
    output_schema: Option<Arc<jsonschema::Validator>>,
    provenance: Option<Provenance>,
}

/// Compile the schema of a manifest section (already checked when the manifest was parsed).
fn schema_validator(
    section: Option<&crate::manifest::SchemaSection>,
) -> Option<Arc<jsonschema::Validator>> {
    section
        .and_then(|s| jsonschema::validator_for(&s.schema).ok())
        .map(Arc::new)
}

/// Up to three schema violations, each with the JSON pointer where it was found.
fn schema_errors(validator: &jsonschema::Validator, value: &serde_json::Value) -> Option<String> {
    let errors: Vec<String> = validator
        .iter_errors(value)
        .take(3)
        .map(|e| {
            let at = e.instance_path().to_string();
            format!("at {}: {e}", if at.is_empty() { "/" } else { at.as_str() })
        })
        .collect();
    (!errors.is_empty()).then(|| errors.join("; "))
}

impl std::fmt::Debug for LoadedSkill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedSkill")
            .field("digest", &self.digest)
            .field("kind", &self.kind)
            .field("manifest", &self.manifest)
            .finish_non_exhaustive()
    }
}

impl LoadedSkill {
    /// Where the component came from (`None` for a harness load).
    pub fn provenance(&self) -> Option<&Provenance> {
        self.provenance.as_ref()
    }

    /// `sha256:<hex>` of the component bytes.
    pub fn digest(&self) -> String {
        format!("sha256:{}", self.digest)
    }
    pub fn kind(&self) -> SkillKind {
        self.kind
    }
    pub fn manifest(&self) -> Option<&Manifest> {
        self.manifest.as_deref()
    }
}

struct Inner {
    engine: Engine,
    linker: Linker<SkillState>,
    cache: Option<ComponentCache>,
    maxima: Limits,
    pooling: bool,
    ticker: EpochTicker,
    components: Mutex<HashMap<String, Component>>,
    counters: Counters,
}

/// The sandbox host. Cheap to clone; one per process is enough.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("pooling", &self.inner.pooling)
            .field("cache", &self.inner.cache)
            .finish_non_exhaustive()
    }
}

/// 64 lowercase hex digits: a digest that can name a cache entry.
fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Whether the bytes are a component, a core module, or not wasm at all.
fn check_header(bytes: &[u8]) -> Result<(), LoadError> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(LoadError::NotWasm);
    }
    match bytes[4..8] {
        [1, 0, 0, 0] => Err(LoadError::CoreModule),
        [_, _, 1, 0] => Ok(()),
        _ => Err(LoadError::Invalid(
            "unknown WebAssembly version/layer".into(),
        )),
    }
}

impl Runtime {
    pub fn new(config: RuntimeConfig) -> Result<Runtime, LoadError> {
        let (engine, pooling) =
            engine::build(config.pooling).map_err(|e| LoadError::Invalid(e.to_string()))?;
        let linker =
            capabilities::linker(&engine).map_err(|e| LoadError::Invalid(e.to_string()))?;
        let cache = match &config.cache_dir {
            Some(dir) => Some(ComponentCache::open(dir, &engine)?),
            None => None,
        };
        let ticker = EpochTicker::new(&engine);
        Ok(Runtime {
            inner: Arc::new(Inner {
                engine,
                linker,
                cache,
                maxima: config.maxima,
                pooling,
                ticker,
                components: Mutex::default(),
                counters: Counters::default(),
            }),
        })
    }

    /// Whether the pooling allocator is in use.
    pub fn pooling(&self) -> bool {
        self.inner.pooling
    }

    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    pub fn stats(&self) -> RuntimeStats {
        let c = &self.inner.counters;
        RuntimeStats {
            compiles: c.compiles.load(Ordering::Relaxed),
            disk_cache_hits: c.disk_cache_hits.load(Ordering::Relaxed),
            memory_cache_hits: c.memory_cache_hits.load(Ordering::Relaxed),
            instantiations: c.instantiations.load(Ordering::Relaxed),
        }
    }

    /// Compile (or fetch) a component without checking its world, for inspection.
    pub(crate) fn compile_unchecked(&self, bytes: &[u8]) -> Result<Component, LoadError> {
        check_header(bytes)?;
        let digest = cache::sha256_hex(bytes);
        Ok(self.component_for(&digest, bytes)?.0)
    }

    /// Check, compile (or load precompiled) and link a component. CPU-heavy on a cold cache:
    /// call it at publish, pull or start-up, never per request. With no manifest the skill gets
    /// no capabilities at all.
    ///
    /// This is the harness entry point (tests, benchmarks): operator paths go through
    /// [`Runtime::load_admitted`] with the artifact's [`Provenance`].
    pub fn load(&self, bytes: &[u8], manifest: Option<Manifest>) -> Result<LoadedSkill, LoadError> {
        self.load_inner(bytes, manifest, None)
    }

    /// [`Runtime::load`] for an artifact that passed the trust stage (or that the operator
    /// explicitly chose to run unsigned). A signed artifact whose bytes are not the verified
    /// ones is refused before anything is compiled.
    pub fn load_admitted(
        &self,
        bytes: &[u8],
        manifest: Option<Manifest>,
        provenance: Provenance,
    ) -> Result<LoadedSkill, LoadError> {
        self.load_inner(bytes, manifest, Some(provenance))
    }

    fn load_inner(
        &self,
        bytes: &[u8],
        manifest: Option<Manifest>,
        provenance: Option<Provenance>,
    ) -> Result<LoadedSkill, LoadError> {
        let _span = tracing::info_span!("load").entered();
        check_header(bytes)?;
        let verified = match &provenance {
            Some(Provenance::Signed { digest, .. }) => {
                Some(digest.trim_start_matches("sha256:").to_string())
            }
            _ => None,
        };
        // A component already compiled from the verified digest (in memory, or in the checked
        // disk cache, whose entries are only ever made from bytes that hashed to their digest)
        // is exactly what was verified. The bytes in hand are then not used at all, so they
        // need not be hashed a second time (18 MB of Python is ~10 ms of sha256). Otherwise the
        // bytes are hashed and must be the verified ones before anything compiles.
        let hit = verified
            .as_deref()
            .filter(|d| is_sha256_hex(d))
            .and_then(|d| self.cached_component(d).map(|c| (d.to_string(), c)));
        let (digest, component, fresh) = match hit {
            Some((digest, component)) => (digest, component, None),
            None => {
                let digest = cache::sha256_hex(bytes);
                if let Some(verified) = verified
                    && verified != digest
                {
                    return Err(LoadError::NotVerified {
                        verified,
                        actual: digest,
                    });
                }
                let (component, fresh) = self.component_for(&digest, bytes)?;
                (digest, component, fresh)
            }
        };
        let (kind, pre) = self.check_world(&component, manifest.as_ref())?;
        if let (Some(cwasm), Some(cache)) = (fresh, &self.inner.cache) {
            cache.put(&digest, &cwasm)?;
        }
        self.inner
            .components
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(digest.clone(), component);
        let exec = ExecPolicy::new(
            manifest
                .as_ref()
                .map(|m| m.capabilities.exec.as_slice())
                .unwrap_or_default(),
        );
        tracing::info!(digest, %kind, "skill loaded");
        let input_schema = schema_validator(manifest.as_ref().and_then(|m| m.input.as_ref()));
        let output_schema = schema_validator(manifest.as_ref().and_then(|m| m.output.as_ref()));
        Ok(LoadedSkill {
            digest,
            kind,
            manifest: manifest.map(Arc::new),
            pre,
            exec,
            input_schema,
            output_schema,
            provenance,
        })
    }

    /// The component for `digest` from memory, else from the disk cache.
    fn cached_component(&self, digest: &str) -> Option<Component> {
        let inner = &self.inner;
        if let Some(c) = inner
            .components
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(digest)
        {
            inner
                .counters
                .memory_cache_hits
                .fetch_add(1, Ordering::Relaxed);
            return Some(c.clone());
        }
        let c = inner.cache.as_ref()?.get(&inner.engine, digest)?;
        inner
            .counters
            .disk_cache_hits
            .fetch_add(1, Ordering::Relaxed);
        Some(c)
    }

    /// The component for `digest` (the sha256 of `bytes`): from memory, else from the disk
    /// cache, else compiled (the returned bytes are the precompiled form, to be cached once the
    /// world check passes).
    fn component_for(
        &self,
        digest: &str,
        bytes: &[u8],
    ) -> Result<(Component, Option<Vec<u8>>), LoadError> {
        if let Some(c) = self.cached_component(digest) {
            return Ok((c, None));
        }
        let inner = &self.inner;
        let started = Instant::now();
        let cwasm = inner
            .engine
            .precompile_component(bytes)
            .map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        inner.counters.compiles.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            digest,
            ms = started.elapsed().as_millis() as u64,
            "compiled component"
        );
        let component = cache::deserialize_fresh(&inner.engine, &cwasm)
            .map_err(|e| LoadError::Invalid(e.to_string()))?;
        Ok((component, Some(cwasm)))
    }

    fn check_world(
        &self,
        component: &Component,
        manifest: Option<&Manifest>,
    ) -> Result<(SkillKind, SkillPre), LoadError> {
        let engine = &self.inner.engine;
        let ty = component.component_type();
        let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_string()).collect();
        let imports: Vec<String> = ty.imports(engine).map(|(n, _)| n.to_string()).collect();
        let has = |name: &str| exports.iter().any(|e| e == name);
        let kind = match (has("run"), has("plan")) {
            (true, true) => SkillKind::Repair,
            (true, false) => SkillKind::Diagnose,
            _ => {
                return Err(LoadError::WrongWorld(format!(
                    "it exports [{}], but a skill exports `run` (world tend:skill/diagnose@0.1.0) and, to repair, also `plan` (world tend:skill/repair@0.1.0)",
                    exports.join(", ")
                )));
            }
        };
        if let Some(m) = manifest
            && m.skill.kind != kind
        {
            return Err(LoadError::KindMismatch {
                manifest: m.skill.kind,
                component: kind,
            });
        }
        if kind == SkillKind::Diagnose
            && let Some(i) = imports.iter().find(|i| i.starts_with("tend:skill/exec"))
        {
            return Err(LoadError::WrongWorld(format!(
                "a diagnose skill may not import {i}; declare it a repair skill"
            )));
        }
        let instance_pre = self
            .inner
            .linker
            .instantiate_pre(component)
            .map_err(|e| LoadError::MissingImport(format!("{e:#}")))?;
        let pre = match kind {
            SkillKind::Diagnose => {
                SkillPre::Diagnose(DiagnosePre::new(instance_pre).map_err(|e| {
                    LoadError::WrongWorld(format!(
                        "its exports do not match tend:skill/diagnose@0.1.0: {e:#}"
                    ))
                })?)
            }
            SkillKind::Repair => SkillPre::Repair(RepairPre::new(instance_pre).map_err(|e| {
                LoadError::WrongWorld(format!(
                    "its exports do not match tend:skill/repair@0.1.0: {e:#}"
                ))
            })?),
        };
        Ok((kind, pre))
    }

    /// The only way a Store is made: fuel, an epoch deadline that traps, and the memory
    /// limiter are set before anything can run in it.
    fn limited_store(
        &self,
        state: SkillState,
        limits: &Limits,
    ) -> Result<Store<SkillState>, InvokeError> {
        let mut store = Store::new(&self.inner.engine, state);
        store.limiter(|s| &mut s.limiter);
        store
            .set_fuel(limits.fuel)
            .map_err(|e| InvokeError::Host(e.to_string()))?;
        store.set_epoch_deadline(engine::deadline_ticks(Duration::from_millis(
            limits.timeout_ms,
        )));
        store.epoch_deadline_trap();
        Ok(store)
    }

    /// Forget the in-memory copy of a component: the next `load` of it comes from the disk
    /// cache (or compiles). Loaded skills that still hold it keep working.
    pub fn unload(&self, digest: &str) {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.inner
            .components
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(hex);
    }

    /// Instantiate a skill in a fresh limited Store and drop it, without calling it; returns
    /// how long instantiation took. For `tend bench`.
    #[doc(hidden)]
    pub async fn instantiate_only(&self, skill: &LoadedSkill) -> Result<Duration, InvokeError> {
        let limits = Limits::DEFAULT;
        let mut builder = wasmtime_wasi::WasiCtxBuilder::new();
        let state = SkillState {
            wasi: builder.build(),
            table: ResourceTable::new(),
            http: WasiHttpCtx::new(),
            http_policy: capabilities::http::HttpPolicy::new(&[], HostNotes::default()),
            limiter: StoreLimiter::new(&limits),
            log: LogBuffer::new(limits.output_bytes()),
            exec: ExecPolicy::default(),
            exec_records: Vec::new(),
            exec_refused_unrecorded: 0,
            lookup_names: Default::default(),
            host_notes: HostNotes::default(),
            deadline: Instant::now() + Duration::from_millis(limits.timeout_ms),
            output_cap: limits.output_bytes(),
        };
        let started = Instant::now();
        let mut store = self.limited_store(state, &limits)?;
        let result = match &skill.pre {
            SkillPre::Diagnose(pre) => pre.instantiate_async(&mut store).await.map(drop),
            SkillPre::Repair(pre) => pre.instantiate_async(&mut store).await.map(drop),
        };
        let took = started.elapsed();
        result.map_err(|e| InvokeError::Host(e.to_string()))?;
        Ok(took)
    }

    /// Run one export of a loaded skill on `input` (JSON text) in a fresh Store.
    pub async fn invoke(
        &self,
        skill: &LoadedSkill,
        export: Export,
        input: &str,
        overrides: &LimitOverrides,
    ) -> Result<ExecutionReport, InvokeError> {
        self.invoke_narrowed(skill, export, input, overrides, None)
            .await
    }

    /// [`Runtime::invoke`] under `narrowed`: the skill's manifest as one invocation may use it
    /// ([`tend_manifest::Manifest::narrowed`], checked by the caller against the verified
    /// manifest). Its path and `dns` grants and limits replace the loaded manifest's; the
    /// programs a skill may run stay the ones it was loaded with.
    pub async fn invoke_narrowed(
        &self,
        skill: &LoadedSkill,
        export: Export,
        input: &str,
        overrides: &LimitOverrides,
        narrowed: Option<&tend_manifest::Manifest>,
    ) -> Result<ExecutionReport, InvokeError> {
        let span = tracing::info_span!("invoke", digest = %skill.digest, %export);
        self.invoke_inner(skill, export, input, overrides, narrowed)
            .instrument(span)
            .await
    }

    async fn invoke_inner(
        &self,
        skill: &LoadedSkill,
        export: Export,
        input: &str,
        overrides: &LimitOverrides,
        narrowed: Option<&tend_manifest::Manifest>,
    ) -> Result<ExecutionReport, InvokeError> {
        if export == Export::Plan && skill.kind == SkillKind::Diagnose {
            return Err(InvokeError::NoPlan);
        }
        let started = Instant::now();
        let manifest = narrowed.or(skill.manifest.as_deref());
        let (limits, clamped) = Limits::resolve(
            &manifest.map(|m| m.limits.clone()).unwrap_or_default(),
            overrides,
            &self.inner.maxima,
        );
        let mut notes: Vec<String> = clamped
            .iter()
            .map(|name| format!("limit {name} clamped to this host's maximum"))
            .collect();
        let mut report = ExecutionReport {
            outcome: Outcome::Ok,
            output: None,
            error: None,
            digest: skill.digest(),
            skill: manifest.map(|m| m.skill.name.to_string()),
            version: manifest.map(|m| m.skill.version.clone()),
            export,
            fuel_consumed: 0,
            peak_memory_bytes: 0,
            duration_us: 0,
            limits,
            logs: Vec::new(),
            logs_dropped: 0,
            stdout: String::new(),
            stdout_dropped_bytes: 0,
            stderr: String::new(),
            stderr_dropped_bytes: 0,
            exec: Vec::new(),
            notes: Vec::new(),
            provenance: skill.provenance.clone(),
        };
        let refused = match serde_json::from_str::<serde_json::Value>(input) {
            Err(e) => Some(format!("input is not JSON: {e}")),
            Ok(value) => skill
                .input_schema
                .as_deref()
                .and_then(|v| schema_errors(v, &value))
                .map(|e| format!("input does not match the skill's input schema: {e}")),
        };
        if let Some(message) = refused {
            report.outcome = Outcome::InvalidInput;
            report.error = Some(ReportError {
                code: "invalid-input".into(),
                message,
            });
            report.notes = notes;
            report.bound(limits.output_bytes());
            return Ok(report);
        }

        let output_cap = limits.output_bytes();
        let timeout = Duration::from_millis(limits.timeout_ms);
        let mut caps = skill
            .manifest
            .as_deref()
            .map(|m| m.capabilities.clone())
            .unwrap_or_default();
        if let Some(n) = narrowed {
            caps.fs_read = n.capabilities.fs_read.clone();
            caps.fs_write = n.capabilities.fs_write.clone();
            caps.dns = n.capabilities.dns.clone();
        }
        // A repair's `plan` is shown before anyone approves the repair: it runs read-only.
        let exec = if export == Export::Plan {
            caps = capabilities::read_only(&caps, &mut notes);
            skill.exec.for_plan()
        } else {
            skill.exec.clone()
        };
        let host_notes = HostNotes::default();
        let setup = capabilities::wasi_for(&caps, output_cap, &mut notes, host_notes.clone()).await;
        let mut builder = setup.builder;
        let state = SkillState {
            wasi: builder.build(),
            table: ResourceTable::new(),
            http: WasiHttpCtx::new(),
            http_policy: setup.http,
            limiter: StoreLimiter::new(&limits),
            log: LogBuffer::new(output_cap),
            exec,
            exec_records: Vec::new(),
            exec_refused_unrecorded: 0,
            lookup_names: setup.lookup_names,
            host_notes: host_notes.clone(),
            deadline: Instant::now() + timeout,
            output_cap,
        };
        let mut store = self.limited_store(state, &limits)?;
        let _ticking = self.inner.ticker.enter().map_err(InvokeError::Host)?;
        self.inner
            .counters
            .instantiations
            .fetch_add(1, Ordering::Relaxed);

        let call = async {
            match &skill.pre {
                SkillPre::Diagnose(pre) => {
                    let skill = pre.instantiate_async(&mut store).await?;
                    skill.call_run(&mut store, input).await
                }
                SkillPre::Repair(pre) => {
                    let skill = pre.instantiate_async(&mut store).await?;
                    match export {
                        Export::Run => skill.call_run(&mut store, input).await,
                        Export::Plan => skill.call_plan(&mut store, input).await,
                    }
                }
            }
        };
        let result = tokio::time::timeout(timeout, call).await;

        let (outcome, output, error) = match result {
            Err(_elapsed) => (
                Outcome::Timeout,
                None,
                Some(limit_error(
                    "timeout",
                    format!("did not finish within {} ms", limits.timeout_ms),
                )),
            ),
            Ok(Ok(Ok(text))) => classify_output(text, output_cap),
            Ok(Ok(Err(SkillError { code, message }))) => (
                Outcome::SkillError,
                None,
                Some(ReportError { code, message }),
            ),
            Ok(Err(e)) => {
                if e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
                    .is_some()
                {
                    return Err(InvokeError::Busy(e.to_string()));
                }
                classify_trap(&e, store.data().limiter.memory_limit_hit, &limits)
            }
        };

        if let (Some(validator), Some(value)) = (skill.output_schema.as_deref(), &output)
            && let Some(e) = schema_errors(validator, value)
        {
            notes.push(format!(
                "output does not match the skill's output schema: {e}"
            ));
        }
        report.outcome = outcome;
        report.output = output;
        report.error = error;
        report.fuel_consumed = limits.fuel.saturating_sub(store.get_fuel().unwrap_or(0));
        let state = store.data_mut();
        report.peak_memory_bytes = state.limiter.peak_memory() as u64;
        let (logs, dropped) = state.log.take();
        report.logs = logs;
        report.logs_dropped = dropped;
        report.exec = std::mem::take(&mut state.exec_records);
        if state.exec_refused_unrecorded > 0 {
            notes.push(format!(
                "{} more exec calls refused and not recorded: at most {} per invocation",
                state.exec_refused_unrecorded,
                crate::report::MAX_EXEC_RECORDS
            ));
        }
        let out = setup.stdout.captured();
        let err = setup.stderr.captured();
        report.stdout = String::from_utf8_lossy(&out.bytes).into_owned();
        report.stdout_dropped_bytes = out.dropped;
        report.stderr = String::from_utf8_lossy(&err.bytes).into_owned();
        report.stderr_dropped_bytes = err.dropped;
        notes.extend(host_notes.take());
        if out.dropped > 0 {
            notes.push(format!("stdout truncated: {} bytes dropped", out.dropped));
        }
        if err.dropped > 0 {
            notes.push(format!("stderr truncated: {} bytes dropped", err.dropped));
        }
        report.notes = notes;
        report.bound(output_cap);
        report.duration_us = started.elapsed().as_micros() as u64;
        tracing::info!(outcome = %report.outcome, fuel = report.fuel_consumed, us = report.duration_us, "invocation finished");
        Ok(report)
    }
}

fn limit_error(code: &str, message: String) -> ReportError {
    ReportError {
        code: code.into(),
        message,
    }
}

fn classify_output(
    text: String,
    cap: usize,
) -> (Outcome, Option<serde_json::Value>, Option<ReportError>) {
    if text.len() > cap {
        return (
            Outcome::OutputLimit,
            None,
            Some(limit_error(
                "output-limit",
                format!(
                    "returned {} bytes of output; the limit is {} bytes",
                    text.len(),
                    cap
                ),
            )),
        );
    }
    match serde_json::from_str(&text) {
        Ok(v) => (Outcome::Ok, Some(v), None),
        Err(e) => (
            Outcome::SkillError,
            None,
            Some(limit_error(
                "invalid-output",
                format!("the skill returned text that is not JSON: {e}"),
            )),
        ),
    }
}

fn classify_trap(
    e: &wasmtime::Error,
    memory_limit_hit: bool,
    limits: &Limits,
) -> (Outcome, Option<serde_json::Value>, Option<ReportError>) {
    let (outcome, code, message) = match e.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => (
            Outcome::OutOfFuel,
            "out-of-fuel",
            format!("used all {} units of fuel", limits.fuel),
        ),
        Some(Trap::Interrupt) => (
            Outcome::Timeout,
            "timeout",
            format!("did not finish within {} ms", limits.timeout_ms),
        ),
        _ if memory_limit_hit => (
            Outcome::MemoryLimit,
            "memory-limit",
            format!(
                "tried to grow memory beyond {} MiB and then failed: {}",
                limits.memory_mib,
                first_line(e)
            ),
        ),
        _ => match e.downcast_ref::<wasmtime_wasi::I32Exit>() {
            Some(exit) => (
                Outcome::Trap,
                "exit",
                format!("called exit({}) instead of returning", exit.0),
            ),
            None => (Outcome::Trap, "trap", first_line(e)),
        },
    };
    (outcome, None, Some(limit_error(code, message)))
}

/// A trap's message without the wasm backtrace that wasmtime attaches as context.
fn first_line(e: &wasmtime::Error) -> String {
    if let Some(trap) = e.downcast_ref::<Trap>() {
        return format!("wasm trap: {trap}");
    }
    let root = e.root_cause().to_string();
    root.lines().next().unwrap_or_default().to_string()
}
