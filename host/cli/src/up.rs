//! `tend up`: the whole of Tend on one machine, in one process — a skill registry with the
//! signed built-in catalog, the orchestrator (API and console) on one SQLite file, and a local
//! host agent enrolled with it — until Ctrl-C.
//!
//! The first run makes everything it needs in its directory (`~/.local/share/tend/up`, or
//! `--dir`): a publisher key the local trust policy trusts, the registry, the database, an
//! admin token (shown once, and saved as the client context `up`), the person's approver key
//! (`~/.config/tend/me.key`, registered as the admin's), the local agent's identity, and the
//! example healing policies, switched off. It builds the catalog from a Tend checkout when a
//! skill's component is missing or older than its sources, signs it, publishes it and
//! precompiles it, saying what it does as it goes. A second run reuses all of it and is ready
//! in about a second. `--reset` starts over, after a confirmation.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tend_orchestrator::{Config, Orchestrator};
use tend_registry::envelope;
use tend_registry::keys::{self, PublicKey};
use tend_registry::store::{Store, StoreError};
use tend_registry::trust::{TrustPolicy, VerifyOptions};
use tokio::sync::watch;

use crate::{CacheArgs, Failure};

/// The example healing policies, loaded switched off on the first run.
const EXAMPLE_POLICIES: &str = include_str!("../../../examples/healing/policies.toml");

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example:\n  tend up                 # the first run builds and publishes the catalog; later ones reuse it\n  tend up --reset         # start over (asks first)\n\nState lives in --dir (default ~/.local/share/tend/up, or $TEND_DATA_DIR/up). Ctrl-C stops everything cleanly."
)]
pub struct UpArgs {
    /// Where Tend keeps everything [default: $TEND_DATA_DIR/up, else ~/.local/share/tend/up]
    #[arg(long, env = "TEND_UP_DIR", value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Address of the orchestrator's API and console
    #[arg(long, default_value = "127.0.0.1:7080", value_name = "ADDR:PORT")]
    listen: String,
    /// Address of the skill registry
    #[arg(long, default_value = "127.0.0.1:7070", value_name = "ADDR:PORT")]
    registry_listen: String,
    /// The skill catalog to build, sign and publish [default: skills/ of the Tend checkout
    /// this runs in]
    #[arg(long, value_name = "DIR")]
    catalog: Option<PathBuf>,
    /// Delete everything in --dir and start over (asks first)
    #[arg(long)]
    reset: bool,
    /// With --reset: do not ask
    #[arg(long, short = 'y')]
    yes: bool,
    /// Name of the local agent [default: this machine's hostname]
    #[arg(long)]
    agent_name: Option<String>,
}

/// What `tend up` keeps in its directory.
struct Layout {
    dir: PathBuf,
}

impl Layout {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
    fn database_url(&self) -> String {
        format!("sqlite://{}", self.path("orchestrator.db").display())
    }
}

fn step(text: &str) {
    eprintln!("==> {text}");
}

fn io_error(what: &str, path: &Path, e: impl std::fmt::Display) -> Failure {
    Failure::host(format!("cannot {what} {}: {e}", path.display()))
}

