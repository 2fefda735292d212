//! `tend` — the command-line surface of Tend.
//!
//! Takes a user's intent (a component, a manifest, input JSON, limits) and hands it to the
//! stages below it: the trust stage and registry (`tend-registry`) and the sandbox
//! (`tend-runtime`); the orchestrator (`tend-orchestrator`, deciding through `tend-policy`);
//! and the host agent (`tend-agent`). Exit status: 0 ok, 1 the skill reported
//! an error, 2 bad usage or input, 3 the sandbox stopped the skill (a limit or a trap), 4 the
//! host itself failed; and after `--wait` on an orchestrator's invocation, 5 rejected,
//! 6 expired, 7 cancelled, 8 unknown.
//!
//! Cargo features per role (all on by default): `agent`, `orchestrator`, `registry` (the
//! registry service and the OCI client), `authoring` (new, build, sign, publish, keys,
//! bench) and `client` (the operator's client of an orchestrator's API; `agent` and
//! `orchestrator` include it). `cargo build -p tend-cli --no-default-features --features agent` is an agent that
//! links no SQL, no HTTP server, no OpenAPI and no OCI client; `run`, `skill pull`, `verify`
//! and `inspect` are in every build.

// A build with fewer roles leaves helpers of the others unused; the full build (CI's clippy
// with -D warnings) still flags anything truly dead.
#![cfg_attr(
    not(all(
        feature = "agent",
        feature = "orchestrator",
        feature = "registry",
        feature = "authoring",
        feature = "client"
    )),
    allow(unused_imports, dead_code)
)]

mod admit;
#[cfg(feature = "agent")]
mod agent;
#[cfg(feature = "authoring")]
mod bench;
#[cfg(feature = "client")]
mod client;
#[cfg(feature = "authoring")]
mod key;
#[cfg(feature = "orchestrator")]
mod orchestrator;
#[cfg(feature = "registry")]
mod registry;
mod run;
mod skill;
#[cfg(all(
    feature = "orchestrator",
    feature = "registry",
    feature = "agent",
    feature = "authoring"
))]
mod up;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit statuses, documented in `--help` and the README.
pub mod exit {
    pub const OK: u8 = 0;
    pub const SKILL_ERROR: u8 = 1;
    pub const BAD_INPUT: u8 = 2;
    pub const LIMIT_OR_TRAP: u8 = 3;
    pub const HOST_FAILURE: u8 = 4;
    /// `--wait`: a person rejected the invocation.
    pub const REJECTED: u8 = 5;
    /// `--wait`: nobody approved it in time.
    pub const EXPIRED: u8 = 6;
    /// `--wait`: it was cancelled.
    pub const CANCELLED: u8 = 7;
    /// `--wait`: its agent vanished while it ran; it may or may not have acted.
    pub const UNKNOWN: u8 = 8;
}

#[derive(Debug, Parser)]
#[command(
    name = "tend",
    version,
    about = "Run diagnostic and repair skills (WebAssembly components) under strict limits",
    after_help = "Exit status: 0 ok, 1 skill error, 2 bad usage or input, 3 limit or trap, 4 host failure\n\
                  (or the orchestrator unreachable); after --wait also 5 rejected, 6 expired, 7 cancelled, 8 unknown.\n\
                  Client commands talk to the orchestrator given by --url/--token, TEND_URL/TEND_TOKEN, or the\n\
                  current context of ~/.config/tend/config.toml (`tend login URL`).\n\
                  Logs: set RUST_LOG=debug (or TEND_LOG) for more detail on stderr."
)]
struct Cli {
    #[command(flatten)]
    cache: CacheArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
pub struct CacheArgs {
    /// Directory for precompiled components [default: $TEND_CACHE_DIR, else ~/.cache/tend/components]
    #[arg(long, env = "TEND_CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Do not read or write the precompile cache (every load compiles)
    #[arg(long)]
    pub no_cache: bool,
}

impl CacheArgs {
    /// Only the commands that compile components take these (`tend run`, `tend skill
    /// build|pull|inspect`, `tend agent run`, `tend orchestrator serve`); given before the
    /// command (`tend --cache-dir DIR run ...`) they count too, the command's own first.
    pub fn merged(&self, own: &CacheArgs) -> CacheArgs {
        CacheArgs {
            cache_dir: own.cache_dir.clone().or_else(|| self.cache_dir.clone()),
            no_cache: self.no_cache || own.no_cache,
        }
    }

