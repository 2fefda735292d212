//! Every rule, table by table.

use super::*;

fn target(floor: Level, ceiling: Level) -> Target {
    Target {
        name: "web-1".into(),
        environment: if floor > Level::L0 { "prod" } else { "dev" }.into(),
        floor,
        ceiling,
    }
}

fn request(declared: Level, grants: Grants) -> Request {
    Request {
        skill: "s".into(),
        declared,
        grants,
        target: target(Level::L0, Level::L3),
        trigger: Trigger::Human,
        requester: "alice".into(),
        role: Role::Operator,
    }
}

fn exec(program: &str, args: &[&str]) -> ExecGrant {
    ExecGrant {
        program: program.into(),
        args: args.iter().map(|a| a.to_string()).collect(),
    }
}

/// The floor one capability implies on its own.
fn floor_of(grants: Grants) -> Level {
    let floors = capability_floors(&grants);
    assert_eq!(floors.len(), 1, "{floors:?}");
    match &floors[0] {
        Reason::CapabilityFloor { level, .. } => *level,
        other => panic!("{other:?}"),
    }
}

#[test]
fn every_capability_has_its_floor() {
    let g = Grants::default;
    let table: Vec<(Grants, Level)> = vec![
        (
            Grants {
                fs_read: vec!["/var/log".into()],
                ..g()
            },
            Level::L0,
        ),
        (
            Grants {
                fs_read: vec!["/proc".into()],
                ..g()
            },
            Level::L3,
        ),
        (
            Grants {
                fs_read: vec!["/etc/nginx".into()],
                ..g()
            },
            Level::L0,
        ),
        (
            Grants {
                fs_read: vec!["/etc/ssl/private".into()],
                ..g()
            },
            Level::L2,
        ),
        (
            Grants {
                fs_read: vec!["/home/bob".into()],
                ..g()
            },
            Level::L2,
        ),
        (
            Grants {
                fs_read: vec!["/var/lib/postgresql".into()],
                ..g()
            },
            Level::L2,
        ),
        (
            Grants {
                fs_read: vec!["/root".into()],
                ..g()
            },
            Level::L2,
        ),
        (
            Grants {
                fs_read: vec!["/".into()],
                ..g()
            },
            Level::L3,
        ),
        // A path that merely starts with the same letters is not inside.
        (
            Grants {
                fs_read: vec!["/homework".into()],
                ..g()
            },
            Level::L0,
        ),
        (
            Grants {
                fs_write: vec!["/var/log".into()],
                ..g()
            },
            Level::L1,
        ),
        (
            Grants {
                fs_write: vec!["/var/log/nginx/".into()],
                ..g()
            },
            Level::L1,
        ),
        (
            Grants {
                fs_write: vec!["/tmp/scratch".into()],
                ..g()
            },
            Level::L1,
        ),
        (
            Grants {
                fs_write: vec!["/etc".into()],
                ..g()
            },
            Level::L3,
        ),
        (
            Grants {
                fs_write: vec!["/etc/nginx".into()],
                ..g()
            },
            Level::L3,
        ),
        (
            Grants {
                fs_write: vec!["/usr/local/bin".into()],
                ..g()
            },
            Level::L3,
        ),
        (
            Grants {
                fs_write: vec!["/var/lib/mysql".into()],
                ..g()
            },
            Level::L3,
        ),
        (
            Grants {
                fs_write: vec!["/".into()],
                ..g()
            },
            Level::L3,
        ),
        (
            Grants {
                exec: vec![exec("/usr/bin/systemctl", &["restart", "{unit}"])],
                ..g()
            },
            Level::L2,
        ),
        (
            Grants {
                exec: vec![exec("/bin/kill", &["-TERM", "{pid}"])],
                ..g()
            },
            Level::L2,
        ),
        (
            Grants {
                exec: vec![exec("/usr/bin/journalctl", &["-u", "{unit}", "{more...}"])],
                ..g()
            },
            Level::L3,
        ),
        (
            Grants {
                exec: vec![exec("/bin/sh", &["-c", "{cmd}"])],
                ..g()
            },
            Level::L3,
        ),
        (
            Grants {
                exec: vec![exec("/usr/bin/bash", &[])],
                ..g()
            },
            Level::L3,
        ),
        (
            Grants {
                exec: vec![exec("/usr/bin/python3.11", &["{script}"])],
                ..g()
            },
            Level::L3,
        ),
        (
            Grants {
                exec: vec![exec("/usr/bin/env", &["{x}"])],
                ..g()
            },
            Level::L3,
        ),
        (
            Grants {
                exec: vec![exec("/usr/bin/sudo", &["{x}"])],
                ..g()
            },
            Level::L3,
        ),
        (
            Grants {
                exec: vec![exec("/sbin/reboot", &[])],
                ..g()
            },
            Level::L3,
        ),
        // `shred` is not `sh`.
        (
            Grants {
                exec: vec![exec("/usr/bin/shred", &["{file}"])],
                ..g()
            },
            Level::L2,
        ),
        (
            Grants {
                service_restart: vec!["nginx.service".into()],
                ..g()
            },
            Level::L2,
        ),
        (
            Grants {
                service_reload: vec!["nginx.service".into()],
                ..g()
            },
            Level::L1,
        ),
        (
            Grants {
                http: vec!["https://status.example.com".into()],
                ..g()
            },
            Level::L0,
        ),
        (
            Grants {
                tcp: vec!["db.internal:5432".into()],
                ..g()
            },
            Level::L0,
        ),
        (
            Grants {
                dns: vec!["*.internal.example.com".into()],
                ..g()
            },
            Level::L0,
        ),
    ];
    for (grants, expected) in table {
        let got = floor_of(grants.clone());
        assert_eq!(got, expected, "{grants:?}");
    }
}

