//! Catalog repair skills (Rust): service-restart, clean-old-logs, kill-runaway-process.
