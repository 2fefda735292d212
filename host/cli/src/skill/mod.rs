//! `tend skill ...`: scaffold, build and inspect skills.

mod build;
mod new;
mod sign;

use std::path::PathBuf;

pub use build::Lang;

use tend_runtime::{Runtime, inspect};

use crate::{CacheArgs, Failure, read_component};

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Kind {
    Diagnose,
    Repair,
}

#[derive(Debug, clap::Subcommand)]
pub enum SkillCommand {
    /// Create a skill folder (skill.toml, source, example input) that builds and runs unchanged
    #[command(
        after_help = "Example:\n  tend skill new disk-report --lang python --kind diagnose\n  tend skill build disk-report\n  tend run disk-report/dist/disk-report-0.1.0.wasm --manifest disk-report/skill.toml --input @disk-report/input.example.json"
    )]
    New {
        /// Skill name: [a-z0-9-], also the folder name
        name: String,
        /// Language of the skill
        #[arg(long, value_enum, default_value = "rust")]
        lang: Lang,
        /// `diagnose` reads and reports; `repair` may also run allowlisted programs
        #[arg(long, value_enum, default_value = "diagnose")]
        kind: Kind,
        /// Folder to create the skill in
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Sign a component and its manifest with a publisher key (writes <component>.sig)
    Sign {
        /// The component (.wasm)
        component: PathBuf,
        /// Its manifest (skill.toml), signed byte for byte
        #[arg(long, short = 'm')]
        manifest: PathBuf,
        /// The publisher's private key (from `tend key gen`)
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// Where to write the signature envelope [default: <component>.sig]
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Check a component's signature against a trust policy: who signed what, and why it is
    /// (or is not) trusted
    Verify {
        /// The component (.wasm)
        component: PathBuf,
        /// The trust policy
        #[arg(long, value_name = "FILE")]
        trust: PathBuf,
        /// The signature envelope [default: <component>.sig]
        #[arg(long, value_name = "FILE")]
        signature: Option<PathBuf>,
        /// Accept a version older than the highest seen (logged)
        #[arg(long)]
        allow_downgrade: bool,
        /// Print as JSON
        #[arg(long)]
        json: bool,
    },
    /// Build a skill folder into dist/<name>-<version>.wasm, check it against its manifest and precompile it
    Build {
        /// The skill folder (with skill.toml and Cargo.toml, app.py or app.js)
        dir: PathBuf,
        /// Print the build report as JSON
        #[arg(long)]
        json: bool,
    },
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
        SkillCommand::New {
            name,
            lang,
            kind,
            dir,
        } => {
            let kind = match kind {
                Kind::Diagnose => tend_runtime::SkillKind::Diagnose,
                Kind::Repair => tend_runtime::SkillKind::Repair,
            };
            new::new(&name, lang, kind, &dir)
        }
        SkillCommand::Build { dir, json } => build::build(&dir, json, cache),
        SkillCommand::Sign {
            component,
            manifest,
            key,
            out,
        } => sign::sign(&component, &manifest, &key, out),
        SkillCommand::Verify {
            component,
            trust,
            signature,
            allow_downgrade,
            json,
        } => sign::verify(&component, &trust, signature, allow_downgrade, json),
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
