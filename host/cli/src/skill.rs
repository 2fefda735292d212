//! `tend skill ...`: work with skill components.

use std::path::PathBuf;

use tend_runtime::{Runtime, inspect};

use crate::{CacheArgs, Failure, read_component};

#[derive(Debug, clap::Subcommand)]
pub enum SkillCommand {
    /// Show a component's world: what it imports and exports, and whether it is a Tend skill
    Inspect {
        /// The component (.wasm)
        component: PathBuf,
        /// Print as JSON
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(cmd: SkillCommand, cache: &CacheArgs) -> Result<u8, Failure> {
    match cmd {
        SkillCommand::Inspect { component, json } => {
            let bytes = read_component(&component)?;
            let runtime = Runtime::new(cache.runtime_config())?;
            let world = inspect::inspect(&runtime, &bytes)
                .map_err(|e| Failure::bad_input(format!("{}: {e}", component.display())))?;
            if json {
                crate::out(&serde_json::to_string_pretty(&world).map_err(Failure::host)?);
                return Ok(0);
            }
            crate::out(&format!("{}", component.display()));
            crate::out(&format!("  digest: {}", world.digest));
            crate::out(&format!("  size:   {} bytes", world.size_bytes));
            crate::out(&format!(
                "  skill:  {}",
                match &world.skill_kind {
                    Some(k) => format!("yes, world tend:skill/{k}@0.1.0"),
                    None => "no (exports no `run` function)".to_string(),
                }
            ));
            crate::out("  imports:");
            for i in &world.imports {
                crate::out(&format!("    {:<9} {}", i.kind, i.name));
            }
            crate::out("  exports:");
            for e in &world.exports {
                crate::out(&format!("    {:<9} {}", e.kind, e.name));
            }
            Ok(0)
        }
    }
}
