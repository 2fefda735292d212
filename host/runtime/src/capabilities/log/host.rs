use serde::{Deserialize, Serialize};

use crate::bindings::log::{Host, Level};
use crate::state::SkillState;

/// Longest single message kept (as JSON text); longer ones are cut and marked.
const MAX_MESSAGE_BYTES: usize = 4096;
/// Most lines kept per invocation.
pub(crate) const MAX_ENTRIES: usize = 1000;
/// JSON text of one entry besides its message: `{"level":"debug","message":""},`.
pub(crate) const ENTRY_OVERHEAD_JSON: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    pub level: String,
    pub message: String,
}

/// Log lines of one invocation: at most `MAX_ENTRIES` lines and `capacity` bytes of messages
/// in all, measured as JSON text (so control characters cannot multiply the report's size).
#[derive(Debug)]
pub struct LogBuffer {
    entries: Vec<LogEntry>,
    bytes: usize,
    capacity: usize,
    dropped: u64,
}

impl LogBuffer {
    pub fn new(capacity: usize) -> Self {
        LogBuffer {
            entries: Vec::new(),
            bytes: 0,
            capacity,
            dropped: 0,
        }
    }

    pub fn push(&mut self, level: &str, message: &str) {
        if self.entries.len() >= MAX_ENTRIES || self.bytes >= self.capacity {
            self.dropped += 1;
            return;
        }
        // Cut before copying: a message may be as large as the guest's memory.
        let mut end = message.len().min(MAX_MESSAGE_BYTES * 2);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        let mut message = message[..end].to_string();
        crate::report::clip(&mut message, MAX_MESSAGE_BYTES);
        let len = crate::report::json_len(&message);
        if self.bytes + len > self.capacity {
            self.dropped += 1;
            return;
        }
        self.bytes += len;
        self.entries.push(LogEntry {
            level: level.to_string(),
            message,
        });
    }

    /// The lines kept and how many were dropped.
    pub fn take(&mut self) -> (Vec<LogEntry>, u64) {
        (std::mem::take(&mut self.entries), self.dropped)
    }
}

impl Host for SkillState {
    fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        let level = match level {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        };
        tracing::debug!(target: "tend::skill", level, "{message}");
        self.log.push(level, &message);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_in_lines_and_bytes() {
        let mut b = LogBuffer::new(100);
        for _ in 0..20 {
            b.push("info", "0123456789");
        }
        let (entries, dropped) = b.take();
        assert_eq!(entries.len(), 10);
        assert_eq!(dropped, 10);
    }

    #[test]
    fn long_message_is_cut_on_a_char_boundary() {
        let mut b = LogBuffer::new(1 << 20);
        b.push("warn", &"é".repeat(5000));
        let (entries, _) = b.take();
        assert!(entries[0].message.ends_with(" [truncated]"));
        assert!(entries[0].message.len() <= MAX_MESSAGE_BYTES);
    }
}
