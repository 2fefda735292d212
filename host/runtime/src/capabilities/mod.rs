//! Capabilities: one module per host interface (`log`, `host`, `exec`) plus the WASI grants
//! (`fs`, `net`, `http`). Everything starts denied; [`Grants`] turns a manifest's
//! `[capabilities]` into the exact `WasiCtx` and policies of one invocation.

pub mod exec;
pub mod fs;
pub mod host;
pub mod http;
pub mod log;
pub mod net;

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use wasmtime::component::{HasData, HasSelf, Linker, Resource};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p2::DynPollable;
use wasmtime_wasi::p2::SocketError;
use wasmtime_wasi::p2::bindings::sockets::ip_name_lookup::{
    self, HostResolveAddressStream, ResolveAddressStream,
};
use wasmtime_wasi::p2::bindings::sockets::network::{self, ErrorCode, IpAddress, Network};
use wasmtime_wasi::sockets::{SocketAddrUse, WasiSocketsCtxView};

use crate::manifest::Capabilities;
use crate::output::BoundedPipe;
use crate::report::{MAX_NOTE_BYTES, MAX_NOTES, clip};
use crate::state::SkillState;

/// Everything Tend links for a skill: WASI p2, `wasi:http`, and the `tend:skill` interfaces.
/// Linking an interface grants nothing by itself: each call is checked against the grants.
pub fn linker(engine: &wasmtime::Engine) -> wasmtime::Result<Linker<SkillState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    crate::bindings::repair::Repair::add_to_linker::<_, HasSelf<SkillState>>(&mut linker, |s| s)?;
    // Name lookups go through Tend's check (granted names only), not wasmtime-wasi's.
    linker.allow_shadowing(true);
    ip_name_lookup::add_to_linker::<SkillState, GuardedLookup>(&mut linker, |s| LookupView {
        sockets: WasiSocketsCtxView {
            ctx: s.wasi.sockets(),
            table: &mut s.table,
        },
        names: &s.lookup_names,
        notes: &s.host_notes,
    })?;
    linker.allow_shadowing(false);
    Ok(linker)
}

/// Notes that host calls add during an invocation (refused requests and lookups), for the
/// report. Bounded: a skill repeating a refused call a million times costs a counter.
#[derive(Debug, Clone, Default)]
pub struct HostNotes(Arc<Mutex<NoteLog>>);

#[derive(Debug, Default)]
struct NoteLog {
    notes: Vec<String>,
    dropped: u64,
}

impl HostNotes {
    pub fn push(&self, mut note: String) {
        let mut log = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if log.notes.len() >= MAX_NOTES {
            log.dropped += 1;
            return;
        }
        clip(&mut note, MAX_NOTE_BYTES);
        log.notes.push(note);
    }

    /// The notes so far, the last saying how many were dropped.
    pub fn take(&self) -> Vec<String> {
        let mut log = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut notes = std::mem::take(&mut log.notes);
        if log.dropped > 0 {
            notes.push(format!(
                "{} more notes from host calls dropped",
                log.dropped
            ));
            log.dropped = 0;
        }
        notes
    }
}

/// `wasi:sockets/ip-name-lookup` for a skill: only names its TCP grants name are resolved;
/// any other name is refused with `access-denied` before a resolver is asked, so a lookup
/// cannot carry data out (`<secret>.attacker.example`). IP literals resolve to themselves.
pub struct GuardedLookup;

impl HasData for GuardedLookup {
    type Data<'a> = LookupView<'a>;
}

pub struct LookupView<'a> {
    sockets: WasiSocketsCtxView<'a>,
    names: &'a HashSet<String>,
    notes: &'a HostNotes,
}

/// Whether `name` may be looked up under these granted names.
pub fn lookup_allowed(names: &HashSet<String>, name: &str) -> bool {
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<IpAddr>().is_ok() || names.contains(&name.to_ascii_lowercase())
}

impl ip_name_lookup::Host for LookupView<'_> {
    fn resolve_addresses(
        &mut self,
        network: Resource<Network>,
        name: String,
    ) -> Result<Resource<ResolveAddressStream>, SocketError> {
        if !lookup_allowed(self.names, &name) {
            let mut shown = name;
            clip(&mut shown, 256);
            let message = format!(
                "name lookup of {shown:?} refused: only names granted in capabilities.tcp are resolved"
            );
            tracing::info!("{message}");
            self.notes.push(message);
            return Err(ErrorCode::AccessDenied.into());
        }
        ip_name_lookup::Host::resolve_addresses(&mut self.sockets, network, name)
    }
}

