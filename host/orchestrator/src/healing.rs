//! Healing policies: which alerts Tend acts on, and how. A policy file (TOML,
//! `deny_unknown_fields`; an error names the file, line and key):
//!
//! ```toml
//! [alertmanager]                      # optional: silences while a repair runs
//! url = "http://127.0.0.1:9093"
//! silence = true
//!
//! [llm]                               # optional: an analyst that may choose the repair
//! url = "http://127.0.0.1:8080/v1"    # OpenAI-compatible: POST {url}/chat/completions
//! model = "qwen2.5-7b-instruct"
//! api_key_env = "TEND_LLM_KEY"        # the NAME of the variable holding the key
//! timeout = "10s"                     # at most 20s; slower is the rules' choice
//!
//! [[channel]]                         # where people hear about incidents
//! name = "ops"
//! kind = "slack"                      # slack (incoming webhook) | webhook (generic JSON)
//! url = "https://hooks.slack.com/services/..."
//!
//! [[target]]                        # optional: which agent an alert is about, when its
//! match = { job = "postgres" }        # labels do not name one (instance, host, nodename)
//! agent = "{{labels.server}}"         # an agent name, or a template of the alert's labels
//!
//! [[policy]]
//! name = "disk-full"
//! enabled = true                      # false: matches nothing until switched on
//! match = { alertname = "DiskFull", severity = "~warning|critical" }   # "~" = a regex
//! diagnose = [{ skill = "disk-usage", input = { warn_percent = 80 } }]
//! repair = { skill = "clean-old-logs", input = { dir = "{{labels.mountpoint}}" } }
//! repairs = [{ skill = "clean-old-logs", input = { dir = "{{labels.mountpoint}}", older_than_days = 1 } }]
//! auto_heal = true
//! max_retries = 2
//! verify = "resolved"                 # or "rerun": the diagnosis again, `verify_after` later
//! cooldown = "10m"
//! max_repairs_per_hour = 5
//! max_repairs_per_target_per_hour = 2
//! max_targets = 3
//! dry_run = false
//! notify = ["ops"]
//! escalate = ["ops"]
//! ```
//!
//! The first policy whose every `match` entry matches an alert's labels (exactly, or the whole
//! value against a `~regex`) is the incident's; [`crate::heal`] runs the loop it describes.
//! Inputs are templates: `{{labels.NAME}}`, `{{annotations.NAME}}` and, in the repair's,
//! `{{diagnosis.SKILL.path.to.field}}` from a diagnose skill's output. A policy never raises
//! what a skill may do: every submission is decided like any other.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::audit;
use sha2::Digest;

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
    /// A policy that is switched off matches nothing (its alerts are incidents without a
    /// loop). `tend up` loads the example policies switched off.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Label → exact value, or `~regex` matched against the whole value.
    #[serde(rename = "match")]
    pub matches: BTreeMap<String, String>,
    #[serde(default)]
    pub diagnose: Vec<SkillCall>,
    /// The rules' repair: what the rule-based analysis submits.
    #[serde(default)]
    pub repair: Option<SkillCall>,
    /// Further repairs only an analyst (an LLM, see [`Llm`]) may choose instead of `repair`;
    /// it picks one of these or `repair` as written, never a skill or input of its own.
    #[serde(default)]
    pub repairs: Vec<SkillCall>,
    /// An L1 repair under this policy may run without a person (never anything above L1).
    #[serde(default)]
    pub auto_heal: bool,
    #[serde(default = "two")]
    pub max_retries: u32,
    /// How a repair is proven: `resolved` (the alert's resolved notification within
    /// `verify_timeout`) or `rerun` (the diagnose skills again, `verify_after` later, all `ok`).
    #[serde(default)]
    pub verify: Verify,
    /// `rerun`: how long after the repair the diagnosis runs again.
    #[serde(default = "thirty_seconds")]
    pub verify_after: String,
    /// `resolved`: how long to wait for the alert to resolve after the repair.
    #[serde(default = "ten_minutes")]
    pub verify_timeout: String,
    /// How long after a repair before the same policy repairs the same target again (for
    /// another incident or episode; retries within one are `max_retries`).
    #[serde(default = "ten_minutes")]
    pub cooldown: String,
    /// The circuit breaker: most repairs this policy submits in an hour, all targets.
    #[serde(default)]
    pub max_repairs_per_hour: Option<u32>,
    /// The circuit breaker per target: most repairs of one target by this policy in an hour.
    #[serde(default)]
    pub max_repairs_per_target_per_hour: Option<u32>,
    /// The blast radius: most targets this policy repairs at once; more wait their turn.
    #[serde(default)]
    pub max_targets: Option<u32>,
    /// Plan only: nothing is applied.
    #[serde(default)]
    pub dry_run: bool,
    /// Channels told of every change of its incidents.
    #[serde(default)]
    pub notify: Vec<String>,
    /// Channels told when it cannot heal and hands an incident to a person.
    #[serde(default)]
    pub escalate: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verify {
    #[default]
    Resolved,
    Rerun,
}

