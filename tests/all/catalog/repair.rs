//! Catalog repair skills (Rust): service-restart, clean-old-logs, kill-runaway-process.
//!
//! Each is driven through the runtime with `plan` and `run`, against real files, a stand-in
//! program or a real process the test owns; every output is checked against the skill's
//! `[output.schema]`.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use tend_runtime::{ExecutionReport, Export, LoadedSkill, Outcome, Runtime};

use crate::support::*;

const DAY: u64 = 86_400;

async fn plan(rt: &Runtime, skill: &LoadedSkill, input: &str) -> ExecutionReport {
    rt.invoke(skill, Export::Plan, input, &Default::default())
        .await
        .expect("the host itself does not fail")
}

/// The output of an `ok` report, checked against the skill's output schema.
fn ok_output(name: &str, r: &ExecutionReport) -> Value {
    assert_eq!(r.outcome, Outcome::Ok, "{:?} {:?}", r.error, r.notes);
    let out = r.output.clone().expect("output");
    assert_output_schema(name, &out);
    out
}

/// The error code of a `skill_error` report.
fn error_code(r: &ExecutionReport) -> String {
    assert_eq!(r.outcome, Outcome::SkillError, "{:?}", r.output);
    r.error.as_ref().expect("error").code.clone()
}

/// Poll `cond` until it holds, failing after a generous bound (no fixed sleeps).
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------- clean-old-logs

fn write_aged(path: &Path, bytes: usize, age_days: u64) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, vec![b'x'; bytes]).expect("write file");
    let when = SystemTime::now() - Duration::from_secs(age_days * DAY);
    std::fs::File::options()
        .write(true)
        .open(path)
        .expect("open")
        .set_modified(when)
        .expect("set mtime");
}

/// Every entry under `root` (relative paths; symlinks listed, not followed).
fn list_tree(root: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("read_dir") {
            let p = e.expect("entry").path();
            let rel = p.strip_prefix(root).expect("under root");
            out.insert(rel.to_string_lossy().into_owned());
            if std::fs::symlink_metadata(&p).expect("lstat").is_dir() {
                stack.push(p);
            }
        }
    }
    out
}

fn paths(list: &Value) -> BTreeSet<String> {
    list.as_array()
        .expect("list")
        .iter()
        .map(|f| f["path"].as_str().expect("path").to_string())
        .collect()
}