    pub fn runtime_config(&self) -> tend_runtime::RuntimeConfig {
        let mut config = tend_runtime::RuntimeConfig::default();
        if self.no_cache {
            config.cache_dir = None;
        } else if let Some(dir) = &self.cache_dir {
            config.cache_dir = Some(dir.clone());
        }
        config
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run all of Tend on this machine: registry with the signed catalog, orchestrator,
    /// console and a local agent, until Ctrl-C
    #[cfg(all(
        feature = "orchestrator",
        feature = "registry",
        feature = "agent",
        feature = "authoring"
    ))]
    Up(up::UpArgs),
    /// Run a skill component once and print its result
    Run(run::RunArgs),
    /// Work with skill components
    #[command(subcommand)]
    Skill(skill::SkillCommand),
    /// Measure invoke latency (cold, warm, hot) beside process sandboxes
    #[cfg(feature = "authoring")]
    Bench(bench::BenchArgs),
    /// Publisher keys for signing skills
    #[cfg(feature = "authoring")]
    #[command(subcommand)]
    Key(key::KeyCommand),
    /// Run a skill registry (signed skills, tokens, a hash-chained publication log)
    #[cfg(feature = "registry")]
    #[command(subcommand)]
    Registry(registry::RegistryCommand),
    /// Run the orchestrator: policy decisions, approvals, jobs and the audit trail (HTTP API)
    #[cfg(feature = "orchestrator")]
    #[command(subcommand)]
    Orchestrator(orchestrator::OrchestratorCommand),
    /// Check a token against an orchestrator and save it as the current context
    #[cfg(feature = "client")]
    Login(client::login::LoginArgs),
    /// The orchestrators this client knows (contexts of the config file)
    #[cfg(feature = "client")]
    #[command(subcommand)]
    Context(client::config::ContextCommand),
    /// Ask the orchestrator to run a skill (decided by policy; may wait for approval)
    #[cfg(feature = "client")]
    Invoke(client::invoke::InvokeArgs),
    /// Show an invocation: decision, approvals, times and result
    #[cfg(feature = "client")]
    Status(client::invoke::StatusArgs),
    /// Invocations waiting for approval
    #[cfg(feature = "client")]
    Approvals(client::manage::ApprovalsArgs),
    /// Approve an invocation: shows what it binds, recomputes its digest here and signs it with
    /// your approver key
    #[cfg(feature = "client")]
    Approve(client::approve::ApproveArgs),
    /// Reject an invocation waiting for approval, saying why
    #[cfg(feature = "client")]
    Reject(client::manage::RejectArgs),
    /// Approvers' public keys, registered with the orchestrator (admin)
    #[cfg(feature = "client")]
    #[command(subcommand)]
    Approver(client::approve::ApproverCommand),
    /// API tokens: create, list, revoke, rotate (admin)
    #[cfg(feature = "client")]
    #[command(subcommand)]
    Token(client::tokens::TokenCommand),
    /// Cancel an invocation that has not started
    #[cfg(feature = "client")]
    Cancel(client::manage::CancelArgs),
    /// Enrolled host agents: pools, state, ceiling
    #[cfg(feature = "client")]
    Agents(client::manage::AgentsArgs),
    /// The healing policies in force: show them, or put a new file in force (admin)
    #[cfg(feature = "client")]
    #[command(subcommand)]
    Healing(client::healing::HealingCommand),
    /// Incidents from alerts: list them, or show one with its healing story
    #[cfg(feature = "client")]
    Incidents(client::incidents::IncidentsArgs),
    /// The orchestrator's audit trail
    #[cfg(feature = "client")]
    #[command(subcommand)]
    Audit(client::audit::AuditCommand),
    /// The host agent: enroll, run, install as a systemd service
    #[cfg(feature = "agent")]
    #[command(subcommand)]
    Agent(agent::AgentCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Warnings by default; a running agent also says one line per job (what ran, its outcome
    // and how long it took), which is what an operator reads in its journal.
    #[allow(unused_mut)]
    let mut default = "warn";
    #[cfg(feature = "agent")]
    if matches!(
        &cli.command,
        Command::Agent(agent::AgentCommand::Run { .. })
    ) {
        default = "warn,tend_agent=info";
    }
    let filter = std::env::var("TEND_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| default.into());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();

    // A one-shot `tend run` does one thing at a time: a current-thread runtime starts no worker
    // threads (nor probes the CPU count for them). Servers and the benchmark keep the
    // multi-threaded one.
    let one_shot = match &cli.command {
        Command::Run(_) => true,
        #[cfg(feature = "client")]
        Command::Login(_)
        | Command::Context(_)
        | Command::Invoke(_)
        | Command::Status(_)
        | Command::Approvals(_)
        | Command::Approve(_)
        | Command::Reject(_)
        | Command::Approver(_)
        | Command::Token(_)
        | Command::Cancel(_)
        | Command::Agents(_)
        | Command::Incidents(_)
        | Command::Healing(_) => true,
        #[cfg(feature = "authoring")]
        Command::Key(_) => true,
        #[allow(unreachable_patterns)]
        _ => false,
    };
    let mut builder = if one_shot {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::HOST_FAILURE);
        }
    };
    let code = runtime.block_on(async {
        match cli.command {
            #[cfg(all(
                feature = "orchestrator",
                feature = "registry",
                feature = "agent",
                feature = "authoring"
            ))]
            Command::Up(args) => up::up(args).await,
            Command::Run(args) => run::run(args, &cli.cache).await,
            Command::Skill(cmd) => skill::run(cmd, &cli.cache).await,
            #[cfg(feature = "authoring")]
            Command::Bench(args) => bench::run(args).await,
            #[cfg(feature = "authoring")]
            Command::Key(cmd) => key::run(cmd),
            #[cfg(feature = "registry")]
            Command::Registry(cmd) => registry::run(cmd).await,
            #[cfg(feature = "orchestrator")]
            Command::Orchestrator(cmd) => orchestrator::serve(cmd, &cli.cache).await,
            #[cfg(feature = "client")]
            Command::Login(args) => client::login::login(args).await,
            #[cfg(feature = "client")]
            Command::Context(cmd) => client::config::context(cmd),
            #[cfg(feature = "client")]
            Command::Invoke(args) => client::invoke::invoke(args).await,
            #[cfg(feature = "client")]
            Command::Status(args) => client::invoke::status(args).await,
            #[cfg(feature = "client")]
            Command::Approvals(args) => client::manage::approvals(args).await,
            #[cfg(feature = "client")]
            Command::Approve(args) => client::approve::approve(args).await,
            #[cfg(feature = "client")]
            Command::Reject(args) => client::manage::reject(args).await,
            #[cfg(feature = "client")]
            Command::Approver(cmd) => client::approve::approver(cmd).await,
            #[cfg(feature = "client")]
            Command::Token(cmd) => client::tokens::run(cmd).await,
            #[cfg(feature = "client")]
            Command::Cancel(args) => client::manage::cancel(args).await,
            #[cfg(feature = "client")]
            Command::Agents(args) => client::manage::agents(args).await,
            #[cfg(feature = "client")]
            Command::Healing(cmd) => client::healing::run(cmd).await,
            #[cfg(feature = "client")]
            Command::Incidents(args) => client::incidents::incidents(args).await,
            #[cfg(feature = "client")]
            Command::Audit(cmd) => client::audit::run(cmd).await,
            #[cfg(feature = "agent")]
            Command::Agent(cmd) => agent::run(cmd, &cli.cache).await,
        }
    });
    match code {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            eprintln!("error: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

/// An error that ends the command with a given exit status.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn bad_input(message: impl std::fmt::Display) -> Self {
        Failure {
            code: exit::BAD_INPUT,
            message: message.to_string(),
        }
    }
    pub fn host(message: impl std::fmt::Display) -> Self {
        Failure {
            code: exit::HOST_FAILURE,
            message: message.to_string(),
        }
    }
}

