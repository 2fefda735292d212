//! Hostile guests against the sandbox's hardening: a repair's `plan` changes nothing, grant
//! roots are not followed through symlinks, name lookups happen only for granted names, and
//! no report grows past its bound whatever the skill returns or asks for.

use serde_json::{Value, json};
use tend_runtime::{
    ExecutionReport, Export, LimitOverrides, LoadedSkill, Outcome, Runtime, max_report_json_bytes,
};

use crate::support::*;

async fn invoke(
    rt: &Runtime,
    skill: &LoadedSkill,
    export: Export,
    input: &Value,
    overrides: LimitOverrides,
) -> ExecutionReport {
    rt.invoke(skill, export, &input.to_string(), &overrides)
        .await
        .expect("the host itself does not fail")
}

fn json_len(r: &ExecutionReport) -> usize {
    serde_json::to_vec(r).expect("report serialises").len()
}

// ------------------------------------------------------------------ plan changes nothing

#[tokio::test]
async fn plan_cannot_write_or_exec_but_run_can() {
    let (rt, dir) = runtime();
    let granted = dir.path().join("granted");
    std::fs::create_dir(&granted).expect("mkdir");
    let g = granted.display().to_string();
    let m = repair_manifest(&format!(
        "fs_write = [{g:?}]\nexec = [{{ program = \"/bin/touch\", args = [\"{{file}}\"] }}]\nservices = {{ restart = [\"nginx.service\"] }}"
    ));
    let skill = rt
        .load(&guest_bytes("repair-hostile"), Some(m))
        .expect("load");
    let written = granted.join("written.txt");
    let touched = granted.join("touched.txt");
    let input = json!({
        "write": written,
        "exec": { "program": "/bin/touch", "args": [touched] },
    });

    let p = invoke(&rt, &skill, Export::Plan, &input, Default::default()).await;
    assert_eq!(p.outcome, Outcome::Ok, "{:?}", p.error);
    let out = p.output.as_ref().expect("output");
    assert_eq!(out["write"]["ok"], false, "{out}");
    assert!(!written.exists(), "plan wrote a file");
    assert_eq!(out["exec"]["ok"], false, "{out}");
    assert_eq!(out["exec"]["code"], "denied", "{out}");
    assert!(!touched.exists(), "plan ran a program");
    // The refusal is recorded: the attempt in the exec list, the withdrawals in the notes.
    assert_eq!(p.exec.len(), 1, "{:?}", p.exec);
    let denied = p.exec[0].denied.as_deref().expect("refused");
    assert!(
        denied.contains("`plan` must not change anything"),
        "{denied}"
    );
    assert_eq!(p.exec[0].status, None);
    for expected in [
        format!("plan: fs_write {g} mounted read-only"),
        "plan: exec refused".to_string(),
        "plan: services refused".to_string(),
    ] {
        assert!(
            p.notes.iter().any(|n| n.starts_with(&expected)),
            "{expected}: {:?}",
            p.notes
        );
    }

    // Positive control: the very same calls in `run` do work.
    let r = invoke(&rt, &skill, Export::Run, &input, Default::default()).await;
    assert_eq!(r.outcome, Outcome::Ok, "{:?}", r.error);
    let out = r.output.as_ref().expect("output");
    assert_eq!(out["write"]["ok"], true, "{out}");
    assert_eq!(out["exec"]["ok"], true, "{out}");
    assert_eq!(std::fs::read(&written).expect("run wrote"), b"changed");
    assert!(touched.exists(), "run did not run the program");
    assert_eq!(r.exec[0].status, Some(0));
    assert!(
        !r.notes.iter().any(|n| n.starts_with("plan:")),
        "{:?}",
        r.notes
    );
}

// ------------------------------------------------------------------ grant roots and symlinks

#[tokio::test]
async fn a_grant_root_reached_through_a_symlink_is_not_mounted() {
    let (rt, dir) = runtime();
    let real = dir.path().join("real");
    std::fs::create_dir(&real).expect("mkdir");
    std::fs::write(real.join("secret.txt"), "secret\n").expect("write");
    // The grant itself is a symlink, and a grant under a symlinked parent.
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&real, &link).expect("symlink");
    let parent_link = dir.path().join("parent-link");
    std::os::unix::fs::symlink(dir.path(), &parent_link).expect("symlink");
    let through_parent = parent_link.join("real");

    let read = async |grant: &std::path::Path, path: std::path::PathBuf| {
        let skill = rt
            .load(
                &guest_bytes("hostile"),
                Some(diagnose_manifest(&format!(
                    "fs_read = [{:?}]",
                    grant.display().to_string()
                ))),
            )
            .expect("load");
        let r = call(&rt, &skill, &json!({"do":"read","path":path}).to_string()).await;
        assert_eq!(r.outcome, Outcome::Ok, "{:?}", r.error);
        (
            r.output.expect("output")["read"].as_bool().expect("flag"),
            r.notes,
        )
    };

    // Positive control: the real directory, granted by its real path, is readable.
    let (ok, notes) = read(&real, real.join("secret.txt")).await;
    assert!(ok, "{notes:?}");

    for grant in [&link, &through_parent] {
        let (ok, notes) = read(grant, grant.join("secret.txt")).await;
        assert!(!ok, "{} was followed", grant.display());
        assert!(
            notes
                .iter()
                .any(|n| n.contains(&grant.display().to_string())
                    && n.contains("symlink")
                    && n.contains("not mounted")),
            "{notes:?}"
        );
    }
}