#[test]
fn effective_level_is_the_highest_of_declared_capabilities_and_environment() {
    let cases = [
        // declared, capability grants, environment floor, expected
        (Level::L0, Grants::default(), Level::L0, Level::L0),
        (Level::L2, Grants::default(), Level::L0, Level::L2),
        (
            Level::L0,
            Grants {
                fs_write: vec!["/var/log".into()],
                ..Grants::default()
            },
            Level::L0,
            Level::L1,
        ),
        (Level::L0, Grants::default(), Level::L1, Level::L1),
        (
            Level::L1,
            Grants {
                fs_read: vec!["/var/log".into()],
                exec: vec![exec("/usr/bin/systemctl", &["restart", "{u}"])],
                ..Grants::default()
            },
            Level::L1,
            Level::L2,
        ),
        (Level::L3, Grants::default(), Level::L1, Level::L3),
    ];
    for (declared, grants, env, expected) in cases {
        let mut r = request(declared, grants);
        r.target = target(env, Level::L3);
        let v = decide(&r);
        assert_eq!(v.level, expected, "{r:?}");
        assert!(v.reasons.contains(&Reason::Effective { level: expected }));
    }
}

#[test]
fn the_gate_for_each_level_and_trigger() {
    let healing = |auto_heal| Trigger::Healing {
        policy: "disk-full".into(),
        auto_heal,
    };
    let cases = [
        (Level::L0, Trigger::Human, Decision::Allow),
        (Level::L0, healing(false), Decision::Allow),
        (
            Level::L1,
            Trigger::Human,
            Decision::NeedsApproval {
                level: Level::L1,
                approvals_required: 1,
            },
        ),
        (
            Level::L1,
            healing(false),
            Decision::NeedsApproval {
                level: Level::L1,
                approvals_required: 1,
            },
        ),
        (Level::L1, healing(true), Decision::Allow),
        (
            Level::L2,
            Trigger::Human,
            Decision::NeedsApproval {
                level: Level::L2,
                approvals_required: 1,
            },
        ),
        // auto_heal covers L1 only.
        (
            Level::L2,
            healing(true),
            Decision::NeedsApproval {
                level: Level::L2,
                approvals_required: 1,
            },
        ),
        (
            Level::L3,
            Trigger::Human,
            Decision::NeedsApproval {
                level: Level::L3,
                approvals_required: 2,
            },
        ),
        (
            Level::L3,
            healing(true),
            Decision::NeedsApproval {
                level: Level::L3,
                approvals_required: 2,
            },
        ),
    ];
    for (level, trigger, expected) in cases {
        let mut r = request(level, Grants::default());
        r.trigger = trigger.clone();
        let v = decide(&r);
        assert_eq!(v.decision, expected, "{level} {trigger:?}");
        assert_eq!(v.level, level);
    }
}