pub async fn up(args: UpArgs) -> Result<u8, Failure> {
    let started = Instant::now();
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| tend_registry::local::LocalStore::default_root().join("up"));
    // Both addresses first: a port in use is said before anything is made or deleted (a
    // `--reset` aimed at the directory of a `tend up` still running must not delete its data).
    let registry_listener = bind(&args.registry_listen).await?;
    let listener = bind(&args.listen).await?;
    for l in [&registry_listener, &listener] {
        if let Ok(addr) = l.local_addr()
            && !addr.ip().is_loopback()
        {
            eprintln!(
                "warning: listening on {addr}, not loopback: tokens and approvals cross the network in plain HTTP. Put TLS in front (a reverse proxy) or keep `tend up` on 127.0.0.1"
            );
        }
    }
    check_path_is_ours(&dir)?;
    if args.reset && (dir.exists() || dir.is_symlink()) {
        confirm_reset(&dir, args.yes)?;
        // Removes a symlink itself, never what it points to.
        std::fs::remove_dir_all(&dir).map_err(|e| io_error("remove", &dir, e))?;
        step(&format!("removed {}", dir.display()));
    }
    crate::private_dir(&dir)?;
    check_path_is_ours(&dir)?;
    let layout = Layout { dir };
    let first_run = !layout.path("orchestrator.db").exists();
    if first_run {
        step(&format!("first run: setting up {}", layout.dir.display()));
    }

    // Keys and the local trust policy.
    let publisher = key_at(&layout.path("publisher.key"), "the local publisher key")?;
    let approver_path = crate::client::approve::key_path(None)?;
    let approver = key_at(&approver_path, "your approver key")?;
    let trust_path = layout.path("trust.toml");
    if !trust_path.exists() {
        write_private(&trust_path, &trust_text(&publisher, &approver))?;
    }
    let trust = TrustPolicy::from_file(&trust_path).map_err(Failure::bad_input)?;
    let cache = CacheArgs {
        cache_dir: Some(layout.path("cache")),
        no_cache: false,
    };

    // The registry, with the catalog signed and published into it.
    let store = Arc::new(
        Store::open(&layout.path("registry"))
            .await
            .map_err(Failure::host)?,
    );
    match catalog_dir(args.catalog.as_deref())? {
        Some(catalog) => publish_catalog(&catalog, &publisher, &trust, &store, &cache).await?,
        None => eprintln!(
            "warning: no skill catalog found (run from a Tend checkout, or pass --catalog DIR): the registry serves only what was published before"
        ),
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    // The registry server.
    let registry_url = format!(
        "http://{}",
        registry_listener.local_addr().map_err(Failure::host)?
    );
    let registry_app = tend_registry::server::router(tend_registry::server::AppState {
        store: store.clone(),
        trust: Arc::new(trust.clone()),
        private: false,
    });
    let registry_task = tokio::spawn({
        let stop = stopped(stop_rx.clone());
        async move {
            axum::serve(registry_listener, registry_app)
                .with_graceful_shutdown(stop)
                .await
        }
    });

    // The orchestrator.
    let orchestrator = Orchestrator::open(Config {
        database_url: layout.database_url(),
        registry_url: registry_url.clone(),
        registry_token: None,
        trust: trust.clone(),
        data_dir: layout.path("orchestrator"),
        runtime: cache.runtime_config(),
        approval_ttl: Duration::from_secs(3600),
        target: tend_policy::Target {
            name: "local".into(),
            environment: "dev".into(),
            floor: tend_policy::Level::L0,
            ceiling: tend_policy::Level::L3,
        },
        workers: 4,
        shutdown_grace: Duration::from_secs(10),
        offline_after: Duration::from_secs(90),
        agent_lease: Duration::from_secs(30),
        env_floors: [("prod".to_string(), tend_policy::Level::L1)].into(),
        blast_radius: tend_orchestrator::DEFAULT_BLAST_RADIUS,
        healing: None,
    })
    .await
    .map_err(Failure::bad_input)?;
    let db = orchestrator.state.db.clone();
    let url = format!("http://{}", listener.local_addr().map_err(Failure::host)?);
    let admin_token = orchestrator
        .bootstrap_admin()
        .await
        .map_err(Failure::host)?;
    // Saved at once: a token shown only at the end would be lost if a later step failed.
    if let Err(e) = save_context(&url, admin_token.as_deref()) {
        if let Some(token) = &admin_token {
            eprintln!("admin token (shown once, keep it secret): {token}");
        }
        return Err(e);
    }
    register_approver(&db, &approver, &approver_path).await?;
    let agent_name = agent_name(args.agent_name.as_deref())?;
    if tend_orchestrator::healing::latest(&db)
        .await
        .map_err(Failure::host)?
        .is_none()
    {
        let text = up_policies(&agent_name);
        tend_orchestrator::healing::parse(&text, "the example healing policies")
            .map_err(Failure::host)?;
        tend_orchestrator::healing::store(&db, 1, &text, "tend up", "tend")
            .await
            .map_err(Failure::host)?;
        tend_orchestrator::healing::refresh(&db, &orchestrator.state.settings.healing)
            .await
            .map_err(Failure::host)?;
        step(
            "loaded the example healing policies, switched off (enabled = false): switch one on with PUT /api/v1/healing/policies",
        );
    }
    let orchestrator_task = tokio::spawn({
        let stop = stopped(stop_rx.clone());
        async move { orchestrator.serve(listener, stop).await }
    });

    // The local agent: enrolled once, then pointed at wherever the orchestrator listens now.
    let agent_dir = layout.path("agent");
    enroll_or_update(
        &db,
        &agent_dir,
        &agent_name,
        &url,
        &registry_url,
        &trust_path,
    )
    .await?;
    if let Some(change) = sync_approvers(&db, &trust_path).await? {
        step(&format!(
            "the local agent's approvers follow those registered with the orchestrator: {change} ({} rewritten)",
            trust_path.display()
        ));
    }
    let agent_task = tokio::spawn(supervise_agent(
        tend_agent::RunOptions {
            dir: agent_dir.clone(),
            heartbeat: Duration::from_secs(10),
            concurrency: 4,
            grace: Duration::from_secs(10),
            runtime: cache.runtime_config(),
        },
        db.clone(),
        trust_path.clone(),
        stop_rx.clone(),
    ));
    until_agent_online(&db, &agent_name, &agent_task).await?;

    eprintln!();
    eprintln!("Tend is up ({:.1} s):", started.elapsed().as_secs_f64());
    eprintln!("  console      {url}/");
    eprintln!("  API          {url}/api/v1 (OpenAPI at {url}/api/v1/openapi.json)");
    eprintln!("  registry     {registry_url}");
    eprintln!("  agent        {agent_name} (L2 ceiling; clean-old-logs may heal without a person)");
    eprintln!("  data         {}", layout.dir.display());
    match &admin_token {
        Some(token) => {
            eprintln!("  admin token  {token}");
            eprintln!(
                "               shown once: keep it. The client context `up` holds it (`tend status`, `tend approvals`, ...)"
            );
        }
        None => eprintln!(
            "  admin token  as shown on the first run (client context `up`); `tend orchestrator token create --database {} --role admin --name NAME` makes another",
            layout.database_url()
        ),
    }
    eprintln!(
        "  approver key {} (registered as admin's)",
        approver_path.display()
    );
    eprintln!("Ctrl-C stops Tend.");

    crate::shutdown_signal().await;
    eprintln!("stopping ...");
    let _ = stop_tx.send(true);
    let mut failures = Vec::new();
    match agent_task.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => failures.push(format!("agent: {e}")),
        Err(e) => failures.push(format!("agent: {e}")),
    }
    match orchestrator_task.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => failures.push(format!("orchestrator: {e}")),
        Err(e) => failures.push(format!("orchestrator: {e}")),
    }
    match registry_task.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => failures.push(format!("registry: {e}")),
        Err(e) => failures.push(format!("registry: {e}")),
    }
    store.close().await;
    if failures.is_empty() {
        eprintln!("Tend stopped");
        Ok(0)
    } else {
        Err(Failure::host(failures.join("; ")))
    }
}

