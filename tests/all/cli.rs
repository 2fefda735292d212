//! `tend run` and `tend skill inspect` as a user meets them: exit status, JSON, messages.

use std::process::Output;

use serde_json::Value;

use crate::support::*;

fn run(args: &[&str], cache: &std::path::Path) -> Output {
    tend()
        .arg("--cache-dir")
        .arg(cache)
        .args(args)
        .output()
        .expect("run tend")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn run_json_prints_the_report_and_exits_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wasm = guest("trivial");
    let o = run(
        &[
            "run",
            "--insecure-unsigned",
            wasm.to_str().expect("path"),
            "--input",
            r#"{"x":1}"#,
            "--json",
        ],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let report: Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    assert_eq!(report["outcome"], "ok");
    assert_eq!(report["output"]["echo"]["x"], 1);
    assert!(report["error"].is_null());
    assert!(report["fuel_consumed"].as_u64().expect("fuel") > 0);
    assert!(report["duration_us"].is_u64());
}

#[test]
fn input_from_file_and_stdin() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wasm = guest("trivial");
    let input = dir.path().join("in.json");
    std::fs::write(&input, r#"{"from":"file"}"#).expect("write");
    let o = run(
        &[
            "run",
            "--insecure-unsigned",
            wasm.to_str().expect("p"),
            "--input",
            &format!("@{}", input.display()),
            "--json",
        ],
        dir.path(),
    );
    let report: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(report["output"]["echo"]["from"], "file");

    use std::io::Write;
    let mut child = tend()
        .arg("--cache-dir")
        .arg(dir.path())
        .args([
            "run",
            "--insecure-unsigned",
            wasm.to_str().expect("p"),
            "--input",
            "-",
            "--json",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(br#"{"from":"stdin"}"#)
        .expect("write");
    let o = child.wait_with_output().expect("wait");
    let report: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(report["output"]["echo"]["from"], "stdin");
}

#[test]
fn exit_status_tells_what_happened() {
    let dir = tempfile::tempdir().expect("tempdir");
    let trivial = guest("trivial");
    let hostile = guest("hostile");
    let o = run(
        &[
            "run",
            "--insecure-unsigned",
            trivial.to_str().expect("p"),
            "--input",
            r#"{"fail":1}"#,
        ],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(1), "skill error: {}", stderr(&o));
    assert!(stderr(&o).contains("asked-to-fail"));
    let o = run(
        &[
            "run",
            "--insecure-unsigned",
            hostile.to_str().expect("p"),
            "--input",
            r#"{"do":"spin"}"#,
            "--fuel",
            "100000",
        ],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(3), "limit: {}", stderr(&o));
    assert!(stderr(&o).contains("out_of_fuel"));
    let o = run(
        &[
            "run",
            "--insecure-unsigned",
            hostile.to_str().expect("p"),
            "--input",
            r#"{"do":"panic"}"#,
        ],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(3), "trap: {}", stderr(&o));
}

#[test]
fn bad_input_is_one_clear_line_exit_two_and_nothing_cached() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("cache");
    let wasm = guest("trivial");
    let w = wasm.to_str().expect("p");
    let manifest = dir.path().join("skill.toml");
    std::fs::write(
        &manifest,
        "[skill]\nname = \"x\"\nversion = \"0.1.0\"\nkind = \"diagnose\"\nnetwork = true\n",
    )
    .expect("write");
    let typed = dir.path().join("typed.toml");
    std::fs::write(&typed, "[skill]\nname = \"x\"\nversion = \"0.1.0\"\nkind = \"diagnose\"\n[limits]\nfuel = \"lots\"\n").expect("write");
    let not_wasm = dir.path().join("notes.wasm");
    std::fs::write(&not_wasm, "hello").expect("write");
    let other = dir.path().join("other.wasm");
    std::fs::write(&other, crate::cache::other_world_component()).expect("write");

    let m = manifest.display().to_string();
    let t = typed.display().to_string();
    let cases: Vec<(Vec<&str>, String)> = vec![
        (
            vec!["run", "--insecure-unsigned", w, "--input", "{oops"],
            "--input: input is not JSON".into(),
        ),
        (
            vec!["run", "--insecure-unsigned", w, "--manifest", &m],
            format!("{m}:5: unknown field `network`"),
        ),
        (
            vec!["run", "--insecure-unsigned", w, "--manifest", &t],
            format!("{t}:6: invalid type"),
        ),
        (
            vec!["run", "--insecure-unsigned", not_wasm.to_str().expect("p")],
            "not a WebAssembly file".into(),
        ),
        (
            vec!["run", "--insecure-unsigned", other.to_str().expect("p")],
            "not a Tend skill".into(),
        ),
        (
            vec!["run", "--insecure-unsigned", "/no/such/file.wasm"],
            "cannot read /no/such/file.wasm".into(),
        ),
    ];
    for (args, expected) in cases {
        let o = run(&args, &cache);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(&expected),
            "{args:?}: expected {expected:?} in {err:?}"
        );
        assert_eq!(
            err.trim().lines().count(),
            1,
            "{args:?}: one line, got {err:?}"
        );
    }
    let cached = std::fs::read_dir(&cache).map(|d| d.count()).unwrap_or(0);
    assert_eq!(cached, 0, "bad input left files in the cache");
}

#[test]
fn inspect_shows_the_world() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wasm = guest("repair-exec");
    let o = run(
        &["skill", "inspect", wasm.to_str().expect("p"), "--json"],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let world: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(world["skill_kind"], "repair");
    let names = |k: &str| -> Vec<String> {
        world[k]
            .as_array()
            .expect(k)
            .iter()
            .map(|i| i["name"].as_str().expect("name").to_string())
            .collect()
    };
    assert!(names("exports").contains(&"plan".to_string()));
    assert!(names("imports").contains(&"tend:skill/exec@0.1.0".to_string()));
}

#[test]
fn help_explains_exit_status() {
    let o = tend().arg("--help").output().expect("help");
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("Exit status"), "{text}");
    let o = tend().args(["run", "--help"]).output().expect("help");
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("no capabilities at all"), "{text}");
}

