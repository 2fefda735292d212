//! `tend skill build <dir>`: build a skill with its language's toolchain, check the
//! component against its manifest, write `dist/<name>-<version>.wasm`, precompile it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde::Serialize;
use tend_runtime::{Manifest, Runtime, inspect};

use crate::{CacheArgs, Failure};

/// The language of a skill folder, from the files in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Lang {
    Rust,
    Python,
    Js,
}

impl Lang {
    pub fn detect(dir: &Path) -> Result<Lang, Failure> {
        let found: Vec<Lang> = [
            (Lang::Rust, "Cargo.toml"),
            (Lang::Python, "app.py"),
            (Lang::Js, "app.js"),
        ]
        .into_iter()
        .filter(|(_, f)| dir.join(f).is_file())
        .map(|(l, _)| l)
        .collect();
        match found.as_slice() {
            [one] => Ok(*one),
            [] => Err(Failure::bad_input(format!(
                "{}: no Cargo.toml, app.py or app.js: cannot tell the skill's language",
                dir.display()
            ))),
            _ => Err(Failure::bad_input(format!(
                "{}: more than one of Cargo.toml, app.py, app.js: cannot tell the skill's language",
                dir.display()
            ))),
        }
    }
}

/// A Tend checkout: `$TEND_HOME`, else the nearest ancestor of `start` or of the `tend` binary
/// that has `wit/skill` and `sdk/`. Building and scaffolding skills do not need one (they use
/// the files embedded in the binary, see [`super::sdk`]); `tend up` uses it to find the
/// checkout's `skills/` catalog.
pub fn tend_home(start: &Path) -> Result<PathBuf, Failure> {
    let is_home = |p: &Path| p.join("wit/skill").is_dir() && p.join("sdk").is_dir();
    if let Some(home) = std::env::var_os("TEND_HOME") {
        let home = PathBuf::from(home);
        return if is_home(&home) {
            Ok(home)
        } else {
            Err(Failure::bad_input(format!(
                "TEND_HOME={} has no wit/skill and sdk/ directories",
                home.display()
            )))
        };
    }
    let start = start.canonicalize().unwrap_or_else(|_| start.to_path_buf());
    let exe = std::env::current_exe().ok();
    start
        .ancestors()
        .chain(exe.iter().flat_map(|e| e.ancestors()))
        .find(|p| is_home(p))
        .map(Path::to_path_buf)
        .ok_or_else(|| {
            Failure::bad_input(
                "cannot find Tend's wit/skill and sdk/ directories: set TEND_HOME to a Tend checkout",
            )
        })
}

fn missing(tool: &str, install: &str) -> Failure {
    Failure::bad_input(format!("{tool} not found: install it with `{install}`"))
}

pub(crate) fn have(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn run_tool(cmd: &mut Command, what: &str) -> Result<std::process::Output, Failure> {
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| Failure::host(format!("cannot run {what}: {e}")))?;
    if !out.status.success() {
        return Err(Failure::bad_input(format!(
            "{what} failed ({})",
            out.status
        )));
    }
    Ok(out)
}