fn confirm_reset(dir: &Path, yes: bool) -> Result<(), Failure> {
    if yes {
        return Ok(());
    }
    crate::confirm(
        &format!(
            "Delete {} — its database, audit trail, registry, keys and agent — and start over?",
            dir.display()
        ),
        &format!(
            "not resetting: stdin is not a terminal, so nobody confirmed. Pass --yes to delete {} from a script",
            dir.display()
        ),
        "not reset: nothing was deleted",
    )
}

/// Refuse a directory another local user could read, swap or fill: the directory (when it
/// exists), every directory above it and every symlink on the way must belong to this user or
/// root, and none may be writable by others — unless it is sticky, as `/tmp` is, and what is
/// in it on the way is ours. Otherwise a `--dir` made in advance by someone else (or a symlink
/// they can point elsewhere later) would hand them the keys, the trust policy the local agent
/// obeys and the database.
fn check_path_is_ours(dir: &Path) -> Result<(), Failure> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let uid = rustix::process::geteuid().as_raw();
        let absolute = std::path::absolute(dir).map_err(|e| io_error("resolve", dir, e))?;
        let refuse = |p: &Path, why: String| {
            Failure::bad_input(format!(
                "refusing to use {} for `tend up`: {} {why}; another user could read or replace its keys and trust policy. Pass --dir with a directory of your own",
                dir.display(),
                p.display()
            ))
        };
        // Each prefix of the path as given, then each of the place it resolves to.
        let mut paths: Vec<PathBuf> = absolute.ancestors().map(Path::to_path_buf).collect();
        if let Ok(real) = std::fs::canonicalize(&absolute) {
            paths.extend(real.ancestors().map(Path::to_path_buf));
        }
        for p in paths {
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue; // not made yet: private_dir makes it ours
            };
            if m.uid() != uid && m.uid() != 0 {
                return Err(refuse(&p, format!("belongs to uid {}", m.uid())));
            }
            if m.file_type().is_symlink() {
                continue;
            }
            // A sticky shared directory (like /tmp) is fine: nobody else can rename or remove
            // what is ours in it, and what is in it on the way was checked above.
            if m.mode() & 0o022 != 0 && m.mode() & 0o1000 == 0 {
                return Err(refuse(
                    &p,
                    format!("is writable by others (mode {:o})", m.mode() & 0o7777),
                ));
            }
        }
    }
    Ok(())
}

