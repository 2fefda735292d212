//! `tend bench`: invoke latency of a skill — cold (compile), warm (disk cache), hot
//! (InstancePre + pooling) — printed beside process sandboxes, plus resident memory with ten
//! skills loaded, and the cost of verifying a 5 and a 20 MiB component before compile; a
//! whole `tend run` process beside `bwrap` and `tend --version`, timed in the same loop; and
//! the warm load + call of the catalog's Python and JavaScript skills.
//! Numbers, not assertions: `docs/benchmarks.md` records what this machine gave.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;
use tend_runtime::{Export, LimitOverrides, Manifest, Runtime, RuntimeConfig};

use crate::{Failure, read_component};

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// The skill component to measure (a trivial one shows the sandbox's own cost)
    pub component: PathBuf,
    /// Its manifest, if it needs grants
    #[arg(long, short = 'm')]
    pub manifest: Option<PathBuf>,
    /// Input JSON for each call
    #[arg(long, default_value = "{}")]
    pub input: String,
    /// Hot-path iterations
    #[arg(long, default_value_t = 2000)]
    pub iterations: usize,
    /// Cold (compile) iterations
    #[arg(long, default_value_t = 5)]
    pub cold: usize,
    /// Warm (disk cache) iterations
    #[arg(long, default_value_t = 50)]
    pub warm: usize,
    /// Process-sandbox iterations (fork/exec, bwrap, runsc)
    #[arg(long, default_value_t = 100)]
    pub process: usize,
    /// Print the results as JSON
    #[arg(long)]
    pub json: bool,
    /// Skip the process-sandbox comparison
    #[arg(long)]
    pub skip_process: bool,
    /// Skip the resident-memory measurement (it compiles ten copies of the component)
    #[arg(long)]
    pub skip_rss: bool,
    /// The skill catalog, for the warm rows of its Python and JavaScript skills (built with
    /// `tend skill build`; a skill not built is reported as skipped)
    #[arg(long, value_name = "DIR", default_value = "skills")]
    pub catalog: PathBuf,
    /// Catalog skills to time warm (load from the precompile cache in a fresh runtime + call)
    #[arg(
        long,
        value_name = "NAME",
        value_delimiter = ',',
        default_value = "load-average,http-check"
    )]
    pub warm_skills: Vec<String>,
    /// Internal: load the given components from --rss-cache and print resident memory
    #[arg(long, hide = true, num_args = 1.., value_name = "WASM")]
    pub rss_probe: Vec<PathBuf>,
    #[arg(long, hide = true)]
    pub rss_cache: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct Row {
    name: String,
    runs: usize,
    p50_us: f64,
    p99_us: f64,
    note: Option<String>,
}

#[derive(Debug, Serialize)]
struct Results {
    component: String,
    size_bytes: usize,
    pooling: bool,
    cpus: usize,
    rows: Vec<Row>,
    rss_10_skills_mib: Option<f64>,
    rss_baseline_mib: Option<f64>,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx].as_secs_f64() * 1e6
}

fn row(name: &str, mut samples: Vec<Duration>) -> Row {
    samples.sort();
    Row {
        name: name.to_string(),
        runs: samples.len(),
        p50_us: percentile(&samples, 0.50),
        p99_us: percentile(&samples, 0.99),
        note: None,
    }
}

/// Verify before compile (sha256 of the component + ed25519 `verify_strict` + manifest and
/// policy checks) for a 5 MiB and a 20 MiB component — the size range of Python and JS skills.
fn verify_rows(rows: &mut Vec<Row>, progress: impl Fn(&str)) -> Result<(), Failure> {
    use tend_registry::envelope::sign;
    use tend_registry::keys::{PublicKey, generate};
    use tend_registry::trust::{TrustPolicy, VerifyOptions};

    let key = generate().map_err(Failure::host)?;
    let policy = TrustPolicy::parse(
        &format!(
            "[[publishers]]\nname = \"bench\"\nkey = \"{}\"\nprefixes = [\"*\"]\n",
            PublicKey(key.verifying_key())
        ),
        "bench trust policy",
    )
    .map_err(Failure::host)?;
    let manifest = "[skill]\nname = \"bench\"\nversion = \"1.0.0\"\nkind = \"diagnose\"\n";
    for mib in [5usize, 20] {
        progress(&format!("verify a {mib} MiB component"));
        let component: Vec<u8> = (0..mib << 20).map(|i| (i * 31 % 251) as u8).collect();
        let envelope = sign(&component, manifest, &key).map_err(Failure::host)?;
        let mut samples = Vec::new();
        for _ in 0..20 {
            let t = Instant::now();
            policy
                .verify(&component, &envelope, VerifyOptions::default())
                .map_err(Failure::host)?;
            samples.push(t.elapsed());
        }
        rows.push(row(
            &format!("verify: sha256 + ed25519, {mib} MiB"),
            samples,
        ));
    }
    Ok(())
}

