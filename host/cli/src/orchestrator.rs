//! `tend orchestrator serve`, `tend orchestrator token create`, `tend audit verify`.

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

    /// Open the database. The default one lives in the data directory, which is made (or
    /// tightened, if an older release made it 0755) 0700; the database files themselves are
    /// 0600 (see `Db::connect`).
    pub async fn open(&self) -> Result<Db, Failure> {
        if self.database.is_none() {
            secure_data_dir()?;
        }
        Db::connect(&self.url()).await.map_err(Failure::bad_input)
    }

    /// Open a database that must already exist: a command that reads or adds to an
    /// orchestrator's database (`audit verify`, `agent token create`) never creates an empty
    /// one at a mistyped path and reports on that instead.
    pub async fn open_existing(&self) -> Result<Db, Failure> {
        let url = self.url();
        if let Some(path) = url.strip_prefix("sqlite://") {
            let file = path.split('?').next().unwrap_or(path);
            if !std::path::Path::new(file).exists() {
                return Err(Failure::bad_input(format!(
                    "no orchestrator database at {url}: nothing was created (pass --database with the orchestrator's, or set TEND_DATABASE_URL)"
                )));
            }
        }
        self.open().await
    }
}

/// `$TEND_DATA_DIR` holds the orchestrator's database (inputs, results, the audit trail) and
/// pulled skills: created 0700, and tightened to 0700 at start if it is more open.
pub fn secure_data_dir() -> Result<(), Failure> {
    crate::private_dir(&tend_registry::local::LocalStore::default_root())
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
        after_help = "Example:\n  tend orchestrator serve --listen 127.0.0.1:7080 --registry http://127.0.0.1:7070\n\nThe first start prints a one-time admin token. Create more with `tend orchestrator token create`.\nSIGTERM stops accepting work, lets running jobs finish (--shutdown-grace), then exits."
    )]
    Serve(Box<ServeArgs>),
    /// API tokens written to the orchestrator's database directly (no server needed)
    #[command(subcommand)]
    Token(TokenCommand),
    /// Measure L0 invocations submitted and executed end to end per second (a benchmark)
    Bench(BenchArgs),
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    cache: CacheArgs,
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
    /// An agent is offline after this long without a sign of life
    #[arg(long, default_value = "90s", value_parser = humantime::parse_duration)]
    agent_offline_after: Duration,
    /// How long an agent's claim on a job lasts before it must be renewed
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    agent_lease: Duration,
    /// Level floor for agents labelled env=NAME (repeatable)
    #[arg(long = "env-floor", value_name = "ENV=LEVEL", default_value = "prod=1", value_parser = parse_env_floor)]
    env_floors: Vec<(String, Level)>,
    /// Most hosts one run across a pool (target all:pool:NAME) may cover at LEVEL (repeatable;
    /// defaults L0=100, L1=25, L2=5, L3=1)
    #[arg(long = "blast-radius", value_name = "LEVEL=HOSTS", value_parser = parse_blast_radius)]
    blast_radius: Vec<(Level, usize)>,
    /// Healing policies (TOML): which alerts Tend acts on, and how (docs/self-healing.md)
    #[arg(long, value_name = "FILE")]
    healing_policies: Option<PathBuf>,
}

fn parse_blast_radius(s: &str) -> Result<(Level, usize), String> {
    let (level, n) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not LEVEL=HOSTS (e.g. L2=10)"))?;
    let n: usize = n
        .parse()
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| format!("{n:?} is not a number of hosts (1 or more)"))?;
    Ok((parse_level(level)?, n))
}

