//! Refuse early what cannot run. Before an invocation for `pool:NAME` or `agent:NAME` is
//! recorded (and before anyone is asked to approve it), each agent of the target is checked
//! the way it would check the job itself: its enrolled ceiling's publishers, capability kinds
//! and paths ([`tend_protocol::Ceiling::refuses`], the very function the agent calls), then
//! the level recomputed with its environment floor against its ceiling level
//! ([`tend_policy::admit::effective_level`], as the agent's admission does).
//!
//! When no agent could accept it, the submission is refused with every agent named and why,
//! agents refused for the same reason listed together; only an audit event is written. When
//! some could, it is accepted and the decision's reasons say which agents would refuse and,
//! if every agent that fits is offline, that it waits for one to come back.
//!
//! A convenience, not a trust decision: an agent still checks every job against its own
//! `agent.toml` (which its operator may have tightened since enrolling) and its own trust
//! policy. A repair's plan job is never the reason for a refusal here: the agent applies the
//! same ceiling rules to a plan as to its repair, and a plan is admitted at L0 with its grants
//! read-only, never above the repair's level.

use tend_manifest::Manifest;
use tend_policy::admit::{Local, Refusal, Verified, effective_level};
use tend_policy::{Decision, DenyReason, Level, Reason, Verdict};

use crate::agents::{self, Agent};
use crate::api::AppState;
use crate::audit;
use crate::auth::Actor;
use crate::flow::{SubmitError, Trigger};
use crate::skills::Resolved;

/// At most this many agent names are listed for one reason (the rest are counted), so a
/// large pool cannot make an error, a decision or an audit event unbounded.
const NAMES_PER_REASON: usize = 10;

/// What one agent would say to the job.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fit {
    /// It would accept it, and is online (or degraded).
    Online,
    /// It would accept it, but has not been heard from within the offline window.
    Offline,
    /// It would refuse it, saying this.
    Refuses(String),
}

/// Would `agent`, as enrolled, accept `narrowed` (the manifest as the invocation may use it)
/// signed by `publisher`? The same rules, in the same order and words, as the agent's own
/// check.
fn refusal(
    services: &AppState,
    agent: &Agent,
    publisher: &str,
    narrowed: &Manifest,
) -> Option<String> {
    if let Some(r) = agent.ceiling.refuses(publisher, narrowed) {
        return Some(r.to_string());
    }
    let local = Local {
        name: "this agent",
        environment: agent.labels.get("env").map_or("default", String::as_str),
        floor: agent
            .labels
            .get("env")
            .and_then(|e| services.settings.env_floors.get(e))
            .copied()
            .unwrap_or(Level::L0),
        // Checked at enrollment; were it not, nothing above L0 would run there.
        ceiling: Level::try_from(agent.ceiling.max_level).unwrap_or(Level::L0),
    };
    let grants = narrowed.grants();
    let (level, _) = effective_level(
        &Verified {
            declared: narrowed.declared_level(),
            grants: &grants,
        },
        &local,
    );
    (level > local.ceiling).then(|| {
        Refusal::AboveCeiling {
            level,
            ceiling: local.ceiling,
            host: local.name.to_string(),
        }
        .to_string()
    })
}

/// Agents listed for one reason: at most [`NAMES_PER_REASON`] names, then a count.
fn named(agents: &[String]) -> Vec<String> {
    let mut out: Vec<String> = agents.iter().take(NAMES_PER_REASON).cloned().collect();
    if agents.len() > NAMES_PER_REASON {
        out.push(format!("and {} more", agents.len() - NAMES_PER_REASON));
    }
    out
}

/// At most this many distinct refusals are listed; the agents refused for the others are
/// counted in one last line.
const REASONS: usize = 16;

/// Refusals grouped by their text, in the order of the first agent refused for each; past
/// [`REASONS`] distinct refusals, the remaining agents are one group.
fn grouped(fits: &[(String, Fit)]) -> Vec<(Vec<String>, String)> {
    let mut groups: Vec<(Vec<String>, String)> = Vec::new();
    let mut others = 0usize;
    for (name, fit) in fits {
        if let Fit::Refuses(why) = fit {
            if let Some((names, _)) = groups.iter_mut().find(|(_, w)| w == why) {
                names.push(name.clone());
            } else if groups.len() < REASONS {
                groups.push((vec![name.clone()], why.clone()));
            } else {
                others += 1;
            }
        }
    }
    if others > 0 {
        groups.push((
            vec![format!("{others} more")],
            "refused for other reasons (see each agent's ceiling in GET /api/v1/agents)".into(),
        ));
    }
    groups
}

