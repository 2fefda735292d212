//! # tend-runtime — the sandbox stage
//!
//! Takes a component's bytes and its manifest, checks that the component targets a
//! `tend:skill@0.1.0` world, compiles it once (or loads it from the on-disk precompile cache)
//! and links it into an `InstancePre`; then, per invocation, takes JSON input and returns an
//! [`ExecutionReport`] from a fresh `Store` that has fuel, an epoch deadline, a memory limiter,
//! bounded output and exactly the capabilities the manifest grants — nothing else.
//!
//! Stages: [`Runtime::load`] (bytes → [`LoadedSkill`]) → [`Runtime::invoke`] (input →
//! [`ExecutionReport`]). Signature verification happens before, in the registry stage, which
//! hands on a [`Provenance`] for [`Runtime::load_admitted`]; the runtime re-checks that the
//! bytes it compiles are the bytes that were verified.

mod bindings;
pub mod cache;
pub mod capabilities;
pub mod engine;
pub mod inspect;
pub mod limits;
pub use tend_manifest as manifest;
pub mod output;
pub mod report;
mod runtime;
mod state;

pub use limits::{HOST_MAXIMA, LimitOverrides, Limits};
pub use manifest::{Manifest, ManifestError, SkillKind};
pub use report::{
    ExecutionReport, Export, MAX_REPORT_JSON_BYTES, Outcome, ReportError, max_report_json_bytes,
};
pub use runtime::{
    InvokeError, LoadError, LoadedSkill, Provenance, Runtime, RuntimeConfig, RuntimeStats,
};
