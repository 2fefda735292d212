//! The files a skill is built against — the `tend:skill` WIT package and the Rust, Python and
//! JavaScript SDKs — embedded in the binary, so `tend skill new` and `tend skill build` need
//! no Tend checkout.
//!
//! They are unpacked, laid out as in a checkout (`wit/skill`, `sdk/rust`, `sdk/python`,
//! `sdk/js`), into `$XDG_CACHE_HOME/tend/sdk/<tend version>-<hash>/` (else
//! `~/.cache/tend/sdk/...`). The hash covers every embedded byte, so a Tend built from other
//! sources never shares a directory with this one, and a directory, once there, is never
//! rewritten: it is written in a temporary directory beside it and renamed into place whole,
//! so two builds at once never see half a tree. The JavaScript toolchain (componentize-js and
//! rolldown, pinned by the embedded `package-lock.json`) is installed with npm into
//! `<cache>/tend/js/<hash of the lock>/` the first time a JavaScript skill is built, and
//! linked in as the unpacked `sdk/js/node_modules`.
//!
//! Every build runs what is in these directories (the WIT, the helpers, the npm and pip
//! toolchains), so they are the user's alone: `tend` creates `<cache>/tend` and its `sdk`, `js`
//! and `python` directories with mode 0700, and refuses one that is a symbolic link, is owned
//! by another user or is writable by others (a shared `XDG_CACHE_HOME` such as `/tmp/cache`
//! would otherwise let another local user plant a toolchain that the next build runs).
//!
//! `TEND_HOME` (a Tend checkout) overrides all of this, for Tend's own developers.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::Failure;

/// Every embedded file, by its path in a checkout. A unit test checks that this is every file
/// of `wit/skill` and `sdk/` that a build uses.
const FILES: &[(&str, &str)] = &[
    (
        "wit/skill/skill.wit",
        include_str!("../../../../wit/skill/skill.wit"),
    ),
    (
        "sdk/rust/Cargo.toml",
        include_str!("../../../../sdk/rust/Cargo.toml"),
    ),
    (
        "sdk/rust/src/lib.rs",
        include_str!("../../../../sdk/rust/src/lib.rs"),
    ),
    (
        "sdk/python/tend_skill.py",
        include_str!("../../../../sdk/python/tend_skill.py"),
    ),
    (
        "sdk/js/tend-skill.js",
        include_str!("../../../../sdk/js/tend-skill.js"),
    ),
    (
        "sdk/js/build.mjs",
        include_str!("../../../../sdk/js/build.mjs"),
    ),
    (
        "sdk/js/wasi-wit/io.wit",
        include_str!("../../../../sdk/js/wasi-wit/io.wit"),
    ),
    (
        "sdk/js/wasi-wit/clocks.wit",
        include_str!("../../../../sdk/js/wasi-wit/clocks.wit"),
    ),
    (
        "sdk/js/wasi-wit/filesystem.wit",
        include_str!("../../../../sdk/js/wasi-wit/filesystem.wit"),
    ),
    (
        "sdk/js/package.json",
        include_str!("../../../../sdk/js/package.json"),
    ),
    (
        "sdk/js/package-lock.json",
        include_str!("../../../../sdk/js/package-lock.json"),
    ),
];

/// `<tend version>-<16 hex of the sha256 over every embedded path and file>`.
pub fn version_dir_name() -> String {
    let mut all = Vec::new();
    for (path, text) in FILES {
        // Length-prefixed, so no two different sets of files hash alike.
        for part in [path.as_bytes(), text.as_bytes()] {
            all.extend_from_slice(&(part.len() as u64).to_be_bytes());
            all.extend_from_slice(part);
        }
    }
    let hash = tend_registry::envelope::sha256_hex(&all);
    format!("{}-{}", env!("CARGO_PKG_VERSION"), &hash[..16])
}

/// `$XDG_CACHE_HOME/tend`, else `~/.cache/tend`: created (or checked) private to the user.
pub fn cache_root() -> Result<PathBuf, Failure> {
    let root = cache_root_path()?;
    if let Some(parent) = root.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| Failure::host(format!("cannot create {}: {e}", parent.display())))?;
    }
    private_dir(&root)?;
    Ok(root)
}