#[test]
fn without_room_for_the_pool_it_warns_and_still_runs() {
    // 16 GB of address space: too little for the pooling allocator's reservation, plenty for
    // on-demand allocation.
    let dir = tempfile::tempdir().expect("tempdir");
    let wasm = guest("trivial");
    let exe = target_dir().join("debug/tend");
    let under_ulimit = |args: &str| {
        std::process::Command::new("bash")
            .arg("-c")
            .arg(format!(
                r#"ulimit -v 16000000 && exec "$0" --cache-dir "$1" {args}"#
            ))
            .arg(&exe)
            .arg(dir.path())
            .arg(&wasm)
            .env("TEND_LOG", "warn")
            .output()
            .expect("run tend under ulimit")
    };
    // A command that wants the pool (as the orchestrator and agent do) warns and falls back.
    let o = under_ulimit(r#"skill inspect "$2" --json"#);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(
        err.contains("falling back to on-demand allocation"),
        "{err}"
    );
    // A one-shot `tend run` never reserves a pool (it instantiates once), so it has nothing to
    // fall back from: it just runs.
    let o = under_ulimit(r#"run --insecure-unsigned "$2" --json"#);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(!err.contains("falling back"), "{err}");
    let report: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(report["outcome"], "ok");
}

/// A command that reads an orchestrator's database never creates one at a mistyped path (and
/// then reports on the empty file it made): it refuses, naming the path, and creates nothing.
#[test]
fn a_mistyped_database_is_refused_not_created() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("orchestratr.db");
    let url = format!("sqlite://{}", missing.display());
    for args in [
        vec!["audit", "verify", "--database", url.as_str()],
        vec!["agent", "token", "create", "--database", url.as_str()],
    ] {
        let o = tend()
            .env("TEND_DATA_DIR", dir.path())
            .args(&args)
            .output()
            .expect("run tend");
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("no orchestrator database at")
                && stderr(&o).contains("orchestratr.db"),
            "{}",
            stderr(&o)
        );
        assert!(!missing.exists(), "{args:?} created {}", missing.display());
    }
}

/// `tend key gen --out ~/.config/tend/me.key` on a fresh machine: the directory is made,
/// private to its owner.
#[test]
fn key_gen_makes_the_directory_it_writes_into() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("config/tend/me.key");
    let o = tend()
        .args(["key", "gen", "--out"])
        .arg(&out)
        .output()
        .expect("run tend");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(out.exists());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(out.parent().expect("parent"))
        .expect("dir")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700, "{mode:o}");
}

/// `--cache-dir`/`--no-cache` are offered where something is compiled, not on the client's
/// commands; and `tend run --help`'s example input is one disk-usage accepts.
#[test]
fn help_offers_what_each_command_uses_and_its_examples_work() {
    let help = |args: &[&str]| {
        let o = tend().args(args).arg("--help").output().expect("help");
        assert_eq!(o.status.code(), Some(0));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    for compiling in [
        &["run"][..],
        &["skill", "build"],
        &["skill", "pull"],
        &["agent", "run"],
        &["orchestrator", "serve"],
    ] {
        assert!(help(compiling).contains("--cache-dir"), "{compiling:?}");
    }
    for not in [
        &["status"][..],
        &["invoke"],
        &["approve"],
        &["token", "create"],
        &["agent", "enroll"],
        &["skill", "sign"],
        &["audit", "verify"],
    ] {
        assert!(
            !help(not).contains("--cache-dir"),
            "{not:?} offers --cache-dir"
        );
    }
    let run_help = help(&["run"]);
    let example = run_help
        .lines()
        .find(|l| l.contains("tend run disk-usage --input"))
        .expect("example");
    let json = example.split('\'').nth(1).expect("quoted input");
    let input: serde_json::Value = serde_json::from_str(json).expect("example is JSON");
    let (_, manifest) = catalog_skill("disk-usage");
    let schema = manifest
        .input
        .expect("disk-usage has an input schema")
        .schema;
    let validator = jsonschema::validator_for(&schema).expect("schema");
    assert!(
        validator.is_valid(&input),
        "disk-usage refuses the example {input}"
    );
}