fn skipped(name: &str, why: &str) -> Row {
    Row {
        name: name.to_string(),
        runs: 0,
        p50_us: 0.0,
        p99_us: 0.0,
        note: Some(why.to_string()),
    }
}

fn rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

fn on_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

fn time_process(program: &Path, args: &[&str], runs: usize) -> Result<Vec<Duration>, String> {
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        let status = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| e.to_string())?;
        samples.push(t.elapsed());
        if !status.success() {
            return Err(format!("exited with {status}"));
        }
    }
    Ok(samples)
}

/// A copy of a component with a custom section appended: same code, different digest.
fn variant(bytes: &[u8], i: usize) -> Vec<u8> {
    let name = format!("tend-bench-variant-{i}");
    let mut payload = vec![name.len() as u8];
    payload.extend_from_slice(name.as_bytes());
    let mut out = bytes.to_vec();
    out.push(0); // custom section id
    let mut len = payload.len();
    loop {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
    out.extend_from_slice(&payload);
    out
}

async fn rss_probe(args: &BenchArgs) -> Result<u8, Failure> {
    let baseline = rss_mib().unwrap_or(0.0);
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: args.rss_cache.clone(),
        ..RuntimeConfig::default()
    })?;
    let mut skills = Vec::new();
    for path in &args.rss_probe {
        let bytes = read_component(path)?;
        skills.push(runtime.load(&bytes, None)?);
    }
    for skill in &skills {
        runtime
            .invoke(skill, Export::Run, &args.input, &LimitOverrides::default())
            .await
            .map_err(Failure::host)?;
    }
    crate::out(&format!(
        "{} {} {}",
        baseline,
        rss_mib().unwrap_or(0.0),
        runtime.stats().compiles
    ));
    Ok(0)
}

