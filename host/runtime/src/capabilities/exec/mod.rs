//! `tend:skill/exec` (repair world only): run an allowlisted program, no shell.
//!
//! A call runs only if the program path equals a grant's `program` and every argument matches
//! that grant's patterns. The child gets an empty environment (plus a fixed `PATH` and
//! `LC_ALL=C`), stdin from /dev/null, `/` as working directory, bounded stdout/stderr and a
//! timeout clamped to the invocation's deadline; it is killed if the invocation ends first.

mod host;
mod pattern;

pub use host::ExecRecord;
pub use pattern::{ArgPattern, ExecPolicy};

/// The only `PATH` a child process sees.
pub const SAFE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
