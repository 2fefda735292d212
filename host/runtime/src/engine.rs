//! The wasmtime `Engine`: one per process, configured for fuel, epoch deadlines and, for
//! long-running hosts (orchestrator, agent), the pooling allocator; plus the thread that
//! advances the epoch. A one-shot process (`tend run`) uses the on-demand allocator: the pool's
//! reservation and set-up cost more than the single instantiation it would speed up, and the
//! precompiled code is the same for both (the cache key does not change).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use wasmtime::{
    Config, Engine, EngineWeak, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig,
};

use crate::limits::HOST_MAXIMA;

/// How often the epoch advances; deadlines are rounded up to this.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

fn base_config() -> Config {
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .consume_fuel(true)
        .epoch_interruption(true)
        .cranelift_opt_level(OptLevel::Speed)
        .parallel_compilation(true)
        // Large components (Python, JS) keep their data in one big memory; copy-on-write
        // initialisation makes their instantiation cheap.
        .memory_init_cow(true);
    config
}

fn pooling_config() -> PoolingAllocationConfig {
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(64)
        .total_core_instances(1024)
        .total_memories(256)
        .total_tables(512)
        .total_stacks(64)
        .max_core_instances_per_component(64)
        .max_memories_per_component(16)
        .max_tables_per_component(32)
        .max_memories_per_module(1)
        .max_tables_per_module(4)
        .table_elements(100_000)
        .max_memory_size(
            usize::try_from(HOST_MAXIMA.memory_mib * 1024 * 1024).unwrap_or(usize::MAX),
        )
        .max_core_instance_size(4 << 20)
        .max_component_instance_size(1 << 20)
        // Keep a few slots of each kind warm; zero them on reuse (always, for isolation).
        .max_unused_warm_slots(16)
        .linear_memory_keep_resident(64 * 1024)
        .table_keep_resident(64 * 1024);
    pool
}

/// Build the engine: pooling allocator when `pooling` and the reservation succeeds, else the
/// on-demand allocator with a logged warning. Returns the engine and whether pooling is on.
pub fn build(pooling: bool) -> wasmtime::Result<(Engine, bool)> {
    if pooling {
        let mut config = base_config();
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling_config()));
        match Engine::new(&config) {
            Ok(engine) => return Ok((engine, true)),
            Err(e) => tracing::warn!(
                error = %e,
                "pooling allocator unavailable (virtual memory reservation failed); \
                 falling back to on-demand allocation, instantiation will be slower"
            ),
        }
    }
    let mut config = base_config();
    config.allocation_strategy(InstanceAllocationStrategy::OnDemand);
    Ok((Engine::new(&config)?, false))
}

/// Advances the engine's epoch every [`EPOCH_TICK`] while any invocation is running, and
/// sleeps otherwise (an idle agent should cost no CPU). Stops when dropped. The thread starts
/// with the first invocation: a process that only loads, inspects or fails early never pays
/// for it.
pub struct EpochTicker {
    engine: EngineWeak,
    stop: Arc<AtomicBool>,
    active: Arc<AtomicUsize>,
    thread: OnceLock<Result<std::thread::Thread, String>>,
}

impl std::fmt::Debug for EpochTicker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EpochTicker")
            .field("active", &self.active.load(Ordering::Relaxed))
            .field("started", &self.thread.get().is_some())
            .finish()
    }
}

impl EpochTicker {
    pub fn new(engine: &Engine) -> EpochTicker {
        EpochTicker {
            engine: engine.weak(),
            stop: Arc::new(AtomicBool::new(false)),
            active: Arc::new(AtomicUsize::new(0)),
            thread: OnceLock::new(),
        }
    }

    fn spawn(&self) -> Result<std::thread::Thread, String> {
        let weak = self.engine.clone();
        let (flag, busy) = (self.stop.clone(), self.active.clone());
        let handle = std::thread::Builder::new()
            .name("tend-epoch".into())
            // It only sleeps and bumps a counter.
            .stack_size(64 * 1024)
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    if busy.load(Ordering::Acquire) == 0 {
                        std::thread::park_timeout(Duration::from_secs(1));
                        continue;
                    }
                    std::thread::sleep(EPOCH_TICK);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .map_err(|e| format!("cannot start the epoch thread: {e}"))?;
        Ok(handle.thread().clone())
    }

    /// Mark an invocation as running until the guard is dropped (starting the thread the
    /// first time). Fails only if the thread cannot be started: then no deadline could be
    /// enforced, so nothing may run.
    pub fn enter(&self) -> Result<TickerGuard, String> {
        let thread = self.thread.get_or_init(|| self.spawn()).as_ref()?;
        if self.active.fetch_add(1, Ordering::AcqRel) == 0 {
            thread.unpark();
        }
        Ok(TickerGuard {
            active: self.active.clone(),
        })
    }
}

/// Keeps the epoch advancing while alive.
#[derive(Debug)]
pub struct TickerGuard {
    active: Arc<AtomicUsize>,
}

impl Drop for TickerGuard {
    fn drop(&mut self) {
        self.active.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(Ok(thread)) = self.thread.get() {
            thread.unpark();
        }
    }
}

/// Epoch ticks for a deadline of `timeout`, rounded up, plus one for the tick in progress.
pub fn deadline_ticks(timeout: Duration) -> u64 {
    let tick = EPOCH_TICK.as_micros().max(1);
    (timeout.as_micros().div_ceil(tick) as u64).saturating_add(1)
}
