//! The only place that calls `bindgen!`: Rust types for the `tend:skill@0.1.0` worlds.
//!
//! `repair` is generated first and owns the interface types; `diagnose` reuses them through
//! `with`, so a `SkillError` or a `host::Host` implementation is one type for both worlds.

pub mod repair {
    wasmtime::component::bindgen!({
        path: "../../wit/skill",
        world: "repair",
        imports: {
            "tend:skill/exec.run": async | trappable,
            "tend:skill/host.unit-status": async | trappable,
            default: trappable,
        },
        exports: { default: async },
    });
}

pub mod diagnose {
    wasmtime::component::bindgen!({
        path: "../../wit/skill",
        world: "diagnose",
        exports: { default: async },
        with: {
            "tend:skill/types": super::repair::tend::skill::types,
            "tend:skill/log": super::repair::tend::skill::log,
            "tend:skill/host": super::repair::tend::skill::host,
        },
    });
}

pub use repair::tend::skill::{exec, host, log, types};
pub use types::SkillError;
