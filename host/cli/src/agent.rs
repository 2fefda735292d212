//! `tend agent enroll | run | token create | install-systemd`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use tend_protocol::{CAPABILITY_KINDS, Ceiling};

#[cfg(feature = "orchestrator")]
use crate::orchestrator::DatabaseArgs;
use crate::{CacheArgs, Failure};

fn default_dir() -> PathBuf {
    tend_registry::local::LocalStore::default_root().join("agent")
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

#[derive(Debug, clap::Subcommand)]
pub enum AgentCommand {
    /// Make this host's identity and register it with the orchestrator
    #[command(
        after_help = "Example:\n  tend agent enroll --orchestrator https://tend.example.com --token tendenroll_... \\\n      --registry https://skills.example.com --trust /etc/tend/trust.toml \\\n      --pool web --label env=prod --max-level 2 --allow-capability fs_read\n\nThe ceiling (--max-level, --publisher, --allow-capability) is enforced by this agent\nwhatever the orchestrator says."
    )]
    Enroll(Box<EnrollArgs>),
    /// Run the agent: heartbeat, long-poll for jobs, verify, run, report
    Run {
        /// Its state directory [default: $TEND_DATA_DIR/agent]
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Heartbeat interval
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        heartbeat: Duration,
        /// Jobs at once (1-50)
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=50))]
        concurrency: u16,
        /// How long running jobs get to finish after SIGTERM
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        grace: Duration,
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Enroll tokens (written to the orchestrator's database directly)
    #[cfg(feature = "orchestrator")]
    #[command(subcommand)]
    Token(EnrollTokenCommand),
    /// Write a hardened systemd unit for `tend agent run` and say how to enable it
    InstallSystemd {
        /// Its state directory [default: $TEND_DATA_DIR/agent]
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Where to write the unit
        #[arg(long, default_value = "/etc/systemd/system/tend-agent.service")]
        output: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
pub struct EnrollArgs {
    /// The orchestrator's base URL
    #[arg(long)]
    orchestrator: String,
    /// An enroll token (`tend agent token create`, or POST /api/v1/enroll-tokens)
    #[arg(long, env = "TEND_ENROLL_TOKEN", hide_env_values = true)]
    token: String,
    /// This agent's name [default: the hostname]
    #[arg(long)]
    name: Option<String>,
    /// The skill registry it pulls from
    #[arg(long, env = "TEND_REGISTRY", default_value = "http://127.0.0.1:7070")]
    registry: String,
    /// Its own trust policy: it runs only skills that verify against this
    #[arg(long, env = "TEND_TRUST", value_name = "FILE")]
    trust: PathBuf,
    /// Pools it serves (repeatable)
    #[arg(long = "pool")]
    pools: Vec<String>,
    /// Labels, e.g. env=prod (repeatable)
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Highest zero-trust level it runs (0-3)
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=3))]
    max_level: u8,
    /// Publishers whose skills it runs (repeatable; default: any its trust policy trusts)
    #[arg(long = "publisher")]
    publishers: Vec<String>,
    /// Capability kinds it grants: fs_read, fs_write, exec, services, http, tcp, dns (repeatable)
    #[arg(long = "allow-capability", value_parser = CAPABILITY_KINDS)]
    capabilities: Vec<String>,
    /// Directories fs_read/fs_write grants must stay inside (repeatable; default: any)
    #[arg(long = "allow-path", value_name = "DIR")]
    paths: Vec<String>,
    /// A skill a healing policy with auto_heal may run here without an approval, at L1 at
    /// most (repeatable; default: none, so every repair above L0 needs a person)
    #[arg(long = "auto-heal", value_name = "SKILL")]
    auto_heal: Vec<String>,
    /// Its state directory [default: $TEND_DATA_DIR/agent]
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[cfg(feature = "orchestrator")]
#[derive(Debug, clap::Subcommand)]
pub enum EnrollTokenCommand {
    /// Create an enroll token: usable --uses times until --ttl has passed, placing agents in
    /// the pools and with the labels and highest ceiling level it names
    #[command(
        after_help = "Example:\n  tend agent token create --pool web --label env=prod --max-level 2\n\nAn agent enrolled with it may serve only these pools (all of them if it asks for none),\ngets these labels, and may declare a ceiling up to --max-level; asking for more is refused."
    )]
    Create {
        #[command(flatten)]
        database: DatabaseArgs,
        #[arg(long, default_value_t = 1)]
        uses: u32,
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// Pools an agent enrolled with it may serve (repeatable)
        #[arg(long = "pool")]
        pools: Vec<String>,
        /// Labels an agent enrolled with it gets, e.g. env=prod (repeatable)
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Highest ceiling level (0-3) an agent enrolled with it may declare
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=3))]
        max_level: u8,
    },
}