/// The private key at `path`, made (0600) if there is none.
fn key_at(path: &Path, what: &str) -> Result<keys::SigningKey, Failure> {
    if path.exists() {
        return keys::read_private_key(path).map_err(Failure::bad_input);
    }
    if let Some(parent) = path.parent() {
        crate::private_dir(parent)?;
    }
    let key = keys::generate().map_err(Failure::host)?;
    keys::write_private_key(path, &key).map_err(Failure::bad_input)?;
    step(&format!(
        "made {what}: {} ({})",
        path.display(),
        PublicKey(key.verifying_key()).key_id()
    ));
    Ok(key)
}

fn write_private(path: &Path, text: &str) -> Result<(), Failure> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| io_error("write", path, e))?;
    tmp.write_all(text.as_bytes())
        .map_err(|e| io_error("write", path, e))?;
    tmp.persist(path)
        .map_err(|e| io_error("write", path, e.error))?;
    Ok(())
}

fn trust_text(publisher: &keys::SigningKey, approver: &keys::SigningKey) -> String {
    format!(
        "# Written by `tend up`: the local publisher key signs the built-in catalog, and approvals\n\
         # count when signed by the approver key of the person who ran it.\n\
         [[publishers]]\nname = \"tend-up\"\nkey = \"{}\"\nprefixes = [\"*\"]\n\n\
         [[approvers]]\nname = \"admin\"\nkey = \"{}\"\n",
        PublicKey(publisher.verifying_key()),
        PublicKey(approver.verifying_key())
    )
}

/// `--catalog`, else `skills/` of the Tend checkout around the current directory or the binary.
fn catalog_dir(given: Option<&Path>) -> Result<Option<PathBuf>, Failure> {
    if let Some(dir) = given {
        if !dir.is_dir() {
            return Err(Failure::bad_input(format!(
                "--catalog {}: not a directory",
                dir.display()
            )));
        }
        return Ok(Some(dir.to_path_buf()));
    }
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    Ok(crate::skill::build::tend_home(&cwd)
        .ok()
        .map(|home| home.join("skills"))
        .filter(|d| d.is_dir()))
}