// ------------------------------------------------------------------ name lookups

async fn lookup(rt: &Runtime, caps: &str, name: &str) -> (Value, Vec<String>) {
    let skill = rt
        .load(&guest_bytes("hostile"), Some(diagnose_manifest(caps)))
        .expect("load");
    let r = call(rt, &skill, &json!({"do":"lookup","addr":name}).to_string()).await;
    assert_eq!(r.outcome, Outcome::Ok, "{:?} {}", r.error, r.stderr);
    (r.output.expect("output"), r.notes)
}

#[tokio::test]
async fn only_granted_names_are_looked_up() {
    let (rt, _dir) = runtime();
    let grant = "tcp = [\"localhost:22\"]";

    // Positive control: the granted name resolves, host-side.
    let (out, notes) = lookup(&rt, grant, "localhost").await;
    assert_eq!(out["ok"], true, "{out} {notes:?}");
    assert!(
        !out["addresses"].as_array().expect("addresses").is_empty(),
        "{out}"
    );

    // Any other name is refused by Tend's check (access-denied, with a note), not by the
    // resolver: this machine has no DNS, which would answer name-unresolvable instead.
    for (caps, name) in [
        (grant, "secret.attacker.invalid"),
        (grant, "localhost.attacker.invalid"),
        ("tcp = [\"127.0.0.1:22\"]", "secret.attacker.invalid"),
    ] {
        let (out, notes) = lookup(&rt, caps, name).await;
        assert_eq!(out["ok"], false, "{caps} {name}: {out}");
        let error = out["error"].as_str().expect("error");
        assert!(
            error.contains("AccessDenied") || error.contains("access-denied"),
            "{caps} {name}: {error}"
        );
        assert!(
            notes.iter().any(|n| n
                == &format!(
                    "name lookup of {name:?} refused: only names granted in capabilities.tcp or capabilities.dns are resolved"
                )),
            "{notes:?}"
        );
    }
}

// ------------------------------------------------------------------ bounded reports

#[tokio::test]
async fn a_huge_error_message_is_bounded_by_the_output_cap() {
    let (rt, _dir) = runtime();
    let skill = rt
        .load(&guest_bytes("repair-hostile"), Some(repair_manifest("")))
        .expect("load");
    let r = invoke(
        &rt,
        &skill,
        Export::Run,
        &json!({ "error_bytes": 8_000_000 }),
        LimitOverrides {
            output_kib: Some(1),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(r.outcome, Outcome::SkillError, "{:?}", r.notes);
    let error = r.error.as_ref().expect("error");
    assert_eq!(error.code, "huge");
    assert!(error.message.len() <= 1024, "{}", error.message.len());
    assert!(error.message.ends_with("[truncated]"));
    assert!(
        r.notes
            .iter()
            .any(|n| n.starts_with("error message truncated")),
        "{:?}",
        r.notes
    );
    assert!(
        json_len(&r) <= max_report_json_bytes(1024),
        "{}",
        json_len(&r)
    );
}

#[tokio::test]
async fn a_huge_exec_argument_is_not_recorded_in_full() {
    let (rt, _dir) = runtime();
    let m = repair_manifest(r#"exec = [{ program = "/bin/echo", args = ["hello", "{who}"] }]"#);
    let skill = rt
        .load(&guest_bytes("repair-hostile"), Some(m))
        .expect("load");
    let r = invoke(
        &rt,
        &skill,
        Export::Run,
        &json!({ "exec": { "program": "/bin/echo", "args": ["hello"] }, "arg_bytes": 20_000_000 }),
        LimitOverrides {
            memory_mib: Some(256),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(r.outcome, Outcome::Ok, "{:?}", r.error);
    assert_eq!(r.exec.len(), 1);
    let rec = &r.exec[0];
    assert!(rec.denied.is_some(), "a 20 MB argument is no safe value");
    assert!(rec.truncated);
    let recorded: usize = rec.args.iter().map(String::len).sum();
    assert!(recorded <= 4096, "{recorded} bytes of arguments recorded");
    assert!(rec.denied.as_deref().expect("denied").len() <= 512);
    let cap = r.limits.output_kib as usize * 1024;
    assert!(
        json_len(&r) <= max_report_json_bytes(cap),
        "{}",
        json_len(&r)
    );
    assert!(json_len(&r) < 1024 * 1024, "{}", json_len(&r));
}

#[tokio::test]
async fn exec_calls_past_the_record_limit_are_refused() {
    let (rt, _dir) = runtime();
    let skill = rt
        .load(&guest_bytes("repair-hostile"), Some(repair_manifest("")))
        .expect("load");
    let r = invoke(
        &rt,
        &skill,
        Export::Run,
        &json!({ "exec": { "program": "/bin/true" }, "times": 150 }),
        Default::default(),
    )
    .await;
    assert_eq!(r.outcome, Outcome::Ok, "{:?}", r.error);
    assert_eq!(r.exec.len(), 100);
    assert!(
        r.notes
            .iter()
            .any(|n| n.starts_with("50 more exec calls refused and not recorded")),
        "{:?}",
        r.notes
    );
}
