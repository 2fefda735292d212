//! `tend skill ...`: scaffold, build, sign, inspect, publish and pull skills.

#[cfg(feature = "authoring")]
pub mod build;
#[cfg(feature = "authoring")]
mod new;
mod remote;
#[cfg(feature = "authoring")]
pub mod sdk;
mod sign;

use std::path::PathBuf;

#[cfg(feature = "authoring")]
pub use build::Lang;
pub use sign::default_signature_path;

use tend_runtime::{Runtime, inspect};

use crate::{CacheArgs, Failure, read_component};

#[cfg(feature = "authoring")]
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Kind {
    Diagnose,
    Repair,
}

#[derive(Debug, clap::Subcommand)]
pub enum SkillCommand {
    #[cfg(feature = "authoring")]
    /// Create a skill folder (skill.toml, source, example input) that builds and runs unchanged
    #[command(
        after_help = "Example:\n  tend skill new disk-report --lang python --kind diagnose\n  tend skill build disk-report\n  tend run disk-report/dist/disk-report-0.1.0.wasm --manifest disk-report/skill.toml --insecure-unsigned --input @disk-report/input.example.json\n\nThen sign it (tend skill sign) to run it without --insecure-unsigned, or publish it."
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
    #[cfg(feature = "authoring")]
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
    #[cfg(feature = "authoring")]
    /// Publish a signed component to a Tend registry (needs a publisher token)
    #[command(
        after_help = "Example:\n  tend skill publish dist/disk-usage-0.1.0.wasm --registry http://127.0.0.1:7070 --token $TOKEN\n\nThe registry verifies the signature against its own trust policy before it stores anything;\na published version is immutable."
    )]
    Publish {
        /// The component (.wasm), signed in <component>.sig
        component: PathBuf,
        /// The signature envelope [default: <component>.sig]
        #[arg(long, value_name = "FILE")]
        signature: Option<PathBuf>,
        #[command(flatten)]
        registry: remote::RegistryArgs,
        /// Print the registry entry as JSON
        #[arg(long)]
        json: bool,
    },
    /// Pull a skill, verify it against the local trust policy, store it and precompile it
    #[command(
        after_help = "Examples:\n  tend skill pull disk-usage@latest --registry http://127.0.0.1:7070\n  tend skill pull disk-usage@0.1.0\n  tend skill pull oci://127.0.0.1:5000/tend/disk-usage:0.1.0\n\nChecks the registry's publication log (and that it still holds what this host saw before),\nthe blob's digest, the signature, revocations and rollback (the highest version pulled so\nfar is recorded). Pulled skills run with `tend run NAME[@VERSION]`."
    )]
    Pull {
        /// NAME@VERSION, NAME@latest (or NAME), or oci://host[:port]/repo:tag
        what: String,
        #[command(flatten)]
        registry: remote::RegistryArgs,
        #[command(flatten)]
        trust: crate::admit::TrustArgs,
        /// Print what was pulled, why it is trusted and the timings as JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        cache: CacheArgs,
    },
    #[cfg(all(feature = "authoring", feature = "registry"))]
    /// Push a signed component to an OCI registry (component and envelope as two layers)
    #[command(
        after_help = "Example:\n  tend skill push oci://127.0.0.1:5000/tend/disk-usage:0.1.0 dist/disk-usage-0.1.0.wasm\n\nLoopback registries are spoken to over HTTP, others over HTTPS; set TEND_OCI_USERNAME and\nTEND_OCI_PASSWORD for basic auth. Layout: docs/artifact-format.md."
    )]
    Push {
        /// oci://host[:port]/repo:tag
        reference: String,
        /// The component (.wasm), signed in <component>.sig
        component: PathBuf,
        /// The signature envelope [default: <component>.sig]
        #[arg(long, value_name = "FILE")]
        signature: Option<PathBuf>,
    },
    /// List the skills in a registry (latest version of each)
    List {
        #[command(flatten)]
        registry: remote::RegistryArgs,
        /// Print as JSON
        #[arg(long)]
        json: bool,
    },
    /// Search a registry's skills by name or description
    Search {
        /// Words to look for in names and descriptions
        query: String,
        #[command(flatten)]
        registry: remote::RegistryArgs,
        /// Print as JSON
        #[arg(long)]
        json: bool,
    },
    #[cfg(feature = "authoring")]
    /// Build a skill folder into dist/<name>-<version>.wasm, check it against its manifest and precompile it
    Build {
        /// The skill folder (with skill.toml and Cargo.toml, app.py or app.js)
        dir: PathBuf,
        /// Print the build report as JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Show a component's world: what it imports and exports, and whether it is a Tend skill
    Inspect {
        /// The component (.wasm)
        component: PathBuf,
        /// Print as JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        cache: CacheArgs,
    },
}

pub async fn run(cmd: SkillCommand, cache: &CacheArgs) -> Result<u8, Failure> {
    match cmd {
        #[cfg(feature = "authoring")]
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
        #[cfg(feature = "authoring")]
        SkillCommand::Build {
            dir,
            json,
            cache: own,
        } => build::build(&dir, json, &cache.merged(&own)),
        #[cfg(feature = "authoring")]
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
        #[cfg(feature = "authoring")]
        SkillCommand::Publish {
            component,
            signature,
            registry,
            json,
        } => remote::publish(&component, signature, &registry, json).await,
        SkillCommand::Pull {
            what,
            registry,
            trust,
            json,
            cache: own,
        } => remote::pull(&what, &registry, &trust, &cache.merged(&own), json).await,
        #[cfg(all(feature = "authoring", feature = "registry"))]
        SkillCommand::Push {
            reference,
            component,
            signature,
        } => remote::push(&reference, &component, signature).await,
        SkillCommand::List { registry, json } => remote::list(None, &registry, json).await,
        SkillCommand::Search {
            query,
            registry,
            json,
        } => remote::list(Some(&query), &registry, json).await,
        SkillCommand::Inspect {
            component,
            json,
            cache: own,
        } => {
            let bytes = read_component(&component)?;
            let runtime = Runtime::new(cache.merged(&own).runtime_config())?;
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