/// The newest modification time of a skill's sources (not its build output).
fn newest_source(dir: &Path) -> SystemTime {
    let mut newest = SystemTime::UNIX_EPOCH;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if matches!(
                name.as_ref(),
                "dist" | "target" | "node_modules" | "__pycache__"
            ) || name.starts_with('.')
            {
                continue;
            }
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() {
                stack.push(e.path());
            } else if let Ok(m) = meta.modified() {
                newest = newest.max(m);
            }
        }
    }
    newest
}

/// Build what is missing or stale, sign it with the local publisher key, verify it against the
/// local trust policy, publish it, and precompile it for the agent.
async fn publish_catalog(
    catalog: &Path,
    key: &keys::SigningKey,
    trust: &TrustPolicy,
    store: &Store,
    cache: &CacheArgs,
) -> Result<(), Failure> {
    let mut skills: Vec<PathBuf> = std::fs::read_dir(catalog)
        .map_err(|e| io_error("read", catalog, e))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("skill.toml").is_file())
        .collect();
    skills.sort();
    let total = skills.len();
    let runtime = tend_runtime::Runtime::new(cache.runtime_config()).map_err(Failure::host)?;
    let (mut built, mut published) = (0, 0);
    let started = Instant::now();
    for (i, dir) in skills.iter().enumerate() {
        let manifest_path = dir.join("skill.toml");
        let manifest_text = std::fs::read_to_string(&manifest_path)
            .map_err(|e| io_error("read", &manifest_path, e))?;
        let manifest =
            tend_runtime::Manifest::parse(&manifest_text, &manifest_path.display().to_string())
                .map_err(Failure::bad_input)?;
        let name = manifest.skill.name.to_string();
        let version = manifest.skill.version.clone();
        let wasm = dir.join("dist").join(format!("{name}-{version}.wasm"));
        let fresh = std::fs::metadata(&wasm)
            .and_then(|m| m.modified())
            .is_ok_and(|built| built >= newest_source(dir));
        if !fresh {
            step(&format!("[{}/{total}] building {name} {version}", i + 1));
            let dir = dir.clone();
            let cache = CacheArgs {
                cache_dir: cache.cache_dir.clone(),
                no_cache: false,
            };
            tokio::task::spawn_blocking(move || crate::skill::build::build(&dir, false, &cache))
                .await
                .map_err(Failure::host)??;
            built += 1;
        }
        let bytes = std::fs::read(&wasm).map_err(|e| io_error("read", &wasm, e))?;
        let env = envelope::sign(&bytes, &manifest_text, key)
            .map_err(|e| Failure::bad_input(format!("{}: {e}", manifest_path.display())))?;
        let verified = trust
            .verify(
                &bytes,
                &env,
                VerifyOptions {
                    allow_downgrade: true,
                },
            )
            .map_err(|e| Failure::host(format!("{name}: {e}")))?;
        match store
            .publish(&verified, &env.to_json(), &bytes, "tend up")
            .await
        {
            Ok(p) if p.created => {
                published += 1;
                // Precompiled now, so the first invocation does not wait for it.
                step(&format!(
                    "[{}/{total}] published and precompiling {name} {version} ({})",
                    i + 1,
                    &verified.digest[..19]
                ));
                runtime
                    .load(&bytes, Some(manifest))
                    .map_err(|e| Failure::host(format!("{name}: {e}")))?;
            }
            Ok(_) => {}
            // Versions are immutable: a skill changed without a new version is said, and the
            // published one stays.
            Err(StoreError::Conflict { existing, .. }) => eprintln!(
                "warning: {name} {version} changed, but this registry already has {version} as {existing}: raise the version in {} to publish it",
                manifest_path.display()
            ),
            Err(StoreError::ManifestDiffers { .. }) => eprintln!(
                "warning: {name} {version}'s manifest changed, but this registry already has {version} with another: raise the version in {} to publish it",
                manifest_path.display()
            ),
            Err(e) => return Err(Failure::host(e)),
        }
    }
    if built + published > 0 {
        step(&format!(
            "catalog ready: {total} skills, {built} built, {published} published, in {:.1} s",
            started.elapsed().as_secs_f64()
        ));
    }
    Ok(())
}

