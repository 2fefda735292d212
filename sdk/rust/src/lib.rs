//! # tend-sdk — write a Tend skill in Rust
//!
//! The guest side of the `tend:skill@0.1.0` contract. A skill is one type that implements
//! [`Diagnose`] (or [`Repair`]) with serde input and output, plus one line:
//!
//! ```ignore
//! use tend_sdk::{Diagnose, SkillError};
//!
//! struct DiskUsage;
//! impl Diagnose for DiskUsage {
//!     type Input = serde_json::Value;
//!     type Output = serde_json::Value;
//!     fn run(_input: Self::Input) -> Result<Self::Output, SkillError> {
//!         Ok(serde_json::json!({ "filesystems": tend_sdk::host::filesystems().len() }))
//!     }
//! }
//! tend_sdk::export_diagnose!(DiskUsage);
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip2`; the `.wasm` is the component.

#[doc(hidden)]
pub mod bindings {
    pub mod repair {
        wit_bindgen::generate!({
            path: "../../wit/skill",
            world: "repair",
            pub_export_macro: true,
            export_macro_name: "__export_repair_world",
            default_bindings_module: "tend_sdk::bindings::repair",
        });
    }
    pub mod diagnose {
        wit_bindgen::generate!({
            path: "../../wit/skill",
            world: "diagnose",
            pub_export_macro: true,
            export_macro_name: "__export_diagnose_world",
            default_bindings_module: "tend_sdk::bindings::diagnose",
            with: {
                "tend:skill/types@0.1.0": super::repair::tend::skill::types,
                "tend:skill/log@0.1.0": super::repair::tend::skill::log,
                "tend:skill/host@0.1.0": super::repair::tend::skill::host,
            },
        });
    }
}

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Run allowlisted programs (`tend:skill/exec`, repair skills only).
pub use bindings::repair::tend::skill::exec;
/// Typed facts about the machine (`tend:skill/host`).
pub use bindings::repair::tend::skill::host;
/// The error a skill returns on purpose: `code` is a short slug, `message` is for people.
pub use bindings::repair::tend::skill::types::SkillError;

pub use serde_json;

impl SkillError {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        SkillError {
            code: code.into(),
            message: message.into(),
        }
    }
}

/// Structured logging into the invocation report.
pub mod log {
    use crate::bindings::repair::tend::skill::log::{Level, log};

    pub fn debug(message: &str) {
        log(Level::Debug, message)
    }
    pub fn info(message: &str) {
        log(Level::Info, message)
    }
    pub fn warn(message: &str) {
        log(Level::Warn, message)
    }
    pub fn error(message: &str) {
        log(Level::Error, message)
    }
}

/// Words an operator can act on for a failed file access inside the sandbox.
pub mod files {
    use std::io;
    use std::path::Path;

    /// What went wrong opening a path.
    pub fn explain(e: &io::Error) -> String {
        // The sandbox refuses `..` or a symlink that leaves a granted directory with EPERM
        // (WASI errno 63).
        if e.raw_os_error() == Some(63) {
            return "refused by the sandbox: it leads outside the granted directories (capabilities.fs_read)".into();
        }
        match e.kind() {
            io::ErrorKind::NotFound => "does not exist".into(),
            io::ErrorKind::PermissionDenied => format!("permission denied: {e}"),
            _ => e.to_string(),
        }
    }

    /// Why a path given in the input cannot be opened. A path under no granted directory
    /// looks missing from inside the sandbox; it is told apart by none of its ancestors being
    /// visible.
    pub fn explain_input(path: &Path, e: &io::Error) -> String {
        if e.kind() == io::ErrorKind::NotFound
            && !path
                .ancestors()
                .skip(1)
                .filter(|a| a.as_os_str().len() > 1)
                .any(|a| std::fs::metadata(a).is_ok())
        {
            return "not under a directory this skill is granted (capabilities.fs_read); the sandbox cannot see it".into();
        }
        explain(e)
    }

    /// Check the `paths` of an input: 1 to `max` absolute paths, else an `invalid-input` error.
    pub fn check_input_paths(paths: &[String], max: usize) -> Result<(), crate::SkillError> {
        if paths.is_empty() || paths.len() > max {
            return Err(crate::SkillError::new(
                "invalid-input",
                format!("give 1 to {max} paths"),
            ));
        }
        if let Some(p) = paths.iter().find(|p| !p.starts_with('/')) {
            return Err(crate::SkillError::new(
                "invalid-input",
                format!("{p:?} is not an absolute path"),
            ));
        }
        Ok(())
    }
}

/// Cut `s` to at most `max_bytes` (on a character boundary) and mark the cut with `...`, so
/// output taken from programs or files stays bounded.
pub fn clip(mut s: String, max_bytes: usize) -> String {
    if s.len() > max_bytes {
        let mut end = max_bytes;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("...");
    }
    s
}

/// A skill that reads and reports.
pub trait Diagnose {
    type Input: DeserializeOwned;
    type Output: Serialize;
    fn run(input: Self::Input) -> Result<Self::Output, SkillError>;
}

/// A skill that changes the system within its grants.
pub trait Repair {
    type Input: DeserializeOwned;
    type Output: Serialize;
    type Plan: Serialize;
    /// What `run` would do with this input. Must have no side effects.
    fn plan(input: Self::Input) -> Result<Self::Plan, SkillError>;
    /// Do it, and report what was done.
    fn run(input: Self::Input) -> Result<Self::Output, SkillError>;
}

#[doc(hidden)]
pub fn __call<I: DeserializeOwned, O: Serialize>(
    input: String,
    f: impl FnOnce(I) -> Result<O, SkillError>,
) -> Result<String, SkillError> {
    let input: I = serde_json::from_str(&input).map_err(|e| {
        SkillError::new(
            "invalid-input",
            format!("input does not fit this skill: {e}"),
        )
    })?;
    let output = f(input)?;
    serde_json::to_string(&output)
        .map_err(|e| SkillError::new("internal", format!("cannot encode output: {e}")))
}

/// Export a [`Diagnose`] implementation as the component's `run`.
#[macro_export]
macro_rules! export_diagnose {
    ($ty:ty) => {
        const _: () = {
            struct __TendGuest;
            impl $crate::bindings::diagnose::Guest for __TendGuest {
                fn run(input: String) -> Result<String, $crate::SkillError> {
                    $crate::__call(input, <$ty as $crate::Diagnose>::run)
                }
            }
            $crate::bindings::diagnose::__export_diagnose_world!(__TendGuest with_types_in $crate::bindings::diagnose);
        };
    };
}

/// Export a [`Repair`] implementation as the component's `plan` and `run`.
#[macro_export]
macro_rules! export_repair {
    ($ty:ty) => {
        const _: () = {
            struct __TendGuest;
            impl $crate::bindings::repair::Guest for __TendGuest {
                fn run(input: String) -> Result<String, $crate::SkillError> {
                    $crate::__call(input, <$ty as $crate::Repair>::run)
                }
                fn plan(input: String) -> Result<String, $crate::SkillError> {
                    $crate::__call(input, <$ty as $crate::Repair>::plan)
                }
            }
            $crate::bindings::repair::__export_repair_world!(__TendGuest with_types_in $crate::bindings::repair);
        };
    };
}