pub async fn run(args: BenchArgs) -> Result<u8, Failure> {
    if !args.rss_probe.is_empty() {
        return rss_probe(&args).await;
    }
    let bytes = read_component(&args.component)?;
    let manifest = match &args.manifest {
        Some(p) => Some(Manifest::from_file(p).map_err(Failure::bad_input)?),
        None => None,
    };
    let overrides = LimitOverrides::default();
    let scratch = tempdir()?;
    let mut rows = Vec::new();
    let progress = |msg: &str| {
        if !args.json {
            eprintln!("bench: {msg}");
        }
    };

    // Cold: compile on every load (no disk cache, memory copy forgotten).
    progress("cold (compile + instantiate + call)");
    let cold_rt = Runtime::new(RuntimeConfig {
        cache_dir: None,
        ..RuntimeConfig::default()
    })?;
    let mut samples = Vec::new();
    for _ in 0..args.cold.max(1) {
        let t = Instant::now();
        let skill = cold_rt.load(&bytes, manifest.clone())?;
        let report = cold_rt
            .invoke(&skill, Export::Run, &args.input, &overrides)
            .await
            .map_err(Failure::host)?;
        samples.push(t.elapsed());
        cold_rt.unload(&skill.digest());
        if report.outcome != tend_runtime::Outcome::Ok {
            return Err(Failure::bad_input(format!(
                "the skill did not succeed ({}): {:?}; benchmark a skill that returns ok",
                report.outcome, report.error
            )));
        }
    }
    rows.push(row("cold: compile + instantiate + call", samples));
    drop(cold_rt);

    // Warm: load from the disk cache, then instantiate + call.
    progress("warm (disk cache + instantiate + call)");
    let rt = Runtime::new(RuntimeConfig {
        cache_dir: Some(scratch.join("cache")),
        ..RuntimeConfig::default()
    })?;
    let skill = rt.load(&bytes, manifest.clone())?;
    rt.unload(&skill.digest());
    drop(skill);
    let mut samples = Vec::new();
    for _ in 0..args.warm.max(1) {
        let t = Instant::now();
        let skill = rt.load(&bytes, manifest.clone())?;
        rt.invoke(&skill, Export::Run, &args.input, &overrides)
            .await
            .map_err(Failure::host)?;
        samples.push(t.elapsed());
        rt.unload(&skill.digest());
    }
    rows.push(row("warm: disk cache + instantiate + call", samples));

    // Hot: InstancePre kept, pooling allocator.
    progress("hot (InstancePre + pooling)");
    let skill = rt.load(&bytes, manifest.clone())?;
    for _ in 0..50 {
        rt.instantiate_only(&skill).await.map_err(Failure::host)?;
    }
    let mut samples = Vec::with_capacity(args.iterations);
    for _ in 0..args.iterations.max(1) {
        samples.push(rt.instantiate_only(&skill).await.map_err(Failure::host)?);
    }
    rows.push(row("hot: instantiate only", samples));
    let mut samples = Vec::with_capacity(args.iterations);
    for _ in 0..args.iterations.max(1) {
        let t = Instant::now();
        rt.invoke(&skill, Export::Run, &args.input, &overrides)
            .await
            .map_err(Failure::host)?;
        samples.push(t.elapsed());
    }
    rows.push(row("hot: instantiate + call", samples));
    let pooling = rt.pooling();
    drop(skill);
    drop(rt);

    verify_rows(&mut rows, progress)?;

    if !args.skip_process {
        progress("whole process: tend run beside bwrap and tend --version");
        whole_process_rows(&mut rows, &args, &bytes, &scratch)?;
        process_rows(&mut rows, args.process.max(1));
    }

    for name in args.warm_skills.iter().filter(|n| !n.is_empty()) {
        progress(&format!(
            "warm: {name} from the precompile cache in a fresh runtime + call"
        ));
        rows.push(catalog_warm_row(&args, name, &scratch).await?);
    }

    let (rss_baseline, rss_10) = if args.skip_rss {
        (None, None)
    } else {
        progress("resident memory with 10 skills loaded");
        rss_with_ten(&args, &bytes, &scratch)?
    };
    let _ = std::fs::remove_dir_all(&scratch);

    let results = Results {
        component: args.component.display().to_string(),
        size_bytes: bytes.len(),
        pooling,
        cpus: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        rows,
        rss_10_skills_mib: rss_10,
        rss_baseline_mib: rss_baseline,
    };
    if args.json {
        crate::out(&serde_json::to_string_pretty(&results).map_err(Failure::host)?);
    } else {
        print_table(&results);
    }
    Ok(0)
}

