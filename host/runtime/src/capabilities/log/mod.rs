//! `tend:skill/log`: structured log lines into the invocation report, bounded in count and size.

mod host;

pub use host::{LogBuffer, LogEntry};
