//! The binary alone is enough to write a skill: `tend skill new`, `tend skill build` and `tend
//! run` in a directory outside any checkout, with `TEND_HOME` unset and `HOME` a fresh temp
//! directory (the embedded SDK is unpacked into its `.cache/tend/sdk/`). Plus what a build, a
//! signature and a publication must never get wrong: a failed build leaves no component, a
//! manifest that understates its level is called out, the same bytes under another signed
//! manifest are not "nothing changed", and a JavaScript skill reads granted files only.
//!
//! The JavaScript and Python tests install componentize-js (npm) and componentize-py (pip)
//! the first time; their cache (`XDG_CACHE_HOME`) is shared across test runs in
//! `<target>/authoring-binary-cache`, so only the first run in a target directory downloads
//! them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use crate::registry::{Registry, World, err};
use crate::support::*;

/// Where cargo and rustup live for the real user: a skill's `cargo build` keeps using them
/// when `HOME` is a temp directory.
fn real_home_dir(var: &str, under_home: &str) -> PathBuf {
    std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(under_home))
}

/// `tend` as someone with only the binary: in `work`, no `TEND_HOME`, `HOME=home`,
/// `XDG_CACHE_HOME` only if given, and the caller's `PATH` unless one is given.
fn bare(work: &Path, home: &Path, xdg: Option<&Path>, args: &[&str]) -> Output {
    bare_with_path(work, home, xdg, None, args)
}

fn bare_with_path(
    work: &Path,
    home: &Path,
    xdg: Option<&Path>,
    path: Option<&str>,
    args: &[&str],
) -> Output {
    let mut cmd: Command = tend();
    cmd.current_dir(work)
        .env_remove("TEND_HOME")
        .env_remove("XDG_CACHE_HOME")
        .env("HOME", home)
        .env("CARGO_HOME", real_home_dir("CARGO_HOME", ".cargo"))
        .env("RUSTUP_HOME", real_home_dir("RUSTUP_HOME", ".rustup"))
        // The skill's own dependencies (wit-bindgen, serde) build once per test run.
        .env("CARGO_TARGET_DIR", target_dir())
        .env("TEND_CACHE_DIR", work.join("precompiled"));
    if let Some(x) = xdg {
        cmd.env("XDG_CACHE_HOME", x);
    }
    if let Some(p) = path {
        cmd.env("PATH", p);
    }
    cmd.args(args).output().expect("run tend")
}

/// The caller's PATH without the directories that hold `program`, after `first` (a directory
/// with a link to the caller's real `python3`, so pip stays reachable wherever it lives).
pub(crate) fn path_without(program: &str, first: &Path) -> String {
    let python = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 on PATH");
    let python = String::from_utf8(python.stdout).expect("utf8");
    std::os::unix::fs::symlink(python.trim(), first.join("python3")).expect("link python3");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let kept: Vec<PathBuf> = std::iter::once(first.to_path_buf())
        .chain(std::env::split_paths(&path).filter(|d| !d.join(program).exists()))
        .collect();
    std::env::join_paths(kept)
        .expect("PATH")
        .to_string_lossy()
        .into_owned()
}

fn ok(o: &Output, what: &str) {
    assert_eq!(o.status.code(), Some(0), "{what}: {}", err(o));
}

fn build_json(work: &Path, home: &Path, xdg: Option<&Path>, name: &str) -> Value {
    let o = bare(work, home, xdg, &["skill", "build", name, "--json"]);
    ok(&o, "build");
    serde_json::from_slice(&o.stdout).expect("build report")
}

fn run_json(work: &Path, home: &Path, xdg: Option<&Path>, name: &str, input: &str) -> Value {
    let o = bare(
        work,
        home,
        xdg,
        &[
            "run",
            "--insecure-unsigned",
            &format!("{name}/dist/{name}-0.1.0.wasm"),
            "--manifest",
            &format!("{name}/skill.toml"),
            "--input",
            input,
            "--json",
        ],
    );
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|_| panic!("run {name}: no report: {}", err(&o)))
}