/// A whole `tend run` of the benchmarked component (signed with a throw-away key, verified
/// against a throw-away trust policy, already in the precompile cache), beside `bwrap` and
/// `tend --version`: the three are timed in turn in one loop, so they see the same machine.
fn whole_process_rows(
    rows: &mut Vec<Row>,
    args: &BenchArgs,
    bytes: &[u8],
    scratch: &Path,
) -> Result<(), Failure> {
    use tend_registry::envelope::sign;
    use tend_registry::keys::{PublicKey, generate};

    let name = "process: tend run <skill> (signed, cached)";
    let Ok(exe) = std::env::current_exe() else {
        rows.push(skipped(name, "cannot find this executable"));
        return Ok(());
    };
    let dir = scratch.join("process");
    std::fs::create_dir_all(&dir).map_err(Failure::host)?;
    let key = generate().map_err(Failure::host)?;
    let manifest_text = match &args.manifest {
        Some(p) => std::fs::read_to_string(p).map_err(Failure::host)?,
        None => "[skill]\nname = \"bench\"\nversion = \"1.0.0\"\nkind = \"diagnose\"\n".into(),
    };
    let component = dir.join("skill.wasm");
    std::fs::write(&component, bytes).map_err(Failure::host)?;
    let envelope = sign(bytes, &manifest_text, &key).map_err(Failure::host)?;
    std::fs::write(dir.join("skill.wasm.sig"), envelope.to_json()).map_err(Failure::host)?;
    let trust = dir.join("trust.toml");
    std::fs::write(
        &trust,
        format!(
            "[[publishers]]\nname = \"bench\"\nkey = \"{}\"\nprefixes = [\"*\"]\n",
            PublicKey(key.verifying_key())
        ),
    )
    .map_err(Failure::host)?;
    let component_arg = component.display().to_string();
    let cache = dir.join("cache").display().to_string();
    let run_args = [
        "run",
        component_arg.as_str(),
        "--input",
        args.input.as_str(),
        "--cache-dir",
        cache.as_str(),
    ];
    let timed = |program: &Path, argv: &[&str]| -> Result<Duration, String> {
        let t = Instant::now();
        let status = Command::new(program)
            .args(argv)
            .env("TEND_TRUST", &trust)
            .env("TEND_DATA_DIR", dir.join("data"))
            .env("TEND_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| e.to_string())?;
        let took = t.elapsed();
        if status.success() {
            Ok(took)
        } else {
            Err(format!("{} exited with {status}", program.display()))
        }
    };
    // The first run compiles and fills the cache; it is not counted.
    if let Err(e) = timed(&exe, &run_args) {
        rows.push(skipped(name, &format!("failed here: {e}")));
        return Ok(());
    }
    let bwrap = on_path("bwrap");
    let bwrap_args = ["--ro-bind", "/", "/", "--unshare-all", "/bin/true"];
    let bwrap_name = "process: bwrap --ro-bind / / --unshare-all /bin/true";
    let (mut run, mut sandbox, mut version) = (Vec::new(), Vec::new(), Vec::new());
    let mut bwrap_failed = None;
    for _ in 0..args.process.max(1) {
        run.push(timed(&exe, &run_args).map_err(Failure::host)?);
        if let Some(b) = bwrap.as_deref().filter(|_| bwrap_failed.is_none()) {
            match timed(b, &bwrap_args) {
                Ok(d) => sandbox.push(d),
                Err(e) => bwrap_failed = Some(e),
            }
        }
        version.push(timed(&exe, &["--version"]).map_err(Failure::host)?);
    }
    rows.push(row(name, run));
    match (bwrap, bwrap_failed) {
        (None, _) => rows.push(skipped(
            bwrap_name,
            "bwrap not installed (apt-get install bubblewrap)",
        )),
        (Some(_), Some(e)) => rows.push(skipped(bwrap_name, &format!("failed here: {e}"))),
        (Some(_), None) => rows.push(row(bwrap_name, sandbox)),
    }
    rows.push(row("process: tend --version", version));
    Ok(())
}

/// Warm path of a (large) catalog skill as a new process sees it once the artifact is verified:
/// a fresh runtime with nothing in memory, the precompiled form of the verified digest loaded
/// from the disk cache (checked, then mapped), linked, instantiated and called once.
async fn catalog_warm_row(args: &BenchArgs, name: &str, scratch: &Path) -> Result<Row, Failure> {
    let label = format!("warm: {name}: verified digest, cache + call");
    let dir = args.catalog.join(name);
    let manifest = match Manifest::from_file(&dir.join("skill.toml")) {
        Ok(m) => m,
        Err(e) => {
            return Ok(skipped(
                &label,
                &format!("not in {}: {e}", args.catalog.display()),
            ));
        }
    };
    let wasm = dir
        .join("dist")
        .join(format!("{name}-{}.wasm", manifest.skill.version));
    let Ok(bytes) = std::fs::read(&wasm) else {
        return Ok(skipped(
            &label,
            &format!(
                "{} not built (tend skill build {})",
                wasm.display(),
                dir.display()
            ),
        ));
    };
    let input =
        std::fs::read_to_string(dir.join("input.example.json")).unwrap_or_else(|_| "{}".into());
    let config = RuntimeConfig {
        cache_dir: Some(scratch.join("catalog-cache")),
        // As `tend run` builds it: a new process's engine.
        pooling: false,
        ..RuntimeConfig::default()
    };
    // Compile once into the cache (seconds for a Python or JS skill); not counted.
    Runtime::new(config.clone())?.load(&bytes, Some(manifest.clone()))?;
    // What verification hands the runtime (its cost, the sha256 of the component, is in the
    // verify rows): the digest that was checked.
    let provenance = tend_runtime::Provenance::Signed {
        publisher: "bench".into(),
        key_id: "bench".into(),
        digest: format!("sha256:{}", tend_runtime::cache::sha256_hex(&bytes)),
    };
    let mut samples = Vec::new();
    for _ in 0..args.warm.clamp(1, 20) {
        let rt = Runtime::new(config.clone())?;
        let t = Instant::now();
        let skill = rt.load_admitted(&bytes, Some(manifest.clone()), provenance.clone())?;
        rt.invoke(&skill, Export::Run, &input, &LimitOverrides::default())
            .await
            .map_err(Failure::host)?;
        samples.push(t.elapsed());
        if rt.stats().disk_cache_hits != 1 {
            return Ok(skipped(&label, "the precompile cache was not used"));
        }
    }
    let mut r = row(&label, samples);
    r.name = format!(
        "warm: {name} ({:.1} MiB): verified digest, cache + call",
        bytes.len() as f64 / (1 << 20) as f64
    );
    Ok(r)
}

/// fork/exec, bwrap and runsc, each where installed.
fn process_rows(rows: &mut Vec<Row>, n: usize) {
    match time_process(Path::new("/bin/true"), &[], n) {
        Ok(s) => rows.push(row("fork/exec /bin/true", s)),
        Err(e) => rows.push(skipped("fork/exec /bin/true", &e)),
    }
    let bwrap_name = "bwrap --ro-bind / / --unshare-all /bin/true";
    match on_path("bwrap") {
        Some(p) => match time_process(
            &p,
            &["--ro-bind", "/", "/", "--unshare-all", "/bin/true"],
            n,
        ) {
            Ok(s) => rows.push(row(bwrap_name, s)),
            Err(e) => rows.push(skipped(bwrap_name, &format!("failed here: {e}"))),
        },
        None => rows.push(skipped(
            bwrap_name,
            "bwrap not installed (apt-get install bubblewrap)",
        )),
    }
    let runsc_name = "runsc --rootless --network=none do /bin/true";
    match on_path("runsc") {
        Some(p) => match time_process(
            &p,
            &["--rootless", "--network=none", "do", "/bin/true"],
            n.min(20),
        ) {
            Ok(s) => rows.push(row(runsc_name, s)),
            Err(e) => rows.push(skipped(runsc_name, &format!("failed here: {e}"))),
        },
        None => rows.push(skipped(runsc_name, "runsc (gVisor) not on PATH")),
    }
}

/// Resident memory of a fresh process that loads ten distinct copies of the component.
fn rss_with_ten(
    args: &BenchArgs,
    bytes: &[u8],
    scratch: &Path,
) -> Result<(Option<f64>, Option<f64>), Failure> {
    // Resident memory with ten skills loaded, in a fresh process.
    let cache = scratch.join("rss-cache");
    let mut paths = Vec::new();
    {
        let rt = Runtime::new(RuntimeConfig {
            cache_dir: Some(cache.clone()),
            ..RuntimeConfig::default()
        })?;
        for i in 0..10 {
            let v = variant(bytes, i);
            let path = scratch.join(format!("variant-{i}.wasm"));
            std::fs::write(&path, &v).map_err(Failure::host)?;
            rt.load(&v, None)?;
            paths.push(path);
        }
    }
    let measured = match std::env::current_exe() {
        Ok(exe) => {
            let out = Command::new(exe)
                .arg("bench")
                .arg(&args.component)
                .arg("--input")
                .arg(&args.input)
                .arg("--rss-cache")
                .arg(&cache)
                .arg("--rss-probe")
                .args(&paths)
                .output()
                .map_err(Failure::host)?;
            let text = String::from_utf8_lossy(&out.stdout);
            let nums: Vec<f64> = text
                .split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect();
            (nums.first().copied(), nums.get(1).copied())
        }
        Err(_) => (None, None),
    };
    Ok(measured)
}

fn fmt_us(us: f64) -> String {
    if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.1} µs")
    }
}