impl From<tend_runtime::LoadError> for Failure {
    fn from(e: tend_runtime::LoadError) -> Self {
        match e {
            tend_runtime::LoadError::Cache(_) => Failure::host(e),
            _ => Failure::bad_input(e),
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C: servers stop accepting and finish what is in flight.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// Print a line on stdout; a closed pipe (`tend ... | head`) is not an error worth a panic.
pub fn out(line: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
}

/// A directory only its owner may enter: made (with its parents) 0700, and tightened to 0700
/// if it exists more open. For Tend's own state: keys, databases, trust policies.
pub fn private_dir(dir: &std::path::Path) -> Result<(), Failure> {
    let cannot = |e: std::io::Error| Failure::host(format!("cannot secure {}: {e}", dir.display()));
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(cannot)?;
        let mode = std::fs::metadata(dir).map_err(cannot)?.permissions().mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(cannot)?;
        }
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir).map_err(cannot)?;
    Ok(())
}

/// Ask on the terminal; anything but `y`/`yes` is a no (`declined`). Without a terminal
/// nobody can confirm, so the answer is no (`no_terminal`, which says which flag to pass).
pub fn confirm(question: &str, no_terminal: &str, declined: &str) -> Result<(), Failure> {
    use std::io::{BufRead, IsTerminal, Write};
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(Failure::bad_input(no_terminal));
    }
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    let _ = stdin.lock().read_line(&mut line);
    match line.trim().to_ascii_lowercase().as_str() {
        "y" | "yes" => Ok(()),
        _ => Err(Failure::bad_input(declined)),
    }
}

/// Read a component file, naming it in the error.
pub fn read_component(path: &std::path::Path) -> Result<Vec<u8>, Failure> {
    std::fs::read(path)
        .map_err(|e| Failure::bad_input(format!("cannot read {}: {e}", path.display())))
}
