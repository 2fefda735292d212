//! # Admission — the last check before a skill runs
//!
//! [`decide`](crate::decide) runs once, on the orchestrator, when an invocation is asked for.
//! [`admit`] runs just before it executes, on the local worker and on every agent, and trusts
//! nothing the orchestrator (or its database) says that the admitting host can compute or
//! verify itself:
//!
//! - the level is recomputed from the **verified** signed manifest (declared level and the
//!   floor of every granted capability) and this host's own environment floor;
//! - the approvals needed follow from that level (an L1 job is automatic only under a trigger
//!   the host verified as an auto-heal policy);
//! - an approval counts only if it is bound to the invocation digest recomputed here, was given
//!   before the approval window closed, the window is still open, and it comes from someone
//!   other than the requester — each approver once;
//! - nothing above this host's ceiling runs, approved or not.
//!
//! An approval is a signature by an approver's own ed25519 key over the invocation digest.
//! The caller checks it against the approver keys in its **own** trust policy (the crypto is
//! not this crate's) and passes the outcome as [`Signature`]: only a verified signature counts,
//! under the name this host's policy gives that key, never the name the orchestrator stored.
//! So a compromised orchestrator or database cannot invent an approval.
//!
//! Pure: no I/O and no clock (the caller passes `now`), so every rule is a table test.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Grants, Level, Reason, Trigger, capability_floors};

/// One approval as the admitting host was told of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// Who approved: for a [`Signature::Verified`] approval the name this host trusts the key
    /// under; otherwise the name it was announced with (only ever shown in a refusal).
    pub approver: String,
    /// The invocation digest the approver signed.
    pub invocation_digest: String,
    /// When it was given (unix ms). An unreadable time should be passed as `i64::MAX`, so it
    /// never counts.
    pub at_ms: i64,
    /// What this host found when it checked the approval's signature.
    pub signature: Signature,
}

/// The outcome of checking one approval's signature against the approver keys this host
/// trusts. Only `Verified` counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Signature {
    /// Made by a key this host trusts, over the approval's `invocation_digest`.
    Verified,
    /// The approval carries no signature (a name is not an approval).
    Missing,
    /// Signed by a key this host does not trust as an approver's.
    UnknownKey,
    /// The signature does not verify (forged, or over other bytes).
    Invalid,
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Signature::Verified => "signed by a trusted approver key",
            Signature::Missing => "carries no signature",
            Signature::UnknownKey => "is signed by a key this host does not trust as an approver",
            Signature::Invalid => "has a signature that does not verify",
        })
    }
}

/// The job, each fact as the admitting host knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job<'a> {
    pub skill: &'a str,
    pub requester: &'a str,
    /// The invocation digest recomputed here from the verified artifact and the job's input,
    /// target and expiry.
    pub invocation_digest: &'a str,
    /// The digest the orchestrator says the job has (the one approvers were shown).
    pub announced_digest: &'a str,
    /// The end of the approval window (unix ms), bound into the digest.
    pub expires_ms: i64,
    /// Why it runs, **as far as this host can verify it**. A trigger that is only the
    /// orchestrator's word must be passed as [`Trigger::Human`].
    pub trigger: &'a Trigger,
    pub approvals: &'a [Approval],
}

/// What the signed manifest says, as verified by the admitting host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified<'a> {
    pub declared: Level,
    pub grants: &'a Grants,
}

/// The admitting host: its environment floor and its ceiling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Local<'a> {
    /// How refusals name this host, e.g. `this agent` or `target local`.
    pub name: &'a str,
    pub environment: &'a str,
    /// Every job here is at least this level.
    pub floor: Level,
    /// Nothing above this level runs here.
    pub ceiling: Level,
}

/// Why an approval was not counted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "why", rename_all = "snake_case")]
pub enum Ignored {
    /// Not signed by a key this host trusts as an approver's.
    Unsigned {
        approver: String,
        signature: Signature,
    },
    /// The requester approved their own request.
    Requester { approver: String },
    /// Bound to another invocation digest.
    OtherDigest { approver: String, digest: String },
    /// Given after the approval window closed.
    AfterExpiry { approver: String },
    /// The same approver already counted.
    Duplicate { approver: String },
}

