//! `tend healing show | set FILE`: the healing policies in force, and replacing them (admin).
//!
//! `set` sends the whole file with the version it replaces: the orchestrator checks it exactly
//! as at start (an error names the line or key and changes nothing), and refuses it when
//! someone else set another version since `show` (409) — so two people never overwrite each
//! other's change unseen.

use std::path::PathBuf;

use serde_json::{Value, json};

use super::config::ConnArgs;
use super::http::Client;
use crate::{Failure, exit, out};

const PATH: &str = "/api/v1/healing/policies";

#[derive(Debug, clap::Subcommand)]
pub enum HealingCommand {
    /// The healing policies in force: their version, names and file (admin: it holds the
    /// channels' webhook URLs)
    Show {
        /// Print the API's JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Put a policy file in force on every replica (admin); checked first, nothing changes if
    /// it is refused
    #[command(
        after_help = "Example:\n  tend healing show --json | jq -r .text > healing.toml\n  $EDITOR healing.toml      # e.g. enabled = true on a policy\n  tend healing set healing.toml"
    )]
    Set {
        /// The policy file (TOML, docs/self-healing.md), or - for standard input
        file: PathBuf,
        /// The version it replaces [default: the version in force now]
        #[arg(long)]
        replaces: Option<i64>,
        #[command(flatten)]
        conn: ConnArgs,
    },
}

pub async fn run(cmd: HealingCommand) -> Result<u8, Failure> {
    match cmd {
        HealingCommand::Show { json, conn } => {
            let client = Client::from_args(&conn)?;
            let answer: Value = client.get(PATH).await?;
            if json {
                out(&answer.to_string());
                return Ok(exit::OK);
            }
            eprintln!("version {}: {}", answer["version"], names(&answer));
            out(answer["text"].as_str().unwrap_or_default().trim_end());
            Ok(exit::OK)
        }
        HealingCommand::Set {
            file,
            replaces,
            conn,
        } => {
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())
                    .map_err(|e| Failure::bad_input(format!("cannot read standard input: {e}")))?
            } else {
                std::fs::read_to_string(&file).map_err(|e| {
                    Failure::bad_input(format!("cannot read {}: {e}", file.display()))
                })?
            };
            let client = Client::from_args(&conn)?;
            let replaces = match replaces {
                Some(v) => v,
                None => {
                    let now: Value = client.get(PATH).await?;
                    now["version"].as_i64().unwrap_or(0)
                }
            };
            let answer: Value = client
                .put(PATH, &json!({ "text": text, "replaces": replaces }))
                .await?;
            eprintln!(
                "version {} is in force (it replaced {replaces}): {}",
                answer["version"],
                names(&answer)
            );
            Ok(exit::OK)
        }
    }
}

/// The policies' names, in matching order, from the API's answer.
fn names(answer: &Value) -> String {
    answer["policies"]
        .as_array()
        .map(|p| {
            p.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}
