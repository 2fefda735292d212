//! # tend-policy — the decision stage
//!
//! Takes what an invocation would be allowed to do (the skill's declared level and the
//! capabilities its signed manifest grants), where it would run (the target's environment floor
//! and ceiling), why it is asked for (a human, or a healing policy) and by whom; hands on a
//! [`Verdict`]: [`Decision::Allow`], [`Decision::NeedsApproval`] or [`Decision::Deny`], the
//! effective zero-trust [`Level`], and every [`Reason`] that produced it, as data that reads
//! well in English.
//!
//! This is the only place that says allow, approve or deny. It is pure: no I/O, no clock, no
//! wasmtime, axum or sqlx — so every rule is unit-tested here, table by table.
//!
//! Effective level = max(declared level, the floor each granted capability implies, the
//! target's environment floor):
//!
//! | level | meaning | gate |
//! |---|---|---|
//! | L0 observe | reads only | automatic |
//! | L1 adjust | reversible, low impact | automatic only under a healing policy with `auto_heal`; else 1 approval |
//! | L2 disrupt | service impact | 1 approval by someone other than the requester |
//! | L3 critical | data or broad power | 2 distinct approvers; never automatic |

use std::fmt;

use serde::{Deserialize, Serialize};

pub mod admit;
pub use admit::{Admitted, Refusal, admit};

/// A zero-trust level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(into = "u8", try_from = "u8")]
pub enum Level {
    /// Reads only.
    L0 = 0,
    /// Reversible, low impact.
    L1 = 1,
    /// Service impact.
    L2 = 2,
    /// Data or broad power.
    L3 = 3,
}

impl Level {
    pub const ALL: [Level; 4] = [Level::L0, Level::L1, Level::L2, Level::L3];

    pub fn name(self) -> &'static str {
        match self {
            Level::L0 => "observe",
            Level::L1 => "adjust",
            Level::L2 => "disrupt",
            Level::L3 => "critical",
        }
    }

    /// Distinct approvals needed when no healing policy makes it automatic.
    pub fn approvals_required(self) -> u8 {
        match self {
            Level::L0 => 0,
            Level::L1 | Level::L2 => 1,
            Level::L3 => 2,
        }
    }
}

impl From<Level> for u8 {
    fn from(l: Level) -> u8 {
        l as u8
    }
}

impl TryFrom<u8> for Level {
    type Error = String;
    fn try_from(n: u8) -> Result<Level, String> {
        Level::ALL
            .get(n as usize)
            .copied()
            .ok_or_else(|| format!("level {n} does not exist (levels are 0 to 3)"))
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "L{} {}", *self as u8, self.name())
    }
}

/// Who may do what through the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Operator,
    Approver,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Approver => "approver",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "approver" => Ok(Role::Approver),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role {other:?} (expected viewer, operator, approver or admin)"
            )),
        }
    }
}

/// An allowlisted program grant, as far as the policy cares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecGrant {
    pub program: String,
    pub args: Vec<String>,
}

/// What a skill's signed manifest grants.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grants {
    pub fs_read: Vec<String>,
    pub fs_write: Vec<String>,
    pub exec: Vec<ExecGrant>,
    pub service_restart: Vec<String>,
    pub service_reload: Vec<String>,
    pub http: Vec<String>,
    pub tcp: Vec<String>,
    /// Names it may look up (and nothing else). Omitted when empty, so the canonical JSON an
    /// approval binds is unchanged for every invocation without one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
}

impl Grants {
    /// What a repair's `plan` export runs with (as the runtime enforces it): its directories
    /// read-only, no programs, no service actions; network grants as they are.
    pub fn for_plan(&self) -> Grants {
        let mut fs_read = self.fs_read.clone();
        for p in &self.fs_write {
            if !fs_read.contains(p) {
                fs_read.push(p.clone());
            }
        }
        Grants {
            fs_read,
            fs_write: Vec::new(),
            exec: Vec::new(),
            service_restart: Vec::new(),
            service_reload: Vec::new(),
            http: self.http.clone(),
            tcp: self.tcp.clone(),
            dns: self.dns.clone(),
        }
    }
}

/// Where the invocation would run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub name: String,
    /// e.g. `prod`, `staging`.
    pub environment: String,
    /// Every invocation on this target is at least this level.
    pub floor: Level,
    /// Nothing above this level runs on this target, approved or not.
    pub ceiling: Level,
}

/// Why the invocation is asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Trigger {
    /// A person (CLI, API, console).
    Human,
    /// A healing policy reacting to an alert.
    Healing {
        policy: String,
        /// The policy may run L1 skills without a human.
        auto_heal: bool,
    },
}

/// Everything `decide` looks at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub skill: String,
    pub declared: Level,
    pub grants: Grants,
    pub target: Target,
    pub trigger: Trigger,
    pub requester: String,
    pub role: Role,
}

/// The decision itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    Allow,
    NeedsApproval {
        level: Level,
        approvals_required: u8,
    },
    Deny(DenyReason),
}

