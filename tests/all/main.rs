//! Tend's integration tests: one binary (linked once), one module per area. Hostile guests
//! come first: every limit and every capability is tested by a guest that tries to break it.

mod admission;
mod agent;
mod agent_hardening;
mod alerts;
mod attacks_14;
mod authoring;
mod authoring_binary;
mod cache;
mod capabilities;
mod catalog;
mod cli;
mod client;
mod dns;
mod early_refusal;
mod facts;
mod healing;
mod healing_llm;
mod healing_service;
mod hostile;
mod migrations;
mod oci;
mod orchestrator;
mod plans;
mod pool_runs;
mod precompile_cache;
mod registry;
mod replication;
mod router;
mod sandbox_hardening;
mod signed_approvals;
mod signing;
mod support;
mod tokens;
mod transitions;
mod up;