#[test]
fn every_role_and_ceiling() {
    for role in [Role::Viewer, Role::Operator, Role::Approver, Role::Admin] {
        let mut r = request(Level::L0, Grants::default());
        r.role = role;
        let v = decide(&r);
        if role == Role::Viewer {
            assert_eq!(
                v.decision,
                Decision::Deny(DenyReason::RoleCannotInvoke { role })
            );
        } else {
            assert_eq!(v.decision, Decision::Allow, "{role:?}");
        }
    }
    for ceiling in Level::ALL {
        for level in Level::ALL {
            let mut r = request(level, Grants::default());
            r.target = target(Level::L0, ceiling);
            let v = decide(&r);
            assert_eq!(
                matches!(
                    v.decision,
                    Decision::Deny(DenyReason::AboveTargetCeiling { .. })
                ),
                level > ceiling,
                "{level} under ceiling {ceiling}"
            );
        }
    }
}

#[test]
fn reasons_read_well_in_english() {
    let mut r = request(
        Level::L1,
        Grants {
            exec: vec![exec("/usr/bin/systemctl", &["restart", "{unit}"])],
            ..Grants::default()
        },
    );
    r.target = target(Level::L1, Level::L3);
    let v = decide(&r);
    assert_eq!(
        v.explain(),
        vec![
            "the skill declares L1 adjust",
            "exec /usr/bin/systemctl implies at least L2 disrupt: running a program (restart, kill, ...) has service impact",
            "target web-1 is in environment prod, whose floor is L1 adjust",
            "effective level is L2 disrupt, the highest of the above",
            "L2 disrupt needs 1 approval by someone other than the requester",
        ]
    );
    let mut r = request(Level::L3, Grants::default());
    r.target = target(Level::L0, Level::L2);
    let v = decide(&r);
    assert_eq!(
        v.explain().last().map(String::as_str),
        Some(
            "refused: effective level L3 critical is above the ceiling of target web-1 (L2 disrupt): refused whatever the approvals"
        )
    );
    let v = decide(&request(Level::L3, Grants::default()));
    assert!(v.explain().contains(
        &"L3 critical needs 2 approvals by distinct approvers, each someone other than the requester"
            .to_string()
    ));
}

#[test]
fn verdicts_serialise_as_data() {
    let v = decide(&request(Level::L2, Grants::default()));
    let json = serde_json::to_value(&v).expect("json");
    assert_eq!(json["decision"]["decision"], "needs_approval");
    assert_eq!(json["decision"]["approvals_required"], 1);
    assert_eq!(json["level"], 2);
    assert_eq!(json["reasons"][0]["reason"], "declared");
    let back: Verdict = serde_json::from_value(json).expect("round trip");
    assert_eq!(back, v);
    assert!(serde_json::from_str::<Level>("4").is_err());
}