/// A place people hear about incidents.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Channel {
    pub name: String,
    pub kind: ChannelKind,
    /// Where messages are POSTed (a secret: a Slack incoming webhook URL is its own key).
    #[serde(skip_serializing)]
    pub url: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelKind {
    /// A Slack-compatible incoming webhook: `{"text": ...}`.
    Slack,
    /// A generic JSON webhook: the incident's event as data.
    Webhook,
}

/// Alertmanager's API, for silences while a repair runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Alertmanager {
    pub url: String,
    /// Silence an incident's alert while its repair runs and is verified.
    #[serde(default)]
    pub silence: bool,
}

fn yes() -> bool {
    true
}

/// An OpenAI-compatible endpoint that may choose the repair among a policy's `repair` and
/// `repairs` ([`crate::analysis`]); the rules decide when it is absent, slow or wrong.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Llm {
    /// The API's base URL: requests go to `{url}/chat/completions`.
    pub url: String,
    pub model: String,
    /// The NAME of the environment variable holding the bearer key (never the key itself);
    /// none for an endpoint that asks for no key.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// How long an answer may take before the rules decide (at most [`MAX_LLM_TIMEOUT`], well
    /// inside the lease a replica holds an incident by).
    #[serde(default = "ten_seconds")]
    pub timeout: String,
    /// The key, read from `api_key_env` when the file is loaded.
    #[serde(skip)]
    pub api_key: ApiKey,
}

/// Longest an analyst may take to answer.
pub const MAX_LLM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

impl Llm {
    pub fn timeout(&self) -> std::time::Duration {
        humantime::parse_duration(&self.timeout)
            .unwrap_or(std::time::Duration::from_secs(10))
            .min(MAX_LLM_TIMEOUT)
    }
}

/// A bearer key: never shown by `Debug`, never serialised.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ApiKey(pub Option<String>);

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "ApiKey(<set>)"
        } else {
            "ApiKey(None)"
        })
    }
}

fn ten_seconds() -> String {
    "10s".into()
}

fn two() -> u32 {
    2
}

fn ten_minutes() -> String {
    "10m".into()
}

fn thirty_seconds() -> String {
    "30s".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    alertmanager: Option<Alertmanager>,
    #[serde(default)]
    llm: Option<Llm>,
    #[serde(default)]
    channel: Vec<Channel>,
    /// Channels told of incidents no policy matches.
    #[serde(default)]
    notify_unmatched: Vec<String>,
    #[serde(default)]
    policy: Vec<HealingPolicy>,
    /// Which agent an alert is about, tried before the labels that name one.
    #[serde(default)]
    target: Vec<TargetMapping>,
}

/// A mapping from alert labels to the enrolled agent the alert is about: for alerts whose
/// `instance`, `host` or `nodename` do not name an agent (a blackbox probe, a database
/// cluster's label, a service's own name).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetMapping {
    /// Label → exact value, or `~regex` matched against the whole value.
    #[serde(rename = "match")]
    pub matches: BTreeMap<String, String>,
    /// The agent's name, or a template of the alert's labels (`{{labels.server}}`).
    pub agent: String,
}

/// A target mapping ready to match.
#[derive(Debug, Clone)]
pub struct Target {
    pub mapping: TargetMapping,
    matchers: Vec<(String, Matcher)>,
}

impl Target {
    /// The agent name this mapping gives for `labels`, if it matches them: lower-cased, as
    /// agents are named.
    pub fn agent_for(&self, labels: &BTreeMap<String, String>) -> Option<String> {
        if !matches_all(&self.matchers, labels) {
            return None;
        }
        let facts = Facts {
            labels,
            annotations: &BTreeMap::new(),
            diagnosis: &BTreeMap::new(),
        };
        let agent = match substitute(&self.mapping.agent, &facts) {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        };
        Some(agent.to_ascii_lowercase())
    }
}

/// A checked policy file: everything the healing loop acts on.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub alertmanager: Option<Alertmanager>,
    /// The analyst that may choose among a policy's repairs; the rules alone when absent.
    pub llm: Option<Llm>,
    pub channels: Vec<Channel>,
    pub notify_unmatched: Vec<String>,
    pub policies: Vec<Compiled>,
    /// Alert labels → agent, tried in order before `instance`, `host` and `nodename`.
    pub targets: Vec<Target>,
    /// The text it was read from (shown by the API).
    pub text: String,
}