/// `<cache root>/<name>`, created (or checked) private to the user.
fn cache_dir(name: &str) -> Result<PathBuf, Failure> {
    let dir = cache_root()?.join(name);
    private_dir(&dir)?;
    Ok(dir)
}

/// Create `dir` with mode 0700, or check the one there: a real directory (not a symbolic
/// link), owned by this user and writable by no one else. One that is only readable by others
/// (an older Tend created them 0755) is narrowed to 0700.
fn private_dir(dir: &Path) -> Result<(), Failure> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let refuse = |why: String| {
        Failure::bad_input(format!(
            "{}: {why}; Tend runs what it unpacks and installs there, so it must be yours alone              (remove it, or set XDG_CACHE_HOME to a directory of your own)",
            dir.display()
        ))
    };
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(Failure::host(format!(
                "cannot create {}: {e}",
                dir.display()
            )));
        }
    }
    let meta = std::fs::symlink_metadata(dir)
        .map_err(|e| Failure::host(format!("cannot read {}: {e}", dir.display())))?;
    if meta.file_type().is_symlink() {
        return Err(refuse("it is a symbolic link".into()));
    }
    if !meta.is_dir() {
        return Err(refuse("it is not a directory".into()));
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(refuse(format!(
            "it is owned by uid {}, not by you (uid {me})",
            meta.uid()
        )));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(refuse(format!(
            "other users can write to it (mode {:o})",
            meta.mode() & 0o777
        )));
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| Failure::host(format!("cannot chmod {}: {e}", dir.display())))?;
    }
    Ok(())
}

fn cache_root_path() -> Result<PathBuf, Failure> {
    std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        })
        .map(|c| c.join("tend"))
        .ok_or_else(|| {
            Failure::bad_input(
                "neither XDG_CACHE_HOME nor HOME is set: Tend has nowhere to unpack its skill SDK",
            )
        })
}

/// The embedded files, unpacked (once) under [`cache_root`]; returns the directory that holds
/// `wit/skill` and `sdk/`.
pub fn unpacked() -> Result<PathBuf, Failure> {
    let parent = cache_dir("sdk")?;
    let dir = parent.join(version_dir_name());
    let cannot = |what: &str, p: &Path, e: std::io::Error| {
        Failure::host(format!("cannot {what} {}: {e}", p.display()))
    };
    // The directory's name promises its content; check it (a few small files) rather than
    // build against an SDK someone edited or a disk that lost part of it.
    let intact = |dir: &Path| {
        FILES.iter().all(|(path, text)| {
            std::fs::read(dir.join(path)).is_ok_and(|b| b.as_slice() == text.as_bytes())
        })
    };
    let _aside;
    if dir.is_dir() {
        if intact(&dir) {
            return Ok(dir);
        }
        eprintln!(
            "{} differs from the SDK embedded in this tend: unpacking it again",
            dir.display()
        );
        let aside = tempfile::Builder::new()
            .prefix(".replaced-")
            .tempdir_in(&parent)
            .map_err(|e| cannot("write in", &parent, e))?;
        std::fs::rename(&dir, aside.path().join("old")).map_err(|e| cannot("replace", &dir, e))?;
        // Removed (with any toolchain installed in it) once the new tree is in place.
        _aside = aside;
    }
    let staging = tempfile::Builder::new()
        .prefix(".unpacking-")
        .tempdir_in(&parent)
        .map_err(|e| cannot("write in", &parent, e))?;
    for (path, text) in FILES {
        let file = staging.path().join(path);
        if let Some(p) = file.parent() {
            std::fs::create_dir_all(p).map_err(|e| cannot("create", p, e))?;
        }
        std::fs::write(&file, text).map_err(|e| cannot("write", &file, e))?;
    }
    match std::fs::rename(staging.path(), &dir) {
        Ok(()) => {
            // Renamed away: nothing left for the TempDir to remove.
            let _ = staging.keep();
            Ok(dir)
        }
        // Another build unpacked the same files first: theirs are as good as ours.
        Err(_) if dir.is_dir() && intact(&dir) => Ok(dir),
        Err(e) => Err(cannot("write", &dir, e)),
    }
}