/// Why an invocation is refused outright.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum DenyReason {
    /// The requester's role may not invoke skills.
    RoleCannotInvoke { role: Role },
    /// The effective level is above what the target accepts.
    AboveTargetCeiling {
        level: Level,
        ceiling: Level,
        target: String,
    },
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DenyReason::RoleCannotInvoke { role } => write!(
                f,
                "the {} role may not invoke skills (operator, approver or admin may)",
                role.as_str()
            ),
            DenyReason::AboveTargetCeiling {
                level,
                ceiling,
                target,
            } => write!(
                f,
                "effective level {level} is above the ceiling of target {target} ({ceiling}): refused whatever the approvals"
            ),
        }
    }
}

/// One step of the reasoning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Reason {
    Declared {
        level: Level,
    },
    CapabilityFloor {
        capability: String,
        level: Level,
        why: String,
    },
    EnvironmentFloor {
        target: String,
        environment: String,
        level: Level,
    },
    Effective {
        level: Level,
    },
    Automatic {
        level: Level,
    },
    AutoHeal {
        policy: String,
    },
    HealingWithoutAutoHeal {
        policy: String,
    },
    NeverAutomatic {
        level: Level,
    },
    Approvals {
        level: Level,
        required: u8,
    },
    Denied {
        deny: DenyReason,
    },
    /// Agents of the target that would refuse the job (one reason per distinct refusal).
    /// Others may run it; these never will. Found by the orchestrator at submit.
    AgentsWouldRefuse {
        agents: Vec<String>,
        why: String,
    },
    /// Every agent that could run it is offline now: the job waits until one is back.
    RunnersOffline {
        agents: Vec<String>,
    },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Declared { level } => write!(f, "the skill declares {level}"),
            Reason::CapabilityFloor {
                capability,
                level,
                why,
            } => write!(f, "{capability} implies at least {level}: {why}"),
            Reason::EnvironmentFloor {
                target,
                environment,
                level,
            } => write!(
                f,
                "target {target} is in environment {environment}, whose floor is {level}"
            ),
            Reason::Effective { level } => {
                write!(f, "effective level is {level}, the highest of the above")
            }
            Reason::Automatic { level } => {
                write!(f, "{level} reads only: it runs without approval")
            }
            Reason::AutoHeal { policy } => write!(
                f,
                "healing policy {policy} has auto_heal, so this L1 repair runs without approval"
            ),
            Reason::HealingWithoutAutoHeal { policy } => write!(
                f,
                "healing policy {policy} does not have auto_heal, so a human must approve"
            ),
            Reason::NeverAutomatic { level } => {
                write!(f, "{level} is never automatic, whoever asks")
            }
            Reason::Approvals { level, required } => write!(
                f,
                "{level} needs {required} approval{} by {}someone other than the requester",
                if *required == 1 { "" } else { "s" },
                if *required > 1 {
                    "distinct approvers, each "
                } else {
                    ""
                }
            ),
            Reason::Denied { deny } => write!(f, "refused: {deny}"),
            Reason::AgentsWouldRefuse { agents, why } => write!(
                f,
                "{} {} would refuse it: {why}",
                if agents.len() == 1 { "agent" } else { "agents" },
                agents.join(", ")
            ),
            Reason::RunnersOffline { agents } => write!(
                f,
                "every agent that could run it is offline now ({}): it waits until one is back",
                agents.join(", ")
            ),
        }
    }
}

/// The decision, the level it was made at, and every reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    pub decision: Decision,
    pub level: Level,
    pub reasons: Vec<Reason>,
}

impl Verdict {
    /// The reasons as English sentences.
    pub fn explain(&self) -> Vec<String> {
        self.reasons.iter().map(ToString::to_string).collect()
    }
}

pub mod paths;

const INTERPRETERS: &[&str] = &[
    "sh", "bash", "dash", "zsh", "ksh", "fish", "busybox", "env", "sudo", "su", "doas", "python",
    "python3", "perl", "ruby", "node", "php", "lua", "awk", "gawk", "xargs", "find", "nsenter",
    "chroot", "docker", "kubectl", "ssh",
];
const POWER: &[&str] = &["reboot", "shutdown", "poweroff", "halt", "init", "telinit"];

fn program_name(program: &str) -> &str {
    program.rsplit('/').next().unwrap_or(program)
}

/// `bash`, `/usr/bin/python3.11`, `perl5.36`: an interpreter, with or without a version.
fn is_interpreter(program: &str) -> bool {
    let name = program_name(program);
    INTERPRETERS.iter().any(|i| {
        name.strip_prefix(i).is_some_and(|rest| {
            rest.is_empty() || rest.starts_with(|c: char| c.is_ascii_digit() || c == '.')
        })
    })
}

/// The floor each granted capability implies, with why: one reason per distinct
/// (capability, level, why), so eight `exec /usr/bin/systemctl` grants read as one
/// `exec /usr/bin/systemctl (8 grants)` line, in the order the grants first appear.
pub fn capability_floors(grants: &Grants) -> Vec<Reason> {
    group_floors(each_capability_floor(grants))
}

