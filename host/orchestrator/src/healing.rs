//! Healing policies: which alerts Tend acts on, and how. A policy file (TOML,
//! `deny_unknown_fields`; an error names the file, line and key):
//!
//! ```toml
//! [[policy]]
//! name = "disk-full"
//! match = { alertname = "DiskFull", severity = "~warning|critical" }   # "~" = a regex
//! diagnose = [{ skill = "disk-usage", input = { warn_percent = 80 } }]
//! repair = { skill = "clean-old-logs", input = { dir = "{{labels.mountpoint}}" } }
//! auto_heal = true
//! max_retries = 2
//! cooldown = "10m"
//! max_repairs_per_hour = 5
//! max_targets = 3
//! dry_run = false
//! escalate = ["ops"]
//! ```
//!
//! The first policy whose every `match` entry matches an alert's labels (exactly, or the whole
//! value against a `~regex`) is the incident's. What runs today: when an incident opens under
//! a policy, its `diagnose` skills are submitted through the one submit flow (trigger
//! `webhook`) on the incident's agent, each input's `{{labels.NAME}}` and
//! `{{annotations.NAME}}` filled from the alert. A policy never raises what a skill may do:
//! every submission is decided like any other. (The repair, verification and the limits come
//! with the rest of the loop.)

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// One skill a policy runs, with its input (a template).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SkillCall {
    pub skill: String,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default = "empty_table")]
    pub input: toml::Table,
}

fn empty_table() -> toml::Table {
    toml::Table::new()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealingPolicy {
    pub name: String,
    /// Label → exact value, or `~regex` matched against the whole value.
    #[serde(rename = "match")]
    pub matches: BTreeMap<String, String>,
    #[serde(default)]
    pub diagnose: Vec<SkillCall>,
    #[serde(default)]
    pub repair: Option<SkillCall>,
    /// An L1 repair under this policy may run without a person (never anything above L1).
    #[serde(default)]
    pub auto_heal: bool,
    #[serde(default = "two")]
    pub max_retries: u32,
    /// How long after a repair before the same policy repairs the same target again.
    #[serde(default = "ten_minutes")]
    pub cooldown: String,
    #[serde(default)]
    pub max_repairs_per_hour: Option<u32>,
    #[serde(default)]
    pub max_targets: Option<u32>,
    /// Plan only: nothing is applied.
    #[serde(default)]
    pub dry_run: bool,
    /// Where to tell a person when it cannot heal.
    #[serde(default)]
    pub escalate: Vec<String>,
}

fn two() -> u32 {
    2
}

fn ten_minutes() -> String {
    "10m".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    policy: Vec<HealingPolicy>,
}

/// A policy ready to match: its regexes compiled.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub policy: HealingPolicy,
    matchers: Vec<(String, Matcher)>,
}

#[derive(Debug, Clone)]
enum Matcher {
    Exact(String),
    Regex(regex::Regex),
}

/// Why a policy file was refused: where, and what.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{path}: {message}")]
    Read { path: String, message: String },
    #[error("{path}:{line}: {message}")]
    Parse {
        path: String,
        line: usize,
        message: String,
    },
    #[error("{path}: {key}: {message}")]
    Invalid {
        path: String,
        key: String,
        message: String,
    },
}

/// The policies of `path`, checked.
pub fn load(path: &Path) -> Result<Vec<Compiled>, PolicyError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| PolicyError::Read {
        path: origin.clone(),
        message: e.to_string(),
    })?;
    parse(&text, &origin)
}

/// Parse and check policy text (`origin` names it in errors).
pub fn parse(text: &str, origin: &str) -> Result<Vec<Compiled>, PolicyError> {
    let file: PolicyFile = toml::from_str(text).map_err(|e| PolicyError::Parse {
        path: origin.to_string(),
        line: tend_manifest::toml_error_line(text, &e),
        message: e.message().trim().to_string(),
    })?;
    let invalid = |key: String, message: String| PolicyError::Invalid {
        path: origin.to_string(),
        key,
        message,
    };
    let mut out: Vec<Compiled> = Vec::new();
    for (i, p) in file.policy.into_iter().enumerate() {
        let at = |k: &str| format!("policy[{i}].{k}");
        tend_protocol::check_name("name", &p.name).map_err(|e| invalid(at("name"), e.why))?;
        if out.iter().any(|c| c.policy.name == p.name) {
            return Err(invalid(at("name"), format!("{} is used twice", p.name)));
        }
        if p.matches.is_empty() {
            return Err(invalid(
                at("match"),
                "match at least one label (e.g. alertname)".into(),
            ));
        }
        let mut matchers = Vec::new();
        for (label, want) in &p.matches {
            let m = match want.strip_prefix('~') {
                Some(re) => Matcher::Regex(
                    regex::Regex::new(&format!("^(?:{re})$"))
                        .map_err(|e| invalid(at(&format!("match.{label}")), e.to_string()))?,
                ),
                None => Matcher::Exact(want.clone()),
            };
            matchers.push((label.clone(), m));
        }
        for (j, call) in p.diagnose.iter().enumerate() {
            tend_manifest::SkillName::parse(&call.skill)
                .map_err(|e| invalid(at(&format!("diagnose[{j}].skill")), e.to_string()))?;
        }
        if let Some(r) = &p.repair {
            tend_manifest::SkillName::parse(&r.skill)
                .map_err(|e| invalid(at("repair.skill"), e.to_string()))?;
        }
        humantime::parse_duration(&p.cooldown)
            .map_err(|e| invalid(at("cooldown"), format!("{:?}: {e}", p.cooldown)))?;
        out.push(Compiled {
            policy: p,
            matchers,
        });
    }
    Ok(out)
}