/// A temp tree with old and young rotated logs, active logs, a nested directory and symlinks
/// (made to look old too) pointing out of the tree. Only the old rotated regular files may go.
#[tokio::test]
async fn clean_old_logs_deletes_exactly_the_planned_old_rotated_files() {
    let tree = tempfile::tempdir().expect("tempdir");
    let outside = tempfile::tempdir().expect("tempdir");
    let root = tree.path().canonicalize().expect("canonical tree");
    let abs = |rel: &str| root.join(rel);

    let old = [
        ("syslog.1", 100),
        ("syslog.2.gz", 200),
        ("kern.log.old", 300),
        ("daemon.log.xz", 400),
        ("nested/app.log.3", 500),
        ("nested/app.log.4.bz2", 600),
        ("nested/deeper/app.log-20240101", 700),
        ("nested/deeper/web.log-20240102.zst", 800),
    ];
    for (rel, size) in old {
        write_aged(&abs(rel), size, 40);
    }
    // Young rotated files, active logs (old or not) and names no rule matches: all stay.
    write_aged(&abs("syslog.3.gz"), 10, 5);
    write_aged(&abs("auth.log.1"), 10, 0);
    write_aged(&abs("nested/deeper/app.log-20991231"), 10, 29);
    for active in [
        "syslog",
        "app.log",
        "nested/app.log",
        "wtmp",
        "notes.2024",
        ".gz",
        "db.sqlite",
    ] {
        write_aged(&abs(active), 50, 400);
    }
    // Symlinks into a second tree: an old `.gz` file and a directory holding one.
    let target = outside.path().join("target.gz");
    write_aged(&target, 999, 400);
    write_aged(&outside.path().join("dir/inner.log.1"), 999, 400);
    std::os::unix::fs::symlink(&target, abs("link.gz")).expect("symlink");
    std::os::unix::fs::symlink(outside.path().join("dir"), abs("nested/linkdir")).expect("symlink");
    let past = rustix::fs::Timespec {
        tv_sec: (SystemTime::now() - Duration::from_secs(400 * DAY))
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("after epoch")
            .as_secs() as i64,
        tv_nsec: 0,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        abs("link.gz"),
        &rustix::fs::Timestamps {
            last_access: past,
            last_modification: past,
        },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .expect("age the symlink itself");

    let (rt, _dir) = runtime();
    let m = repair_manifest(&format!("fs_write = [{:?}]", root.display().to_string()));
    let skill = load_catalog(&rt, "clean-old-logs", Some(m));
    let input = json!({ "dir": root, "older_than_days": 30 }).to_string();
    let expected: BTreeSet<String> = old
        .iter()
        .map(|(rel, _)| abs(rel).display().to_string())
        .collect();
    let expected_bytes: u64 = old.iter().map(|(_, s)| *s as u64).sum();

    // plan: exactly the old rotated files, with true sizes and ages; nothing changes.
    let before = list_tree(&root);
    let p = ok_output("clean-old-logs", &plan(&rt, &skill, &input).await);
    assert_eq!(list_tree(&root), before, "plan changed the tree");
    assert_eq!(paths(&p["files"]), expected, "{p:#}");
    for f in p["files"].as_array().expect("files") {
        let path = f["path"].as_str().expect("path");
        let len = std::fs::metadata(path).expect("planned file exists").len();
        assert_eq!(f["size_bytes"], json!(len), "{path}");
        assert!(f["age_days"].as_f64().expect("age") >= 39.0, "{f}");
    }
    assert_eq!(p["total_bytes"], json!(expected_bytes));
    assert_eq!(p["truncated"], json!(false));
    let skipped = paths(&p["skipped"]);
    for link in ["link.gz", "nested/linkdir"] {
        assert!(
            skipped.contains(&abs(link).display().to_string()),
            "{link} not reported: {p:#}"
        );
    }

    // max_files keeps the oldest and says the rest is waiting.
    let capped = json!({ "dir": root, "older_than_days": 30, "max_files": 3 }).to_string();
    let pc = ok_output("clean-old-logs", &plan(&rt, &skill, &capped).await);
    assert_eq!(pc["files"].as_array().expect("files").len(), 3);
    assert_eq!(pc["matched"], json!(old.len()));
    assert_eq!(pc["truncated"], json!(true));

    // run: deletes exactly the planned files and nothing else.
    let r = call(&rt, &skill, &input).await;
    let out = ok_output("clean-old-logs", &r);
    assert_eq!(paths(&out["deleted"]), expected, "{out:#}");
    assert_eq!(out["bytes_freed"], json!(expected_bytes));
    assert_eq!(out["kept"], json!([]));
    let after = list_tree(&root);
    let gone: BTreeSet<String> = before
        .difference(&after)
        .map(|rel| abs(rel).display().to_string())
        .collect();
    assert_eq!(gone, expected);
    assert!(after.is_subset(&before));
    // The symlinks are still there and their targets untouched.
    for link in ["link.gz", "nested/linkdir"] {
        assert!(
            std::fs::symlink_metadata(abs(link))
                .expect("symlink kept")
                .is_symlink()
        );
    }
    assert_eq!(std::fs::metadata(&target).expect("target kept").len(), 999);
    assert!(outside.path().join("dir/inner.log.1").exists());

    // A second plan finds nothing left to do.
    let again = ok_output("clean-old-logs", &plan(&rt, &skill, &input).await);
    assert_eq!(again["files"], json!([]));

    // A directory outside the grant cannot be opened; `..` is refused before any look.
    let outside_input = json!({ "dir": outside.path(), "older_than_days": 1 }).to_string();
    let escape =
        json!({ "dir": format!("{}/../x", root.display()), "older_than_days": 1 }).to_string();
    for export in [Export::Plan, Export::Run] {
        let r = rt
            .invoke(&skill, export, &outside_input, &Default::default())
            .await
            .expect("host");
        assert_eq!(error_code(&r), "not-accessible");
        let r = rt
            .invoke(&skill, export, &escape, &Default::default())
            .await
            .expect("host");
        assert_eq!(error_code(&r), "invalid-input");
    }
    assert!(target.exists() && outside.path().join("dir/inner.log.1").exists());
}

#[tokio::test]
async fn clean_old_logs_real_manifest_grants_only_var_log() {
    let (_, m) = catalog_skill("clean-old-logs");
    assert_eq!(m.capabilities.fs_write, ["/var/log"]);
    assert!(m.capabilities.fs_read.is_empty() && m.capabilities.exec.is_empty());
    assert!(m.capabilities.http.is_empty() && m.capabilities.tcp.is_empty());
    assert_eq!(m.skill.level, 1);

    // With the real manifest, a tree elsewhere is out of reach.
    let tree = tempfile::tempdir().expect("tempdir");
    write_aged(&tree.path().join("old.log.1"), 10, 400);
    let (rt, _dir) = runtime();
    let skill = load_catalog(&rt, "clean-old-logs", None);
    let input = json!({ "dir": tree.path(), "older_than_days": 1 }).to_string();
    assert_eq!(
        error_code(&call(&rt, &skill, &input).await),
        "not-accessible"
    );
    assert!(tree.path().join("old.log.1").exists());
}

// ---------------------------------------------------------------- service-restart

/// A stand-in `systemctl` (this machine has no systemd): a shell script that appends its
/// arguments to `calls.txt`, prints `active` for `is-active`, and exits 0.
fn stand_in_systemctl(dir: &Path) -> (PathBuf, PathBuf) {
    let log = dir.join("calls.txt");
    let script = dir.join("systemctl");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$*\" >> '{}'\n[ \"$1\" = is-active ] && echo active\nexit 0\n",
            log.display()
        ),
    )
    .expect("write script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    (script, log)
}