impl fmt::Display for Ignored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ignored::Unsigned {
                approver,
                signature,
            } => write!(f, "the approval announced as {approver}'s {signature}"),
            Ignored::Requester { approver } => {
                write!(f, "{approver} is the requester and cannot approve")
            }
            Ignored::OtherDigest { approver, digest } => {
                write!(f, "{approver} approved digest {digest}, another invocation")
            }
            Ignored::AfterExpiry { approver } => {
                write!(f, "{approver} approved after the approval window closed")
            }
            Ignored::Duplicate { approver } => write!(f, "{approver} counts only once"),
        }
    }
}

/// Why a job is refused at admission.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum Refusal {
    /// The job is not the invocation that was decided on and approved.
    DigestMismatch {
        recomputed: String,
        announced: String,
    },
    /// The recomputed level is above this host's ceiling.
    AboveCeiling {
        level: Level,
        ceiling: Level,
        host: String,
    },
    /// The approval window closed before the job could run.
    Expired {
        level: Level,
        expires_ms: i64,
        now_ms: i64,
    },
    /// Fewer valid approvals than the recomputed level needs.
    NotApproved {
        level: Level,
        required: u8,
        valid: usize,
        digest: String,
        ignored: Vec<Ignored>,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::DigestMismatch {
                recomputed,
                announced,
            } => write!(
                f,
                "the invocation digest is {recomputed} here, not the {announced} it was approved as"
            ),
            Refusal::AboveCeiling {
                level,
                ceiling,
                host,
            } => write!(
                f,
                "level {level}, recomputed from the verified manifest, is above {host}'s ceiling {ceiling}"
            ),
            Refusal::Expired {
                level,
                expires_ms,
                now_ms,
            } => write!(
                f,
                "{level} needs approval, and its approval window closed {} s ago: approvals no longer count",
                (now_ms - expires_ms) / 1000
            ),
            Refusal::NotApproved {
                level,
                required,
                valid,
                digest,
                ignored,
            } => {
                write!(
                    f,
                    "{level} (recomputed from the verified manifest) needs {required} approval{} for digest {digest} by someone other than the requester; it has {valid}",
                    if *required == 1 { "" } else { "s" }
                )?;
                if !ignored.is_empty() {
                    let why: Vec<String> = ignored.iter().map(ToString::to_string).collect();
                    write!(f, " (not counted: {})", why.join("; "))?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for Refusal {}

/// A job that may run: the level it runs at, who approved it, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Admitted {
    pub level: Level,
    pub approvals_required: u8,
    pub approvers: Vec<String>,
    pub reasons: Vec<Reason>,
}

/// The effective level of a verified manifest on a host with `floor`, with every reason.
pub fn effective_level(verified: &Verified<'_>, local: &Local<'_>) -> (Level, Vec<Reason>) {
    let mut reasons = vec![Reason::Declared {
        level: verified.declared,
    }];
    let mut level = verified.declared;
    for r in capability_floors(verified.grants) {
        if let Reason::CapabilityFloor { level: l, .. } = &r {
            level = level.max(*l);
        }
        reasons.push(r);
    }
    if local.floor > Level::L0 {
        reasons.push(Reason::EnvironmentFloor {
            target: local.name.to_string(),
            environment: local.environment.to_string(),
            level: local.floor,
        });
        level = level.max(local.floor);
    }
    reasons.push(Reason::Effective { level });
    (level, reasons)
}

/// Approvals needed at `level` under `trigger`: L0 none, L1 one unless an auto-heal policy,
/// L2 one, L3 two.
pub fn approvals_needed(level: Level, trigger: &Trigger) -> u8 {
    match (level, trigger) {
        (
            Level::L1,
            Trigger::Healing {
                auto_heal: true, ..
            },
        ) => 0,
        (l, _) => l.approvals_required(),
    }
}

/// The approvals that stand for `digest`: signed by a trusted approver key, distinct approvers
/// other than `requester`, each bound to `digest` and given no later than `expires_ms`. Returns the approvers counted and
/// why each other approval was not.
pub fn valid_approvers(
    approvals: &[Approval],
    requester: &str,
    digest: &str,
    expires_ms: i64,
) -> (Vec<String>, Vec<Ignored>) {
    let mut counted: Vec<String> = Vec::new();
    let mut ignored = Vec::new();
    for a in approvals {
        let approver = a.approver.clone();
        if a.signature != Signature::Verified {
            ignored.push(Ignored::Unsigned {
                approver,
                signature: a.signature,
            });
        } else if a.approver == requester {
            ignored.push(Ignored::Requester { approver });
        } else if a.invocation_digest != digest {
            ignored.push(Ignored::OtherDigest {
                approver,
                digest: a.invocation_digest.clone(),
            });
        } else if a.at_ms > expires_ms {
            ignored.push(Ignored::AfterExpiry { approver });
        } else if counted.contains(&a.approver) {
            ignored.push(Ignored::Duplicate { approver });
        } else {
            counted.push(approver);
        }
    }
    (counted, ignored)
}

/// May this job run here, now? `Ok` with the level and approvers, or the [`Refusal`].
pub fn admit(
    job: &Job<'_>,
    verified: &Verified<'_>,
    local: &Local<'_>,
    now_ms: i64,
) -> Result<Admitted, Refusal> {
    if job.invocation_digest != job.announced_digest {
        return Err(Refusal::DigestMismatch {
            recomputed: job.invocation_digest.to_string(),
            announced: job.announced_digest.to_string(),
        });
    }
    let (level, mut reasons) = effective_level(verified, local);
    if level > local.ceiling {
        return Err(Refusal::AboveCeiling {
            level,
            ceiling: local.ceiling,
            host: local.name.to_string(),
        });
    }
    let required = approvals_needed(level, job.trigger);
    match (level, job.trigger) {
        (Level::L0, _) => reasons.push(Reason::Automatic { level }),
        (Level::L1, Trigger::Healing { policy, auto_heal }) if *auto_heal => {
            reasons.push(Reason::AutoHeal {
                policy: policy.clone(),
            })
        }
        (Level::L3, _) => reasons.push(Reason::NeverAutomatic { level }),
        _ => {}
    }
    if required == 0 {
        return Ok(Admitted {
            level,
            approvals_required: 0,
            approvers: Vec::new(),
            reasons,
        });
    }
    reasons.push(Reason::Approvals { level, required });
    if now_ms > job.expires_ms {
        return Err(Refusal::Expired {
            level,
            expires_ms: job.expires_ms,
            now_ms,
        });
    }
    let (approvers, ignored) = valid_approvers(
        job.approvals,
        job.requester,
        job.invocation_digest,
        job.expires_ms,
    );
    if approvers.len() < required as usize {
        return Err(Refusal::NotApproved {
            level,
            required,
            valid: approvers.len(),
            digest: job.invocation_digest.to_string(),
            ignored,
        });
    }
    Ok(Admitted {
        level,
        approvals_required: required,
        approvers,
        reasons,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ExecGrant;

    const DIGEST: &str = "d1";
    const NOW: i64 = 1_000_000;
    const EXPIRES: i64 = NOW + 60_000;

    fn approval(approver: &str, digest: &str, at_ms: i64) -> Approval {
        Approval {
            approver: approver.into(),
            invocation_digest: digest.into(),
            at_ms,
            signature: Signature::Verified,
        }
    }

    fn unsigned(approver: &str, signature: Signature) -> Approval {
        Approval {
            signature,
            ..approval(approver, DIGEST, NOW)
        }
    }

    fn kill() -> Grants {
        Grants {
            exec: vec![ExecGrant {
                program: "/bin/kill".into(),
                args: vec!["{pid}".into()],
            }],
            ..Grants::default()
        }
    }

    fn local(floor: Level, ceiling: Level) -> Local<'static> {
        Local {
            name: "this agent",
            environment: "test",
            floor,
            ceiling,
        }
    }

    /// Admit a job by alice with these approvals, at `now`.
    fn run(
        declared: Level,
        grants: &Grants,
        local: Local<'_>,
        trigger: &Trigger,
        approvals: &[Approval],
        now: i64,
    ) -> Result<Admitted, Refusal> {
        admit(
            &Job {
                skill: "acme-fix",
                requester: "alice",
                invocation_digest: DIGEST,
                announced_digest: DIGEST,
                expires_ms: EXPIRES,
                trigger,
                approvals,
            },
            &Verified { declared, grants },
            &local,
            now,
        )
    }

    #[test]
    fn the_level_comes_from_the_verified_manifest_and_the_local_floor() {
        let none = Grants::default();
        let human = Trigger::Human;
        let open = local(Level::L0, Level::L3);
        // A repair declaring L0 but granted exec is L2: no approval, no run.
        let err = run(Level::L0, &kill(), open, &human, &[], NOW).expect_err("exec is L2");
        assert!(
            matches!(
                err,
                Refusal::NotApproved {
                    level: Level::L2,
                    required: 1,
                    valid: 0,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(
            err.to_string().starts_with(
                "L2 disrupt (recomputed from the verified manifest) needs 1 approval for digest d1"
            ),
            "{err}"
        );
        // An L0 skill runs at once; on a host whose environment floor is L1 it needs one.
        let ok = run(Level::L0, &none, open, &human, &[], NOW).expect("L0 runs");
        assert_eq!((ok.level, ok.approvals_required), (Level::L0, 0));
        let err = run(
            Level::L0,
            &none,
            local(Level::L1, Level::L3),
            &human,
            &[],
            NOW,
        )
        .expect_err("floor");
        assert!(
            matches!(
                err,
                Refusal::NotApproved {
                    level: Level::L1,
                    required: 1,
                    ..
                }
            ),
            "{err:?}"
        );
        let ok = run(
            Level::L0,
            &none,
            local(Level::L1, Level::L3),
            &human,
            &[approval("bob", DIGEST, NOW)],
            NOW,
        )
        .expect("approved");
        assert!(
            ok.reasons
                .iter()
                .any(|r| matches!(r, Reason::EnvironmentFloor { .. })),
            "{:?}",
            ok.reasons
        );
    }

    #[test]
    fn the_ceiling_refuses_whatever_the_approvals() {
        let approvals = [approval("bob", DIGEST, NOW), approval("carol", DIGEST, NOW)];
        for ceiling in [Level::L0, Level::L1] {
            let err = run(
                Level::L0,
                &kill(),
                local(Level::L0, ceiling),
                &Trigger::Human,
                &approvals,
                NOW,
            )
            .expect_err("above ceiling");
            assert_eq!(
                err,
                Refusal::AboveCeiling {
                    level: Level::L2,
                    ceiling,
                    host: "this agent".into()
                }
            );
            assert!(
                err.to_string()
                    .contains(&format!("above this agent's ceiling {ceiling}")),
                "{err}"
            );
        }
    }

    #[test]
    fn approvals_are_counted_by_the_rule_table() {
        let human = Trigger::Human;
        let open = local(Level::L0, Level::L3);
        type Case<'a> = (&'a str, Level, Vec<Approval>, Result<usize, &'a str>);
        let cases: &[Case] = &[
            (
                "one approval at L2",
                Level::L2,
                vec![approval("bob", DIGEST, NOW)],
                Ok(1),
            ),
            ("no approval at L2", Level::L2, vec![], Err("it has 0")),
            (
                "the requester approving",
                Level::L2,
                vec![approval("alice", DIGEST, NOW)],
                Err("alice is the requester"),
            ),
            (
                "another digest",
                Level::L2,
                vec![approval("bob", "d2", NOW)],
                Err("bob approved digest d2"),
            ),
            (
                "given after the window closed",
                Level::L2,
                vec![approval("bob", DIGEST, EXPIRES + 1)],
                Err("after the approval window closed"),
            ),
            (
                "L3 with one approver",
                Level::L3,
                vec![approval("bob", DIGEST, NOW)],
                Err("needs 2 approvals"),
            ),
            (
                "L3 with one approver twice",
                Level::L3,
                vec![
                    approval("bob", DIGEST, NOW),
                    approval("bob", DIGEST, NOW + 1),
                ],
                Err("bob counts only once"),
            ),
            (
                "L3 with two approvers",
                Level::L3,
                vec![approval("bob", DIGEST, NOW), approval("carol", DIGEST, NOW)],
                Ok(2),
            ),
            (
                "an approval with no signature (a name the orchestrator stored)",
                Level::L2,
                vec![unsigned("bob", Signature::Missing)],
                Err("announced as bob's carries no signature"),
            ),
            (
                "an approval signed by a key this host does not trust",
                Level::L2,
                vec![unsigned("bob", Signature::UnknownKey)],
                Err("does not trust as an approver"),
            ),
            (
                "a forged signature",
                Level::L2,
                vec![unsigned("bob", Signature::Invalid)],
                Err("signature that does not verify"),
            ),
            (
                "L3 with one signed and one forged approval",
                Level::L3,
                vec![
                    approval("bob", DIGEST, NOW),
                    unsigned("carol", Signature::Invalid),
                ],
                Err("it has 1"),
            ),
            (
                "L1 by a human",
                Level::L1,
                vec![],
                Err("L1 adjust (recomputed from the verified manifest) needs 1 approval"),
            ),
        ];
        for (what, declared, approvals, want) in cases {
            let got = run(*declared, &Grants::default(), open, &human, approvals, NOW);
            match (want, got) {
                (Ok(n), Ok(a)) => assert_eq!(a.approvers.len(), *n, "{what}"),
                (Err(text), Err(e)) => {
                    assert!(e.to_string().contains(text), "{what}: {e}")
                }
                (want, got) => panic!("{what}: wanted {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn approvals_expire_with_their_window() {
        let err = run(
            Level::L2,
            &Grants::default(),
            local(Level::L0, Level::L3),
            &Trigger::Human,
            &[approval("bob", DIGEST, NOW)],
            EXPIRES + 5_000,
        )
        .expect_err("expired");
        assert!(matches!(err, Refusal::Expired { .. }), "{err:?}");
        assert!(err.to_string().contains("closed 5 s ago"), "{err}");
        // A job that needs no approval is not bound to the window.
        run(
            Level::L0,
            &Grants::default(),
            local(Level::L0, Level::L3),
            &Trigger::Human,
            &[],
            EXPIRES + 5_000,
        )
        .expect("L0 runs late");
    }

    #[test]
    fn auto_heal_makes_only_l1_automatic() {
        let heal = Trigger::Healing {
            policy: "disk-full".into(),
            auto_heal: true,
        };
        let open = local(Level::L0, Level::L3);
        let ok = run(Level::L1, &Grants::default(), open, &heal, &[], NOW).expect("auto-heal");
        assert!(
            ok.reasons
                .iter()
                .any(|r| matches!(r, Reason::AutoHeal { .. })),
            "{:?}",
            ok.reasons
        );
        let err = run(Level::L0, &kill(), open, &heal, &[], NOW).expect_err("L2 never auto");
        assert!(matches!(err, Refusal::NotApproved { required: 1, .. }));
    }

    #[test]
    fn a_job_that_is_not_the_approved_invocation_is_refused() {
        let err = admit(
            &Job {
                skill: "acme-fix",
                requester: "alice",
                invocation_digest: "mine",
                announced_digest: "theirs",
                expires_ms: EXPIRES,
                trigger: &Trigger::Human,
                approvals: &[],
            },
            &Verified {
                declared: Level::L0,
                grants: &Grants::default(),
            },
            &local(Level::L0, Level::L3),
            NOW,
        )
        .expect_err("mismatch");
        assert_eq!(
            err.to_string(),
            "the invocation digest is mine here, not the theirs it was approved as"
        );
    }
}
