//! Admission on the host that runs a job — the orchestrator's local worker and every agent
//! call this one function, each with what it verified itself: the signed manifest and its
//! digests, its own approver keys, its own floor and ceiling. Nothing the orchestrator says
//! about grants, limits, level or approvals is taken on its word:
//!
//! 1. the operator's narrowing is re-applied to the **verified** manifest (widening refused);
//! 2. the invocation digest is recomputed from the verified digests, the narrowed grants and
//!    limits and the job's own fields, and must be the one approvers signed;
//! 3. each approval counts only if its signature verifies against this host's approver keys;
//! 4. [`tend_policy::admit`] recomputes the level and the approvals it needs.

use tend_manifest::{Manifest, NarrowError};
use tend_policy::admit::{Admitted, Local, Refusal};

use crate::{Bound, Invocation, TrustedApprover, approval_facts, invocation_digest};

/// The artifact as the admitting host verified it.
#[derive(Debug, Clone, Copy)]
pub struct VerifiedSkill<'a> {
    pub manifest: &'a Manifest,
    /// `sha256:<hex>` of the signed manifest text.
    pub manifest_digest: &'a str,
    /// `sha256:<hex>` of the component.
    pub digest: &'a str,
    /// The id of the publisher key whose signature verified here.
    pub key_id: &'a str,
}

/// Why a job was not admitted here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmitError {
    #[error(
        "this host ({runner}) is not one of the hosts the invocation was decided and approved for ({hosts})"
    )]
    NotListed { runner: String, hosts: String },
    #[error(
        "the invocation's export is {0:?}: a job runs `run` (or a repair's `plan`), nothing else"
    )]
    UnknownExport(String),
    #[error(
        "this host ({runner}) is not what the invocation's target {target} names: it was decided and approved to run there, not here"
    )]
    OtherTarget { runner: String, target: String },
    #[error("the invocation's narrowing does not fit the verified manifest: {0}")]
    Narrowing(#[from] NarrowError),
    #[error("{0}")]
    Refused(#[from] Refusal),
}

/// The admitting host, as targets name it.
#[derive(Debug, Clone, Copy)]
pub enum Runner<'a> {
    /// The orchestrator's local worker: only its own target (`local`).
    Worker { target: &'a str },
    /// An enrolled agent: `agent:NAME` or `agent:ID`, `pool:P` and `all:pool:P` for each pool
    /// it serves (as enrolled, from its own `agent.toml`).
    Agent {
        name: &'a str,
        id: &'a str,
        pools: &'a [String],
    },
}

impl Runner<'_> {
    /// The name this host has in host lists and refusals.
    pub fn name(&self) -> &str {
        match self {
            Runner::Worker { target } => target,
            Runner::Agent { name, .. } => name,
        }
    }

    /// Whether `target` names this host. The target is bound into the invocation digest, so
    /// this is what was approved: a job row assigned to another host (which only whoever holds
    /// the orchestrator's database can make) is not.
    pub fn named_by(&self, target: &str) -> bool {
        match self {
            Runner::Worker { target: mine } => target == *mine,
            Runner::Agent { name, id, pools } => {
                let pool = target
                    .strip_prefix("all:")
                    .unwrap_or(target)
                    .strip_prefix("pool:");
                match (pool, target.strip_prefix("agent:")) {
                    (Some(p), _) => pools.iter().any(|mine| mine == p),
                    (None, Some(a)) => a == *name || a == *id,
                    (None, None) => false,
                }
            }
        }
    }
}