pub async fn run(cmd: AgentCommand, cache: &CacheArgs) -> Result<u8, Failure> {
    match cmd {
        AgentCommand::Enroll(args) => {
            let EnrollArgs {
                orchestrator,
                token,
                name,
                registry,
                trust,
                pools,
                labels,
                max_level,
                publishers,
                capabilities,
                paths,
                auto_heal,
                dir,
            } = *args;
            let dir = dir.unwrap_or_else(default_dir);
            let name = name.unwrap_or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|h| h.trim().to_ascii_lowercase())
                    .unwrap_or_else(|_| "agent".into())
            });
            let config = tend_agent::enroll(tend_agent::EnrollRequest {
                dir: dir.clone(),
                orchestrator,
                token,
                name,
                registry,
                trust,
                pools,
                labels: labels.into_iter().collect::<BTreeMap<_, _>>(),
                ceiling: Ceiling {
                    max_level,
                    publishers,
                    capabilities,
                    paths,
                    auto_heal,
                },
            })
            .await
            .map_err(Failure::bad_input)?;
            crate::out(&format!(
                "enrolled {} as {} with {} (state in {}); start it with `tend agent run --dir {}`",
                config.name,
                config.agent_id,
                config.orchestrator,
                dir.display(),
                dir.display()
            ));
            Ok(0)
        }
        AgentCommand::Run {
            dir,
            heartbeat,
            concurrency,
            grace,
            cache: own,
        } => {
            let dir = dir.unwrap_or_else(default_dir);
            eprintln!(
                "tend agent running from {} (pid {})",
                dir.display(),
                std::process::id()
            );
            tend_agent::run(
                tend_agent::RunOptions {
                    dir,
                    heartbeat,
                    concurrency: concurrency as usize,
                    grace,
                    runtime: cache.merged(&own).runtime_config(),
                },
                crate::shutdown_signal(),
            )
            .await
            .map_err(Failure::bad_input)?;
            eprintln!("tend agent stopped");
            Ok(0)
        }
        #[cfg(feature = "orchestrator")]
        AgentCommand::Token(EnrollTokenCommand::Create {
            database,
            uses,
            ttl,
            pools,
            labels,
            max_level,
        }) => {
            let scope = tend_orchestrator::agents::TokenScope {
                pools,
                labels: labels.into_iter().collect(),
                max_level,
            };
            scope
                .check()
                .map_err(|e| Failure::bad_input(format!("nothing created: {e}")))?;
            let db = database.open_existing().await?;
            let token = tend_orchestrator::agents::create_enroll_token(
                &db,
                uses,
                ttl,
                &scope,
                "local-admin",
            )
            .await
            .map_err(Failure::host)?;
            db.close().await;
            eprintln!(
                "created an enroll token for {uses} agent(s), valid {}, for pools {:?}, labels {:?}, ceiling up to L{}; it is shown once:",
                humantime::format_duration(ttl),
                scope.pools,
                scope.labels,
                scope.max_level
            );
            crate::out(&token);
            Ok(0)
        }
        AgentCommand::InstallSystemd { dir, output } => {
            let dir = dir.unwrap_or_else(default_dir);
            let config = tend_agent::AgentConfig::load(&dir).map_err(Failure::bad_input)?;
            let exe = std::env::current_exe().map_err(Failure::host)?;
            let unit = tend_agent::systemd_unit(&exe, &dir, &config.ceiling);
            if output.exists() {
                return Err(Failure::bad_input(format!(
                    "{} exists; remove it first (or pass --output elsewhere) — nothing was changed",
                    output.display()
                )));
            }
            std::fs::write(&output, unit).map_err(|e| {
                Failure::bad_input(format!("cannot write {}: {e}", output.display()))
            })?;
            crate::out(&format!(
                "wrote {}\nenable it with:\n  systemctl daemon-reload\n  systemctl enable --now {}\nsee docs/agent.md for upgrades, identity rotation and removal",
                output.display(),
                output
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or("tend-agent.service")
            ));
            Ok(0)
        }
    }
}
