//! Capabilities: one module per host interface (`log`, `host`, `exec`) plus the WASI grants
//! (`fs`, `net`, `http`). Everything starts denied; [`Grants`] turns a manifest's
//! `[capabilities]` into the exact `WasiCtx` and policies of one invocation.

pub mod exec;
pub mod fs;
pub mod host;
pub mod http;
pub mod log;
pub mod net;

use std::sync::{Arc, Mutex};

use wasmtime::component::{HasSelf, Linker};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::sockets::SocketAddrUse;

use crate::manifest::Capabilities;
use crate::output::BoundedPipe;
use crate::state::SkillState;

/// Everything Tend links for a skill: WASI p2, `wasi:http`, and the `tend:skill` interfaces.
/// Linking an interface grants nothing by itself: each call is checked against the grants.
pub fn linker(engine: &wasmtime::Engine) -> wasmtime::Result<Linker<SkillState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    crate::bindings::repair::Repair::add_to_linker::<_, HasSelf<SkillState>>(&mut linker, |s| s)?;
    Ok(linker)
}

/// The WASI context of one invocation: bounded stdout/stderr, no env, no args, no stdin,
/// preopens and sockets only as granted.
pub struct WasiSetup {
    pub builder: WasiCtxBuilder,
    pub http: http::HttpPolicy,
    pub stdout: BoundedPipe,
    pub stderr: BoundedPipe,
}

pub async fn wasi_for(
    caps: &Capabilities,
    output_cap: usize,
    notes: &mut Vec<String>,
    http_notes: Arc<Mutex<Vec<String>>>,
) -> WasiSetup {
    let stdout = BoundedPipe::new(output_cap);
    let stderr = BoundedPipe::new(output_cap);
    let mut builder = WasiCtxBuilder::new();
    builder.stdout(stdout.clone()).stderr(stderr.clone());
    fs::preopen(&mut builder, &caps.fs_read, &caps.fs_write, notes);

    let tcp = net::TcpPolicy::resolve(&caps.tcp, notes).await;
    if !tcp.allowed.is_empty() {
        builder.allow_tcp(true);
        builder.allow_ip_name_lookup(tcp.uses_names);
    } else {
        builder.allow_tcp(false);
        builder.allow_ip_name_lookup(false);
    }
    builder.allow_udp(false);
    let allowed = Arc::new(tcp.allowed);
    builder.socket_addr_check(move |addr, use_| {
        let ok = match use_ {
            SocketAddrUse::TcpConnect => allowed.contains(&addr),
            // The implicit bind before a connect (any address, ephemeral port). Harmless on its
            // own: listening is a separate use (`TcpListen`) and is always refused.
            SocketAddrUse::TcpBind => {
                !allowed.is_empty() && addr.ip().is_unspecified() && addr.port() == 0
            }
            _ => false,
        };
        if !ok {
            tracing::info!(%addr, ?use_, "socket use denied: not granted");
        }
        Box::pin(async move { ok })
    });
    WasiSetup {
        builder,
        http: http::HttpPolicy::new(&caps.http, http_notes),
        stdout,
        stderr,
    }
}