/// May `inv` run here, now? `runner` is this host as targets and host lists name it;
/// `auto_heal` the skills this host itself lets a healing policy's `auto_heal` run without an
/// approval (L1 at most: the level is still computed here). Returns
/// the manifest narrowed as the invocation may use it (what the runtime must enforce) and the
/// admission, or why not.
// Each argument is one fact the admitting host holds itself; bundling them would only hide that.
#[allow(clippy::too_many_arguments)]
pub fn admit_job(
    runner: Runner<'_>,
    inv: &Invocation,
    expires_ms: i64,
    skill: VerifiedSkill<'_>,
    trusted: &[TrustedApprover],
    local: &Local<'_>,
    auto_heal: &[String],
    now_ms: i64,
) -> Result<(Manifest, Admitted), AdmitError> {
    // Only two exports exist. Anything else would run as `run` while skipping what is kept
    // for `run` only (the replay record).
    if inv.export != "run" && inv.export != "plan" {
        return Err(AdmitError::UnknownExport(
            inv.export.chars().take(64).collect(),
        ));
    }
    // The target is bound: a job assigned to a host its target does not name is not what was
    // decided or approved, whatever its row says.
    if !runner.named_by(&inv.target) {
        return Err(AdmitError::OtherTarget {
            runner: runner.name().to_string(),
            target: inv.target.chars().take(160).collect(),
        });
    }
    // A host list is bound (a run across a pool, or the one host an approval of a `pool:`
    // invocation is for): a job for any other host is not what was decided or approved,
    // whatever its row says.
    if !inv.hosts.is_empty() && !inv.hosts.iter().any(|h| h == runner.name()) {
        return Err(AdmitError::NotListed {
            runner: runner.name().to_string(),
            hosts: inv.hosts.join(", "),
        });
    }
    let narrowed = skill.manifest.narrowed(&inv.narrowing)?;
    let grants = narrowed.grants();
    let digest = invocation_digest(&Bound {
        skill: &inv.skill,
        version: &inv.version,
        export: &inv.export,
        digest: skill.digest,
        manifest_digest: skill.manifest_digest,
        publisher_key: skill.key_id,
        target: &inv.target,
        hosts: &inv.hosts,
        requester: &inv.requester,
        input: &inv.input,
        grants: &grants,
        limits: &narrowed.limits,
        plan: inv.plan.as_ref(),
        expires_ms,
    });
    let approvals = approval_facts(&inv.approvals, trusted);
    // A plan job runs read-only with no programs (the runtime enforces it): it is admitted as
    // an observation with those grants, whatever level the repair declares.
    let (declared, grants) = if inv.export == "plan" {
        (tend_policy::Level::L0, grants.for_plan())
    } else {
        (narrowed.declared_level(), grants)
    };
    // That a healing policy asked is the orchestrator's word, which this host cannot verify:
    // it counts only for a skill this host's own `auto_heal` list names, and `admit` lets that
    // skip approvals at L1 only. Every other job counts as asked for by a person.
    let trigger = match &inv.healing {
        Some(policy) if inv.export == "run" && auto_heal.contains(&inv.skill) => {
            tend_policy::Trigger::Healing {
                policy: format!(
                    "{} (and {} lists {} under auto_heal)",
                    policy.chars().take(64).collect::<String>(),
                    local.name,
                    inv.skill
                ),
                auto_heal: true,
            }
        }
        _ => tend_policy::Trigger::Human,
    };
    let admitted = tend_policy::admit(
        &tend_policy::admit::Job {
            skill: &inv.skill,
            requester: &inv.requester,
            invocation_digest: &digest,
            announced_digest: &inv.invocation_digest,
            expires_ms,
            trigger: &trigger,
            approvals: &approvals,
        },
        &tend_policy::admit::Verified {
            declared,
            grants: &grants,
        },
        local,
        now_ms,
    )?;
    Ok((narrowed, admitted))
}

#[cfg(test)]
mod tests {
    use super::Runner;

    #[test]
    fn a_target_names_only_the_hosts_it_was_approved_for() {
        let pools = ["web".to_string(), "db".to_string()];
        let agent = Runner::Agent {
            name: "web-1",
            id: "agt_0123",
            pools: &pools,
        };
        for target in [
            "agent:web-1",
            "agent:agt_0123",
            "pool:web",
            "pool:db",
            "all:pool:web",
        ] {
            assert!(agent.named_by(target), "{target}");
        }
        for target in [
            "agent:web-2",
            "agent:web-1x",
            "agent:WEB-1",
            "pool:web2",
            "pool:Web",
            "all:pool:cache",
            "all:agent:web-1",
            "local",
            "web-1",
            "pool:",
            "",
        ] {
            assert!(!agent.named_by(target), "{target}");
        }
        let worker = Runner::Worker { target: "local" };
        assert!(worker.named_by("local"));
        for target in ["agent:local", "pool:local", "all:pool:local", "Local"] {
            assert!(!worker.named_by(target), "{target}");
        }
    }
}