fn recorded(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

/// Restarts through a stand-in `systemctl` shell script (this machine runs no systemd), granted
/// by a test manifest with the same literal arguments as the real one. The script records its
/// arguments, so the test sees exactly what was run.
#[tokio::test]
async fn service_restart_runs_exactly_restart_then_is_active_for_an_allowed_unit() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (script, log) = stand_in_systemctl(tmp.path());
    let s = script.display().to_string();
    let m = repair_manifest(&format!(
        "exec = [{{ program = {s:?}, args = [\"restart\", \"nginx.service\"] }}, \
         {{ program = {s:?}, args = [\"is-active\", \"nginx.service\"] }}]\n\
         services = {{ restart = [\"nginx.service\"] }}"
    ));
    let (rt, _dir) = runtime();
    let skill = load_catalog(&rt, "service-restart", Some(m));
    let input = json!({ "unit": "nginx.service", "systemctl": s }).to_string();

    let p = ok_output("service-restart", &plan(&rt, &skill, &input).await);
    assert_eq!(p["mode"], "plan");
    assert_eq!(p["command"], json!([s, "restart", "nginx.service"]));
    assert_eq!(p["verify"], json!([s, "is-active", "nginx.service"]));
    // Where systemd is absent (as here) the state before is unknown, and said so.
    assert!(
        p["before"].is_object() || (p["before"].is_null() && p["before_error"].is_string()),
        "{p:#}"
    );
    assert_eq!(recorded(&log), "", "plan ran something");

    let r = call(&rt, &skill, &input).await;
    let out = ok_output("service-restart", &r);
    assert_eq!(
        recorded(&log),
        "restart nginx.service\nis-active nginx.service\n"
    );
    assert_eq!(out["restart"]["status"], json!(0));
    assert_eq!(out["state"], "active");
    assert_eq!(out["success"], json!(true));
    assert_eq!(r.exec.len(), 2);
    assert!(r.exec.iter().all(|e| e.denied.is_none() && e.program == s));
}

#[tokio::test]
async fn service_restart_refuses_a_unit_outside_its_allowlist() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (script, log) = stand_in_systemctl(tmp.path());
    let s = script.display().to_string();
    // Even a manifest granting any unit does not widen the skill's own allowlist.
    let m = repair_manifest(&format!(
        "exec = [{{ program = {s:?}, args = [\"restart\", \"{{unit}}\"] }}, \
         {{ program = {s:?}, args = [\"is-active\", \"{{unit}}\"] }}]"
    ));
    let (rt, _dir) = runtime();
    let skill = load_catalog(&rt, "service-restart", Some(m));
    let input = json!({ "unit": "sshd.service", "systemctl": s }).to_string();
    for export in [Export::Plan, Export::Run] {
        let r = rt
            .invoke(&skill, export, &input, &Default::default())
            .await
            .expect("host");
        assert_eq!(error_code(&r), "not-allowed");
        assert!(r.exec.is_empty(), "{:?}", r.exec);
    }
    assert_eq!(recorded(&log), "");
}

#[tokio::test]
async fn service_restart_real_manifest_refuses_the_stand_in() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (script, log) = stand_in_systemctl(tmp.path());
    let s = script.display().to_string();
    let (rt, _dir) = runtime();
    let skill = load_catalog(&rt, "service-restart", None);
    let r = call(
        &rt,
        &skill,
        &json!({ "unit": "nginx.service", "systemctl": s }).to_string(),
    )
    .await;
    assert_eq!(error_code(&r), "denied");
    assert_eq!(r.exec.len(), 1);
    assert!(r.exec[0].denied.is_some());
    assert_eq!(recorded(&log), "");

    // The real grants name each allowlisted unit literally, never a placeholder.
    let (_, m) = catalog_skill("service-restart");
    assert_eq!(m.skill.level, 2);
    let units = &m.capabilities.services.restart;
    assert!(!units.is_empty());
    assert_eq!(m.capabilities.exec.len(), units.len() * 2);
    for g in &m.capabilities.exec {
        assert_eq!(g.program, "/usr/bin/systemctl");
        assert!(matches!(g.args[0].as_str(), "restart" | "is-active"));
        assert_eq!(g.args.len(), 2);
        assert!(units.contains(&g.args[1]), "{:?}", g.args);
    }
}

