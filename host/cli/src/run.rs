//! `tend run`: one invocation of a local component, in-process.

use std::io::Read;
use std::path::PathBuf;

use tend_runtime::{ExecutionReport, Export, LimitOverrides, Outcome, Provenance, Runtime};

use crate::{CacheArgs, Failure, exit, read_component};

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
    tend run disk-usage --input '{\"warn_percent\": 90}'  (a pulled skill, latest version)\n  \
    tend run disk-usage@0.1.0 --json\n  \
    tend run dist/disk-usage-0.1.0.wasm                 (verified with dist/disk-usage-0.1.0.wasm.sig)\n  \
    tend run skill.wasm --manifest skill.toml --insecure-unsigned   (local development)\n  \
    echo '{}' | tend run disk-usage --input - --timeout-ms 2000\n\n\
    Verify before compile: a component runs only if its signature envelope verifies against the\n\
    trust policy, and then with the manifest that was signed. An unsigned component without\n\
    --manifest gets no capabilities at all: no files, no network, no exec.")]
pub struct RunArgs {
    /// A component file (.wasm, signed in <file>.sig), or a pulled skill as NAME[@VERSION]
    pub component: PathBuf,
    /// The skill's manifest (skill.toml) for an unsigned component; a signed one runs with its
    /// signed manifest (if given, this must match it byte for byte)
    #[arg(long, short = 'm', value_name = "FILE")]
    pub manifest: Option<PathBuf>,
    /// The signature envelope [default: <component>.sig]
    #[arg(long, value_name = "FILE")]
    pub signature: Option<PathBuf>,
    /// Run without verifying a signature (local development only; says so loudly)
    #[arg(long)]
    pub insecure_unsigned: bool,
    #[command(flatten)]
    pub trust: crate::admit::TrustArgs,
    /// Input JSON: inline text, @FILE to read a file, or - for stdin [default: {}]
    #[arg(long, short = 'i', value_name = "JSON|@FILE|-")]
    pub input: Option<String>,
    /// Call `plan` (what a repair skill would do) instead of `run`
    #[arg(long)]
    pub plan: bool,
    /// Fuel (instruction budget); clamped to the host maximum
    #[arg(long, value_name = "N")]
    pub fuel: Option<u64>,
    /// Linear memory limit in MiB; clamped to the host maximum
    #[arg(long, value_name = "N")]
    pub memory_mib: Option<u64>,
    /// Wall-clock limit in milliseconds; clamped to the host maximum
    #[arg(long, value_name = "N")]
    pub timeout_ms: Option<u64>,
    /// Output limit in KiB (return value, and stdout/stderr/log each)
    #[arg(long, value_name = "N")]
    pub output_kib: Option<u64>,
    /// Print the whole ExecutionReport as one JSON object on stdout
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub cache: CacheArgs,
}

pub fn read_input(arg: Option<&str>) -> Result<String, Failure> {
    let text = match arg {
        None => return Ok("{}".into()),
        Some("-") => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map_err(|e| Failure::bad_input(format!("cannot read input from stdin: {e}")))?;
            (s, "stdin".to_string())
        }
        Some(a) if a.starts_with('@') => {
            let path = &a[1..];
            let s = std::fs::read_to_string(path)
                .map_err(|e| Failure::bad_input(format!("cannot read input file {path}: {e}")))?;
            (s, path.to_string())
        }
        Some(a) => (a.to_string(), "--input".to_string()),
    };
    let (text, origin) = text;
    if let Err(e) = serde_json::from_str::<serde_json::Value>(&text) {
        return Err(Failure::bad_input(format!(
            "{origin}: input is not JSON: {e}"
        )));
    }
    Ok(text)
}

/// `NAME[@VERSION]` of a pulled skill, when `arg` is not a file.
fn pulled_skill(arg: &std::path::Path) -> Result<Option<(PathBuf, PathBuf)>, Failure> {
    if arg.exists() {
        return Ok(None);
    }
    let Some(text) = arg.to_str() else {
        return Ok(None);
    };
    let (name, version) = match text.split_once('@') {
        Some((n, v)) => (n, Some(v)),
        None => (text, None),
    };
    let is_name = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !is_name || version.is_some_and(|v| semver::Version::parse(v).is_err() && v != "latest") {
        return Ok(None);
    }
    let version = version.filter(|v| *v != "latest");
    let store = crate::admit::local_store()?;
    match store.find(name, version) {
        Some(found) => Ok(Some((found.component, found.signature))),
        None => Err(Failure::bad_input(format!(
            "no file {text} and no pulled skill {text} in {} (pull it with `tend skill pull {text} --registry URL`)",
            store.root().display()
        ))),
    }
}

