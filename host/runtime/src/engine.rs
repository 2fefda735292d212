//! The wasmtime `Engine`: one per process, configured for fuel, epoch deadlines and (on the
//! warm path) the pooling allocator, plus the thread that advances the epoch.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use wasmtime::{Config, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig};

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
/// sleeps otherwise (an idle agent should cost no CPU). Stops when dropped.
#[derive(Debug)]
pub struct EpochTicker {
    stop: Arc<AtomicBool>,
    active: Arc<AtomicUsize>,
    thread: std::thread::Thread,
}

impl EpochTicker {
    pub fn start(engine: &Engine) -> std::io::Result<EpochTicker> {
        let stop = Arc::new(AtomicBool::new(false));
        let active = Arc::new(AtomicUsize::new(0));
        let weak = engine.weak();
        let (flag, busy) = (stop.clone(), active.clone());
        let handle = std::thread::Builder::new()
            .name("tend-epoch".into())
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
            })?;
        Ok(EpochTicker {
            stop,
            active,
            thread: handle.thread().clone(),
        })
    }

    /// Mark an invocation as running until the guard is dropped.
    pub fn enter(&self) -> TickerGuard {
        if self.active.fetch_add(1, Ordering::AcqRel) == 0 {
            self.thread.unpark();
        }
        TickerGuard {
            active: self.active.clone(),
        }
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
        self.thread.unpark();
    }
}

/// Epoch ticks for a deadline of `timeout`, rounded up, plus one for the tick in progress.
pub fn deadline_ticks(timeout: Duration) -> u64 {
    let tick = EPOCH_TICK.as_micros().max(1);
    (timeout.as_micros().div_ceil(tick) as u64).saturating_add(1)
}
