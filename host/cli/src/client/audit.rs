//! `tend audit show | tail` over the API, and (with the orchestrator role) `tend audit verify`
//! on the database itself.

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use super::config::ConnArgs;
use super::http::Client;
use super::output;
use crate::{Failure, exit, out};

#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// The newest events of the audit trail (through the API)
    Show(ShowArgs),
    /// Follow the audit trail: the newest events, then each new one as it comes (Ctrl-C stops)
    Tail(TailArgs),
    /// Recompute the audit hash chain and name the first altered, deleted or reordered event
    /// (reads the orchestrator's database directly)
    #[cfg(feature = "orchestrator")]
    Verify {
        #[command(flatten)]
        database: crate::orchestrator::DatabaseArgs,
        /// Print the result as JSON
        #[arg(long)]
        json: bool,
    },
    /// Measure audit appends per second (a benchmark: use a scratch database)
    #[cfg(feature = "orchestrator")]
    Bench {
        #[command(flatten)]
        database: crate::orchestrator::DatabaseArgs,
        /// Events to append
        #[arg(long, default_value_t = 5000)]
        count: usize,
        /// Concurrent writers
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
    },
}

#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// How many of the newest events (1-1000)
    #[arg(long, short = 'n', default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..=1000))]
    limit: u16,
    /// Print the API's JSON (`events` and the chain's `head`)
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    conn: ConnArgs,
}

#[derive(Debug, clap::Args)]
pub struct TailArgs {
    /// How many of the newest events to show first
    #[arg(long, short = 'n', default_value_t = 10, value_parser = clap::value_parser!(u16).range(0..=1000))]
    limit: u16,
    /// One JSON object per event and line
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    conn: ConnArgs,
}

/// An audit event, as much of it as a person reads in a list.
#[derive(Debug, Deserialize)]
struct Event {
    index: i64,
    at: String,
    actor: String,
    action: String,
    subject: String,
}

#[derive(Debug, Deserialize)]
struct Head {
    index: i64,
}

pub async fn run(cmd: AuditCommand) -> Result<u8, Failure> {
    match cmd {
        AuditCommand::Show(args) => show(args).await,
        AuditCommand::Tail(args) => tail(args).await,
        #[cfg(feature = "orchestrator")]
        AuditCommand::Verify { database, json } => {
            crate::orchestrator::audit_verify(&database, json).await
        }
        #[cfg(feature = "orchestrator")]
        AuditCommand::Bench {
            database,
            count,
            concurrency,
        } => crate::orchestrator::audit_bench(&database, count, concurrency).await,
    }
}

/// Events after `after`, at most `limit`: the API's page, and its events read.
async fn page(client: &Client, after: i64, limit: u16) -> Result<(Value, Vec<Event>), Failure> {
    let answer: Value = client
        .get(&format!("/api/v1/audit?after={after}&limit={limit}"))
        .await?;
    let events = serde_json::from_value(answer["events"].clone()).map_err(|e| {
        Failure::host(format!(
            "the orchestrator sent audit events this client cannot read: {e}"
        ))
    })?;
    Ok((answer, events))
}

/// The index of the newest event.
async fn head(client: &Client) -> Result<i64, Failure> {
    let head: Head = client.get("/api/v1/audit/head").await?;
    Ok(head.index)
}

async fn show(args: ShowArgs) -> Result<u8, Failure> {
    let client = Client::from_args(&args.conn)?;
    let newest = head(&client).await?;
    let (answer, events) =
        page(&client, (newest - i64::from(args.limit)).max(0), args.limit).await?;
    if args.json {
        out(&answer.to_string());
        return Ok(exit::OK);
    }
    if events.is_empty() {
        eprintln!("the audit trail is empty");
        return Ok(exit::OK);
    }
    let rows = events
        .iter()
        .map(|e| {
            vec![
                e.index.to_string(),
                e.at.clone(),
                output::age(&e.at),
                e.actor.clone(),
                e.action.clone(),
                e.subject.clone(),
            ]
        })
        .collect();
    out(output::table(&["INDEX", "AT", "AGE", "ACTOR", "ACTION", "SUBJECT"], rows).trim_end());
    Ok(exit::OK)
}

async fn tail(args: TailArgs) -> Result<u8, Failure> {
    let client = Client::from_args(&args.conn)?;
    let mut after = (head(&client).await? - i64::from(args.limit)).max(0);
    loop {
        let (answer, events) = page(&client, after, 1000).await?;
        for (event, raw) in events
            .iter()
            .zip(answer["events"].as_array().into_iter().flatten())
        {
            if args.json {
                out(&raw.to_string());
            } else {
                out(&format!(
                    "{:>6}  {}  {}  {}  {}",
                    event.index, event.at, event.actor, event.action, event.subject
                ));
            }
            after = after.max(event.index);
        }
        // A full page means more are waiting: read on at once.
        if events.len() < 1000 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}