/// Each grant path the security review used, judged after normalisation and by containment.
#[test]
fn grant_paths_are_judged_by_what_they_reach() {
    let read = |p: &str| {
        floor_of(Grants {
            fs_read: vec![p.into()],
            ..Grants::default()
        })
    };
    let write = |p: &str| {
        floor_of(Grants {
            fs_write: vec![p.into()],
            ..Grants::default()
        })
    };
    for (path, expected) in [
        // Containment: a grant holding a sensitive path is as sensitive as that path.
        ("/etc", Level::L2),
        ("/var", Level::L2),
        ("/run", Level::L2),
        // Aliases and non-normalised spellings of private places.
        ("/./root", Level::L2),
        ("//root", Level::L2),
        ("/root/", Level::L2),
        ("/tmp/../root", Level::L2),
        ("/proc/self/root/etc", Level::L2),
        ("/proc/1/root/etc/shadow", Level::L2),
        ("/proc/thread-self/root/home", Level::L2),
        ("/proc/self/task/7/root/root", Level::L2),
        ("/proc/self/root", Level::L3),
        ("/proc/self/root/", Level::L3),
        ("/proc/1/cwd", Level::L3),
        ("/proc/self/fd", Level::L3),
        ("//", Level::L3),
        ("/.", Level::L3),
        // Other processes, the kernel and devices.
        ("/proc", Level::L3),
        ("/proc/1", Level::L2),
        ("/proc/self/environ", Level::L2),
        ("/proc/kcore", Level::L3),
        ("/sys", Level::L2),
        ("/sys/firmware/efi/efivars", Level::L2),
        ("/dev", Level::L3),
        ("/dev/shm", Level::L3),
        ("/etc/ssh", Level::L2),
        ("/var/backups", Level::L2),
        // Narrow, system-wide places stay observing.
        ("/proc/pressure", Level::L0),
        ("/proc/sys/vm", Level::L0),
        ("/var/log", Level::L0),
        ("/etc/nginx", Level::L0),
        ("/etc/ssl/certs", Level::L0),
        ("/etc/sshd", Level::L0),
        ("/procfs", Level::L0),
    ] {
        assert_eq!(read(path), expected, "fs_read {path}");
    }
    for (path, expected) in [
        ("/./etc", Level::L3),
        ("/var", Level::L3),
        ("/var/", Level::L3),
        ("/dev", Level::L3),
        ("/dev/shm", Level::L3),
        ("/proc/sys", Level::L3),
        ("/proc/sys/vm", Level::L3),
        ("/sys/class", Level::L3),
        ("/run", Level::L3),
        ("/var/spool/cron", Level::L3),
        ("/proc/self/root/tmp", Level::L1),
        ("/proc/self/cwd", Level::L3),
        ("/var/log", Level::L1),
        ("/var/log/nginx/", Level::L1),
        ("/tmp/scratch", Level::L1),
        ("/var/tmp", Level::L1),
    ] {
        assert_eq!(write(path), expected, "fs_write {path}");
    }
}

#[test]
fn normalisation_resolves_spellings_and_process_views() {
    use crate::paths::normalise;
    for (input, path, alias) in [
        ("/", "/", false),
        ("//root", "/root", false),
        ("/./root/", "/root", false),
        ("/a/../b", "/b", false),
        ("/../..", "/", false),
        ("/proc/self/root/etc", "/etc", true),
        ("/proc/42/root/proc/self/root/etc", "/etc", true),
        ("/proc/self/cwd/x", "/", true),
        ("/proc/self/status", "/proc/self/status", false),
        ("/proc/meminfo", "/proc/meminfo", false),
    ] {
        let n = normalise(input);
        assert_eq!((n.path.as_str(), n.alias), (path, alias), "{input}");
    }
}

#[test]
fn the_reason_names_what_was_reached() {
    let floors = capability_floors(&Grants {
        fs_read: vec!["/etc".into()],
        ..Grants::default()
    });
    assert_eq!(
        floors[0].to_string(),
        "fs_read /etc implies at least L2 disrupt: it contains /etc/shadow, and it may read private data"
    );
}

#[test]
fn a_containing_write_grant_says_what_it_contains() {
    let floors = capability_floors(&Grants {
        fs_write: vec!["/var".into()],
        ..Grants::default()
    });
    assert_eq!(
        floors[0].to_string(),
        "fs_write /var implies at least L3 critical: it contains /var/lib, and writing system or user data directories can change anything"
    );
}

/// service-restart's manifest: eight exec grants of one program, four restarts.
fn service_restart_like() -> Grants {
    let mut exec_grants = Vec::new();
    let mut units = Vec::new();
    for unit in ["nginx", "apache2", "caddy", "haproxy"] {
        let unit = format!("{unit}.service");
        exec_grants.push(exec("/usr/bin/systemctl", &["restart", &unit]));
        exec_grants.push(exec("/usr/bin/systemctl", &["is-active", &unit]));
        units.push(unit);
    }
    Grants {
        exec: exec_grants,
        service_restart: units,
        ..Grants::default()
    }
}

