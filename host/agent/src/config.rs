//! The agent's state directory:
//!
//! ```text
//! <dir>/agent.toml      what enrollment wrote (deny_unknown_fields)
//! <dir>/agent.key       its ed25519 identity (0600)
//! <dir>/spool/          results not yet acknowledged by the orchestrator
//! <dir>/store/          skills it pulled and verified itself
//! <dir>/ran/            the approved repairs it ran (by invocation digest), so none runs twice
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tend_protocol::Ceiling;

use crate::error::ConfigError;

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

    pub fn load(dir: &Path) -> Result<AgentConfig, ConfigError> {
        let path = Self::path(dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        let config: AgentConfig = match toml::from_str(&text) {
            Ok(config) => config,
            Err(e) => {
                return Err(ConfigError::Parse {
                    line: tend_manifest::toml_error_line(&text, &e),
                    message: e.message().trim().to_string(),
                    path,
                });
            }
        };
        // The ceiling is this host's own word against the orchestrator's: an edited or
        // corrupted one is refused here, never read as something more permissive.
        let invalid = |message: String| ConfigError::Invalid {
            path: path.clone(),
            message,
        };
        config.ceiling.check().map_err(|e| invalid(e.to_string()))?;
        if config.floor.is_some_and(|f| f > 3) {
            return Err(invalid("floor is 0 to 3".into()));
        }
        Ok(config)
    }

    /// Write `agent.toml` whole (temporary file, then rename): a crash leaves the old one.
    pub fn save(&self, dir: &Path) -> Result<(), ConfigError> {
        let path = Self::path(dir);
        let failed = |message: String| ConfigError::Write {
            path: path.clone(),
            message,
        };
        let text = toml::to_string_pretty(self).map_err(|e| failed(e.to_string()))?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| failed(e.to_string()))?;
        std::io::Write::write_all(
            &mut tmp,
            format!("# Written by `tend agent enroll`.\n{text}").as_bytes(),
        )
        .map_err(|e| failed(e.to_string()))?;
        tmp.persist(&path)
            .map_err(|e| failed(e.error.to_string()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_out_of_range_ceiling_or_floor_is_refused_at_load() {
        let dir = tempfile::tempdir().expect("dir");
        let base = "orchestrator = \"http://127.0.0.1:1\"\nagent_id = \"agent_1\"\nname = \"a\"\nregistry = \"http://127.0.0.1:2\"\ntrust = \"/t.toml\"\n";
        for (extra, says) in [
            ("[ceiling]\nmax_level = 9\n", "ceiling.max_level"),
            ("floor = 7\n[ceiling]\nmax_level = 0\n", "floor is 0 to 3"),
            (
                "[ceiling]\nmax_level = 1\ncapabilities = [\"root\"]\n",
                "ceiling.capabilities",
            ),
        ] {
            std::fs::write(AgentConfig::path(dir.path()), format!("{base}{extra}")).expect("write");
            let err = AgentConfig::load(dir.path()).expect_err(extra).to_string();
            assert!(err.contains(says), "{extra}: {err}");
        }
        std::fs::write(
            AgentConfig::path(dir.path()),
            format!("{base}floor = 1\n[ceiling]\nmax_level = 2\n"),
        )
        .expect("write");
        let ok = AgentConfig::load(dir.path()).expect("a valid config loads");
        assert_eq!(ok.floor(), tend_policy::Level::L1);
    }
}