/// Error conversion for the lookup's results, as wasmtime-wasi does it.
impl network::Host for LookupView<'_> {
    fn convert_error_code(&mut self, error: SocketError) -> wasmtime::Result<ErrorCode> {
        network::Host::convert_error_code(&mut self.sockets, error)
    }

    fn network_error_code(
        &mut self,
        err: Resource<wasmtime::Error>,
    ) -> wasmtime::Result<Option<ErrorCode>> {
        network::Host::network_error_code(&mut self.sockets, err)
    }
}

impl network::HostNetwork for LookupView<'_> {
    fn drop(&mut self, this: Resource<Network>) -> wasmtime::Result<()> {
        network::HostNetwork::drop(&mut self.sockets, this)
    }
}

impl HostResolveAddressStream for LookupView<'_> {
    fn resolve_next_address(
        &mut self,
        stream: Resource<ResolveAddressStream>,
    ) -> Result<Option<IpAddress>, SocketError> {
        HostResolveAddressStream::resolve_next_address(&mut self.sockets, stream)
    }

    fn subscribe(
        &mut self,
        stream: Resource<ResolveAddressStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        HostResolveAddressStream::subscribe(&mut self.sockets, stream)
    }

    fn drop(&mut self, stream: Resource<ResolveAddressStream>) -> wasmtime::Result<()> {
        HostResolveAddressStream::drop(&mut self.sockets, stream)
    }
}

/// The WASI context of one invocation: bounded stdout/stderr, no env, no args, no stdin,
/// preopens and sockets only as granted.
pub struct WasiSetup {
    pub builder: WasiCtxBuilder,
    pub http: http::HttpPolicy,
    pub stdout: BoundedPipe,
    pub stderr: BoundedPipe,
    /// Host names the guest may look up (those its TCP grants name, lower-case).
    pub lookup_names: HashSet<String>,
}

/// The grants a repair's `plan` runs with: it must not change anything, so `fs_write`
/// directories are mounted read-only and services are withdrawn (exec is refused by the
/// invocation's [`exec::ExecPolicy::for_plan`]). Each withdrawal is noted.
pub fn read_only(caps: &Capabilities, notes: &mut Vec<String>) -> Capabilities {
    let mut plan = caps.clone();
    for p in std::mem::take(&mut plan.fs_write) {
        notes.push(format!(
            "plan: fs_write {p} mounted read-only (`plan` must not change anything)"
        ));
        if !plan.fs_read.contains(&p) {
            plan.fs_read.push(p);
        }
    }
    let services = &mut plan.services;
    if !services.restart.is_empty() || !services.reload.is_empty() {
        notes.push("plan: services refused (`plan` must not change anything)".into());
        services.restart.clear();
        services.reload.clear();
    }
    if !plan.exec.is_empty() {
        notes.push(
            "plan: exec refused (`plan` must not change anything); each attempt is recorded".into(),
        );
    }
    plan
}

pub async fn wasi_for(
    caps: &Capabilities,
    output_cap: usize,
    notes: &mut Vec<String>,
    http_notes: HostNotes,
) -> WasiSetup {
    let stdout = BoundedPipe::new(output_cap);
    let stderr = BoundedPipe::new(output_cap);
    let mut builder = WasiCtxBuilder::new();
    builder.stdout(stdout.clone()).stderr(stderr.clone());
    fs::preopen(&mut builder, &caps.fs_read, &caps.fs_write, notes);

    let mut tcp = net::TcpPolicy::resolve(&caps.tcp, notes).await;
    if !tcp.allowed.is_empty() {
        builder.allow_tcp(true);
        builder.allow_ip_name_lookup(tcp.uses_names);
    } else {
        builder.allow_tcp(false);
        builder.allow_ip_name_lookup(false);
    }
    builder.allow_udp(false);
    let allowed = Arc::new(std::mem::take(&mut tcp.allowed));
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
        lookup_names: tcp.names,
    }
}
