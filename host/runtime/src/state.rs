//! The data of one Store: one invocation's WASI context, grants, limiter and capture buffers.
//! Built fresh for every invocation and dropped with its Store; nothing survives a call.

use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::capabilities::exec::{ExecPolicy, ExecRecord};
use crate::capabilities::http::HttpPolicy;
use crate::capabilities::log::LogBuffer;
use crate::capabilities::{HostNotes, LookupNames};
use crate::limits::StoreLimiter;

pub struct SkillState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) http: WasiHttpCtx,
    pub(crate) http_policy: HttpPolicy,
    pub(crate) limiter: StoreLimiter,
    pub(crate) log: LogBuffer,
    pub(crate) exec: ExecPolicy,
    pub(crate) exec_records: Vec<ExecRecord>,
    /// Exec calls refused unrecorded once `MAX_EXEC_RECORDS` were recorded.
    pub(crate) exec_refused_unrecorded: u64,
    /// Host names the guest may look up (see `capabilities::GuardedLookup`).
    pub(crate) lookup_names: LookupNames,
    /// Notes host calls add for the report (bounded).
    pub(crate) host_notes: HostNotes,
    /// When the invocation's wall-clock budget ends; host calls clamp their own waits to it.
    pub(crate) deadline: Instant,
    /// Bound for return value, each output stream, and the log.
    pub(crate) output_cap: usize,
}

impl WasiView for SkillState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for SkillState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            hooks: &mut self.http_policy,
            table: &mut self.table,
            ctx: &mut self.http,
        }
    }
}

/// `tend:skill/types` defines only types; nothing to implement.
impl crate::bindings::types::Host for SkillState {}