/// Where a build finds `wit/skill` and `sdk/`: `$TEND_HOME` (a Tend checkout, for Tend's own
/// developers) if set, else the embedded files, unpacked.
pub fn home() -> Result<PathBuf, Failure> {
    match std::env::var_os("TEND_HOME").filter(|v| !v.is_empty()) {
        Some(_) => super::build::tend_home(Path::new(".")),
        None => unpacked(),
    }
}

/// The pinned versions of the JavaScript toolchain, for progress lines.
fn js_versions() -> String {
    let package = FILES
        .iter()
        .find(|(p, _)| *p == "sdk/js/package.json")
        .map(|(_, t)| *t)
        .unwrap_or_default();
    let deps = serde_json::from_str::<serde_json::Value>(package)
        .ok()
        .and_then(|v| v.get("dependencies").cloned())
        .and_then(|d| d.as_object().cloned())
        .unwrap_or_default();
    deps.iter()
        .map(|(name, v)| format!("{name} {}", v.as_str().unwrap_or("?")))
        .collect::<Vec<_>>()
        .join(", ")
}

const COMPONENTIZE_JS: &str = "node_modules/@bytecodealliance/componentize-js";

/// `<16 hex>` of the embedded `package.json` and `package-lock.json`: the toolchain's identity.
fn js_lock_hash() -> String {
    let mut all = Vec::new();
    for (path, text) in FILES {
        if matches!(*path, "sdk/js/package.json" | "sdk/js/package-lock.json") {
            all.extend_from_slice(&(text.len() as u64).to_be_bytes());
            all.extend_from_slice(text.as_bytes());
        }
    }
    tend_registry::envelope::sha256_hex(&all)[..16].to_string()
}