#[test]
fn identical_floors_are_one_reason_counting_their_grants() {
    let v = decide(&request(Level::L2, service_restart_like()));
    let explained = v.explain();
    let exec_lines: Vec<&String> = explained
        .iter()
        .filter(|l| l.starts_with("exec /usr/bin/systemctl"))
        .collect();
    assert_eq!(
        exec_lines,
        [
            "exec /usr/bin/systemctl (8 grants) implies at least L2 disrupt: running a program (restart, kill, ...) has service impact"
        ]
    );
    // Service restarts name distinct units: each stays a reason of its own.
    assert_eq!(
        explained
            .iter()
            .filter(|l| l.starts_with("service restart "))
            .count(),
        4
    );
    let mut unique = explained.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), explained.len(), "{explained:#?}");
    // The level and the decision are what they were.
    assert_eq!(v.level, Level::L2);
    assert_eq!(
        v.decision,
        Decision::NeedsApproval {
            level: Level::L2,
            approvals_required: 1
        }
    );
}

#[test]
fn grants_of_one_program_at_different_floors_stay_apart() {
    let floors = capability_floors(&Grants {
        exec: vec![
            exec("/usr/bin/systemctl", &["restart", "a"]),
            exec("/usr/bin/systemctl", &["restart", "{units...}"]),
            exec("/usr/bin/systemctl", &["restart", "b"]),
        ],
        fs_read: vec!["/var/log".into(), "/var/log".into()],
        ..Grants::default()
    });
    let lines: Vec<String> = floors.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "fs_read /var/log (2 grants) implies at least L0 observe: reading is observing",
            "exec /usr/bin/systemctl (2 grants) implies at least L2 disrupt: running a program (restart, kill, ...) has service impact",
            "exec /usr/bin/systemctl implies at least L3 critical: its arguments are open-ended, so it is arbitrary exec",
        ]
    );
    // One grant alone reads as before, without a count.
    assert_eq!(floor_of(service_restart_like_one()), Level::L2);
}

fn service_restart_like_one() -> Grants {
    Grants {
        exec: vec![exec("/usr/bin/systemctl", &["restart", "nginx.service"])],
        ..Grants::default()
    }
}

/// A repair's plan (declared L0, its directories read-only, no programs or service actions)
/// is never above the repair itself: a host that would admit the repair admits its plan, so
/// the orchestrator's early refusal never turns a repair away because of its plan.
#[test]
fn a_plan_is_never_above_its_repair() {
    let local = admit::Local {
        name: "web-1",
        environment: "dev",
        floor: Level::L0,
        ceiling: Level::L3,
    };
    let level = |declared, grants: &Grants| {
        admit::effective_level(&admit::Verified { declared, grants }, &local).0
    };
    let dirs = [
        "/",
        "/var",
        "/var/log",
        "/var/log/nginx",
        "/tmp/x",
        "/etc",
        "/etc/nginx",
        "/etc/ssl/private",
        "/root",
        "/home/a",
        "/var/lib/mysql",
        "/proc",
        "/proc/1/root",
        "/proc/sys",
        "/sys",
        "/dev",
        "/srv",
        "/run/secrets",
        "/usr",
        "/opt/app",
    ];
    for dir in dirs {
        for declared in Level::ALL {
            let grants = Grants {
                fs_write: vec![dir.into()],
                fs_read: vec!["/var/log".into()],
                exec: vec![exec("/usr/bin/systemctl", &["restart", "{unit}"])],
                http: vec!["http://127.0.0.1:80".into()],
                ..Grants::default()
            };
            assert!(
                level(Level::L0, &grants.for_plan()) <= level(declared, &grants),
                "{dir} at {declared}"
            );
        }
    }
}

#[test]
fn a_dns_grant_observes_and_says_why() {
    let floors = capability_floors(&Grants {
        dns: vec!["db.example.com".into(), "*.internal.example.com".into()],
        ..Grants::default()
    });
    let lines: Vec<String> = floors.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "dns db.example.com implies at least L0 observe: a name lookup observes (it cannot connect anywhere)",
            "dns *.internal.example.com implies at least L0 observe: a name lookup observes (it cannot connect anywhere)",
        ]
    );
    let v = decide(&request(
        Level::L0,
        Grants {
            dns: vec!["db.example.com".into()],
            ..Grants::default()
        },
    ));
    assert_eq!(v.decision, Decision::Allow);
    // A plan runs with its lookups as they are (reading, not changing).
    let g = Grants {
        dns: vec!["db.example.com".into()],
        ..Grants::default()
    };
    assert_eq!(g.for_plan().dns, g.dns);
}