fn level_warnings(report: &Value) -> Vec<String> {
    report["warnings"]
        .as_array()
        .expect("warnings")
        .iter()
        .filter_map(|w| w.as_str())
        .filter(|w| w.contains("skill.level"))
        .map(str::to_string)
        .collect()
}

#[test]
fn a_rust_skill_from_the_binary_alone_and_a_failed_build_leaves_no_component() {
    let work = tempfile::tempdir().expect("tempdir");
    let home = tempfile::tempdir().expect("tempdir");
    let (w, h) = (work.path(), home.path());
    assert!(
        !w.starts_with(repo_root()),
        "the work directory is outside the checkout"
    );

    ok(
        &bare(
            w,
            h,
            None,
            &["skill", "new", "uptime-note", "--lang", "rust"],
        ),
        "new",
    );
    // The scaffold depends on the SDK unpacked from the binary into HOME's cache, never on a
    // checkout.
    let cargo = std::fs::read_to_string(w.join("uptime-note/Cargo.toml")).expect("Cargo.toml");
    let sdk_line = cargo
        .lines()
        .find(|l| l.starts_with("tend-sdk"))
        .expect("tend-sdk dependency");
    let sdk_root = h.join(".cache/tend/sdk");
    assert!(
        sdk_line.contains(&format!(
            "{}/{}-",
            sdk_root.display(),
            env!("CARGO_PKG_VERSION")
        )),
        "{sdk_line}"
    );
    assert!(
        !sdk_line.contains(&repo_root().display().to_string()),
        "{sdk_line}"
    );
    let unpacked: Vec<PathBuf> = std::fs::read_dir(&sdk_root)
        .expect("sdk cache")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(unpacked.len(), 1, "one tree, no leftovers: {unpacked:?}");
    for f in [
        "wit/skill/skill.wit",
        "sdk/rust/src/lib.rs",
        "sdk/python/tend_skill.py",
    ] {
        assert!(unpacked[0].join(f).is_file(), "{f}");
    }

    let built = build_json(w, h, None, "uptime-note");
    assert_eq!(built["lang"], "rust");
    assert!(level_warnings(&built).is_empty(), "{built}");
    let report = run_json(w, h, None, "uptime-note", "{}");
    assert_eq!(report["outcome"], "ok", "{report}");
    assert!(report["output"]["hostname"].is_string(), "{report}");

    // Someone edits the unpacked SDK, or the disk loses part of it: the next build notices
    // (the directory's name promises its content) and unpacks it again.
    let wit = unpacked[0].join("wit/skill/skill.wit");
    let pristine = std::fs::read_to_string(&wit).expect("wit");
    std::fs::write(&wit, format!("{pristine}\n// edited\n")).expect("edit");
    std::fs::remove_file(unpacked[0].join("sdk/python/tend_skill.py")).expect("remove");

    // Break the source: the build fails, and the previous component is gone with it, so
    // `tend run` cannot run stale code as if it were this source's.
    let src = w.join("uptime-note/src/lib.rs");
    let text = std::fs::read_to_string(&src).expect("src");
    std::fs::write(
        &src,
        format!("{text}\ncompile_error!(\"broken on purpose\");\n"),
    )
    .expect("write");
    let o = bare(w, h, None, &["skill", "build", "uptime-note"]);
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(err(&o).contains("cargo build failed"), "{}", err(&o));
    assert!(err(&o).contains("unpacking it again"), "{}", err(&o));
    assert_eq!(std::fs::read_to_string(&wit).expect("wit"), pristine);
    assert!(unpacked[0].join("sdk/python/tend_skill.py").is_file());
    let dist: Vec<String> = std::fs::read_dir(w.join("uptime-note/dist"))
        .expect("dist")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        dist.iter().all(|f| !f.ends_with(".wasm")),
        "a failed build left {dist:?}"
    );
    let o = bare(
        w,
        h,
        None,
        &[
            "run",
            "--insecure-unsigned",
            "uptime-note/dist/uptime-note-0.1.0.wasm",
            "--manifest",
            "uptime-note/skill.toml",
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(err(&o).contains("uptime-note-0.1.0.wasm"), "{}", err(&o));
}

#[test]
fn a_python_repair_from_the_binary_alone_declares_the_level_its_grants_imply() {
    let work = tempfile::tempdir().expect("tempdir");
    let home = tempfile::tempdir().expect("tempdir");
    let (w, h) = (work.path(), home.path());
    ok(
        &bare(
            w,
            h,
            None,
            &[
                "skill",
                "new",
                "restart-it",
                "--lang",
                "python",
                "--kind",
                "repair",
            ],
        ),
        "new",
    );
    let manifest_path = w.join("restart-it/skill.toml");
    let manifest = std::fs::read_to_string(&manifest_path).expect("manifest");
    // Its exec grant makes it L2 (tend-policy's floor for running a program).
    assert!(manifest.contains("\nlevel = 2\n"), "{manifest}");

    // Built with no componentize-py on PATH: the pinned one is installed into the cache with
    // pip (shared across test runs, like the JavaScript toolchain).
    let xdg = target_dir().join("authoring-binary-cache");
    let bin = w.join("bin");
    std::fs::create_dir(&bin).expect("mkdir");
    let path = path_without("componentize-py", &bin);
    let build = || {
        let o = bare_with_path(
            w,
            h,
            Some(&xdg),
            Some(&path),
            &["skill", "build", "restart-it", "--json"],
        );
        ok(&o, "build");
        serde_json::from_slice::<Value>(&o.stdout).expect("build report")
    };
    let built = build();
    assert!(
        xdg.join("tend/python/componentize-py-0.25.1/componentize_py")
            .is_dir(),
        "componentize-py installed under {}",
        xdg.display()
    );
    assert!(level_warnings(&built).is_empty(), "{built}");
    let report = run_json(w, h, None, "restart-it", "{}");
    assert_eq!(report["outcome"], "ok", "{report}");
    assert_eq!(report["output"]["done"], true, "{report}");

    // Understated by hand: the build says so (and still builds: every runner computes L2).
    std::fs::write(
        &manifest_path,
        manifest.replace("\nlevel = 2\n", "\nlevel = 1\n"),
    )
    .expect("write");
    let built = build();
    let warned = level_warnings(&built);
    assert_eq!(warned.len(), 1, "{built}");
    assert!(
        warned[0].contains("skill.level is 1 but the grants make it L2")
            && warned[0].contains("exec /bin/true")
            && warned[0].contains("declare `level = 2`"),
        "{}",
        warned[0]
    );
}

/// `tend skill sign` warns when the manifest it signs declares less than its grants imply.
#[test]
fn signing_an_understated_level_warns() {
    let w = World::new();
    let manifest = |level: u8| {
        format!(
            "[skill]\nname = \"acme-fix\"\nversion = \"1.0.0\"\nkind = \"repair\"\nlevel = {level}\ndescription = \"fix\"\n[capabilities]\nexec = [{{ program = \"/bin/true\", args = [] }}]\n"
        )
    };
    std::fs::copy(guest("trivial"), w.path("fix.wasm")).expect("copy");
    for (level, warns) in [(1, true), (2, false)] {
        std::fs::write(w.path("fix.toml"), manifest(level)).expect("manifest");
        let o = w.ok(&[
            "skill",
            "sign",
            "fix.wasm",
            "--manifest",
            "fix.toml",
            "--key",
            "publisher.key",
        ]);
        let e = err(&o);
        assert_eq!(
            e.contains("warning: fix.toml: skill.level is 1 but the grants make it L2"),
            warns,
            "level {level}: {e}"
        );
    }
}

/// Publishing the same component bytes as an existing version under another signed manifest
/// (here: wider grants) is refused, and the registry keeps serving the first manifest. A host
/// that pulls the same bytes under another manifest (from another registry) installs that
/// manifest, never keeps the old one beside it.
#[test]
fn the_same_bytes_under_another_signed_manifest_are_not_nothing_changed() {
    let w = World::new();
    let first = w.signed("echo", &guest("trivial"), "acme-echo", "1.0.0");
    let publisher = w.token("ci", "publisher");
    let reg = Registry::start(&w);
    w.published(&reg.url, &first, &publisher);

    let wider = "[skill]\nname = \"acme-echo\"\nversion = \"1.0.0\"\nkind = \"diagnose\"\ndescription = \"Echo for acme-echo\"\n[capabilities]\nfs_read = [\"/var/log\"]\n";
    let second = w.signed_with("echo-wider", &guest("trivial"), wider);
    let o = w.publish(&reg.url, &second, &publisher);
    let e = err(&o);
    assert_ne!(o.status.code(), Some(0), "{e}");
    assert!(
        e.contains("409")
            && e.contains("acme-echo 1.0.0")
            && e.contains("different signed manifest"),
        "{e}"
    );
    // Re-publishing exactly what was published is still idempotent.
    let o = w.published(&reg.url, &first, &publisher);
    assert!(String::from_utf8_lossy(&o.stdout).contains("already published"));

    // The registry still serves the first manifest.
    w.ok(&["skill", "pull", "acme-echo@1.0.0", "--registry", &reg.url]);
    let sig = w.path("host-data/skills/acme-echo/1.0.0/component.wasm.sig");
    let installed = std::fs::read_to_string(&sig).expect("installed envelope");
    assert!(!installed.contains("fs_read"), "{installed}");

    // Another registry (same trusted publisher) has the same bytes under the wider manifest:
    // the host that pulls it from there installs that manifest whole.
    let other = World {
        dir: tempfile::tempdir().expect("tempdir"),
    };
    for f in ["publisher.key", "trust.toml"] {
        std::fs::copy(w.path(f), other.path(f)).expect("copy");
    }
    let wider_wasm = other.signed_with("echo", &guest("trivial"), wider);
    let other_token = other.token("ci", "publisher");
    let other_reg = Registry::start(&other);
    other.published(&other_reg.url, &wider_wasm, &other_token);
    w.ok(&[
        "skill",
        "pull",
        "acme-echo@1.0.0",
        "--registry",
        &other_reg.url,
    ]);
    let installed = std::fs::read_to_string(&sig).expect("installed envelope");
    assert!(installed.contains("fs_read"), "{installed}");
}

const JS_READER: &str = r#"// Reads a granted file with the SDK's `files`, or (`raw`) goes around it straight at the
// first preopen with a relative path that climbs out of it.
import { diagnose, files } from 'tend-skill';
import { getDirectories } from 'wasi:filesystem/preopens@0.2.12';

class Skill {
  run(input) {
    if (input.raw) {
      const [[dir]] = getDirectories();
      const f = dir.openAt({ symlinkFollow: true }, input.raw, {}, { read: true });
      return { granted: [], text: new TextDecoder().decode(f.read(4096n, 0n)[0]) };
    }
    return { granted: files.granted(), text: files.readText(input.path) };
  }
}

export const { run } = diagnose(Skill);
"#;

#[test]
fn a_js_skill_from_the_binary_alone_reads_granted_files_only() {
    let work = tempfile::tempdir().expect("tempdir");
    let home = tempfile::tempdir().expect("tempdir");
    let (w, h) = (work.path(), home.path());
    let xdg = target_dir().join("authoring-binary-cache");
    let x = Some(xdg.as_path());

    ok(
        &bare(w, h, x, &["skill", "new", "reader", "--lang", "js"]),
        "new",
    );
    let granted = w.join("granted");
    std::fs::create_dir(&granted).expect("mkdir");
    std::fs::write(granted.join("note.txt"), "hello from a granted file\n").expect("write");
    std::fs::write(w.join("secret.txt"), "not granted\n").expect("write");
    std::fs::write(w.join("reader/app.js"), JS_READER).expect("app.js");
    std::fs::write(
        w.join("reader/skill.toml"),
        format!(
            "[skill]\nname = \"reader\"\nversion = \"0.1.0\"\nkind = \"diagnose\"\ndescription = \"reads a granted file\"\n[capabilities]\nfs_read = [\"{}\"]\n",
            granted.display()
        ),
    )
    .expect("skill.toml");

    let built = build_json(w, h, x, "reader");
    assert_eq!(built["lang"], "js");
    // The toolchain went into the cache (keyed by its lock, linked into the unpacked SDK), not
    // into a checkout.
    let linked = std::fs::read_dir(xdg.join("tend/sdk"))
        .expect("sdk cache")
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path().join("sdk/js/node_modules")).ok())
        .any(|target| {
            target.starts_with(xdg.join("tend/js"))
                && target.join("@bytecodealliance/componentize-js").is_dir()
        });
    assert!(linked, "componentize-js installed under {}", xdg.display());

    let input = |path: &Path| format!(r#"{{"path":"{}"}}"#, path.display());
    let report = run_json(w, h, x, "reader", &input(&granted.join("note.txt")));
    assert_eq!(report["outcome"], "ok", "{report}");
    assert_eq!(report["output"]["text"], "hello from a granted file\n");
    assert_eq!(
        report["output"]["granted"][0],
        granted.display().to_string()
    );

    // Not granted: invisible.
    let report = run_json(w, h, x, "reader", &input(&w.join("secret.txt")));
    assert_eq!(report["outcome"], "skill_error", "{report}");
    assert_eq!(report["error"]["code"], "denied", "{report}");
    assert!(
        report["error"]["message"]
            .as_str()
            .expect("message")
            .contains("not under a directory this skill is granted"),
        "{report}"
    );

    // Climbing out of the granted directory, through the SDK or around it: the host refuses.
    let report = run_json(w, h, x, "reader", &input(&granted.join("../secret.txt")));
    assert_eq!(report["outcome"], "skill_error", "{report}");
    assert!(
        report["error"]["message"]
            .as_str()
            .expect("message")
            .contains("not-permitted"),
        "{report}"
    );
    let report = run_json(w, h, x, "reader", r#"{"raw":"../secret.txt"}"#);
    assert_eq!(report["outcome"], "skill_error", "{report}");
    assert!(report["output"].is_null(), "{report}");
    assert!(
        report["error"]["message"]
            .as_str()
            .expect("message")
            .contains("not-permitted"),
        "{report}"
    );
}

/// With node but no npm, the first JavaScript build says what to install, and leaves no
/// half-installed toolchain behind.
#[test]
fn a_js_build_without_npm_names_what_to_install() {
    let work = tempfile::tempdir().expect("tempdir");
    let home = tempfile::tempdir().expect("tempdir");
    let (w, h) = (work.path(), home.path());
    let bin = w.join("bin");
    std::fs::create_dir(&bin).expect("mkdir");
    let node = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("node"))
        .find(|p| p.is_file())
        .expect("node on PATH");
    std::os::unix::fs::symlink(node, bin.join("node")).expect("symlink");
    let path = bin.display().to_string();

    ok(
        &bare(w, h, None, &["skill", "new", "no-npm", "--lang", "js"]),
        "new",
    );
    let o = bare_with_path(w, h, None, Some(&path), &["skill", "build", "no-npm"]);
    let e = err(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(
        e.contains("npm not found") && e.contains("apt-get install npm"),
        "{e}"
    );
    let sdk = std::fs::read_dir(h.join(".cache/tend/sdk"))
        .expect("sdk cache")
        .flatten()
        .map(|d| d.path())
        .find(|d| {
            !d.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .expect("unpacked");
    assert!(!sdk.join("sdk/js/node_modules").exists());
    let installed: Vec<_> = std::fs::read_dir(h.join(".cache/tend/js"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(installed.is_empty(), "{installed:?}");
    assert!(!w.join("no-npm/dist/no-npm-0.1.0.wasm").exists());
}