/// Merge identical floors, counting the grants behind each.
fn group_floors(floors: Vec<Reason>) -> Vec<Reason> {
    let mut grouped: Vec<(Reason, usize)> = Vec::new();
    for r in floors {
        match grouped.iter_mut().find(|(g, _)| *g == r) {
            Some((_, n)) => *n += 1,
            None => grouped.push((r, 1)),
        }
    }
    grouped
        .into_iter()
        .map(|(r, n)| match r {
            Reason::CapabilityFloor {
                capability,
                level,
                why,
            } if n > 1 => Reason::CapabilityFloor {
                capability: format!("{capability} ({n} grants)"),
                level,
                why,
            },
            r => r,
        })
        .collect()
}

/// The floor of every grant, one reason each (duplicates included).
fn each_capability_floor(grants: &Grants) -> Vec<Reason> {
    let mut out = Vec::new();
    let mut floor = |capability: String, level: Level, why: &str| {
        out.push(Reason::CapabilityFloor {
            capability,
            level,
            why: why.to_string(),
        });
    };
    // Judged after normalisation and by containment both ways (see [`paths`]).
    for p in &grants.fs_read {
        let (level, why) = paths::read_floor(p);
        floor(format!("fs_read {p}"), level, &why);
    }
    for p in &grants.fs_write {
        let (level, why) = paths::write_floor(p);
        floor(format!("fs_write {p}"), level, &why);
    }
    for e in &grants.exec {
        let cap = format!("exec {}", e.program);
        let variadic = e.args.iter().any(|a| a.ends_with("...}"));
        if is_interpreter(&e.program) {
            floor(
                cap,
                Level::L3,
                "an interpreter or launcher can run anything it is given",
            );
        } else if POWER.contains(&program_name(&e.program)) {
            floor(cap, Level::L3, "it can take the whole host down");
        } else if variadic {
            floor(
                cap,
                Level::L3,
                "its arguments are open-ended, so it is arbitrary exec",
            );
        } else {
            floor(
                cap,
                Level::L2,
                "running a program (restart, kill, ...) has service impact",
            );
        }
    }
    for u in &grants.service_restart {
        floor(
            format!("service restart {u}"),
            Level::L2,
            "a restart interrupts the service",
        );
    }
    for u in &grants.service_reload {
        floor(
            format!("service reload {u}"),
            Level::L1,
            "a reload is reversible and low impact",
        );
    }
    for h in &grants.http {
        floor(format!("http {h}"), Level::L0, "an HTTP probe observes");
    }
    for t in &grants.tcp {
        floor(format!("tcp {t}"), Level::L0, "a TCP probe observes");
    }
    for n in &grants.dns {
        floor(
            format!("dns {n}"),
            Level::L0,
            "a name lookup observes (it cannot connect anywhere)",
        );
    }
    out
}

/// The one place that says allow, approve or deny.
pub fn decide(request: &Request) -> Verdict {
    // The same level `admit` recomputes on every host just before the run.
    let (level, mut reasons) = admit::effective_level(
        &admit::Verified {
            declared: request.declared,
            grants: &request.grants,
        },
        &admit::Local {
            name: &request.target.name,
            environment: &request.target.environment,
            floor: request.target.floor,
            ceiling: request.target.ceiling,
        },
    );

    let deny = |reason: DenyReason, mut reasons: Vec<Reason>| {
        reasons.push(Reason::Denied {
            deny: reason.clone(),
        });
        Verdict {
            decision: Decision::Deny(reason),
            level,
            reasons,
        }
    };
    if request.role == Role::Viewer {
        return deny(DenyReason::RoleCannotInvoke { role: request.role }, reasons);
    }
    if level > request.target.ceiling {
        return deny(
            DenyReason::AboveTargetCeiling {
                level,
                ceiling: request.target.ceiling,
                target: request.target.name.clone(),
            },
            reasons,
        );
    }
    let needs = |required: u8, mut reasons: Vec<Reason>| {
        reasons.push(Reason::Approvals { level, required });
        Verdict {
            decision: Decision::NeedsApproval {
                level,
                approvals_required: required,
            },
            level,
            reasons,
        }
    };
    match (level, &request.trigger) {
        (Level::L0, _) => {
            reasons.push(Reason::Automatic { level });
            Verdict {
                decision: Decision::Allow,
                level,
                reasons,
            }
        }
        (Level::L1, Trigger::Healing { policy, auto_heal }) => {
            if *auto_heal {
                reasons.push(Reason::AutoHeal {
                    policy: policy.clone(),
                });
                Verdict {
                    decision: Decision::Allow,
                    level,
                    reasons,
                }
            } else {
                reasons.push(Reason::HealingWithoutAutoHeal {
                    policy: policy.clone(),
                });
                needs(1, reasons)
            }
        }
        (Level::L3, _) => {
            reasons.push(Reason::NeverAutomatic { level });
            needs(level.approvals_required(), reasons)
        }
        (l, _) => needs(l.approvals_required(), reasons),
    }
}

#[cfg(test)]
mod tests;
