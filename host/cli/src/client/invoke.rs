//! `tend invoke` and `tend status`: submit an invocation, show one, and follow it to its end
//! (`--wait`), exiting with the skill's status.

use std::io::IsTerminal;
use std::time::Duration;

use serde_json::{Value, json};
use tend_protocol::{Invocation, State};

use super::config::ConnArgs;
use super::http::Client;
use super::output;
use crate::{Failure, exit, out};

/// Exit statuses of `--wait`, shown in `--help` (a macro: `concat!` takes only literals).
macro_rules! wait_statuses {
    () => {
        "Exit status with --wait: the skill's, as `tend run`: 0 ok, 1 skill error, 2 input refused \
         (or bad usage), 3 the sandbox stopped it (a limit or a trap), 4 it did not run (host or \
         agent failure, or the orchestrator unreachable); and 5 rejected, 6 expired before \
         approval, 7 cancelled, 8 unknown (its agent vanished while it ran: check the host)."
    };
}

#[derive(Debug, clap::Args)]
#[command(after_help = concat!(
    "Examples:\n  \
    tend invoke disk-usage --target pool:web --wait\n  \
    tend invoke service-restart --target agent:web-1 --input '{\"unit\": \"nginx.service\"}'\n  \
    tend invoke clean-old-logs --input @input.json --json\n  \
    tend invoke clean-old-logs --fs-write /var/log/nginx --timeout-ms 5000 --input '{\"dir\": \"/var/log/nginx\"}'\n\n\
    A skill that needs approval waits for it: the answer says who must approve (`tend approve ID`).\n\n",
    wait_statuses!()))]
pub struct InvokeArgs {
    /// The skill, as NAME or NAME@VERSION [default version: the newest]
    #[arg(value_name = "SKILL[@VERSION]")]
    skill: String,
    /// Where to run it: local, pool:NAME (one agent of it), agent:NAME, or all:pool:NAME (every
    /// online agent of the pool) [default: local, the orchestrator's host]
    #[arg(long, value_name = "TARGET")]
    target: Option<String>,
    /// Input JSON: inline text, @FILE to read a file, or - for stdin [default: {}]
    #[arg(long, short = 'i', value_name = "JSON|@FILE|-")]
    input: Option<String>,
    /// Why it is wanted (recorded with it and in the audit trail)
    #[arg(long, value_name = "TEXT", default_value = "invoked with tend invoke")]
    reason: String,
    /// Follow it to its end and exit with its status
    #[arg(long)]
    wait: bool,
    /// Narrow the skill's fs_read grant to this directory inside it (repeat for several)
    #[arg(long = "fs-read", value_name = "DIR")]
    fs_read: Vec<String>,
    /// Narrow the skill's fs_write grant to this directory inside it (repeat for several)
    #[arg(long = "fs-write", value_name = "DIR")]
    fs_write: Vec<String>,
    /// Narrow the skill's dns grant to this name (one it grants, or a name under a granted
    /// `*.zone`; repeat for several)
    #[arg(long = "dns", value_name = "NAME")]
    dns: Vec<String>,
    /// Lower the skill's fuel limit for this invocation
    #[arg(long, value_name = "N")]
    fuel: Option<u64>,
    /// Lower the skill's memory limit (MiB) for this invocation
    #[arg(long, value_name = "MIB")]
    memory_mib: Option<u64>,
    /// Lower the skill's wall-clock limit (ms) for this invocation
    #[arg(long, value_name = "MS")]
    timeout_ms: Option<u64>,
    /// Lower the skill's output limit (KiB) for this invocation
    #[arg(long, value_name = "KIB")]
    output_kib: Option<u64>,
    /// Print the API's JSON (with --wait, the invocation at its end)
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    conn: ConnArgs,
}

#[derive(Debug, clap::Args)]
#[command(after_help = concat!(
    "Without --wait: 0 when shown.\n",
    wait_statuses!()))]
pub struct StatusArgs {
    /// The invocation id (inv_...)
    id: String,
    /// Follow it to its end and exit with its status
    #[arg(long)]
    wait: bool,
    /// Print the API's JSON
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    conn: ConnArgs,
}

/// The path of one invocation, refusing anything that is not an invocation id (it becomes
/// part of a URL).
pub fn invocation_path(id: &str) -> Result<String, Failure> {
    if tend_protocol::is_invocation_id(id) {
        Ok(format!("/api/v1/invocations/{id}"))
    } else {
        Err(Failure::bad_input(format!(
            "{:?} is not an invocation id (inv_ and 16 hex digits, as `tend approvals` shows)",
            id.chars().take(80).collect::<String>()
        )))
    }
}

/// An API answer read as an invocation.
pub fn typed(v: &Value) -> Result<Invocation, Failure> {
    serde_json::from_value(v.clone()).map_err(|e| {
        Failure::host(format!(
            "the orchestrator sent an invocation this client cannot read: {e}"
        ))
    })
}

