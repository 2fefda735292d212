//! `tend approvals`, `tend reject`, `tend cancel` and `tend agents`.

use serde_json::{Value, json};
use tend_protocol::AgentView;

use super::config::ConnArgs;
use super::http::Client;
use super::invoke::{invocation_path, typed};
use super::output;
use crate::{Failure, exit, out};

#[derive(Debug, clap::Args)]
pub struct ApprovalsArgs {
    /// Print the API's JSON
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    conn: ConnArgs,
}

#[derive(Debug, clap::Args)]
pub struct RejectArgs {
    /// The invocation id (inv_...)
    id: String,
    /// Why (kept on the invocation and in the audit trail)
    #[arg(long, short = 'c', value_name = "TEXT")]
    comment: String,
    /// Print the API's JSON
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    conn: ConnArgs,
}

#[derive(Debug, clap::Args)]
pub struct CancelArgs {
    /// The invocation id (inv_...)
    id: String,
    /// Print the API's JSON
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    conn: ConnArgs,
}

#[derive(Debug, clap::Args)]
pub struct AgentsArgs {
    /// Print the API's JSON
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    conn: ConnArgs,
}

/// Invocations waiting for approval, oldest first.
pub async fn approvals(args: ApprovalsArgs) -> Result<u8, Failure> {
    let client = Client::from_args(&args.conn)?;
    let answer: Value = client
        .get("/api/v1/invocations?state=pending_approval&limit=1000")
        .await?;
    if args.json {
        out(&answer.to_string());
        return Ok(exit::OK);
    }
    let mut list = Vec::new();
    for v in answer["invocations"].as_array().into_iter().flatten() {
        list.push(typed(v)?);
    }
    if list.is_empty() {
        eprintln!("no invocation is waiting for approval");
        return Ok(exit::OK);
    }
    list.reverse();
    let rows = list
        .iter()
        .map(|inv| {
            vec![
                inv.id.clone(),
                format!("{}@{}", inv.skill, inv.version),
                inv.target.clone(),
                format!("L{}", inv.level),
                output::approvals_count(inv),
                inv.requester.clone(),
                output::age(&inv.created_at),
                output::relative(&output::bound_expiry(inv)),
            ]
        })
        .collect();
    out(output::table(
        &[
            "ID",
            "SKILL",
            "TARGET",
            "LEVEL",
            "APPROVALS",
            "REQUESTER",
            "AGE",
            "EXPIRES",
        ],
        rows,
    )
    .trim_end());
    eprintln!(
        "show one with `tend status ID`; approve with `tend approve ID`, or `tend reject ID --comment TEXT`"
    );
    Ok(exit::OK)
}

pub async fn reject(args: RejectArgs) -> Result<u8, Failure> {
    let path = invocation_path(&args.id)?;
    if args.comment.trim().is_empty() {
        return Err(Failure::bad_input(
            "--comment is empty: say why it is rejected (the requester reads it)",
        ));
    }
    let client = Client::from_args(&args.conn)?;
    let answer: Value = client
        .post(
            &format!("{path}/reject"),
            &json!({ "comment": args.comment }),
        )
        .await?;
    if args.json {
        out(&answer.to_string());
    } else {
        let inv = typed(&answer)?;
        out(&format!("{}: {}", inv.id, inv.state.as_str()));
    }
    Ok(exit::OK)
}

pub async fn cancel(args: CancelArgs) -> Result<u8, Failure> {
    let path = invocation_path(&args.id)?;
    let client = Client::from_args(&args.conn)?;
    let answer: Value = client.post(&format!("{path}/cancel"), &json!({})).await?;
    if args.json {
        out(&answer.to_string());
    } else {
        let inv = typed(&answer)?;
        out(&format!("{}: {}", inv.id, inv.state.as_str()));
    }
    Ok(exit::OK)
}

pub async fn agents(args: AgentsArgs) -> Result<u8, Failure> {
    let client = Client::from_args(&args.conn)?;
    let answer: Value = client.get("/api/v1/agents").await?;
    if args.json {
        out(&answer.to_string());
        return Ok(exit::OK);
    }
    let list: Vec<AgentView> = serde_json::from_value(answer).map_err(|e| {
        Failure::host(format!(
            "the orchestrator sent agents this client cannot read: {e}"
        ))
    })?;
    if list.is_empty() {
        eprintln!("no agents enrolled (enroll one with `tend agent enroll`, see docs/agent.md)");
        return Ok(exit::OK);
    }
    let rows = list
        .iter()
        .map(|a| {
            vec![
                a.name.clone(),
                a.id.clone(),
                if a.pools.is_empty() {
                    "-".to_string()
                } else {
                    a.pools.join(",")
                },
                a.state.clone(),
                output::age(&a.last_seen),
                format!("L{}", a.ceiling.max_level),
                format!("{}/{}", a.running, a.capacity),
            ]
        })
        .collect();
    out(output::table(
        &[
            "NAME",
            "ID",
            "POOLS",
            "STATE",
            "LAST SEEN",
            "MAX LEVEL",
            "RUNNING",
        ],
        rows,
    )
    .trim_end());
    Ok(exit::OK)
}