/// The `sdk/js` directory to build JavaScript skills with, its toolchain installed: `home`'s if
/// it has one (a developer's checkout after `npm ci`), else the unpacked copy's. That one's
/// `node_modules` is a link to `<cache>/js/<hash of package.json and the lock>/node_modules`,
/// installed there with `npm ci` the first time (progress on stderr), so a Tend upgrade that
/// keeps the same pinned toolchain reuses it instead of downloading it again.
pub fn js_toolchain(home: &Path) -> Result<PathBuf, Failure> {
    let js = unpacked()?.join("sdk/js");
    let own = home.join("sdk/js");
    // A checkout's own toolchain (TEND_HOME); the unpacked copy's is checked below.
    if own != js && own.join(COMPONENTIZE_JS).is_dir() {
        return Ok(own);
    }
    let parent = cache_dir("js")?;
    let tool = parent.join(js_lock_hash());
    // The unpacked copy's `node_modules` is used only if it is a link to this cache's
    // toolchain for this lock: a link elsewhere (planted, or a cache copied from another
    // machine or checkout) is replaced, never followed.
    let expected = tool.join("node_modules");
    let link = js.join("node_modules");
    let linked = || std::fs::read_link(&link).is_ok_and(|t| t == expected);
    if linked() && tool.join(COMPONENTIZE_JS).is_dir() {
        return Ok(js);
    }
    if !tool.join(COMPONENTIZE_JS).is_dir() {
        install_js_toolchain(&js, &parent, &tool)?;
    }
    // Link it in: a link made under a temporary name, then renamed over whatever is there.
    let tmp = js.join(format!(".node_modules-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&expected, &tmp)
        .and_then(|()| std::fs::rename(&tmp, &link))
        .or_else(|e| {
            let _ = std::fs::remove_file(&tmp);
            // Another build linked it first.
            if linked() { Ok(()) } else { Err(e) }
        })
        .map_err(|e| Failure::host(format!("cannot link {}: {e}", link.display())))?;
    Ok(js)
}

/// `npm ci` of the embedded lock in a staging directory under `parent`, renamed to `tool`
/// only when complete.
fn install_js_toolchain(js: &Path, parent: &Path, tool: &Path) -> Result<(), Failure> {
    if !super::build::have("npm", "--version") {
        return Err(Failure::bad_input(
            "npm not found: building a JavaScript skill installs componentize-js with npm the first time; install it with `apt-get install npm`",
        ));
    }
    eprintln!(
        "installing the JavaScript skill toolchain ({}) with npm into {} (first JavaScript build only) ...",
        js_versions(),
        tool.display()
    );
    let started = Instant::now();
    let staging = tempfile::Builder::new()
        .prefix(".npm-")
        .tempdir_in(parent)
        .map_err(|e| Failure::host(format!("cannot write in {}: {e}", parent.display())))?;
    for f in ["package.json", "package-lock.json"] {
        std::fs::copy(js.join(f), staging.path().join(f))
            .map_err(|e| Failure::host(format!("cannot copy {f}: {e}")))?;
    }
    let status = Command::new("npm")
        .args([
            "ci",
            "--no-audit",
            "--no-fund",
            "--update-notifier=false",
            "--loglevel=error",
        ])
        .current_dir(staging.path())
        .stdin(Stdio::null())
        // npm's summary is progress, not the command's output.
        .stdout(std::io::stderr())
        .stderr(Stdio::inherit())
        .status()
        .map_err(|e| Failure::host(format!("cannot run npm: {e}")))?;
    if !status.success() {
        return Err(Failure::bad_input(format!(
            "npm ci of the JavaScript skill toolchain failed ({status}); nothing was installed in {}",
            tool.display()
        )));
    }
    match std::fs::rename(staging.path(), tool) {
        Ok(()) => {
            let _ = staging.keep();
        }
        // Another build installed it first.
        Err(_) if tool.join(COMPONENTIZE_JS).is_dir() => {}
        Err(e) => {
            return Err(Failure::host(format!(
                "cannot write {}: {e}",
                tool.display()
            )));
        }
    }
    eprintln!(
        "installed the JavaScript skill toolchain in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The componentize-py release Python skills are built with (as in scripts/lib.sh).
pub const COMPONENTIZE_PY_VERSION: &str = "0.25.1";

/// The sha256 of every wheel of that release on PyPI (it has no dependencies): pip installs it
/// with `--require-hashes`, so an index, mirror or `--find-links` directory that serves other
/// bytes under its name installs nothing. Platforms without a wheel here (musl) install it
/// themselves and put it on PATH.
const COMPONENTIZE_PY_WHEELS: &[(&str, &str)] = &[
    (
        "manylinux_2_28_x86_64",
        "8623cd8cab8453cb0cd8bf03f3c7103420d06f2f3d360186a280a70a1ca5e89f",
    ),
    (
        "manylinux_2_28_aarch64",
        "7b6a87c520358166843af0daa86d2312d7af4cbcbbf1e598951085cf7f2991ca",
    ),
    (
        "macosx_11_0_arm64",
        "a556991534cc496207a9d2ca733c4b0f17ed38ef56a8d6b5f1847fdf1225dd1b",
    ),
    (
        "macosx_10_12_x86_64",
        "65fbc4a94df1de8acf7da50a1f5ed1711230188844e53e6332d99029be4e0afa",
    ),
    (
        "win_amd64",
        "c7fd552fb0849858b0c1e8981543ed5dff4b0cc1597a8ea0bc26a495786dc0c6",
    ),
];

/// The pip requirements file that pins componentize-py by version and by hash.
fn componentize_py_requirements() -> String {
    let mut text = format!("componentize-py=={COMPONENTIZE_PY_VERSION}");
    for (_, hash) in COMPONENTIZE_PY_WHEELS {
        text.push_str(&format!(" \\\n    --hash=sha256:{hash}"));
    }
    text.push('\n');
    text
}

/// A command that runs the pinned componentize-py from `<cache>/python/componentize-py-<v>/`,
/// installing it there with `python3 -m pip install --target` the first time (progress on
/// stderr). Without a `python3` that has pip, the error names the command to run instead.
pub fn componentize_py() -> Result<Command, Failure> {
    let parent = cache_dir("python")?;
    let dir = parent.join(format!("componentize-py-{COMPONENTIZE_PY_VERSION}"));
    let command = |dir: &Path| {
        let mut cmd = Command::new("python3");
        cmd.env("PYTHONPATH", dir).args([
            "-c",
            "import sys; from componentize_py import script; sys.exit(script())",
        ]);
        cmd
    };
    if dir.join("componentize_py").is_dir() {
        return Ok(command(&dir));
    }
    let install = format!("pip install componentize-py=={COMPONENTIZE_PY_VERSION}");
    if !Command::new("python3")
        .args(["-m", "pip", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        return Err(Failure::bad_input(format!(
            "componentize-py not found, and no python3 with pip to install it into {}: install it with `{install}`",
            dir.display()
        )));
    }
    eprintln!(
        "installing componentize-py {COMPONENTIZE_PY_VERSION} with pip into {} (first Python build only) ...",
        dir.display()
    );
    let started = Instant::now();
    let staging = tempfile::Builder::new()
        .prefix(".pip-")
        .tempdir_in(&parent)
        .map_err(|e| Failure::host(format!("cannot write in {}: {e}", parent.display())))?;
    let requirements = parent.join(format!(".requirements-{}.txt", std::process::id()));
    std::fs::write(&requirements, componentize_py_requirements())
        .map_err(|e| Failure::host(format!("cannot write {}: {e}", requirements.display())))?;
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-input",
            // Wheels only, each checked against its hash (no source build runs a setup.py).
            "--require-hashes",
            "--only-binary=:all:",
            "--target",
        ])
        .arg(staging.path())
        .arg("--requirement")
        .arg(&requirements)
        .env("PIP_ROOT_USER_ACTION", "ignore")
        .stdin(Stdio::null())
        .stdout(std::io::stderr())
        .stderr(Stdio::inherit())
        .status()
        .map_err(|e| Failure::host(format!("cannot run python3 -m pip: {e}")));
    let _ = std::fs::remove_file(&requirements);
    let status = status?;
    if !status.success() {
        return Err(Failure::bad_input(format!(
            "pip could not install componentize-py ({status}); nothing was installed in {}; install it yourself with `{install}`",
            dir.display()
        )));
    }
    match std::fs::rename(staging.path(), &dir) {
        Ok(()) => {
            let _ = staging.keep();
        }
        Err(_) if dir.join("componentize_py").is_dir() => {}
        Err(e) => {
            return Err(Failure::host(format!(
                "cannot write {}: {e}",
                dir.display()
            )));
        }
    }
    eprintln!(
        "installed componentize-py in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(command(&dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file of `wit/skill` and the SDKs that a build reads is embedded (a new SDK file
    /// that is not would build in a checkout and fail with only the binary).
    #[test]
    fn every_sdk_file_is_embedded() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut on_disk = Vec::new();
        let mut stack = vec![root.join("wit/skill"), root.join("sdk")];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).expect("read dir").flatten() {
                let p = e.path();
                let name = e.file_name().to_string_lossy().into_owned();
                if matches!(name.as_str(), "node_modules" | "__pycache__" | "target")
                    || name.starts_with('.')
                {
                    continue;
                }
                if p.is_dir() {
                    stack.push(p);
                } else {
                    let rel = p.strip_prefix(&root).expect("under root");
                    on_disk.push(rel.to_string_lossy().into_owned());
                }
            }
        }
        on_disk.sort();
        let mut embedded: Vec<String> = FILES.iter().map(|(p, _)| p.to_string()).collect();
        embedded.sort();
        assert_eq!(on_disk, embedded);
        for (p, text) in FILES {
            assert_eq!(
                std::fs::read_to_string(root.join(p)).expect("read"),
                *text,
                "{p}"
            );
        }
    }

    #[test]
    fn the_directory_name_carries_the_version_and_a_content_hash() {
        let name = version_dir_name();
        let (version, hash) = name.rsplit_once('-').expect("version-hash");
        assert_eq!(version, env!("CARGO_PKG_VERSION"));
        assert_eq!(hash.len(), 16);
        assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
