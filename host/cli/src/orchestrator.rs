//! `tend orchestrator serve`, `tend token create`, `tend audit verify`.

use std::path::PathBuf;
use std::time::Duration;

use tend_orchestrator::{Config, Db, Orchestrator, audit, auth};
use tend_policy::{Level, Role, Target};

use crate::admit::TrustArgs;
use crate::{CacheArgs, Failure};

/// `sqlite://$TEND_DATA_DIR/orchestrator.db` unless told otherwise.
fn default_database() -> String {
    let dir = tend_registry::local::LocalStore::default_root();
    format!("sqlite://{}", dir.join("orchestrator.db").display())
}

#[derive(Debug, Clone, clap::Args)]
pub struct DatabaseArgs {
    /// sqlite://FILE (default, created if missing) or postgres://user:pass@host/db
    /// [default: sqlite://$TEND_DATA_DIR/orchestrator.db]
    #[arg(
        long,
        env = "TEND_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub database: Option<String>,
}

impl DatabaseArgs {
    fn url(&self) -> String {
        self.database.clone().unwrap_or_else(default_database)
    }

    async fn open(&self) -> Result<Db, Failure> {
        let url = self.url();
        if let Some(path) = url.strip_prefix("sqlite://")
            && let Some(dir) = std::path::Path::new(path.split('?').next().unwrap_or(path)).parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)
                .map_err(|e| Failure::host(format!("cannot create {}: {e}", dir.display())))?;
        }
        Db::connect(&url).await.map_err(Failure::bad_input)
    }
}

fn parse_level(s: &str) -> Result<Level, String> {
    let n: u8 = s
        .trim_start_matches(['L', 'l'])
        .parse()
        .map_err(|_| format!("{s:?} is not a level (0-3 or L0-L3)"))?;
    Level::try_from(n)
}

#[derive(Debug, clap::Subcommand)]
pub enum OrchestratorCommand {
    /// Serve the orchestrator API with its built-in local worker
    #[command(
        after_help = "Example:\n  tend orchestrator serve --listen 127.0.0.1:7080 --registry http://127.0.0.1:7070\n\nThe first start prints a one-time admin token. Create more with `tend token create`.\nSIGTERM stops accepting work, lets running jobs finish (--shutdown-grace), then exits."
    )]
    Serve(ServeArgs),
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1:7080", value_name = "ADDR:PORT")]
    listen: String,
    #[command(flatten)]
    database: DatabaseArgs,
    /// The skill registry to resolve skills from
    #[arg(
        long,
        env = "TEND_REGISTRY",
        default_value = "http://127.0.0.1:7070",
        value_name = "URL"
    )]
    registry: String,
    /// A token for a --private registry
    #[arg(long, env = "TEND_REGISTRY_TOKEN", hide_env_values = true)]
    registry_token: Option<String>,
    #[command(flatten)]
    trust: TrustArgs,
    /// Where pulled skills are kept [default: $TEND_DATA_DIR/orchestrator]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// How long an invocation waits for approval before it expires
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    approval_ttl: Duration,
    /// Name of the target the local worker runs jobs on
    #[arg(long, default_value = "local")]
    target: String,
    /// The target's environment (shown in decisions)
    #[arg(long, default_value = "dev")]
    environment: String,
    /// Every invocation on the target is at least this level (0-3)
    #[arg(long, default_value = "0", value_parser = parse_level)]
    floor: Level,
    /// Nothing above this level runs on the target, approved or not (0-3)
    #[arg(long, default_value = "3", value_parser = parse_level)]
    ceiling: Level,
    /// Jobs the local worker runs at once
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    workers: u16,
    /// How long running jobs get to finish after SIGTERM
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    shutdown_grace: Duration,
}

