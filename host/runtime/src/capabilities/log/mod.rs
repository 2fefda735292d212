//! `tend:skill/log`: structured log lines into the invocation report, bounded in count and size.

mod host;

pub(crate) use host::{ENTRY_OVERHEAD_JSON, MAX_ENTRIES};
pub use host::{LogBuffer, LogEntry};
