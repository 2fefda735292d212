//! The agent's state directory:
//!
//! ```text
//! <dir>/agent.toml      what enrollment wrote (deny_unknown_fields)
//! <dir>/agent.key       its ed25519 identity (0600)
//! <dir>/spool/          results not yet acknowledged by the orchestrator
//! <dir>/store/          skills it pulled and verified itself
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tend_orchestrator::protocol::Ceiling;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    pub orchestrator: String,
    pub agent_id: String,
    pub name: String,
    /// Where it pulls skills from (verified against `trust`, its own policy).
    pub registry: String,
    pub trust: PathBuf,
    #[serde(default)]
    pub pools: Vec<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub ceiling: Ceiling,
    /// This host's environment floor (0-3): every job here is admitted at least at this
    /// level, whatever the orchestrator decided. Set by the operator in `agent.toml`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floor: Option<u8>,
}

impl AgentConfig {
    /// The environment floor as a level (an out-of-range value counts as the highest).
    pub fn floor(&self) -> tend_policy::Level {
        self.floor.map_or(tend_policy::Level::L0, |f| {
            tend_policy::Level::try_from(f).unwrap_or(tend_policy::Level::L3)
        })
    }

    pub fn path(dir: &Path) -> PathBuf {
        dir.join("agent.toml")
    }

    pub fn key_path(dir: &Path) -> PathBuf {
        dir.join("agent.key")
    }

    pub fn load(dir: &Path) -> Result<AgentConfig, String> {
        let path = Self::path(dir);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            format!(
                "cannot read {} ({e}): enroll first with `tend agent enroll`",
                path.display()
            )
        })?;
        toml::from_str(&text).map_err(|e| {
            format!(
                "{}:{}: {}",
                path.display(),
                tend_runtime::manifest::toml_error_line(&text, &e),
                e.message().trim()
            )
        })
    }

    pub fn save(&self, dir: &Path) -> Result<(), String> {
        let text = toml::to_string_pretty(self).map_err(|e| e.to_string())?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| e.to_string())?;
        std::io::Write::write_all(
            &mut tmp,
            format!("# Written by `tend agent enroll`.\n{text}").as_bytes(),
        )
        .map_err(|e| e.to_string())?;
        tmp.persist(Self::path(dir))
            .map_err(|e| e.error.to_string())?;
        Ok(())
    }
}