/// Read the input and the component, and verify the component (nothing is compiled here).
fn admit_args(
    args: &RunArgs,
) -> Result<(String, PathBuf, Vec<u8>, crate::admit::Admitted), Failure> {
    let input = read_input(args.input.as_deref())?;
    let (component, signature) = match pulled_skill(&args.component)? {
        Some((component, sig)) => (component, Some(sig)),
        None => (args.component.clone(), args.signature.clone()),
    };
    let bytes = read_component(&component)?;
    let admitted = crate::admit::admit(
        &component,
        &bytes,
        signature.as_deref(),
        args.manifest.as_deref(),
        &args.trust,
        args.insecure_unsigned,
    )?;
    Ok((input, component, bytes, admitted))
}

pub async fn run(args: RunArgs, cache: &CacheArgs) -> Result<u8, Failure> {
    // Everything a user typed is checked, and the artifact verified, before anything is
    // compiled or cached.
    let started = std::time::Instant::now();
    // One instantiation: the on-demand allocator costs nothing up front, where the pooling
    // allocator would reserve and set up its slots (and probe the CPU count per pool) for it.
    let mut config = cache.merged(&args.cache).runtime_config();
    config.pooling = false;
    let (input, component, bytes, admitted) = admit_args(&args)?;
    let verified = started.elapsed();
    let runtime = Runtime::new(config)?;
    let ready = started.elapsed();
    let skill = runtime
        .load_admitted(&bytes, admitted.manifest, admitted.provenance)
        .map_err(|e| match e {
            tend_runtime::LoadError::Cache(_) => Failure::host(e),
            e => Failure::bad_input(format!("{}: {e}", args.component.display())),
        })?;
    if skill.provenance() == Some(&Provenance::InsecureUnsigned) {
        eprintln!(
            "warning: {} runs without signature verification (--insecure-unsigned): for local development only",
            component.display()
        );
    }
    let loaded = started.elapsed();
    let export = if args.plan { Export::Plan } else { Export::Run };
    let overrides = LimitOverrides {
        fuel: args.fuel,
        memory_mib: args.memory_mib,
        timeout_ms: args.timeout_ms,
        output_kib: args.output_kib,
    };
    let report = runtime
        .invoke(&skill, export, &input, &overrides)
        .await
        .map_err(|e| match e {
            tend_runtime::InvokeError::NoPlan => Failure::bad_input(e),
            e => Failure::host(e),
        })?;
    // Where a one-shot run spends its time (TEND_LOG=debug), cumulative since the command began.
    tracing::debug!(
        verified_us = verified.as_micros() as u64,
        runtime_us = ready.as_micros() as u64,
        loaded_us = loaded.as_micros() as u64,
        invoked_us = started.elapsed().as_micros() as u64,
        "tend run timings"
    );

    if args.json {
        let text = serde_json::to_string(&report).map_err(Failure::host)?;
        crate::out(&text);
    } else {
        print_human(&report);
    }
    Ok(exit_code(report.outcome))
}

pub fn exit_code(outcome: Outcome) -> u8 {
    match outcome {
        Outcome::Ok => exit::OK,
        Outcome::SkillError => exit::SKILL_ERROR,
        Outcome::InvalidInput => exit::BAD_INPUT,
        _ => exit::LIMIT_OR_TRAP,
    }
}

fn human_bytes(b: u64) -> String {
    if b >= 1 << 20 {
        format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
    } else {
        format!("{:.1} KiB", b as f64 / 1024.0)
    }
}

fn print_human(r: &ExecutionReport) {
    for l in &r.logs {
        eprintln!("[{}] {}", l.level, l.message);
    }
    if r.logs_dropped > 0 {
        eprintln!("[log] {} more lines dropped (log limit)", r.logs_dropped);
    }
    if !r.stderr.is_empty() {
        eprintln!("--- stderr ---\n{}", r.stderr.trim_end());
    }
    if !r.stdout.is_empty() {
        eprintln!("--- stdout ---\n{}", r.stdout.trim_end());
    }
    for e in &r.exec {
        match (&e.denied, &e.start_error) {
            (Some(why), _) => eprintln!("exec refused: {why}"),
            (None, Some(why)) => eprintln!("exec failed: {why}"),
            (None, None) => eprintln!(
                "exec: {} {} -> {}",
                e.program,
                e.args.join(" "),
                e.status
                    .map_or("killed".to_string(), |s| format!("exit {s}"))
            ),
        }
    }
    for n in &r.notes {
        eprintln!("note: {n}");
    }
    if let Some(Provenance::Signed {
        publisher, key_id, ..
    }) = &r.provenance
    {
        eprintln!("signed by {publisher} (key {key_id}), verified before compile");
    }
    match (&r.output, &r.error) {
        (Some(out), _) => {
            crate::out(&serde_json::to_string_pretty(out).unwrap_or_else(|_| out.to_string()))
        }
        (None, Some(err)) => eprintln!("error: {} ({}): {}", r.outcome, err.code, err.message),
        (None, None) => {}
    }
    eprintln!(
        "{}: {} in {:.2} ms, fuel {}, peak memory {}",
        r.skill.as_deref().unwrap_or("skill"),
        r.outcome,
        r.duration_us as f64 / 1000.0,
        r.fuel_consumed,
        human_bytes(r.peak_memory_bytes)
    );
}