#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Create an API token; it is printed once and only its hash is stored
    Create {
        /// viewer, operator, approver or admin
        #[arg(long, value_parser = ["viewer", "operator", "approver", "admin"])]
        role: String,
        /// Who the token is for (the actor in the audit trail)
        #[arg(long)]
        name: String,
        #[command(flatten)]
        database: DatabaseArgs,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Recompute the audit hash chain and name the first altered, deleted or reordered event
    Verify {
        #[command(flatten)]
        database: DatabaseArgs,
        /// Print the result as JSON
        #[arg(long)]
        json: bool,
    },
}

pub async fn serve(cmd: OrchestratorCommand, cache: &CacheArgs) -> Result<u8, Failure> {
    let OrchestratorCommand::Serve(args) = cmd;
    if args.floor > args.ceiling {
        return Err(Failure::bad_input(format!(
            "--floor {} is above --ceiling {}",
            args.floor, args.ceiling
        )));
    }
    let trust = args.trust.policy()?;
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| tend_registry::local::LocalStore::default_root().join("orchestrator"));
    args.database.open().await?.close().await;
    let config = Config {
        database_url: args.database.url(),
        registry_url: args.registry.clone(),
        registry_token: args.registry_token.clone(),
        trust,
        data_dir,
        runtime: cache.runtime_config(),
        approval_ttl: args.approval_ttl,
        target: Target {
            name: args.target.clone(),
            environment: args.environment.clone(),
            floor: args.floor,
            ceiling: args.ceiling,
        },
        workers: args.workers as usize,
        shutdown_grace: args.shutdown_grace,
    };
    let orchestrator = Orchestrator::open(config)
        .await
        .map_err(Failure::bad_input)?;
    if let Some(token) = orchestrator
        .bootstrap_admin()
        .await
        .map_err(Failure::host)?
    {
        eprintln!("first start: admin token (shown once, keep it secret): {token}");
    }
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| Failure::bad_input(format!("cannot listen on {}: {e}", args.listen)))?;
    let addr = listener.local_addr().map_err(Failure::host)?;
    eprintln!(
        "tend orchestrator listening on http://{addr} (database {}, registry {}, target {} [{}], levels {}..={})",
        redact(&args.database.url()),
        args.registry,
        args.target,
        args.environment,
        u8::from(args.floor),
        u8::from(args.ceiling)
    );
    orchestrator
        .serve(listener, crate::shutdown_signal())
        .await
        .map_err(Failure::host)?;
    eprintln!("tend orchestrator stopped");
    Ok(0)
}

/// A database URL without its password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}

pub async fn token(cmd: TokenCommand) -> Result<u8, Failure> {
    let TokenCommand::Create {
        role,
        name,
        database,
    } = cmd;
    let role: Role = role.parse().map_err(Failure::bad_input)?;
    let db = database.open().await?;
    let token = auth::create_token(&db, &name, role)
        .await
        .map_err(Failure::host)?;
    audit::append(
        &db,
        "local-admin",
        "token.create",
        &name,
        serde_json::json!({ "role": role.as_str() }),
    )
    .await
    .map_err(Failure::host)?;
    db.close().await;
    eprintln!(
        "created {} token for {name:?}; it is shown once, keep it secret:",
        role.as_str()
    );
    crate::out(&token);
    Ok(0)
}

pub async fn audit(cmd: AuditCommand) -> Result<u8, Failure> {
    let AuditCommand::Verify { database, json } = cmd;
    let db = database.open().await?;
    let result = audit::verify(&db).await.map_err(Failure::host)?;
    db.close().await;
    match result {
        Ok(report) => {
            if json {
                crate::out(&serde_json::json!({ "intact": true, "events": report.events, "head": report.head }).to_string());
            } else {
                crate::out(&format!(
                    "audit chain intact: {} events, head {} (anchor this hash elsewhere to detect a rewrite later)",
                    report.events, report.head.hash
                ));
            }
            Ok(0)
        }
        Err(problem) => {
            if json {
                crate::out(&serde_json::json!({ "intact": false, "problem": problem }).to_string());
            }
            Err(Failure {
                code: crate::exit::SKILL_ERROR,
                message: format!("audit chain broken: {problem}"),
            })
        }
    }
}