async fn bind(addr: &str) -> Result<tokio::net::TcpListener, Failure> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        Failure::bad_input(format!(
            "cannot listen on {addr}: {e} (is another `tend up` running? pass --listen / --registry-listen for other ports)"
        ))
    })
}

/// Register the person's approver key as the admin's, unless the admin has one.
async fn register_approver(
    db: &tend_orchestrator::db::Db,
    key: &keys::SigningKey,
    path: &Path,
) -> Result<(), Failure> {
    let public = PublicKey(key.verifying_key()).to_string();
    match tend_orchestrator::approvers::key_of(db, "admin")
        .await
        .map_err(Failure::host)?
    {
        Some(k) if k == public => Ok(()),
        Some(_) => {
            eprintln!(
                "warning: admin's registered approver key is not {} ({}); approvals signed with it will be refused",
                path.display(),
                PublicKey(key.verifying_key()).key_id()
            );
            Ok(())
        }
        None => {
            let by = tend_orchestrator::auth::Actor {
                name: "tend".into(),
                role: tend_policy::Role::Admin,
            };
            tend_orchestrator::approvers::register(db, &by, "admin", &public)
                .await
                .map_err(Failure::host)?;
            step(&format!(
                "registered {} as admin's approver key",
                path.display()
            ));
            Ok(())
        }
    }
}

/// The local agent's name: `--agent-name`, else this machine's hostname.
fn agent_name(given: Option<&str>) -> Result<String, Failure> {
    let name = match given {
        Some(n) => n.to_string(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_ascii_lowercase())
            .ok()
            .filter(|h| tend_protocol::check_name("name", h).is_ok())
            .unwrap_or_else(|| "local-agent".into()),
    };
    tend_protocol::check_name("--agent-name", &name).map_err(Failure::bad_input)?;
    Ok(name)
}

/// The example healing policies as `tend up` loads them: every policy switched off, no
/// channel (its URL is a placeholder), and alerts about this machine (`instance` localhost or
/// 127.0.0.1) mapped to the local agent.
fn up_policies(agent: &str) -> String {
    let mut text = String::from(
        "# Loaded by `tend up`: the example policies (examples/healing/policies.toml), each\n\
         # switched off. Switch one on with `enabled = true` (PUT /api/v1/healing/policies).\n\
         # Add a [[channel]] and `escalate = [\"NAME\"]` to hear about incidents.\n\n",
    );
    text.push_str(&format!(
        "[[target]]\nmatch = {{ instance = \"~(localhost|127\\\\.0\\\\.0\\\\.1)(:[0-9]+)?\" }}\nagent = \"{agent}\"\n\n"
    ));
    let mut skip_channel = false;
    for line in EXAMPLE_POLICIES.lines() {
        let trimmed = line.trim();
        if trimmed == "[[channel]]" {
            skip_channel = true;
            continue;
        }
        if skip_channel {
            if trimmed.is_empty() {
                skip_channel = false;
            }
            continue;
        }
        if trimmed.starts_with("escalate =") || trimmed.starts_with("notify =") {
            continue;
        }
        text.push_str(line);
        text.push('\n');
        if trimmed == "[[policy]]" {
            text.push_str("enabled = false\n");
        }
    }
    text
}

