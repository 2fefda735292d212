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
    #[error("the invocation's narrowing does not fit the verified manifest: {0}")]
    Narrowing(#[from] NarrowError),
    #[error("{0}")]
    Refused(#[from] Refusal),
}

/// May `inv` run here, now? `runner` is the name this host has in host lists (an agent's
/// name). Returns the manifest narrowed as the invocation may use it (what the runtime must
/// enforce) and the admission, or why not.
pub fn admit_job(
    runner: &str,
    inv: &Invocation,
    expires_ms: i64,
    skill: VerifiedSkill<'_>,
    trusted: &[TrustedApprover],
    local: &Local<'_>,
    now_ms: i64,
) -> Result<(Manifest, Admitted), AdmitError> {
    // A run across a pool binds its host list: a part for any other host is not what was
    // decided or approved, whatever its row says.
    if !inv.hosts.is_empty() && !inv.hosts.iter().any(|h| h == runner) {
        return Err(AdmitError::NotListed {
            runner: runner.to_string(),
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
    let admitted = tend_policy::admit(
        &tend_policy::admit::Job {
            skill: &inv.skill,
            requester: &inv.requester,
            invocation_digest: &digest,
            announced_digest: &inv.invocation_digest,
            expires_ms,
            // A healing policy's auto-heal is the orchestrator's word, which this host cannot
            // verify: every job counts as asked for by a person (so L1 needs an approval).
            trigger: &tend_policy::Trigger::Human,
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