fn parse_env_floor(s: &str) -> Result<(String, Level), String> {
    let (env, level) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not ENV=LEVEL (e.g. prod=1)"))?;
    Ok((env.to_string(), parse_level(level)?))
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

pub async fn serve(cmd: OrchestratorCommand, cache: &CacheArgs) -> Result<u8, Failure> {
    let args = match cmd {
        OrchestratorCommand::Serve(args) => *args,
        OrchestratorCommand::Bench(args) => return bench(args).await,
        OrchestratorCommand::Token(cmd) => return token(cmd).await,
    };
    if args.floor > args.ceiling {
        return Err(Failure::bad_input(format!(
            "--floor {} is above --ceiling {}",
            args.floor, args.ceiling
        )));
    }
    let trust = args.trust.policy()?;
    if args.data_dir.is_none() {
        secure_data_dir()?;
    }
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
        runtime: cache.merged(&args.cache).runtime_config(),
        approval_ttl: args.approval_ttl,
        target: Target {
            name: args.target.clone(),
            environment: args.environment.clone(),
            floor: args.floor,
            ceiling: args.ceiling,
        },
        workers: args.workers as usize,
        shutdown_grace: args.shutdown_grace,
        offline_after: args.agent_offline_after,
        agent_lease: args.agent_lease,
        env_floors: args.env_floors.iter().cloned().collect(),
        blast_radius: {
            let mut radius = tend_orchestrator::DEFAULT_BLAST_RADIUS;
            for (level, n) in &args.blast_radius {
                radius[u8::from(*level) as usize] = *n;
            }
            radius
        },
        healing: match &args.healing_policies {
            Some(path) => Some(tend_orchestrator::healing::load(path).map_err(Failure::bad_input)?),
            None => None,
        },
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

async fn token(cmd: TokenCommand) -> Result<u8, Failure> {
    let TokenCommand::Create {
        role,
        name,
        database,
    } = cmd;
    let role: Role = role.parse().map_err(Failure::bad_input)?;
    // The name is the actor of everything the token does, in the audit trail and in answers.
    let name_ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c));
    if !name_ok {
        return Err(Failure::bad_input(format!(
            "--name {:?} is not a token name: 1-64 letters, digits and - _ . @",
            audit::safe_field(&name, 80)
        )));
    }
    let db = database.open().await?;
    let token = auth::create_token(&db, &name, role, None)
        .await
        .map_err(Failure::host)?;
    audit::append(
        &db,
        "local-admin",
        audit::Action::TokenCreate,
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

/// `tend audit verify`: recompute the hash chain of a database that exists.
pub async fn audit_verify(database: &DatabaseArgs, json: bool) -> Result<u8, Failure> {
    let db = database.open_existing().await?;
    let result = audit::verify(&db).await.map_err(Failure::host)?;
    db.close().await;
    match result {
        Ok(report) => {
            if json {
                crate::out(
                    &serde_json::json!({
                        "intact": true, "events": report.events, "head": report.head,
                        "ambiguous_v1": report.ambiguous_v1,
                    })
                    .to_string(),
                );
            } else {
                if !report.ambiguous_v1.is_empty() {
                    eprintln!(
                        "warning: events {:?} were written by an older release in the v1 form with a line break inside a field; their hashes match, but v1 cannot tell them from re-split events",
                        report.ambiguous_v1
                    );
                }
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

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// The orchestrator's base URL
    #[arg(long, default_value = "http://127.0.0.1:7080")]
    url: String,
    /// An operator (or admin) token
    #[arg(long, env = "TEND_TOKEN", hide_env_values = true)]
    token: String,
    /// An L0 skill to invoke (it must run without approval)
    #[arg(long)]
    skill: String,
    /// Where to run it: local, pool:NAME or agent:NAME
    #[arg(long, default_value = "local")]
    target: String,
    /// Invocations to submit
    #[arg(long, default_value_t = 2000)]
    count: usize,
    /// Requests in flight at once
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Print the figures as JSON
    #[arg(long)]
    json: bool,
}

/// Successful L0 runs so far, from `/metrics`.
async fn ok_runs(http: &reqwest::Client, url: &str) -> Result<u64, Failure> {
    let text = http
        .get(format!("{url}/metrics"))
        .send()
        .await
        .map_err(Failure::host)?
        .text()
        .await
        .map_err(Failure::host)?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("tend_invocations_total{outcome=\"ok\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum())
}

/// `tend orchestrator bench`: L0 invocations submitted and executed end to end per second.
pub async fn bench(args: BenchArgs) -> Result<u8, Failure> {
    use std::time::Instant;
    let http = reqwest::Client::new();
    let url = args.url.trim_end_matches('/').to_string();
    let before = ok_runs(&http, &url).await?;
    let started = Instant::now();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency.max(1) {
        let (http, url, token, skill, target, next) = (
            http.clone(),
            url.clone(),
            args.token.clone(),
            args.skill.clone(),
            args.target.clone(),
            next.clone(),
        );
        let count = args.count;
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < count {
                let t = Instant::now();
                let resp = http
                    .post(format!("{url}/api/v1/invocations"))
                    .bearer_auth(&token)
                    .json(&serde_json::json!({"skill": skill, "target": target, "input": {}, "reason": "bench"}))
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                if resp.status() != reqwest::StatusCode::CREATED {
                    return Err(format!(
                        "submit returned {}: {}",
                        resp.status(),
                        resp.text().await.unwrap_or_default()
                    ));
                }
                latencies.push(t.elapsed());
            }
            Ok::<_, String>(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(
            t.await
                .map_err(Failure::host)?
                .map_err(Failure::bad_input)?,
        );
    }
    let submitted = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let done = ok_runs(&http, &url).await?.saturating_sub(before);
        if done >= args.count as u64 {
            break;
        }
        if Instant::now() > deadline {
            return Err(Failure::host(format!(
                "only {done} of {} invocations ran within 10 minutes",
                args.count
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let executed = started.elapsed();
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * p).round() as usize)
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let figures = serde_json::json!({
        "count": args.count,
        "concurrency": args.concurrency,
        "submitted_per_s": args.count as f64 / submitted.as_secs_f64(),
        "executed_per_s": args.count as f64 / executed.as_secs_f64(),
        "submit_p50_ms": pct(0.5),
        "submit_p99_ms": pct(0.99),
    });
    if args.json {
        crate::out(&figures.to_string());
    } else {
        crate::out(&format!(
            "{} L0 invocations of {} ({} in flight): submitted {:.0}/s (p50 {:.1} ms, p99 {:.1} ms), submitted and executed end to end {:.0}/s",
            args.count,
            args.skill,
            args.concurrency,
            figures["submitted_per_s"].as_f64().unwrap_or(0.0),
            pct(0.5),
            pct(0.99),
            figures["executed_per_s"].as_f64().unwrap_or(0.0)
        ));
    }
    Ok(0)
}

/// `tend audit bench`: appends per second to a database's audit chain (use a scratch one).
pub async fn audit_bench(
    database: &DatabaseArgs,
    count: usize,
    concurrency: usize,
) -> Result<u8, Failure> {
    use std::time::Instant;
    let db = database.open().await?;
    let started = Instant::now();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (db, next) = (db.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < count {
                audit::append(
                    &db,
                    "bench",
                    audit::Action::BenchAppend,
                    "bench",
                    serde_json::json!({"n": 1}),
                )
                .await
                .map_err(|e| e.to_string())?;
            }
            Ok::<_, String>(())
        }));
    }
    for t in tasks {
        t.await.map_err(Failure::host)?.map_err(Failure::host)?;
    }
    let took = started.elapsed();
    let verified = audit::verify(&db).await.map_err(Failure::host)?;
    db.close().await;
    crate::out(&format!(
        "{count} audit appends ({concurrency} concurrent writers): {:.0}/s; chain {}",
        count as f64 / took.as_secs_f64(),
        match verified {
            Ok(r) => format!("intact ({} events)", r.events),
            Err(p) => format!("BROKEN: {p}"),
        }
    ));
    Ok(0)
}