/// Enroll the local agent on the first run; later, point it at the orchestrator's address
/// and the registry's (they may have moved with --listen).
async fn enroll_or_update(
    db: &tend_orchestrator::db::Db,
    dir: &Path,
    name: &str,
    url: &str,
    registry: &str,
    trust: &Path,
) -> Result<(), Failure> {
    if let Ok(mut config) = tend_agent::config::AgentConfig::load(dir) {
        if config.orchestrator != url || config.registry != registry {
            config.orchestrator = url.to_string();
            config.registry = registry.to_string();
            config.save(dir).map_err(Failure::host)?;
        }
        return Ok(());
    }
    let scope = tend_orchestrator::agents::TokenScope {
        pools: vec!["local".into()],
        labels: BTreeMap::new(),
        max_level: 2,
    };
    let token = tend_orchestrator::agents::create_enroll_token(
        db,
        1,
        Duration::from_secs(600),
        &scope,
        "tend up",
    )
    .await
    .map_err(Failure::host)?;
    let config = tend_agent::enroll(tend_agent::EnrollRequest {
        dir: dir.to_path_buf(),
        orchestrator: url.to_string(),
        token,
        name: name.to_string(),
        registry: registry.to_string(),
        trust: trust.to_path_buf(),
        pools: vec!["local".into()],
        labels: BTreeMap::new(),
        ceiling: tend_protocol::Ceiling {
            max_level: 2,
            publishers: Vec::new(),
            capabilities: tend_protocol::CAPABILITY_KINDS
                .iter()
                .map(|k| k.to_string())
                .collect(),
            paths: Vec::new(),
            auto_heal: vec!["clean-old-logs".into()],
        },
    })
    .await
    .map_err(Failure::bad_input)?;
    step(&format!(
        "enrolled the local agent {} ({})",
        config.name, config.agent_id
    ));
    Ok(())
}

/// How often the local agent's trust policy is compared with the registered approvers.
const APPROVER_SYNC: Duration = Duration::from_secs(2);

/// Make the local agent's trust policy count exactly the approver keys registered with this
/// orchestrator (`tend approver add`, or the console). `tend up` runs both for one person, so
/// registering an approver as its admin is trusting them on its agent too; agents of a real
/// fleet keep trust policies of their own (docs/agent.md). An approver added to or removed from
/// trust.toml by hand is put back as registered, and said so. Returns what changed, if anything.
async fn sync_approvers(
    db: &tend_orchestrator::db::Db,
    trust_path: &Path,
) -> Result<Option<String>, Failure> {
    let registered = tend_orchestrator::approvers::list(db)
        .await
        .map_err(Failure::host)?;
    let mut trust = TrustPolicy::from_file(trust_path).map_err(Failure::bad_input)?;
    let want: Vec<tend_registry::trust::Approver> = registered
        .iter()
        .map(|a| tend_registry::trust::Approver {
            name: a.name.clone(),
            key: a.public_key.clone(),
        })
        .collect();
    let same = want.len() == trust.approvers.len()
        && want.iter().all(|w| {
            trust
                .approvers
                .iter()
                .any(|t| t.name == w.name && t.key == w.key)
        });
    if same {
        return Ok(None);
    }
    // Said out loud: a hand edit of trust.toml's approvers is replaced, not kept.
    let entry = |a: &tend_registry::trust::Approver| {
        format!("{} ({})", a.name, a.key.get(..20).unwrap_or(&a.key))
    };
    let mut change = Vec::new();
    for a in want.iter().filter(|w| {
        !trust
            .approvers
            .iter()
            .any(|t| t.name == w.name && t.key == w.key)
    }) {
        change.push(format!("trusting {}", entry(a)));
    }
    for a in trust
        .approvers
        .iter()
        .filter(|t| !want.iter().any(|w| t.name == w.name && t.key == w.key))
    {
        change.push(format!("no longer trusting {}", entry(a)));
    }
    trust.approvers = want;
    let text = toml::to_string(&trust).map_err(Failure::host)?;
    write_private(
        trust_path,
        &format!(
            "# Written by `tend up`: the approvers are those registered with its orchestrator.\n{text}"
        ),
    )?;
    Ok(Some(change.join(", ")))
}