impl Config {
    pub fn policy(&self, name: &str) -> Option<&Compiled> {
        self.policies.iter().find(|p| p.policy.name == name)
    }

    pub fn channel(&self, name: &str) -> Option<&Channel> {
        self.channels.iter().find(|c| c.name == name)
    }
}

/// The policy file in force and its version, replaced whole when the API sets a new one.
#[derive(Debug, Clone, Default)]
pub struct Live(std::sync::Arc<std::sync::RwLock<(i64, std::sync::Arc<Config>)>>);

impl Live {
    pub fn new(version: i64, config: Config) -> Live {
        Live(std::sync::Arc::new(std::sync::RwLock::new((
            version,
            std::sync::Arc::new(config),
        ))))
    }

    pub fn current(&self) -> std::sync::Arc<Config> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).1.clone()
    }

    pub fn version(&self) -> i64 {
        self.0.read().unwrap_or_else(|e| e.into_inner()).0
    }

    pub fn replace(&self, version: i64, config: Config) {
        let mut live = self.0.write().unwrap_or_else(|e| e.into_inner());
        if version >= live.0 {
            *live = (version, std::sync::Arc::new(config));
        }
    }
}

/// The policies to start with: the file when one is given (recorded as a new version when it
/// differs from the last one in force, and audited), else the last set through the API, else
/// none. Returns the version and the policies.
pub async fn in_force(
    db: &crate::db::Db,
    file: Option<Config>,
) -> Result<(i64, Config), crate::invocation::FlowError> {
    let Some(file) = file else {
        return match latest(db).await? {
            Some((version, text)) => {
                let origin =
                    format!("the healing policies set through the API (version {version})");
                let config = parse(&text, &origin)
                    .map_err(|e| crate::invocation::FlowError::Invalid(e.to_string()))?;
                Ok((version, config))
            }
            None => Ok((0, Config::default())),
        };
    };
    // Replicas starting together race to record the file: each takes the newest version when
    // it holds this text, else records the next one (the same text recorded by another replica
    // first is the same version, not a conflict).
    let mut tries = 0;
    loop {
        let latest = latest(db).await?;
        if let Some((version, text)) = &latest
            && *text == file.text
        {
            return Ok((*version, file));
        }
        let version = latest.map_or(1, |(v, _)| v + 1);
        match store(db, version, &file.text, "file", "tend").await {
            Ok(()) => return Ok((version, file)),
            Err(crate::invocation::FlowError::Conflict(_)) if tries < 5 => tries += 1,
            Err(e) => return Err(e),
        }
    }
}

pub async fn latest(
    db: &crate::db::Db,
) -> Result<Option<(i64, String)>, crate::invocation::FlowError> {
    use sqlx::Row;
    let row =
        sqlx::query("SELECT version, text FROM healing_policies ORDER BY version DESC LIMIT 1")
            .fetch_optional(&db.pool)
            .await?;
    Ok(match row {
        Some(r) => Some((r.try_get("version")?, r.try_get("text")?)),
        None => None,
    })
}