impl Compiled {
    /// Whether every `match` entry matches `labels`.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matchers.iter().all(|(label, m)| {
            labels.get(label).is_some_and(|v| match m {
                Matcher::Exact(want) => v == want,
                Matcher::Regex(re) => re.is_match(v),
            })
        })
    }
}

/// The first policy that matches `labels`.
pub fn matching<'a>(
    policies: &'a [Compiled],
    labels: &BTreeMap<String, String>,
) -> Option<&'a Compiled> {
    policies.iter().find(|p| p.matches(labels))
}

/// A skill call's input with `{{labels.NAME}}` and `{{annotations.NAME}}` filled from the alert
/// (a name the alert lacks becomes the empty string).
pub fn fill(
    input: &toml::Table,
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
) -> serde_json::Value {
    fn walk(
        v: serde_json::Value,
        labels: &BTreeMap<String, String>,
        annotations: &BTreeMap<String, String>,
    ) -> serde_json::Value {
        match v {
            serde_json::Value::String(s) => {
                serde_json::Value::String(substitute(&s, labels, annotations))
            }
            serde_json::Value::Array(items) => items
                .into_iter()
                .map(|i| walk(i, labels, annotations))
                .collect(),
            serde_json::Value::Object(map) => map
                .into_iter()
                .map(|(k, v)| (k, walk(v, labels, annotations)))
                .collect(),
            other => other,
        }
    }
    let json = serde_json::to_value(input).unwrap_or_else(|_| serde_json::json!({}));
    walk(json, labels, annotations)
}

fn substitute(
    text: &str,
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let Some(len) = rest[start..].find("}}") else {
            break;
        };
        out.push_str(&rest[..start]);
        let key = rest[start + 2..start + len].trim();
        let value = key
            .strip_prefix("labels.")
            .map(|k| labels.get(k))
            .or_else(|| key.strip_prefix("annotations.").map(|k| annotations.get(k)));
        match value {
            Some(v) => out.push_str(v.map_or("", String::as_str)),
            // Not a placeholder Tend knows: kept as written.
            None => out.push_str(&rest[start..start + len + 2]),
        }
        rest = &rest[start + len + 2..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[policy]]
name = "disk-full"
match = { alertname = "DiskFull", severity = "~warning|critical" }
diagnose = [{ skill = "disk-usage", input = { warn_percent = 80, where = "{{labels.mountpoint}} on {{labels.instance}}" } }]
repair = { skill = "clean-old-logs", input = { dir = "{{labels.mountpoint}}" } }
auto_heal = true
"#;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_policy_matches_labels_exactly_or_by_whole_regex_and_fills_inputs() {
        let policies = parse(GOOD, "healing.toml").expect("parses");
        let alert = labels(&[
            ("alertname", "DiskFull"),
            ("severity", "critical"),
            ("mountpoint", "/var/log"),
            ("instance", "web-1:9100"),
        ]);
        let p = matching(&policies, &alert).expect("matches");
        assert_eq!(p.policy.name, "disk-full");
        assert!(
            matching(
                &policies,
                &labels(&[("alertname", "DiskFull"), ("severity", "criticality")])
            )
            .is_none()
        );
        assert!(matching(&policies, &labels(&[("alertname", "DiskFull")])).is_none());
        let input = fill(&p.policy.diagnose[0].input, &alert, &BTreeMap::new());
        assert_eq!(input["where"], "/var/log on web-1:9100");
        assert_eq!(input["warn_percent"], 80);
    }

    #[test]
    fn a_bad_policy_file_names_the_line_and_key() {
        let cases = [
            (
                "[[policy]]\nname = \"x\"\nmatch = { a = \"b\" }\nauto_hael = true\n",
                "healing.toml:4",
                "auto_hael",
            ),
            (
                "[[policy]]\nname = \"x\"\nmatch = { a = \"~(\" }\n",
                "policy[0].match.a",
                "regex",
            ),
            (
                "[[policy]]\nname = \"x\"\nmatch = {}\n",
                "policy[0].match",
                "at least one label",
            ),
            (
                "[[policy]]\nname = \"X Y\"\nmatch = { a = \"b\" }\n",
                "policy[0].name",
                "",
            ),
            (
                "[[policy]]\nname = \"x\"\nmatch = { a = \"b\" }\ncooldown = \"soon\"\n",
                "policy[0].cooldown",
                "soon",
            ),
            (
                "[[policy]]\nname = \"x\"\nmatch = { a = \"b\" }\ndiagnose = [{ skill = \"../x\" }]\n",
                "policy[0].diagnose[0].skill",
                "",
            ),
        ];
        for (text, place, what) in cases {
            let err = parse(text, "healing.toml").expect_err(place).to_string();
            assert!(err.contains(place) && err.contains(what), "{place}: {err}");
        }
    }
}
