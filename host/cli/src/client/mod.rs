//! The operator's client of an orchestrator's HTTP API, in the style of `kubectl` and `gh`:
//! `tend login`, `context`, `invoke`, `status`, `approvals`, `approve`, `reject`, `cancel`,
//! `agents`, `incidents`, `healing show|set`, `audit show|tail`, `approver` and `token`. Takes what a person types, sends it to `/api/v1/...` with their token,
//! and prints the answer as a table (or the API's JSON with `--json`).
//!
//! - [`config`]: where to talk to (flags > `TEND_URL`/`TEND_TOKEN` > the config file's
//!   contexts) and `tend context`;
//! - [`http`]: [`http::Client`], one place that sends requests and turns answers into exit
//!   statuses;
//! - [`output`]: tables, ages, and [`output::render_invocation`];
//! - one file per group of commands.
//!
//! It needs only reqwest, serde and tend-protocol, so every role's build has it (an agent's
//! host can run `tend status`).

pub mod approve;
pub mod audit;
pub mod config;
pub mod healing;
pub mod http;
pub mod incidents;
pub mod invoke;
pub mod login;
pub mod manage;
pub mod output;
pub mod tokens;