fn build_rust(dir: &Path) -> Result<PathBuf, Failure> {
    if !have("cargo", "--version") {
        return Err(missing("cargo", "curl https://sh.rustup.rs -sSf | sh"));
    }
    let targets = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if !targets.lines().any(|l| l.trim() == "wasm32-wasip2") {
        return Err(missing(
            "the wasm32-wasip2 Rust target",
            "rustup target add wasm32-wasip2",
        ));
    }
    let out = run_tool(
        Command::new("cargo")
            .args(["build", "--release", "--target", "wasm32-wasip2"])
            .args([
                "--message-format",
                "json-render-diagnostics",
                "--manifest-path",
            ])
            .arg(dir.join("Cargo.toml")),
        "cargo build",
    )?;
    // The cdylib artifact of the package in `dir` is the component.
    let text = String::from_utf8_lossy(&out.stdout);
    let manifest_path = dir.join("Cargo.toml").canonicalize().unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .filter(|m| {
            m["manifest_path"]
                .as_str()
                .is_some_and(|p| Path::new(p) == manifest_path)
        })
        .flat_map(|m| {
            m["filenames"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter_map(|f| f.as_str().map(PathBuf::from))
                .collect::<Vec<_>>()
        })
        .find(|f| f.extension().is_some_and(|e| e == "wasm"))
        .ok_or_else(|| {
            Failure::bad_input(format!(
                "{}: cargo built no .wasm: is the crate-type [\"cdylib\"]?",
                dir.display()
            ))
        })
}

fn build_python(dir: &Path, home: &Path, world: &str, out: &Path) -> Result<(), Failure> {
    // componentize-py on PATH, else the pinned one installed into the cache with pip.
    let mut cmd = if have("componentize-py", "--version") {
        Command::new("componentize-py")
    } else {
        super::sdk::componentize_py()?
    };
    run_tool(
        cmd.arg("-d")
            .arg(home.join("wit/skill"))
            .args(["-w", world, "componentize", "app", "-p"])
            .arg(dir)
            .arg("-p")
            .arg(home.join("sdk/python"))
            .arg("-o")
            .arg(out)
            .stdout(Stdio::null()),
        "componentize-py",
    )?;
    Ok(())
}

fn build_js(
    dir: &Path,
    home: &Path,
    world: &str,
    manifest: &Manifest,
    out: &Path,
) -> Result<(), Failure> {
    if !have("node", "--version") {
        return Err(missing("node", "apt-get install nodejs"));
    }
    let sdk = super::sdk::js_toolchain(home)?;
    let mut cmd = Command::new("node");
    cmd.arg(sdk.join("build.mjs"))
        .arg("--entry")
        .arg(dir.join("app.js"))
        .arg("--wit")
        .arg(home.join("wit/skill"))
        .args(["--world", world, "--out"])
        .arg(out)
        .stdout(Stdio::null());
    // Least privilege at build time too: no outgoing HTTP in the component unless granted.
    if manifest.capabilities.http.is_empty() {
        cmd.args(["--disable", "http"]);
    }
    run_tool(&mut cmd, "componentize-js")?;
    Ok(())
}

/// What `tend skill build` reports.
#[derive(Debug, Serialize)]
pub struct BuildReport {
    pub name: String,
    pub version: String,
    pub lang: Lang,
    pub kind: String,
    pub output: PathBuf,
    pub digest: String,
    pub size_bytes: usize,
    pub build_ms: u64,
    pub precompile_ms: u64,
    /// Imports the manifest's grants make useless (every use will be refused).
    pub warnings: Vec<String>,
}

/// WASI imports that need a grant to do anything, and the grant that enables them.
fn ungranted_imports(world: &inspect::ComponentWorld, manifest: &Manifest) -> Vec<String> {
    let c = &manifest.capabilities;
    let rules: [(&str, bool, &str); 3] = [
        ("wasi:http/outgoing-handler", c.http.is_empty(), "http"),
        ("wasi:sockets/tcp", c.tcp.is_empty(), "tcp"),
        (
            "wasi:filesystem/preopens",
            c.fs_read.is_empty() && c.fs_write.is_empty(),
            "fs_read",
        ),
    ];
    rules
        .iter()
        .filter(|(prefix, ungranted, _)| {
            *ungranted && world.imports.iter().any(|i| i.name.starts_with(prefix))
        })
        .map(|(prefix, _, key)| {
            format!(
                "imports {prefix} but the manifest grants no `{key}`: every such use will be refused (fine if the language runtime imports it by default)"
            )
        })
        .collect()
}

/// The level the manifest's grants imply, with the grants that imply more than `declared`.
/// The computation is tend-policy's, the one every runner uses.
pub fn implied_level(manifest: &Manifest) -> (tend_policy::Level, Vec<String>) {
    let grants = manifest.grants();
    let declared = manifest.declared_level();
    let (level, reasons) = tend_policy::admit::effective_level(
        &tend_policy::admit::Verified {
            declared,
            grants: &grants,
        },
        &tend_policy::admit::Local {
            name: "",
            environment: "",
            floor: tend_policy::Level::L0,
            ceiling: tend_policy::Level::L3,
        },
    );
    let above = reasons
        .iter()
        .filter(|r| {
            matches!(r, tend_policy::Reason::CapabilityFloor { level, .. } if *level > declared)
        })
        .map(ToString::to_string)
        .collect();
    (level, above)
}

/// A warning when the declared `skill.level` is below what the grants make it: every runner
/// runs it (and asks for approvals) at the higher level anyway, but whoever reads the manifest
/// is told less than the truth.
pub fn level_warning(manifest: &Manifest) -> Option<String> {
    let declared = manifest.declared_level();
    let (level, why) = implied_level(manifest);
    (level > declared).then(|| {
        format!(
            "skill.level is {} but the grants make it {level} ({}): it runs, and needs approvals, as {level}; declare `level = {}`",
            declared as u8,
            why.join("; "),
            level as u8
        )
    })
}

pub fn build(dir: &Path, json: bool, cache: &CacheArgs) -> Result<u8, Failure> {
    let manifest_path = dir.join("skill.toml");
    let manifest = Manifest::from_file(&manifest_path).map_err(Failure::bad_input)?;
    let world = manifest.skill.kind.to_string();
    let dist = dir.join("dist");
    let out = dist.join(format!(
        "{}-{}.wasm",
        manifest.skill.name, manifest.skill.version
    ));
    // A build that fails must not leave the previous build's component for `tend run` (or a
    // publish) to pick up as if it were this source's: the old one goes before anything else
    // can fail, and only a checked component is renamed into its place.
    match std::fs::remove_file(&out) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(Failure::host(format!(
                "cannot remove the previous build {}: {e}",
                out.display()
            )));
        }
    }
    let lang = Lang::detect(dir)?;
    let home = super::sdk::home()?;
    std::fs::create_dir_all(&dist)
        .map_err(|e| Failure::host(format!("cannot create {}: {e}", dist.display())))?;
    let staging = dist.join(format!(".{}.building.wasm", manifest.skill.name));
    if !json {
        eprintln!(
            "building {} {} ({lang:?}, {world}) ...",
            manifest.skill.name, manifest.skill.version
        );
    }

    let started = Instant::now();
    let built = match lang {
        Lang::Rust => build_rust(dir).and_then(|artifact| {
            std::fs::copy(&artifact, &staging)
                .map(drop)
                .map_err(|e| Failure::host(format!("cannot copy {}: {e}", artifact.display())))
        }),
        Lang::Python => build_python(dir, &home, &world, &staging),
        Lang::Js => build_js(dir, &home, &world, &manifest, &staging),
    };
    if let Err(e) = built {
        let _ = std::fs::remove_file(&staging);
        return Err(e);
    }
    let build_ms = started.elapsed().as_millis() as u64;
    let bytes = std::fs::read(&staging)
        .map_err(|e| Failure::host(format!("cannot read {}: {e}", staging.display())))?;

    // Check the component against the manifest and precompile it, before it is published to
    // dist/: a component that fails here never appears there.
    let runtime = Runtime::new(cache.runtime_config())?;
    let started = Instant::now();
    let checked = runtime.load(&bytes, Some(manifest.clone()));
    let precompile_ms = started.elapsed().as_millis() as u64;
    if let Err(e) = checked {
        let _ = std::fs::remove_file(&staging);
        return Err(Failure::bad_input(format!("{}: {e}", dir.display())));
    }
    let world_info = inspect::inspect(&runtime, &bytes)?;
    std::fs::rename(&staging, &out)
        .map_err(|e| Failure::host(format!("cannot write {}: {e}", out.display())))?;

    let report = BuildReport {
        name: manifest.skill.name.to_string(),
        version: manifest.skill.version.clone(),
        lang,
        kind: world,
        output: out,
        digest: world_info.digest.clone(),
        size_bytes: bytes.len(),
        build_ms,
        precompile_ms,
        warnings: level_warning(&manifest)
            .into_iter()
            .chain(ungranted_imports(&world_info, &manifest))
            .collect(),
    };
    if json {
        crate::out(&serde_json::to_string_pretty(&report).map_err(Failure::host)?);
    } else {
        for w in &report.warnings {
            eprintln!("warning: {w}");
        }
        crate::out(&format!(
            "built {} ({:.1} MiB, {}) in {:.1} s; checked and precompiled in {:.1} s",
            report.output.display(),
            report.size_bytes as f64 / (1024.0 * 1024.0),
            report.digest,
            build_ms as f64 / 1000.0,
            precompile_ms as f64 / 1000.0
        ));
    }
    Ok(0)
}