/// Record `text` as policy version `version`, audited, in one transaction. A version another
/// replica recorded first is a conflict that changes nothing.
pub async fn store(
    db: &crate::db::Db,
    version: i64,
    text: &str,
    source: &str,
    by: &str,
) -> Result<(), crate::invocation::FlowError> {
    let mut tx = db.begin_write().await?;
    let inserted = sqlx::query(
        "INSERT INTO healing_policies (version, text, source, created_by, created_ms) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (version) DO NOTHING",
    )
    .bind(version)
    .bind(text)
    .bind(source)
    .bind(by)
    .bind(crate::db::now_ms())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted != 1 {
        tx.rollback().await?;
        return Err(crate::invocation::FlowError::Conflict(format!(
            "healing policies version {version} was set meanwhile: read them again and retry"
        )));
    }
    audit::append_tx(
        &mut tx,
        by,
        audit::Action::HealingPoliciesSet,
        &format!("v{version}"),
        serde_json::json!({
            "version": version, "source": source,
            "sha256": hex::encode(sha2::Sha256::digest(text.as_bytes())),
        }),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Take up a newer version another replica (or the API) recorded.
pub async fn refresh(db: &crate::db::Db, live: &Live) -> Result<(), crate::invocation::FlowError> {
    use sqlx::Row;
    let newest: Option<i64> = sqlx::query("SELECT MAX(version) AS v FROM healing_policies")
        .fetch_one(&db.pool)
        .await?
        .try_get("v")?;
    if newest.is_some_and(|v| v > live.version())
        && let Some((version, text)) = latest(db).await?
    {
        match parse(&text, &format!("healing policies version {version}")) {
            Ok(config) => live.replace(version, config),
            Err(e) => {
                tracing::error!(error = %e, "stored healing policies do not parse; the ones in force stay")
            }
        }
    }
    Ok(())
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

/// The policy file at `path`, checked.
pub fn load(path: &Path) -> Result<Config, PolicyError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| PolicyError::Read {
        path: origin.clone(),
        message: e.to_string(),
    })?;
    parse(&text, &origin)
}

/// Parse and check policy text (`origin` names it in errors).
pub fn parse(text: &str, origin: &str) -> Result<Config, PolicyError> {
    let mut file: PolicyFile = toml::from_str(text).map_err(|e| PolicyError::Parse {
        path: origin.to_string(),
        line: tend_manifest::toml_error_line(text, &e),
        message: e.message().trim().to_string(),
    })?;
    let invalid = |key: String, message: String| PolicyError::Invalid {
        path: origin.to_string(),
        key,
        message,
    };
    if let Some(am) = &file.alertmanager {
        check_url(&am.url).map_err(|e| invalid("alertmanager.url".into(), e))?;
    }
    if let Some(llm) = &mut file.llm {
        check_url(&llm.url).map_err(|e| invalid("llm.url".into(), e))?;
        if llm.model.trim().is_empty() {
            return Err(invalid("llm.model".into(), "names the model to ask".into()));
        }
        let timeout = humantime::parse_duration(&llm.timeout)
            .map_err(|e| invalid("llm.timeout".into(), format!("{:?}: {e}", llm.timeout)))?;
        if timeout.is_zero() || timeout > MAX_LLM_TIMEOUT {
            return Err(invalid(
                "llm.timeout".into(),
                format!(
                    "{:?} is more than 0 and at most {} (an incident is held by one replica for 30s)",
                    llm.timeout,
                    humantime::format_duration(MAX_LLM_TIMEOUT)
                ),
            ));
        }
        if let Some(name) = &llm.api_key_env {
            let key = std::env::var(name).ok().filter(|k| !k.trim().is_empty());
            let Some(key) = key else {
                return Err(invalid(
                    "llm.api_key_env".into(),
                    format!(
                        "the environment variable {:?} that holds the key is not set (or empty) for this orchestrator",
                        audit::safe_field(name, 64)
                    ),
                ));
            };
            llm.api_key = ApiKey(Some(key.trim().to_string()));
        }
    }
    for (i, c) in file.channel.iter().enumerate() {
        tend_protocol::check_name("name", &c.name)
            .map_err(|e| invalid(format!("channel[{i}].name"), e.why))?;
        if file.channel[..i].iter().any(|o| o.name == c.name) {
            return Err(invalid(
                format!("channel[{i}].name"),
                format!("{} is used twice", c.name),
            ));
        }
        check_url(&c.url).map_err(|e| invalid(format!("channel[{i}].url"), e))?;
    }
    let known = |names: &[String], key: String| -> Result<(), PolicyError> {
        match names
            .iter()
            .find(|n| !file.channel.iter().any(|c| c.name == **n))
        {
            Some(n) => Err(invalid(
                key,
                format!(
                    "no [[channel]] is named {:?} (channels: {})",
                    audit::safe_field(n, 64),
                    file.channel
                        .iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
            None => Ok(()),
        }
    };
    known(&file.notify_unmatched, "notify_unmatched".into())?;
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
        let matchers = compile_matchers(&p.matches)
            .map_err(|(label, e)| invalid(at(&format!("match.{label}")), e))?;
        for (j, call) in p.diagnose.iter().enumerate() {
            tend_manifest::SkillName::parse(&call.skill)
                .map_err(|e| invalid(at(&format!("diagnose[{j}].skill")), e.to_string()))?;
        }
        if let Some(r) = &p.repair {
            tend_manifest::SkillName::parse(&r.skill)
                .map_err(|e| invalid(at("repair.skill"), e.to_string()))?;
        }
        for (j, call) in p.repairs.iter().enumerate() {
            tend_manifest::SkillName::parse(&call.skill)
                .map_err(|e| invalid(at(&format!("repairs[{j}].skill")), e.to_string()))?;
        }
        for (key, value) in [
            ("cooldown", &p.cooldown),
            ("verify_after", &p.verify_after),
            ("verify_timeout", &p.verify_timeout),
        ] {
            humantime::parse_duration(value)
                .map_err(|e| invalid(at(key), format!("{value:?}: {e}")))?;
        }
        if p.max_retries > 10 {
            return Err(invalid(at("max_retries"), "is 0 to 10".into()));
        }
        if p.max_targets == Some(0) {
            return Err(invalid(
                at("max_targets"),
                "is at least 1 (leave out `repair` to never repair)".into(),
            ));
        }
        known(&p.notify, at("notify"))?;
        known(&p.escalate, at("escalate"))?;
        out.push(Compiled {
            policy: p,
            matchers,
        });
    }
    let mut targets = Vec::new();
    for (i, t) in file.target.into_iter().enumerate() {
        let at = |k: &str| format!("target[{i}].{k}");
        if t.matches.is_empty() {
            return Err(invalid(
                at("match"),
                "match at least one label (e.g. job)".into(),
            ));
        }
        let matchers = compile_matchers(&t.matches)
            .map_err(|(label, e)| invalid(at(&format!("match.{label}")), e))?;
        check_agent_template(&t.agent).map_err(|e| invalid(at("agent"), e))?;
        targets.push(Target {
            mapping: t,
            matchers,
        });
    }
    Ok(Config {
        alertmanager: file.alertmanager,
        llm: file.llm,
        channels: file.channel,
        notify_unmatched: file.notify_unmatched,
        policies: out,
        targets,
        text: text.to_string(),
    })
}

/// A `match` table's matchers; an error names the label.
fn compile_matchers(
    matches: &BTreeMap<String, String>,
) -> Result<Vec<(String, Matcher)>, (String, String)> {
    matches
        .iter()
        .map(|(label, want)| {
            let m = match want.strip_prefix('~') {
                Some(re) => Matcher::Regex(
                    regex::Regex::new(&format!("^(?:{re})$"))
                        .map_err(|e| (label.clone(), e.to_string()))?,
                ),
                None => Matcher::Exact(want.clone()),
            };
            Ok((label.clone(), m))
        })
        .collect()
}

fn matches_all(matchers: &[(String, Matcher)], labels: &BTreeMap<String, String>) -> bool {
    matchers.iter().all(|(label, m)| {
        labels.get(label).is_some_and(|v| match m {
            Matcher::Exact(want) => v == want,
            Matcher::Regex(re) => re.is_match(v),
        })
    })
}

/// A target's `agent`: an agent name, or a template that reads only the alert's labels.
fn check_agent_template(agent: &str) -> Result<(), String> {
    let mut rest = agent;
    let mut literal = String::new();
    while let Some(start) = rest.find("{{") {
        literal.push_str(&rest[..start]);
        let Some(end) = rest[start..].find("}}") else {
            return Err(format!("{agent:?}: a {{{{ without }}}}"));
        };
        let key = rest[start + 2..start + end].trim();
        if key.strip_prefix("labels.").is_none_or(str::is_empty) {
            return Err(format!(
                "{agent:?}: only {{{{labels.NAME}}}} may be used here, not {{{{{key}}}}}"
            ));
        }
        literal.push('x');
        rest = &rest[start + end + 2..];
    }
    literal.push_str(rest);
    tend_protocol::check_name("agent", &literal.to_ascii_lowercase()).map_err(|e| e.why)
}

/// An `http://` or `https://` URL with a host.
fn check_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err("is an http:// or https:// URL".into());
    }
    Ok(())
}

impl HealingPolicy {
    fn duration(text: &str) -> std::time::Duration {
        humantime::parse_duration(text).unwrap_or(std::time::Duration::from_secs(600))
    }

    pub fn cooldown(&self) -> std::time::Duration {
        Self::duration(&self.cooldown)
    }

    pub fn verify_after(&self) -> std::time::Duration {
        Self::duration(&self.verify_after)
    }

    pub fn verify_timeout(&self) -> std::time::Duration {
        Self::duration(&self.verify_timeout)
    }
}

impl Compiled {
    /// Whether every `match` entry matches `labels`.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.policy.enabled && matches_all(&self.matchers, labels)
    }
}

