use crate::bindings::host::{
    Filesystem, Host, LoadInfo, MemoryInfo, Pressure, PressureResource, Process, ProcessSort,
    SkillError, SystemInfo, UnitInfo,
};
use crate::state::SkillState;

use super::facts;

impl Host for SkillState {
    fn system(&mut self) -> wasmtime::Result<SystemInfo> {
        Ok(facts::system())
    }

    fn load(&mut self) -> wasmtime::Result<LoadInfo> {
        Ok(facts::load())
    }

    fn memory(&mut self) -> wasmtime::Result<MemoryInfo> {
        Ok(facts::memory())
    }

    fn pressure_of(&mut self, which: PressureResource) -> wasmtime::Result<Option<Pressure>> {
        Ok(facts::pressure(which))
    }

    fn filesystems(&mut self) -> wasmtime::Result<Vec<Filesystem>> {
        Ok(facts::filesystems())
    }

    fn processes(&mut self, sort: ProcessSort, limit: u32) -> wasmtime::Result<Vec<Process>> {
        Ok(facts::processes(sort, limit))
    }

    fn process_by_pid(&mut self, pid: u32) -> wasmtime::Result<Option<Process>> {
        Ok(facts::process(pid))
    }

    async fn unit_status(
        &mut self,
        unit: String,
    ) -> wasmtime::Result<Result<UnitInfo, SkillError>> {
        if !facts::valid_unit_name(&unit) {
            return Ok(Err(SkillError {
                code: "invalid-input".into(),
                message: format!("{unit:?} is not a valid systemd unit name"),
            }));
        }
        if !facts::systemd_available() {
            return Ok(Err(SkillError {
                code: "unavailable".into(),
                message: "this machine does not run systemd (/run/systemd/system is absent)".into(),
            }));
        }
        let output = tokio::process::Command::new("systemctl")
            .args(["show", "--no-pager", "--property=LoadState,ActiveState,SubState,MainPID,NRestarts,ActiveEnterTimestampMonotonic,Result", "--", &unit])
            .env_clear()
            .env("PATH", crate::capabilities::exec::SAFE_PATH)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output()
            .await;
        Ok(match output {
            Ok(out) if out.status.success() => Ok(facts::parse_unit_show(
                &unit,
                &String::from_utf8_lossy(&out.stdout),
            )),
            Ok(out) => Err(SkillError {
                code: "unavailable".into(),
                message: format!(
                    "systemctl show {unit} failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            }),
            Err(e) => Err(SkillError {
                code: "unavailable".into(),
                message: format!("cannot run systemctl: {e}"),
            }),
        })
    }
}