/// Run the local agent until `stop`; restart it when the registered approvers change (it reads
/// its trust policy when it starts).
async fn supervise_agent(
    options: tend_agent::RunOptions,
    db: tend_orchestrator::db::Db,
    trust_path: PathBuf,
    mut stop: watch::Receiver<bool>,
) -> Result<(), tend_agent::StartError> {
    loop {
        let (agent_stop, agent_stopped) = watch::channel(false);
        let mut handle = tokio::spawn(tend_agent::run(options.clone(), async move {
            let mut rx = agent_stopped;
            let _ = rx.wait_for(|s| *s).await;
        }));
        loop {
            tokio::select! {
                _ = async { stop.wait_for(|s| *s).await.is_ok() } => {
                    let _ = agent_stop.send(true);
                    return handle.await.unwrap_or(Ok(()));
                }
                ended = &mut handle => return ended.unwrap_or(Ok(())),
                () = tokio::time::sleep(APPROVER_SYNC) => {
                    match sync_approvers(&db, &trust_path).await {
                        Ok(Some(change)) => {
                            eprintln!("==> the local agent's approvers now follow those registered with the orchestrator ({change}; {} is rewritten to match them, so edit approvers with `tend approver add|remove`): restarting the local agent so that it counts them", trust_path.display());
                            let _ = agent_stop.send(true);
                            let _ = (&mut handle).await;
                            break;
                        }
                        Ok(None) => {}
                        Err(e) => tracing::warn!(error = %e.message, "cannot compare the agent's approvers"),
                    }
                }
            }
        }
    }
}

/// Wait until the orchestrator has heard from the local agent since it started.
async fn until_agent_online(
    db: &tend_orchestrator::db::Db,
    name: &str,
    task: &tokio::task::JoinHandle<Result<(), tend_agent::StartError>>,
) -> Result<(), Failure> {
    let since = tend_orchestrator::db::now_ms();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let agents = tend_orchestrator::agents::list(db)
            .await
            .map_err(Failure::host)?;
        if agents
            .iter()
            .any(|a| a.name == name && a.last_seen_ms >= since)
        {
            return Ok(());
        }
        if task.is_finished() {
            return Err(Failure::host(
                "the local agent stopped before it reached the orchestrator (see the messages above)",
            ));
        }
        if Instant::now() > deadline {
            return Err(Failure::host(
                "the local agent did not reach the orchestrator within 30 s",
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Save the admin token (first run) as the client context `up`, current if there is none;
/// on later runs, keep the context's token and point it at where the API listens now.
fn save_context(url: &str, token: Option<&str>) -> Result<(), Failure> {
    use crate::client::config;
    let path = config::config_path()?;
    let mut file = config::load(&path)?;
    let kept = file.contexts.get("up").and_then(|c| c.token.clone());
    let Some(token) = token.map(str::to_string).or(kept) else {
        return Ok(());
    };
    file.contexts.insert(
        "up".into(),
        config::Context {
            url: url.to_string(),
            token: Some(token),
        },
    );
    if file.current.is_none() {
        file.current = Some("up".into());
    }
    config::save(&path, &file)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_example_policies_load_switched_off_without_channels() {
        let text = super::up_policies("web-1");
        let config = tend_orchestrator::healing::parse(&text, "up").expect("parses");
        assert!(!config.policies.is_empty());
        assert!(config.policies.iter().all(|p| !p.policy.enabled));
        assert!(config.channels.is_empty());
        assert!(!text.contains("hooks.slack.com"));
        let labels = [("instance".to_string(), "127.0.0.1:9100".to_string())].into();
        assert_eq!(config.targets[0].agent_for(&labels), Some("web-1".into()));
    }
}