/// The first policy that matches `labels`.
pub fn matching<'a>(
    policies: &'a [Compiled],
    labels: &BTreeMap<String, String>,
) -> Option<&'a Compiled> {
    policies.iter().find(|p| p.matches(labels))
}

/// What a template may read: the alert, and (for a repair) the diagnosis — each diagnose
/// skill's output by skill name.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub labels: &'a BTreeMap<String, String>,
    pub annotations: &'a BTreeMap<String, String>,
    pub diagnosis: &'a BTreeMap<String, serde_json::Value>,
}

impl Facts<'_> {
    /// The value a placeholder names: `labels.NAME`, `annotations.NAME` (a name the alert lacks
    /// is the empty string) or `diagnosis.SKILL.path.to.field` (array items by index; absent
    /// is `None`). `None` for anything else.
    fn lookup(&self, key: &str) -> Option<serde_json::Value> {
        let text = |v: Option<&String>| serde_json::Value::String(v.cloned().unwrap_or_default());
        if let Some(k) = key.strip_prefix("labels.") {
            return Some(text(self.labels.get(k)));
        }
        if let Some(k) = key.strip_prefix("annotations.") {
            return Some(text(self.annotations.get(k)));
        }
        let path = key.strip_prefix("diagnosis.")?;
        // Skill names have no dots; the rest is the path inside its output.
        let (skill, rest) = path.split_once('.').unwrap_or((path, ""));
        let mut at = self.diagnosis.get(skill)?;
        for step in rest.split('.').filter(|s| !s.is_empty()) {
            at = match at {
                serde_json::Value::Array(items) => items.get(step.parse::<usize>().ok()?)?,
                serde_json::Value::Object(map) => map.get(step)?,
                _ => return None,
            };
        }
        Some(at.clone())
    }
}

