//! `tend:skill/host`: typed, read-only facts about the machine. Needs no grant: it exposes no
//! file contents, command lines or environments, only what `uptime`, `free`, `df`, `ps` and
//! `systemctl show` would print.

pub mod facts;
// `host.rs` implements `Host` in every interface module (the wasmtime-wasi layout).
#[allow(clippy::module_inception)]
mod host;
