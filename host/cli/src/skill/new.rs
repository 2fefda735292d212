//! `tend skill new <name> --lang rust|python|js --kind diagnose|repair`: a skill folder that
//! builds and runs unchanged (`tend skill build`, then `tend run`).

use std::path::Path;

use tend_runtime::{Manifest, SkillKind};

use super::build::{Lang, implied_level};
use crate::Failure;

const MANIFEST: &str = r#"[skill]
name = "{name}"
version = "0.1.0"
kind = "{kind}"
# 0 observe, 1 adjust (reversible), 2 disrupt (service impact), 3 critical.
level = {level}
description = "Describe what this skill {verb}"

[limits]
fuel = 1_000_000_000
memory_mib = 64
timeout_ms = 10_000
output_kib = 64

# Nothing is reachable that is not granted here. See docs/authoring.md for every key.
[capabilities]
{grants}
[input.schema]
type = "object"
additionalProperties = false
[input.schema.properties.verbose]
type = "boolean"

[output.schema]
type = "object"
required = [{required}]
"#;

const RUST_CARGO: &str = r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
tend-sdk = { path = "{sdk}" }
serde = { version = "1", features = ["derive"] }
serde_json = "1"

[profile.release]
opt-level = "s"
lto = true
strip = true
panic = "abort"

# A skill is its own workspace, so it builds wherever it is.
[workspace]
"#;

const RUST_DIAGNOSE: &str = r#"//! {name}: reads facts about this machine and reports them.
//!
//! Input: `{"verbose": bool}`. Output: `{"hostname", "uptime_seconds", "load_per_cpu"}`.

use serde::{Deserialize, Serialize};
use tend_sdk::{Diagnose, SkillError, host};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    #[serde(default)]
    verbose: bool,
}

#[derive(Serialize)]
struct Output {
    hostname: String,
    uptime_seconds: f64,
    load_per_cpu: f64,
}

struct Skill;

impl Diagnose for Skill {
    type Input = Input;
    type Output = Output;

    fn run(input: Input) -> Result<Output, SkillError> {
        let system = host::system();
        let load = host::load();
        if input.verbose {
            tend_sdk::log::info(&format!("kernel {}", system.kernel_release));
        }
        Ok(Output {
            hostname: system.hostname,
            uptime_seconds: system.uptime_seconds,
            load_per_cpu: load.one / f64::from(load.cpu_count.max(1)),
        })
    }
}

tend_sdk::export_diagnose!(Skill);
"#;

const RUST_REPAIR: &str = r#"//! {name}: changes this machine within its grants.
//!
//! Input: `{"verbose": bool}`. `plan` says what `run` would do; `run` does it.
//! Output: `{"action", "done", "status"}`.

use serde::{Deserialize, Serialize};
use tend_sdk::{Repair, SkillError, exec};

/// The one program this skill runs; the manifest grants exactly this.
const PROGRAM: &str = "/bin/true";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    #[serde(default)]
    verbose: bool,
}

#[derive(Serialize)]
struct Output {
    action: String,
    done: bool,
    status: Option<i32>,
}

struct Skill;

impl Repair for Skill {
    type Input = Input;
    type Output = Output;
    type Plan = Output;

    fn plan(_input: Input) -> Result<Output, SkillError> {
        Ok(Output { action: format!("run {PROGRAM}"), done: false, status: None })
    }

    fn run(input: Input) -> Result<Output, SkillError> {
        let out = exec::run(PROGRAM, &[], Some(5_000))?;
        if input.verbose {
            tend_sdk::log::info(&format!("{PROGRAM} exited with {:?}", out.status));
        }
        Ok(Output { action: format!("run {PROGRAM}"), done: out.status == Some(0), status: out.status })
    }
}

tend_sdk::export_repair!(Skill);
"#;

const PY_DIAGNOSE: &str = r#""""{name}: reads facts about this machine and reports them.