/// A skill call's input with its placeholders filled (see [`Facts::lookup`]). A string that is
/// exactly one placeholder takes the value's own type (a pid stays a number); inside longer
/// text a value is written as text. A placeholder Tend does not know, or a diagnosis field
/// that is absent, is kept as written — so the input schema refuses it rather than a guess.
pub fn fill(input: &toml::Table, facts: &Facts<'_>) -> serde_json::Value {
    fn walk(v: serde_json::Value, facts: &Facts<'_>) -> serde_json::Value {
        match v {
            serde_json::Value::String(s) => substitute(&s, facts),
            serde_json::Value::Array(items) => items.into_iter().map(|i| walk(i, facts)).collect(),
            serde_json::Value::Object(map) => {
                map.into_iter().map(|(k, v)| (k, walk(v, facts))).collect()
            }
            other => other,
        }
    }
    let json = serde_json::to_value(input).unwrap_or_else(|_| serde_json::json!({}));
    walk(json, facts)
}

fn substitute(text: &str, facts: &Facts<'_>) -> serde_json::Value {
    let whole = text.trim();
    if let Some(key) = whole
        .strip_prefix("{{")
        .and_then(|k| k.strip_suffix("}}"))
        .filter(|k| !k.contains("{{") && !k.contains("}}"))
        && let Some(value) = facts.lookup(key.trim())
    {
        return value;
    }
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let Some(len) = rest[start..].find("}}") else {
            break;
        };
        out.push_str(&rest[..start]);
        let key = rest[start + 2..start + len].trim();
        match facts.lookup(key) {
            Some(serde_json::Value::String(v)) => out.push_str(&v),
            Some(v) => out.push_str(&v.to_string()),
            // Not a placeholder Tend knows: kept as written.
            None => out.push_str(&rest[start..start + len + 2]),
        }
        rest = &rest[start + len + 2..];
    }
    out.push_str(rest);
    serde_json::Value::String(out)
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
        let config = parse(GOOD, "healing.toml").expect("parses");
        let policies = &config.policies;
        let alert = labels(&[
            ("alertname", "DiskFull"),
            ("severity", "critical"),
            ("mountpoint", "/var/log"),
            ("instance", "web-1:9100"),
        ]);
        let p = matching(policies, &alert).expect("matches");
        assert_eq!(p.policy.name, "disk-full");
        assert!(
            matching(
                policies,
                &labels(&[("alertname", "DiskFull"), ("severity", "criticality")])
            )
            .is_none()
        );
        assert!(matching(policies, &labels(&[("alertname", "DiskFull")])).is_none());
        let none = BTreeMap::new();
        let facts = Facts {
            labels: &alert,
            annotations: &none,
            diagnosis: &BTreeMap::new(),
        };
        let input = fill(&p.policy.diagnose[0].input, &facts);
        assert_eq!(input["where"], "/var/log on web-1:9100");
        assert_eq!(input["warn_percent"], 80);
    }

    #[test]
    fn a_repair_input_reads_the_diagnosis_keeping_its_types() {
        let text = r#"
[[policy]]
name = "cpu"
match = { alertname = "HighCPU" }
repair = { skill = "kill-runaway-process", input = { pid = "{{diagnosis.top-processes.processes.0.pid}}", note = "pid {{diagnosis.top-processes.processes.0.pid}} on {{labels.instance}}", missing = "{{diagnosis.top-processes.nothing}}", other = "{{secrets.x}}" } }
"#;
        let config = parse(text, "healing.toml").expect("parses");
        let alert = labels(&[("alertname", "HighCPU"), ("instance", "web-1")]);
        let mut diagnosis = BTreeMap::new();
        diagnosis.insert(
            "top-processes".to_string(),
            serde_json::json!({ "processes": [{ "pid": 4242, "name": "spin" }] }),
        );
        let facts = Facts {
            labels: &alert,
            annotations: &BTreeMap::new(),
            diagnosis: &diagnosis,
        };
        let input = fill(
            &config.policies[0]
                .policy
                .repair
                .as_ref()
                .expect("repair")
                .input,
            &facts,
        );
        assert_eq!(input["pid"], 4242);
        assert_eq!(input["note"], "pid 4242 on web-1");
        // Absent or unknown: kept as written, for the input schema to refuse.
        assert_eq!(input["missing"], "{{diagnosis.top-processes.nothing}}");
        assert_eq!(input["other"], "{{secrets.x}}");
    }

    /// An alert label or a diagnose skill's output that holds a placeholder is data: it is
    /// filled in once, never read as a template (it cannot pull in another label, another
    /// skill's output, or change the agent a mapping names).
    #[test]
    fn filled_values_are_not_templates_again() {
        let text = r#"
[[target]]
match = { job = "pg" }
agent = "{{labels.server}}"

[[policy]]
name = "cpu"
match = { alertname = "HighCPU" }
repair = { skill = "kill-runaway-process", input = { dir = "{{labels.dir}}", note = "at {{labels.dir}}", pid = "{{diagnosis.top.pid}}" } }
"#;
        let config = parse(text, "healing.toml").expect("parses");
        let alert = labels(&[
            ("alertname", "HighCPU"),
            ("job", "pg"),
            ("server", "{{labels.other}}"),
            ("other", "db-1"),
            ("dir", "{{labels.secret}}"),
            ("secret", "/"),
        ]);
        let mut diagnosis = BTreeMap::new();
        diagnosis.insert(
            "top".to_string(),
            serde_json::json!({ "pid": "{{labels.secret}}" }),
        );
        let facts = Facts {
            labels: &alert,
            annotations: &BTreeMap::new(),
            diagnosis: &diagnosis,
        };
        let input = fill(
            &config.policies[0]
                .policy
                .repair
                .as_ref()
                .expect("repair")
                .input,
            &facts,
        );
        assert_eq!(input["dir"], "{{labels.secret}}");
        assert_eq!(input["note"], "at {{labels.secret}}");
        assert_eq!(input["pid"], "{{labels.secret}}");
        assert_eq!(
            config.targets[0].agent_for(&alert).as_deref(),
            Some("{{labels.other}}")
        );
    }

    #[test]
    fn channels_and_the_alertmanager_are_checked_and_named() {
        let ok = r#"
notify_unmatched = ["ops"]
[alertmanager]
url = "http://127.0.0.1:9093"
silence = true
[[channel]]
name = "ops"
kind = "slack"
url = "https://hooks.example.com/services/T0/B0/x"
[[policy]]
name = "p"
match = { alertname = "A" }
notify = ["ops"]
escalate = ["ops"]
verify = "rerun"
verify_after = "5s"
"#;
        let config = parse(ok, "h.toml").expect("parses");
        assert_eq!(config.channels[0].kind, ChannelKind::Slack);
        assert_eq!(config.policies[0].policy.verify, Verify::Rerun);
        assert!(config.alertmanager.as_ref().is_some_and(|a| a.silence));
        let cases = [
            (
                ok.replace("escalate = [\"ops\"]", "escalate = [\"pager\"]"),
                "policy[0].escalate",
                "pager",
            ),
            (
                ok.replace("notify_unmatched = [\"ops\"]", "notify_unmatched = [\"x\"]"),
                "notify_unmatched",
                "x",
            ),
            (
                ok.replace("kind = \"slack\"", "kind = \"email\""),
                "h.toml:8",
                "email",
            ),
            (
                ok.replace(
                    "https://hooks.example.com/services/T0/B0/x",
                    "file:///etc/passwd",
                ),
                "channel[0].url",
                "http",
            ),
            (
                ok.replace("http://127.0.0.1:9093", "not a url"),
                "alertmanager.url",
                "",
            ),
            (
                ok.replace("verify = \"rerun\"", "verify = \"hope\""),
                "h.toml:15",
                "hope",
            ),
            (
                ok.replace("verify_after = \"5s\"", "verify_after = \"later\""),
                "policy[0].verify_after",
                "later",
            ),
        ];
        for (text, place, what) in cases {
            let err = parse(&text, "h.toml").expect_err(place).to_string();
            assert!(err.contains(place) && err.contains(what), "{place}: {err}");
        }
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

    #[test]
    fn a_target_mapping_is_checked_with_its_key_named() {
        for (text, key, words) in [
            (
                "[[target]]\nmatch = {}\nagent = \"db-1\"\n",
                "target[0].match",
                "at least one label",
            ),
            (
                "[[target]]\nmatch = { job = \"~(\" }\nagent = \"db-1\"\n",
                "target[0].match.job",
                "regex",
            ),
            (
                "[[target]]\nmatch = { job = \"pg\" }\nagent = \"DB 1/..\"\n",
                "target[0].agent",
                "a-z",
            ),
            (
                "[[target]]\nmatch = { job = \"pg\" }\nagent = \"{{annotations.host}}\"\n",
                "target[0].agent",
                "only {{labels.NAME}}",
            ),
        ] {
            let e = parse(text, "healing.toml").expect_err(text).to_string();
            assert!(e.starts_with(&format!("healing.toml: {key}: ")), "{e}");
            assert!(e.contains(words), "{e}");
        }
        let e = parse(
            "[[target]]\nmatch = { job = \"pg\" }\nagents = \"db-1\"\n",
            "h.toml",
        )
        .expect_err("unknown key")
        .to_string();
        assert!(e.contains("h.toml:3") && e.contains("agents"), "{e}");
    }

    #[test]
    fn a_policy_switched_off_matches_nothing() {
        let text = GOOD.replace("auto_heal = true", "auto_heal = true\nenabled = false");
        let config = parse(&text, "healing.toml").expect("parses");
        let alert = labels(&[("alertname", "DiskFull"), ("severity", "critical")]);
        assert!(matching(&config.policies, &alert).is_none());
        let on = parse(GOOD, "healing.toml").expect("parses");
        assert!(matching(&on.policies, &alert).is_some());
    }

    const LLM: &str = r#"
[llm]
url = "http://127.0.0.1:8080/v1"
model = "small"
timeout = "5s"
[[policy]]
name = "p"
match = { alertname = "A" }
repair = { skill = "clean-old-logs", input = { dir = "/var/log" } }
repairs = [{ skill = "clean-old-logs", input = { dir = "/var/log", older_than_days = 1 } }]
"#;

    #[test]
    fn an_llm_section_and_further_repairs_are_read() {
        let config = parse(LLM, "h.toml").expect("parses");
        let llm = config.llm.as_ref().expect("llm");
        assert_eq!(llm.model, "small");
        assert_eq!(llm.timeout(), std::time::Duration::from_secs(5));
        assert_eq!(llm.api_key, ApiKey(None), "no key asked for");
        assert_eq!(config.policies[0].policy.repairs.len(), 1);
        let defaults = parse(&LLM.replace("timeout = \"5s\"\n", ""), "h.toml").expect("parses");
        assert_eq!(
            defaults.llm.expect("llm").timeout(),
            std::time::Duration::from_secs(10)
        );
        assert!(parse(GOOD, "h.toml").expect("parses").llm.is_none());
    }

    #[test]
    fn a_bad_llm_section_names_the_key_and_what_is_wrong() {
        let cases = [
            (
                LLM.replace(
                    "model = \"small\"",
                    "model = \"small\"\napi_key = \"sk-123\"",
                ),
                "h.toml:5",
                "api_key",
            ),
            (
                LLM.replace(
                    "model = \"small\"",
                    "model = \"small\"\napi_key_env = \"TEND_TEST_NO_SUCH_LLM_KEY\"",
                ),
                "llm.api_key_env",
                "TEND_TEST_NO_SUCH_LLM_KEY\" that holds the key is not set",
            ),
            (
                LLM.replace("http://127.0.0.1:8080/v1", "ftp://models.example/v1"),
                "llm.url",
                "http",
            ),
            (
                LLM.replace("http://127.0.0.1:8080/v1", "not a url"),
                "llm.url",
                "relative URL",
            ),
            (
                LLM.replace("timeout = \"5s\"", "timeout = \"1m\""),
                "llm.timeout",
                "at most 20s",
            ),
            (
                LLM.replace("timeout = \"5s\"", "timeout = \"soon\""),
                "llm.timeout",
                "soon",
            ),
            (
                LLM.replace("model = \"small\"", "model = \" \""),
                "llm.model",
                "model",
            ),
            (
                LLM.replace(
                    "repairs = [{ skill = \"clean-old-logs\"",
                    "repairs = [{ skill = \"../x\"",
                ),
                "policy[0].repairs[0].skill",
                "",
            ),
            (
                LLM.replace("older_than_days = 1 }", "older_than_days = 1 }, why = 1"),
                "h.toml:10",
                "why",
            ),
        ];
        for (text, place, what) in cases {
            let err = parse(&text, "h.toml").expect_err(place).to_string();
            assert!(err.contains(place) && err.contains(what), "{place}: {err}");
        }
    }
}