// ---------------------------------------------------------------- kill-runaway-process

/// The user name of the test process, as `/etc/passwd` has it.
fn my_user() -> String {
    let uid = rustix::process::getuid().as_raw();
    std::fs::read_to_string("/etc/passwd")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 2 && f[2] == uid.to_string()).then(|| f[0].to_string())
        })
        .expect("the test's uid has a passwd entry")
}

fn spawn_sleep() -> std::process::Child {
    let child = std::process::Command::new("sleep")
        .arg("300")
        .spawn()
        .expect("spawn sleep");
    let comm = format!("/proc/{}/comm", child.id());
    wait_until("sleep to start", || {
        std::fs::read_to_string(&comm).is_ok_and(|c| c.trim() == "sleep")
    });
    child
}

/// Kill a `sleep 300` the test owns, with the real manifest and /bin/kill.
#[tokio::test]
async fn kill_runaway_process_terms_the_matching_process() {
    let mut child = spawn_sleep();
    let pid = child.id();
    let user = my_user();
    let (rt, _dir) = runtime();
    let skill = load_catalog(&rt, "kill-runaway-process", None);
    let input = json!({ "pid": pid, "expected_name": "sleep", "expected_user": user }).to_string();

    let p = ok_output("kill-runaway-process", &plan(&rt, &skill, &input).await);
    assert_eq!(p["found"]["name"], "sleep");
    assert_eq!(p["found"]["pid"], json!(pid));
    assert_eq!(
        p["command"],
        json!(["/bin/kill", "-s", "TERM", pid.to_string()])
    );
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "plan killed it"
    );

    // The start time from plan pins the PID against reuse.
    let pinned = json!({
        "pid": pid, "expected_name": "sleep", "expected_user": user,
        "expected_start_time": p["found"]["start_time"], "wait_ms": 10_000,
    })
    .to_string();
    let r = call(&rt, &skill, &pinned).await;
    let out = ok_output("kill-runaway-process", &r);
    assert_eq!(out["status"], json!(0));
    // It waited until the process was gone (a zombie until this test reaps it).
    assert_eq!(out["exited"], json!(true), "{out:#}");
    assert_eq!(r.exec.len(), 1);
    assert_eq!(r.exec[0].args, ["-s", "TERM", &pid.to_string()]);
    let mut status = None;
    wait_until("sleep to die", || {
        status = child.try_wait().expect("try_wait");
        status.is_some()
    });
    assert_eq!(status.and_then(|s| s.signal()), Some(15), "{status:?}");
}

#[tokio::test]
async fn kill_runaway_process_refuses_a_mismatch_and_spares_the_process() {
    let mut child = spawn_sleep();
    let pid = child.id();
    let user = my_user();
    let (rt, _dir) = runtime();
    let skill = load_catalog(&rt, "kill-runaway-process", None);

    let wrong_name = json!({ "pid": pid, "expected_name": "nginx", "expected_user": user });
    let wrong_user =
        json!({ "pid": pid, "expected_name": "sleep", "expected_user": "nobody-else" });
    let wrong_start = json!({
        "pid": pid, "expected_name": "sleep", "expected_user": user, "expected_start_time": 1,
    });
    // PIDs are below pid_max, which is at most 2^22: this one cannot exist.
    let gone = json!({ "pid": 4_194_304, "expected_name": "sleep" });
    for input in [wrong_name, wrong_user, wrong_start, gone] {
        for export in [Export::Plan, Export::Run] {
            let r = rt
                .invoke(&skill, export, &input.to_string(), &Default::default())
                .await
                .expect("host");
            assert_eq!(error_code(&r), "mismatch", "{input}");
            assert!(r.exec.is_empty(), "{input}: {:?}", r.exec);
        }
    }
    // A root process needs expected_user = "root" spelled out.
    if user == "root" {
        let r = call(
            &rt,
            &skill,
            &json!({ "pid": pid, "expected_name": "sleep" }).to_string(),
        )
        .await;
        assert_eq!(error_code(&r), "protected");
        assert!(r.exec.is_empty());
    }
    // PID 1 never reaches the skill with the real schema.
    let r = call(&rt, &skill, r#"{"pid": 1, "expected_name": "init"}"#).await;
    assert_eq!(r.outcome, Outcome::InvalidInput);

    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "the process was hurt"
    );
    child.kill().expect("clean up");
    child.wait().expect("reap");
}