pub async fn invoke(args: InvokeArgs) -> Result<u8, Failure> {
    let (skill, version) = match args.skill.split_once('@') {
        Some((s, v)) if !s.is_empty() && !v.is_empty() => (s.to_string(), Some(v.to_string())),
        Some(_) => {
            return Err(Failure::bad_input(format!(
                "{:?} is not SKILL or SKILL@VERSION",
                args.skill
            )));
        }
        None => (args.skill.clone(), None),
    };
    let input: Value = serde_json::from_str(&crate::run::read_input(args.input.as_deref())?)
        .map_err(Failure::bad_input)?;
    let client = Client::from_args(&args.conn)?;
    let mut body = json!({ "skill": skill, "input": input, "reason": args.reason });
    if let Some(v) = version {
        body["version"] = json!(v);
    }
    if let Some(t) = &args.target {
        body["target"] = json!(t);
    }
    // Less than the manifest grants, for this invocation only (the server refuses more).
    let narrowing = tend_manifest::Narrowing {
        fs_read: (!args.fs_read.is_empty()).then_some(args.fs_read),
        fs_write: (!args.fs_write.is_empty()).then_some(args.fs_write),
        limits: tend_manifest::ManifestLimits {
            fuel: args.fuel,
            memory_mib: args.memory_mib,
            timeout_ms: args.timeout_ms,
            output_kib: args.output_kib,
        },
        dns: (!args.dns.is_empty()).then_some(args.dns),
    };
    if !narrowing.is_empty() {
        body["narrowing"] = json!(narrowing);
    }
    let answer: Value = client.post("/api/v1/invocations", &body).await?;
    let inv = typed(&answer)?;
    if !args.wait {
        if args.json {
            out(&answer.to_string());
        } else {
            out(&summary(&inv));
        }
        return Ok(exit::OK);
    }
    if !args.json {
        out(&summary(&inv));
    }
    let (answer, inv) = follow(&client, answer, inv).await?;
    finish(&answer, &inv, args.json)
}

pub async fn status(args: StatusArgs) -> Result<u8, Failure> {
    let path = invocation_path(&args.id)?;
    let client = Client::from_args(&args.conn)?;
    let answer: Value = client.get(&path).await?;
    let inv = typed(&answer)?;
    if !args.wait {
        if args.json {
            out(&answer.to_string());
        } else {
            out(output::render_invocation(&inv).trim_end());
            // What the healing loop submitted it for: the alert and its diagnosis.
            if let Some(context) = super::incidents::context_of(&client, &inv.id).await {
                out(context.trim_end());
            }
        }
        return Ok(exit::OK);
    }
    let (answer, inv) = follow(&client, answer, inv).await?;
    if args.json {
        out(&answer.to_string());
    } else {
        out(output::render_invocation(&inv).trim_end());
    }
    Ok(wait_status(&inv))
}

/// What `invoke` says at once: id, state, level, the decision's reasons, and what to do next.
fn summary(inv: &Invocation) -> String {
    let mut text = format!(
        "{}  {}@{} on {}: {} (L{})",
        inv.id,
        inv.skill,
        inv.version,
        inv.target,
        inv.state.as_str(),
        inv.level
    );
    for reason in &inv.reasons {
        text.push_str(&format!("\n  - {reason}"));
    }
    if let Some(hint) = output::approval_hint(inv) {
        text.push('\n');
        text.push_str(&hint);
    }
    text
}

/// After `invoke --wait`: the result (or why there is none), and the exit status.
fn finish(answer: &Value, inv: &Invocation, json: bool) -> Result<u8, Failure> {
    if json {
        out(&answer.to_string());
    } else {
        let mut text = format!("{}: {}", inv.id, inv.state.as_str());
        if let Some(comment) = inv.comment.as_deref().filter(|c| !c.is_empty()) {
            text.push_str(&format!(" ({comment})"));
        }
        out(&text);
        if let Some(result) = &inv.result {
            out(output::render_result(result).trim_end());
        }
    }
    Ok(wait_status(inv))
}

/// Poll until the invocation ends: quickly at first, then every two seconds. On a terminal,
/// each change of state is told on stderr.
async fn follow(
    client: &Client,
    mut answer: Value,
    mut inv: Invocation,
) -> Result<(Value, Invocation), Failure> {
    let path = invocation_path(&inv.id)?;
    let tty = std::io::stderr().is_terminal();
    let mut told: Option<State> = None;
    let mut delay = Duration::from_millis(50);
    while !output::is_final(inv.state) {
        if tty && told != Some(inv.state) {
            eprintln!("{}: {} ...", inv.id, inv.state.as_str());
            told = Some(inv.state);
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 3 / 2).min(Duration::from_secs(2));
        answer = client.get(&path).await?;
        inv = typed(&answer)?;
    }
    Ok((answer, inv))
}

/// The exit status of a finished invocation (see `wait_statuses!`): a run's is `tend run`'s.
pub fn wait_status(inv: &Invocation) -> u8 {
    match inv.state {
        State::Rejected => exit::REJECTED,
        State::Expired => exit::EXPIRED,
        State::Cancelled => exit::CANCELLED,
        State::Unknown => exit::UNKNOWN,
        State::Succeeded | State::Failed => {
            let outcome = inv
                .result
                .as_ref()
                .and_then(|r| r.get("outcome"))
                .and_then(|o| serde_json::from_value::<tend_runtime::Outcome>(o.clone()).ok());
            match outcome {
                Some(outcome) => crate::run::exit_code(outcome),
                // No report: it never ran (an agent refused it, or the host failed).
                None => exit::HOST_FAILURE,
            }
        }
        State::Planning | State::PendingApproval | State::Queued | State::Running => {
            exit::HOST_FAILURE
        }
    }
}