fn print_table(r: &Results) {
    crate::out(&format!(
        "tend bench: {} ({:.1} KiB), pooling allocator: {}, {} CPUs",
        r.component,
        r.size_bytes as f64 / 1024.0,
        if r.pooling { "on" } else { "off" },
        r.cpus
    ));
    crate::out(&format!(
        "{:<66} {:>6} {:>12} {:>12}",
        "path", "runs", "p50", "p99"
    ));
    for row in &r.rows {
        match &row.note {
            Some(note) => crate::out(&format!("{:<66} {:>6} {}", row.name, "-", note)),
            None => crate::out(&format!(
                "{:<66} {:>6} {:>12} {:>12}",
                row.name,
                row.runs,
                fmt_us(row.p50_us),
                fmt_us(row.p99_us)
            )),
        }
    }
    match (r.rss_10_skills_mib, r.rss_baseline_mib) {
        (Some(rss), Some(base)) => crate::out(&format!(
            "resident memory with 10 skills loaded and run once: {rss:.1} MiB (process before the runtime: {base:.1} MiB)"
        )),
        _ => crate::out("resident memory: not measured"),
    }
}

fn tempdir() -> Result<PathBuf, Failure> {
    let dir = std::env::temp_dir().join(format!("tend-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(Failure::host)?;
    Ok(dir)
}
