//! What can go wrong for an agent, as types: [`EnrollError`] (enrolling), [`StartError`]
//! (starting `tend agent run`), [`ConfigError`] (`agent.toml`) and [`Refusal`] (a job this
//! agent will not run, sent to the orchestrator as its reason, in words).

use std::path::PathBuf;

use tend_registry::client::ClientError;
use tend_registry::keys::KeyError;
use tend_registry::local::LocalError;
use tend_registry::trust::{TrustError, VerifyError};

/// `agent.toml` could not be read, parsed, checked or written; the message names the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {} ({source}): enroll first with `tend agent enroll`", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}: {message}", path.display())]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// The ceiling or floor is out of range: refused, never read as something more permissive.
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
    #[error("cannot write {}: {message}", path.display())]
    Write { path: PathBuf, message: String },
}

/// Why `tend agent enroll` did not enroll this host. Nothing is written unless it succeeded.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("{}: {source}", path.display())]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{} already holds an agent identity: remove it (see docs/agent.md, rotating identity) or use another --dir",
        .0.display()
    )]
    AlreadyEnrolled(PathBuf),
    #[error(transparent)]
    Trust(#[from] TrustError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("enrollment not sent: {0}")]
    Invalid(#[from] tend_protocol::FieldError),
    #[error("cannot reach {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("enrollment refused ({status}): {body}")]
    Refused { status: u16, body: String },
    #[error("unreadable answer {body:?}: {message}")]
    Garbled { body: String, message: String },
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// Why `tend agent run` could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Trust(#[from] TrustError),
    #[error(transparent)]
    Registry(#[from] ClientError),
    #[error(transparent)]
    Store(#[from] LocalError),
    #[error(transparent)]
    Spool(#[from] crate::spool::SpoolError),
    #[error(transparent)]
    Runtime(#[from] tend_runtime::LoadError),
    #[error("{}: {source}", path.display())]
    State {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A job this agent refuses, and why. Its text is the refusal the orchestrator records.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("the artifact is no longer trusted here: {0}")]
    NoLongerTrusted(VerifyError),
    #[error("the artifact does not verify here: {0}")]
    DoesNotVerify(ClientError),
    #[error("this agent's local store: {0}")]
    Store(#[from] LocalError),
    #[error("the registry's {skill} {version} is {served}, not the {decided} that was decided on")]
    OtherDigest {
        skill: String,
        version: String,
        served: String,
        decided: String,
    },
    /// Outside this agent's ceiling: publisher, capability kinds or paths.
    #[error("{0}")]
    Ceiling(#[from] tend_protocol::CeilingRefusal),
    #[error("{0}")]
    Admission(#[from] tend_protocol::AdmitError),
    #[error("the verified skill is missing from the local store")]
    Missing,
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot load the skill: {0}")]
    Load(String),
    #[error("{0}")]
    AlreadyRan(#[from] tend_protocol::RanError),
}