/// Check the agents of `target` for an invocation decided as `verdict`. Returns the verdict
/// to record (with a note on the agents that would refuse, if any) and the agents that would
/// accept it, best first (online before offline, then the healthiest) — or
/// [`SubmitError::NoAgentCanRun`] after auditing it when no agent could accept it.
#[allow(clippy::too_many_arguments)]
pub async fn refuse_early(
    services: &AppState,
    trigger: Trigger,
    caller: &Actor,
    target: &str,
    skill: &Resolved,
    narrowed: &Manifest,
    reason: &str,
    mut verdict: Verdict,
) -> Result<(Verdict, Vec<String>), SubmitError> {
    // The local worker's own ceiling is the target's, which `decide` already checked; a
    // caller who may not invoke at all learns nothing about the agents.
    if target == services.settings.target.name
        || matches!(
            verdict.decision,
            Decision::Deny(DenyReason::RoleCannotInvoke { .. })
        )
    {
        return Ok((verdict, Vec::new()));
    }
    let all = agents::list(&services.db).await?;
    let Some(members) = crate::agents::members(&all, target) else {
        return Ok((verdict, Vec::new()));
    };
    let now = tend_protocol::now_ms();
    let fits: Vec<(String, Fit)> = members
        .iter()
        .map(|a| {
            let fit = match refusal(services, a, &skill.publisher, narrowed) {
                Some(why) => Fit::Refuses(why),
                None if agents::health(a, now, services.settings.offline_after).0 == "offline" => {
                    Fit::Offline
                }
                None => Fit::Online,
            };
            (a.name.clone(), fit)
        })
        .collect();
    let groups = grouped(&fits);
    if fits.iter().all(|(_, f)| matches!(f, Fit::Refuses(_))) {
        let reasons: Vec<String> = groups
            .iter()
            .map(|(names, why)| format!("{}: {why}", named(names).join(", ")))
            .collect();
        services.metrics.decision("deny");
        audit::append(
            &services.db,
            &caller.name,
            audit::Action::InvocationDenied,
            &skill.name,
            serde_json::json!({
                "skill": skill.name, "version": skill.version, "target": target,
                "reason": reason, "trigger": trigger.as_str(),
                "refused": "no_runner", "agents": reasons,
                "decision": verdict.explain(),
            }),
        )
        .await?;
        return Err(SubmitError::NoAgentCanRun {
            target: target.to_string(),
            skill: format!("{} {}", skill.name, skill.version),
            reasons,
        });
    }
    for (names, why) in groups {
        verdict.reasons.push(Reason::AgentsWouldRefuse {
            agents: named(&names),
            why,
        });
    }
    if !fits.iter().any(|(_, f)| *f == Fit::Online) {
        let offline: Vec<String> = fits
            .iter()
            .filter(|(_, f)| *f == Fit::Offline)
            .map(|(n, _)| n.clone())
            .collect();
        verdict.reasons.push(Reason::RunnersOffline {
            agents: named(&offline),
        });
    }
    let mut fitting: Vec<(bool, u8, &str)> = members
        .iter()
        .zip(&fits)
        .filter(|(_, (_, f))| !matches!(f, Fit::Refuses(_)))
        .map(|(a, (_, f))| {
            let score = agents::health(a, now, services.settings.offline_after).1;
            (*f == Fit::Online, score, a.name.as_str())
        })
        .collect();
    fitting.sort_by(|x, y| (y.0, y.1).cmp(&(x.0, x.1)).then(x.2.cmp(y.2)));
    Ok((
        verdict,
        fitting.into_iter().map(|(_, _, n)| n.to_string()).collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_grouped_by_reason_and_names_are_bounded() {
        let fits: Vec<(String, Fit)> = vec![
            ("a".into(), Fit::Refuses("too high".into())),
            ("b".into(), Fit::Online),
            ("c".into(), Fit::Refuses("no exec".into())),
            ("d".into(), Fit::Refuses("too high".into())),
        ];
        assert_eq!(
            grouped(&fits),
            vec![
                (
                    vec!["a".to_string(), "d".to_string()],
                    "too high".to_string()
                ),
                (vec!["c".to_string()], "no exec".to_string()),
            ]
        );
        // Many distinct refusals: the first are listed, the rest counted.
        let distinct: Vec<(String, Fit)> = (0..REASONS + 3)
            .map(|i| (format!("a-{i}"), Fit::Refuses(format!("why {i}"))))
            .collect();
        let groups = grouped(&distinct);
        assert_eq!(groups.len(), REASONS + 1);
        assert_eq!(groups[REASONS].0, ["3 more"]);
        let many: Vec<String> = (0..25).map(|i| format!("web-{i}")).collect();
        let listed = named(&many);
        assert_eq!(listed.len(), NAMES_PER_REASON + 1);
        assert_eq!(listed.last().map(String::as_str), Some("and 15 more"));
    }
}
