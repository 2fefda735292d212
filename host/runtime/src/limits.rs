//! Resource limits: what a skill asks for, what the operator overrides, what the host allows,
//! and the `ResourceLimiter` that enforces memory and remembers which limit was hit.

use serde::{Deserialize, Serialize};

use crate::manifest::ManifestLimits;

const MIB: u64 = 1024 * 1024;

/// The limits one invocation runs under, after clamping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Fuel units (roughly one per wasm instruction).
    pub fuel: u64,
    /// Linear memory, all memories of the component together.
    pub memory_mib: u64,
    /// Wall-clock deadline of the whole call, host calls included.
    pub timeout_ms: u64,
    /// Largest return value (and stdout/stderr/log buffers each).
    pub output_kib: u64,
}

impl Limits {
    /// What a skill gets when neither manifest nor operator says otherwise.
    pub const DEFAULT: Limits = Limits {
        fuel: 1_000_000_000,
        memory_mib: 64,
        timeout_ms: 10_000,
        output_kib: 256,
    };

    pub fn memory_bytes(&self) -> u64 {
        self.memory_mib * MIB
    }

    pub fn output_bytes(&self) -> usize {
        usize::try_from(self.output_kib * 1024).unwrap_or(usize::MAX)
    }

    /// Effective limits: operator override, else manifest, else default; each clamped to the
    /// host maximum. Returns the limits and the names of the ones that were clamped.
    pub fn resolve(
        manifest: &ManifestLimits,
        overrides: &LimitOverrides,
        max: &Limits,
    ) -> (Limits, Vec<&'static str>) {
        let mut clamped = Vec::new();
        let mut pick = |name: &'static str, o: Option<u64>, m: Option<u64>, d: u64, max: u64| {
            let v = o.or(m).unwrap_or(d).max(1);
            if v > max {
                clamped.push(name);
                max
            } else {
                v
            }
        };
        let limits = Limits {
            fuel: pick(
                "fuel",
                overrides.fuel,
                manifest.fuel,
                Self::DEFAULT.fuel,
                max.fuel,
            ),
            memory_mib: pick(
                "memory_mib",
                overrides.memory_mib,
                manifest.memory_mib,
                Self::DEFAULT.memory_mib,
                max.memory_mib,
            ),
            timeout_ms: pick(
                "timeout_ms",
                overrides.timeout_ms,
                manifest.timeout_ms,
                Self::DEFAULT.timeout_ms,
                max.timeout_ms,
            ),
            output_kib: pick(
                "output_kib",
                overrides.output_kib,
                manifest.output_kib,
                Self::DEFAULT.output_kib,
                max.output_kib,
            ),
        };
        (limits, clamped)
    }
}

/// The host's own ceilings. No manifest or flag can go above these.
pub const HOST_MAXIMA: Limits = Limits {
    fuel: 200_000_000_000,
    memory_mib: 1024,
    timeout_ms: 15 * 60 * 1000,
    output_kib: 16 * 1024,
};

/// Limits given by the operator for one invocation (CLI flags, API fields).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitOverrides {
    pub fuel: Option<u64>,
    pub memory_mib: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub output_kib: Option<u64>,
}

/// Enforces the memory limit across all memories and tables of one Store and records what it
/// refused, so that a trap that follows can be reported as `memory_limit`.
#[derive(Debug)]
pub struct StoreLimiter {
    memory_limit: usize,
    memory_in_use: usize,
    peak_memory: usize,
    table_elements_limit: usize,
    pub(crate) memory_limit_hit: bool,
    pub(crate) table_limit_hit: bool,
}

impl StoreLimiter {
    pub fn new(limits: &Limits) -> Self {
        StoreLimiter {
            memory_limit: usize::try_from(limits.memory_bytes()).unwrap_or(usize::MAX),
            memory_in_use: 0,
            peak_memory: 0,
            table_elements_limit: 1_000_000,
            memory_limit_hit: false,
            table_limit_hit: false,
        }
    }

    /// Highest total linear memory reached, in bytes.
    pub fn peak_memory(&self) -> usize {
        self.peak_memory
    }
}

impl wasmtime::ResourceLimiter for StoreLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let after = self.memory_in_use - current.min(self.memory_in_use) + desired;
        if after > self.memory_limit {
            self.memory_limit_hit = true;
            return Ok(false);
        }
        self.memory_in_use = after;
        self.peak_memory = self.peak_memory.max(after);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.table_elements_limit {
            self.table_limit_hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn memories(&self) -> usize {
        64
    }
    fn tables(&self) -> usize {
        256
    }
    fn instances(&self) -> usize {
        256
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::ResourceLimiter;

    /// An invocation may lower an unset limit only to the default the runtime applies.
    #[test]
    fn the_default_is_the_one_narrowing_checks_against() {
        let d = tend_manifest::DEFAULT_LIMITS;
        assert_eq!(
            [d.fuel, d.memory_mib, d.timeout_ms, d.output_kib],
            [
                Some(Limits::DEFAULT.fuel),
                Some(Limits::DEFAULT.memory_mib),
                Some(Limits::DEFAULT.timeout_ms),
                Some(Limits::DEFAULT.output_kib)
            ]
        );
    }

    #[test]
    fn override_beats_manifest_beats_default_and_host_clamps() {
        let manifest = ManifestLimits {
            fuel: Some(5),
            memory_mib: Some(32),
            timeout_ms: None,
            output_kib: Some(1 << 40),
        };
        let overrides = LimitOverrides {
            fuel: Some(7),
            ..Default::default()
        };
        let (l, clamped) = Limits::resolve(&manifest, &overrides, &HOST_MAXIMA);
        assert_eq!(l.fuel, 7);
        assert_eq!(l.memory_mib, 32);
        assert_eq!(l.timeout_ms, Limits::DEFAULT.timeout_ms);
        assert_eq!(l.output_kib, HOST_MAXIMA.output_kib);
        assert_eq!(clamped, ["output_kib"]);
    }

    #[test]
    fn limiter_counts_all_memories_and_records_the_hit() {
        let mut lim = StoreLimiter::new(&Limits {
            memory_mib: 1,
            ..Limits::DEFAULT
        });
        assert!(lim.memory_growing(0, 512 * 1024, None).expect("ok"));
        assert!(lim.memory_growing(0, 512 * 1024, None).expect("ok"));
        assert!(!lim.memory_limit_hit);
        assert!(
            !lim.memory_growing(512 * 1024, 512 * 1024 + 65536, None)
                .expect("ok")
        );
        assert!(lim.memory_limit_hit);
        assert_eq!(lim.peak_memory(), 1024 * 1024);
    }
}
