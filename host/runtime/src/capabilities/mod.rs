//! Capabilities: one module per host interface (`log`, `host`, `exec`) plus the WASI grants
//! (`fs`, `net`, `http`, and name lookups for `tcp` and `dns`). Everything starts denied;
//! [`Grants`] turns a manifest's `[capabilities]` into the exact `WasiCtx` and policies of one
//! invocation.

pub mod exec;
pub mod fs;
pub mod host;
pub mod http;
pub mod log;
pub mod net;

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
use crate::manifest::grant::{DnsGrant, normalise_dns_name};
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

/// `wasi:sockets/ip-name-lookup` for a skill: only names its TCP grants name or its `dns`
/// grants cover are resolved; any other name is refused with `access-denied` before a resolver
/// is asked, so a lookup cannot carry data out (`<secret>.attacker.example`). IP literals
/// resolve to themselves.
pub struct GuardedLookup;

impl HasData for GuardedLookup {
    type Data<'a> = LookupView<'a>;
}

pub struct LookupView<'a> {
    sockets: WasiSocketsCtxView<'a>,
    names: &'a LookupNames,
    notes: &'a HostNotes,
}

/// The names one invocation may look up: the hosts its TCP grants name (each exactly) and its
/// `dns` grants (exact names and `*.zone`s), all in [`normalise_dns_name`]'s form.
#[derive(Debug, Clone, Default)]
pub struct LookupNames {
    grants: Vec<DnsGrant>,
}

impl LookupNames {
    /// From the host names of TCP grants and the `dns` grants of a (validated) manifest. A
    /// grant that does not parse grants nothing.
    pub fn new<'a>(tcp_hosts: impl IntoIterator<Item = &'a String>, dns: &[String]) -> Self {
        let mut grants: Vec<DnsGrant> = tcp_hosts
            .into_iter()
            .filter_map(|h| normalise_dns_name(h).ok().map(DnsGrant::Name))
            .collect();
        grants.extend(dns.iter().filter_map(|g| DnsGrant::parse(g).ok()));
        LookupNames { grants }
    }

    /// No name may be looked up.
    pub fn is_empty(&self) -> bool {
        self.grants.is_empty()
    }
}

/// Whether `name` may be looked up under these grants: the name to hand the resolver (in the
/// form it was checked in, so what is resolved is what was allowed), or `None`. IP literals
/// pass unchanged (they resolve to themselves, no query is sent). A name is checked after
/// normalisation (case, one trailing dot) and refused outright when it is not a plain ASCII
/// host name: a resolver could otherwise map it (IDNA, percent-decoding) to a name never
/// checked.
pub fn lookup_allowed(names: &LookupNames, name: &str) -> Option<String> {
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<IpAddr>().is_ok() {
        return Some(name.to_string());
    }
    let normal = normalise_dns_name(name).ok()?;
    names
        .grants
        .iter()
        .any(|g| g.matches(&normal))
        .then_some(normal)
}

impl ip_name_lookup::Host for LookupView<'_> {
    fn resolve_addresses(
        &mut self,
        network: Resource<Network>,
        name: String,
    ) -> Result<Resource<ResolveAddressStream>, SocketError> {
        let Some(checked) = lookup_allowed(self.names, &name) else {
            let mut shown = name;
            clip(&mut shown, 256);
            let message = format!(
                "name lookup of {shown:?} refused: only names granted in capabilities.tcp or capabilities.dns are resolved"
            );
            tracing::info!("{message}");
            self.notes.push(message);
            return Err(ErrorCode::AccessDenied.into());
        };
        ip_name_lookup::Host::resolve_addresses(&mut self.sockets, network, checked)
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
    /// Host names the guest may look up (those its TCP grants name and its `dns` grants).
    pub lookup_names: LookupNames,
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
    // Names a TCP grant names are looked up only when it may connect somewhere; `dns` names
    // always (a `dns` grant alone connects nowhere: TCP stays off, every address refused).
    let tcp_hosts = if tcp.allowed.is_empty() {
        Vec::new()
    } else {
        tcp.names.iter().collect()
    };
    let lookup_names = LookupNames::new(tcp_hosts, &caps.dns);
    builder.allow_tcp(!tcp.allowed.is_empty());
    builder.allow_ip_name_lookup(!lookup_names.is_empty());
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
        lookup_names,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_are_checked_in_the_form_they_are_resolved_in() {
        let names = LookupNames::new(
            &["db.example.com".to_string()],
            &["localhost".into(), "*.internal.example.com".into()],
        );
        let allowed = |n: &str| lookup_allowed(&names, n);
        // Case and one trailing dot do not matter; the resolver gets the checked form.
        assert_eq!(allowed("LocalHost."), Some("localhost".into()));
        assert_eq!(allowed("DB.example.COM"), Some("db.example.com".into()));
        assert_eq!(
            allowed("a.b.Internal.Example.com."),
            Some("a.b.internal.example.com".into())
        );
        assert_eq!(
            allowed("evil.com.internal.example.com"),
            Some("evil.com.internal.example.com".into())
        );
        // IP literals resolve to themselves.
        assert_eq!(allowed("127.0.0.1"), Some("127.0.0.1".into()));
        assert_eq!(allowed("::1"), Some("::1".into()));
        for refused in [
            "internal.example.com",
            "internal.example.com.evil",
            "xinternal.example.com",
            "secret.attacker.invalid",
            "localhost.attacker.invalid",
            "localhost..",
            "db.example.com.evil",
            // Spellings a resolver would map to another name are not guessed at.
            "db%2eexample.com",
            "db\u{3002}example.com",
            "ｄｂ.example.com",
            "a.internal.example.com\u{0}.evil",
            "",
        ] {
            assert_eq!(allowed(refused), None, "{refused:?}");
        }
        assert!(LookupNames::default().is_empty());
        assert_eq!(lookup_allowed(&LookupNames::default(), "localhost"), None);
    }
}