Input: {"verbose": bool}. Output: {"hostname", "uptime_seconds", "load_per_cpu"}.
"""

import tend_skill
from tend_skill import host


class Skill(tend_skill.Skill):
    def run(self, input):
        system = host.system()
        load = host.load()
        if input.get("verbose"):
            tend_skill.info(f"kernel {system.kernel_release}")
        return {
            "hostname": system.hostname,
            "uptime_seconds": system.uptime_seconds,
            "load_per_cpu": load.one / max(load.cpu_count, 1),
        }


WitWorld = tend_skill.diagnose(Skill)
"#;

const PY_REPAIR: &str = r#""""{name}: changes this machine within its grants.

Input: {"verbose": bool}. `plan` says what `run` would do; `run` does it.
Output: {"action", "done", "status"}.
"""

import tend_skill
from tend_skill import exec

PROGRAM = "/bin/true"  # the manifest grants exactly this


class Skill(tend_skill.Skill):
    def plan(self, input):
        return {"action": f"run {PROGRAM}", "done": False, "status": None}

    def run(self, input):
        out = exec.run(PROGRAM, [], 5000)
        if input.get("verbose"):
            tend_skill.info(f"{PROGRAM} exited with {out.status}")
        return {"action": f"run {PROGRAM}", "done": out.status == 0, "status": out.status}


WitWorld = tend_skill.repair(Skill)
"#;

const JS_DIAGNOSE: &str = r#"// {name}: reads facts about this machine and reports them.
//
// Input: {"verbose": bool}. Output: {"hostname", "uptime_seconds", "load_per_cpu"}.
import { diagnose, host, log } from 'tend-skill';

class Skill {
  run(input) {
    const system = host.system();
    const load = host.load();
    if (input.verbose) {
      log.info(`kernel ${system.kernelRelease}`);
    }
    return {
      hostname: system.hostname,
      uptime_seconds: system.uptimeSeconds,
      load_per_cpu: load.one / Math.max(load.cpuCount, 1),
    };
  }
}

export const { run } = diagnose(Skill);
"#;

const JS_REPAIR: &str = r#"// {name}: changes this machine within its grants.
//
// Input: {"verbose": bool}. `plan` says what `run` would do; `run` does it.
// Output: {"action", "done", "status"}.
import { repair, log } from 'tend-skill';
import { run as execRun } from 'tend:skill/exec@0.1.0';

const PROGRAM = '/bin/true'; // the manifest grants exactly this

class Skill {
  plan(_input) {
    return { action: `run ${PROGRAM}`, done: false, status: null };
  }

  run(input) {
    const out = execRun(PROGRAM, [], 5000);
    if (input.verbose) {
      log.info(`${PROGRAM} exited with ${out.status}`);
    }
    return { action: `run ${PROGRAM}`, done: out.status === 0, status: out.status ?? null };
  }
}

export const { run, plan } = repair(Skill);
"#;

fn fill(template: &str, vars: &[(&str, &str)]) -> String {
    vars.iter().fold(template.to_string(), |t, (k, v)| {
        t.replace(&format!("{{{k}}}"), v)
    })
}

fn write(path: &Path, text: &str) -> Result<(), Failure> {
    std::fs::write(path, text)
        .map_err(|e| Failure::host(format!("cannot write {}: {e}", path.display())))
}

pub fn new(name: &str, lang: Lang, kind: SkillKind, parent: &Path) -> Result<u8, Failure> {
    let dir = parent.join(name);
    if dir.exists() {
        return Err(Failure::bad_input(format!(
            "{} already exists; choose another name or remove it",
            dir.display()
        )));
    }
    let repair = kind == SkillKind::Repair;
    let (grants, required) = if repair {
        (
            "exec = [{ program = \"/bin/true\", args = [] }]\n",
            "\"action\", \"done\", \"status\"",
        )
    } else {
        ("", "\"hostname\", \"uptime_seconds\", \"load_per_cpu\"")
    };
    let kind_text = kind.to_string();
    let manifest_at = |level: &str| {
        fill(
            MANIFEST,
            &[
                ("name", name),
                ("kind", &kind_text),
                ("level", level),
                (
                    "verb",
                    if repair {
                        "changes"
                    } else {
                        "reads and reports"
                    },
                ),
                ("grants", grants),
                ("required", required),
            ],
        )
    };
    // Validate the name (and the whole template) the way every manifest is validated, before
    // anything is written. The declared level is the one the grants imply (computed by
    // tend-policy, as every runner does), so the manifest tells its reader the truth.
    let path = format!("{name}/skill.toml");
    let draft = Manifest::parse(&manifest_at("0"), &path).map_err(Failure::bad_input)?;
    let level = (implied_level(&draft).0 as u8).to_string();
    let manifest = manifest_at(&level);
    Manifest::parse(&manifest, &path).map_err(Failure::bad_input)?;

    // Only a Rust skill refers to Tend's files (the SDK by path, unpacked from the binary into
    // a versioned cache directory, or $TEND_HOME's); find them before writing.
    let home = match lang {
        Lang::Rust => Some(super::sdk::home()?),
        Lang::Python | Lang::Js => None,
    };
    std::fs::create_dir_all(parent)
        .map_err(|e| Failure::host(format!("cannot create {}: {e}", parent.display())))?;
    // Created here or not at all: a directory (or a link) that appeared since the check above,
    // in a shared parent such as /tmp, is someone else's, and writing the scaffold into it
    // would follow whatever links they left there.
    std::fs::create_dir(&dir).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            Failure::bad_input(format!(
                "{} already exists; choose another name or remove it",
                dir.display()
            ))
        } else {
            Failure::host(format!("cannot create {}: {e}", dir.display()))
        }
    })?;
    write(&dir.join("skill.toml"), &manifest)?;
    write(&dir.join("input.example.json"), "{ \"verbose\": true }\n")?;
    let vars = [("name", name)];
    match lang {
        Lang::Rust => {
            let home = home.unwrap_or_default();
            let sdk = home
                .join("sdk/rust")
                .canonicalize()
                .unwrap_or(home.join("sdk/rust"));
            let sdk = sdk.display().to_string();
            write(
                &dir.join("Cargo.toml"),
                &fill(RUST_CARGO, &[("name", name), ("sdk", &sdk)]),
            )?;
            std::fs::create_dir_all(dir.join("src"))
                .map_err(|e| Failure::host(format!("cannot create src/: {e}")))?;
            let src = if repair { RUST_REPAIR } else { RUST_DIAGNOSE };
            write(&dir.join("src/lib.rs"), &fill(src, &vars))?;
        }
        Lang::Python => {
            let src = if repair { PY_REPAIR } else { PY_DIAGNOSE };
            write(&dir.join("app.py"), &fill(src, &vars))?;
        }
        Lang::Js => {
            let src = if repair { JS_REPAIR } else { JS_DIAGNOSE };
            write(&dir.join("app.js"), &fill(src, &vars))?;
        }
    }
    crate::out(&format!(
        "created {dir}\nnext:\n  tend skill build {dir}\n  tend run {dir}/dist/{name}-0.1.0.wasm --manifest {dir}/skill.toml --insecure-unsigned --input @{dir}/input.example.json{plan}",
        dir = dir.display(),
        plan = if repair { " --plan" } else { "" }
    ));
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every scaffold declares exactly the level its grants imply (computed by tend-policy),
    /// so a fresh skill never builds or signs with a level warning.
    #[test]
    fn every_scaffold_declares_the_level_its_grants_imply() {
        let parent = tempfile::tempdir().expect("tempdir");
        for (lang, kind, level) in [
            (Lang::Python, SkillKind::Diagnose, 0),
            (Lang::Python, SkillKind::Repair, 2),
            (Lang::Js, SkillKind::Diagnose, 0),
            (Lang::Js, SkillKind::Repair, 2),
        ] {
            let name = format!("s-{lang:?}-{kind}").to_lowercase();
            new(&name, lang, kind, parent.path()).expect("scaffold");
            let path = parent.path().join(&name).join("skill.toml");
            let manifest = Manifest::from_file(&path).expect("manifest");
            assert_eq!(manifest.skill.level, level, "{name}");
            assert_eq!(
                super::super::build::level_warning(&manifest),
                None,
                "{name}"
            );
        }
    }
}
