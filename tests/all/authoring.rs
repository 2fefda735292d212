//! `tend skill new` + `tend skill build` + `tend run`: a scaffolded skill builds and runs
//! unchanged in every language, and a build that breaks the manifest's rules is refused.

use std::path::Path;
use std::process::Output;

use serde_json::Value;

use crate::support::*;

fn tend_in(dir: &Path, args: &[&str]) -> Output {
    tend()
        .current_dir(dir)
        .env("TEND_HOME", repo_root())
        .env("CARGO_TARGET_DIR", target_dir())
        .arg("--cache-dir")
        .arg(dir.join("cache"))
        .args(args)
        .output()
        .expect("run tend")
}

fn scaffold_build_run(lang: &str, kind: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let name = format!("hello-{lang}-{kind}");
    let o = tend_in(
        dir.path(),
        &["skill", "new", &name, "--lang", lang, "--kind", kind],
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "new: {}",
        String::from_utf8_lossy(&o.stderr)
    );

    let o = tend_in(dir.path(), &["skill", "build", &name, "--json"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "build: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let built: Value = serde_json::from_slice(&o.stdout).expect("build report");
    assert_eq!(built["kind"], kind);
    let wasm = dir
        .path()
        .join(&name)
        .join(format!("dist/{name}-0.1.0.wasm"));
    assert!(wasm.exists(), "{}", wasm.display());

    for plan in [false, true] {
        if plan && kind == "diagnose" {
            continue;
        }
        let manifest = format!("{name}/skill.toml");
        let input = format!("@{name}/input.example.json");
        let mut args = vec![
            "run",
            "--insecure-unsigned",
            wasm.to_str().expect("p"),
            "--manifest",
            &manifest,
            "--input",
            &input,
            "--json",
        ];
        if plan {
            args.push("--plan");
        }
        let o = tend_in(dir.path(), &args);
        assert_eq!(
            o.status.code(),
            Some(0),
            "run: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let report: Value = serde_json::from_slice(&o.stdout).expect("report");
        assert_eq!(report["outcome"], "ok", "{report}");
        assert!(
            report["notes"]
                .as_array()
                .expect("notes")
                .iter()
                .all(|n| !n.as_str().unwrap_or_default().contains("schema")),
            "{report}"
        );
        if kind == "repair" && !plan {
            assert_eq!(report["output"]["done"], true, "{report}");
            assert_eq!(report["exec"][0]["program"], "/bin/true");
        }
    }

    if kind == "repair" {
        // Without its exec grant the host refuses the program, and the SDK passes the host's
        // error code through (not a generic `internal`).
        let own =
            std::fs::read_to_string(dir.path().join(&name).join("skill.toml")).expect("manifest");
        let stripped: String = own
            .lines()
            .filter(|l| !l.starts_with("exec ="))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_ne!(stripped, own, "the scaffold grants exec");
        std::fs::write(dir.path().join("nogrant.toml"), stripped).expect("write");
        let input = format!("@{name}/input.example.json");
        let o = tend_in(
            dir.path(),
            &[
                "run",
                "--insecure-unsigned",
                wasm.to_str().expect("p"),
                "--manifest",
                "nogrant.toml",
                "--input",
                &input,
                "--json",
            ],
        );
        let report: Value = serde_json::from_slice(&o.stdout).expect("report");
        assert_eq!(o.status.code(), Some(1), "{report}");
        assert_eq!(report["error"]["code"], "denied", "{lang}: {report}");
        assert!(report["exec"][0]["denied"].is_string(), "{report}");
    }
}

#[test]
fn rust_skills_scaffold_build_and_run() {
    scaffold_build_run("rust", "diagnose");
    scaffold_build_run("rust", "repair");
}

#[test]
fn python_skills_scaffold_build_and_run() {
    scaffold_build_run("python", "diagnose");
    scaffold_build_run("python", "repair");
}

#[test]
fn js_skills_scaffold_build_and_run() {
    scaffold_build_run("js", "diagnose");
    scaffold_build_run("js", "repair");
}

#[test]
fn a_diagnose_skill_that_imports_exec_is_refused_at_build() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = tend_in(
        dir.path(),
        &[
            "skill", "new", "sneaky", "--lang", "rust", "--kind", "diagnose",
        ],
    );
    assert_eq!(o.status.code(), Some(0));
    let src = dir.path().join("sneaky/src/lib.rs");
    let text = std::fs::read_to_string(&src).expect("src").replace(
        "let system = host::system();",
        "let _ = tend_sdk::exec::run(\"/bin/true\", &[], None);\n        let system = host::system();",
    );
    std::fs::write(&src, text).expect("write");
    let o = tend_in(dir.path(), &["skill", "build", "sneaky"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("may not import tend:skill/exec@0.1.0"),
        "{err}"
    );
    assert!(
        !dir.path().join("sneaky/dist/sneaky-0.1.0.wasm").exists(),
        "a refused build left a component in dist/"
    );
}

#[test]
fn new_refuses_bad_names_and_existing_folders() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = tend_in(dir.path(), &["skill", "new", "Bad Name"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("skill.name"));
    assert!(
        std::fs::read_dir(dir.path()).expect("dir").next().is_none(),
        "nothing written"
    );
    std::fs::create_dir(dir.path().join("taken")).expect("mkdir");
    let o = tend_in(dir.path(), &["skill", "new", "taken"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("already exists"));
}

#[test]
fn build_names_the_missing_toolchain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = tend_in(dir.path(), &["skill", "new", "py", "--lang", "python"]);
    assert_eq!(o.status.code(), Some(0));
    // A PATH without componentize-py, and without a python3 that could install it into the
    // cache (`tend skill build` does that when it can).
    let empty = tempfile::tempdir().expect("tempdir");
    let o = tend()
        .current_dir(dir.path())
        .env("TEND_HOME", repo_root())
        .env("PATH", empty.path())
        .args(["skill", "build", "py"])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&o.stderr);
    if std::path::Path::new("/usr/bin/componentize-py").exists() {
        return; // installed system-wide: nothing to show here
    }
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("pip install componentize-py"), "{err}");
}
