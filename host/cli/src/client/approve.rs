//! `tend approve` and `tend approver`: an approval is a signature by the approver's own key.
//!
//! `tend approve ID` fetches the invocation, shows everything an approval binds (skill,
//! digests, target, requester, input, grants, limits, the plan and the decision's reasons),
//! **recomputes the invocation digest here** from those fields — never signing a digest the
//! server states — asks for confirmation, signs the digest with the approver's key and posts
//! the signature. The orchestrator checks it against the key an admin registered with
//! `tend approver add`; every runner checks it again against its own trust policy.

use std::path::PathBuf;

use serde_json::{Value, json};

use super::config::ConnArgs;
use super::http::Client;
use super::invoke::{invocation_path, typed};
use super::output;
use crate::{Failure, exit, out};

#[derive(Debug, clap::Args)]
pub struct ApproveArgs {
    /// The invocation id (inv_...)
    id: String,
    /// Your approver key (`tend key gen --out FILE`; its public half registered with
    /// `tend approver add`) [default: $TEND_KEY, else ~/.config/tend/me.key]
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// Approve without asking (for scripts: you still sign only what this client shows)
    #[arg(long, short = 'y')]
    yes: bool,
    /// Print the API's JSON
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    conn: ConnArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum ApproverCommand {
    /// Register a person's approver key (admin): their signed approvals are then accepted
    Add {
        /// The approver's name: the name of the API token they approve with
        name: String,
        /// Their public key: a key file from `tend key gen` (its public half is read) or
        /// `ed25519:<base64>` as `tend key show` prints it
        #[arg(long, value_name = "FILE|KEY")]
        key: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// The registered approver keys
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Remove a person's approver key (admin): their approvals are refused from then on
    Remove {
        name: String,
        #[command(flatten)]
        conn: ConnArgs,
    },
}

/// The approver key file: `--key`, `$TEND_KEY`, or `~/.config/tend/me.key`.
pub fn key_path(given: Option<PathBuf>) -> Result<PathBuf, Failure> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(p) = given.or_else(|| var("TEND_KEY").map(PathBuf::from)) {
        return Ok(p);
    }
    let base = var("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".config")))
        .ok_or_else(|| Failure::bad_input("no approver key: pass --key FILE or set TEND_KEY"))?;
    Ok(base.join("tend/me.key"))
}

pub async fn approve(args: ApproveArgs) -> Result<u8, Failure> {
    let path = invocation_path(&args.id)?;
    let key_file = key_path(args.key)?;
    let key = tend_registry::keys::read_private_key(&key_file).map_err(|e| {
        Failure::bad_input(format!(
            "{e}\n(an approver key is made with `tend key gen --out {}`, and an admin registers its public half with `tend approver add NAME --key FILE`)",
            key_file.display()
        ))
    })?;
    let client = Client::from_args(&args.conn)?;
    let answer: Value = client.get(&path).await?;
    let inv = typed(&answer)?;
    match inv.state {
        tend_protocol::State::PendingApproval => {}
        tend_protocol::State::Planning => {
            return Err(Failure::bad_input(format!(
                "{} is still planning: its plan has not run on {} yet, and an approval binds the plan. Wait for it (`tend status {} --wait` shows when it is pending approval)",
                inv.id, inv.target, inv.id
            )));
        }
        other => {
            return Err(Failure::bad_input(format!(
                "{} is {}, not pending approval: there is nothing to approve",
                inv.id,
                other.as_str()
            )));
        }
    }
    // What this client shows is what it signs: the digest of the shown fields, computed here.
    let digest = tend_protocol::invocation_digest(&inv.bound());
    if digest != inv.invocation_digest {
        return Err(Failure::host(format!(
            "refusing to sign: the orchestrator says {} has digest {}, but what it shows hashes to {digest}. What is shown is not what would be approved; report this to whoever runs the orchestrator",
            inv.id, inv.invocation_digest
        )));
    }
    if inv.export != "run" && inv.export != "plan" {
        return Err(Failure::host(format!(
            "refusing to sign: {} has export {:?}, which no runner runs; report this to whoever runs the orchestrator",
            inv.id, inv.export
        )));
    }
    if let Some(why) = understated(&inv) {
        return Err(Failure::host(format!(
            "refusing to sign: {why}. What is shown is not what would be approved; report this to whoever runs the orchestrator"
        )));
    }
    if !args.yes {
        eprint!("{}", output::render_invocation(&inv));
        if let Some(context) = super::incidents::context_of(&client, &inv.id).await {
            eprint!("{context}");
        }
        confirm(&format!(
            "Approve {} ({}@{} on {}) as shown, digest {}?",
            inv.id,
            inv.skill,
            inv.version,
            inv.target,
            &digest[..16]
        ))?;
    }
    let (_, signature) = tend_protocol::sign_approval(&key, &digest);
    let answer: Value = client
        .post(
            &format!("{path}/approve"),
            &json!({ "invocation_digest": digest, "signature": signature }),
        )
        .await?;
    if args.json {
        out(&answer.to_string());
    } else {
        let inv = typed(&answer)?;
        out(&format!(
            "{}: approved ({} of {}), now {}",
            inv.id,
            output::approvals_given(&inv),
            inv.approvals_required,
            inv.state.as_str()
        ));
    }
    Ok(exit::OK)
}

/// Why the level or approvals `inv` shows are lower than its bound grants imply, if they are.
/// The level and its reasons are the orchestrator's words, not bound into the digest; the
/// grants are. Every runner recomputes the level anyway, but an approver must not be told a
/// repair that restarts services is a low-risk L1 needing one approval when it is L3.
fn understated(inv: &tend_protocol::Invocation) -> Option<String> {
    // A plan job runs its grants read-only with no programs (the runtime enforces it).
    let grants = if inv.export == "plan" {
        inv.grants.for_plan()
    } else {
        inv.grants.clone()
    };
    let floor = tend_policy::capability_floors(&grants)
        .into_iter()
        .filter_map(|r| match r {
            tend_policy::Reason::CapabilityFloor {
                capability, level, ..
            } => Some((level, capability)),
            _ => None,
        })
        .max_by_key(|(level, _)| *level);
    let shown = tend_policy::Level::try_from(inv.level).ok();
    if let Some((level, capability)) = floor
        && shown.is_none_or(|s| s < level)
    {
        return Some(format!(
            "{} is shown as L{}, but its grants make it at least {level} ({capability})",
            inv.id, inv.level
        ));
    }
    let needed = shown.map_or(u8::MAX, tend_policy::Level::approvals_required);
    (inv.approvals_required < needed).then(|| {
        format!(
            "{} is shown as L{} needing {} approval(s), but L{} needs {needed}",
            inv.id, inv.level, inv.approvals_required, inv.level
        )
    })
}

/// Ask on the terminal; without one, `--yes` is needed.
fn confirm(question: &str) -> Result<(), Failure> {
    crate::confirm(
        question,
        "not approving: stdin is not a terminal, so nobody confirmed. Read `tend status ID` and pass --yes to approve from a script",
        "not approved: nothing was sent",
    )
}

pub async fn approver(cmd: ApproverCommand) -> Result<u8, Failure> {
    match cmd {
        ApproverCommand::Add {
            name,
            key,
            json,
            conn,
        } => {
            let public_key = if key.starts_with("ed25519:") {
                key
            } else {
                let signing = tend_registry::keys::read_private_key(std::path::Path::new(&key))
                    .map_err(|e| Failure::bad_input(e.to_string()))?;
                tend_protocol::public_key_text(&signing.verifying_key())
            };
            let client = Client::from_args(&conn)?;
            let answer: Value = client
                .post(
                    "/api/v1/approvers",
                    &json!({ "name": name, "public_key": public_key }),
                )
                .await?;
            if json {
                out(&answer.to_string());
            } else {
                out(&format!(
                    "{name} may now approve with key {public_key}\nagents (and the orchestrator's own worker) count their approvals only once their trust policy lists it too:\n\n[[approvers]]\nname = \"{name}\"\nkey = \"{public_key}\""
                ));
            }
            Ok(exit::OK)
        }
        ApproverCommand::List { json, conn } => {
            let client = Client::from_args(&conn)?;
            let answer: Value = client.get("/api/v1/approvers").await?;
            if json {
                out(&answer.to_string());
                return Ok(exit::OK);
            }
            let rows = answer
                .as_array()
                .into_iter()
                .flatten()
                .map(|a| {
                    ["name", "public_key", "created_at", "created_by"]
                        .iter()
                        .map(|k| a[k].as_str().unwrap_or("").to_string())
                        .collect()
                })
                .collect();
            out(output::table(&["NAME", "KEY", "REGISTERED", "BY"], rows).trim_end());
            Ok(exit::OK)
        }
        ApproverCommand::Remove { name, conn } => {
            if tend_protocol::check_name("name", &name).is_err() {
                return Err(Failure::bad_input(format!(
                    "{name:?} is not an approver name"
                )));
            }
            let client = Client::from_args(&conn)?;
            client.delete(&format!("/api/v1/approvers/{name}")).await?;
            out(&format!("{name}'s approver key is removed"));
            Ok(exit::OK)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(level: u8, required: u8, grants: Value) -> tend_protocol::Invocation {
        serde_json::from_value(json!({
            "id": "inv_0000000000000001", "skill": "restart-service", "version": "1.0.0",
            "digest": "sha256:00", "target": "local", "input": {}, "reason": "down",
            "requester": "alice", "level": level, "approvals_required": required,
            "invocation_digest": "d", "state": "pending_approval", "grants": grants,
            "verdict": {"decision": {"decision": "allow"}, "level": 0, "reasons": []},
            "reasons": [], "created_at": "2026-01-01T00:00:00.000Z",
            "expires_at": "2026-01-01T01:00:00.000Z", "expires_ms": 1_767_229_200_000_i64,
            "approvals": [], "result": null,
        }))
        .expect("an invocation")
    }

    /// The level shown is not bound, the grants are: a server that shows an L3 repair as L1
    /// with one approval needed gets no signature.
    #[test]
    fn a_level_shown_below_what_the_bound_grants_imply_is_not_signed() {
        let grants = json!({
            "fs_read": [], "fs_write": [], "service_restart": [], "service_reload": [],
            "http": [], "tcp": [],
            "exec": [{"program": "/usr/bin/sh", "args": ["-c", "{cmd}"]}],
        });
        let why = understated(&shown(1, 1, grants.clone())).expect("understated");
        assert!(why.contains("shown as L1") && why.contains("L3"), "{why}");
        assert!(understated(&shown(3, 2, grants.clone())).is_none());
        let why = understated(&shown(3, 1, grants)).expect("too few approvals");
        assert!(why.contains("needs 2"), "{why}");
        let none = json!({
            "fs_read": ["/var/log"], "fs_write": [], "exec": [], "service_restart": [],
            "service_reload": [], "http": [], "tcp": [],
        });
        assert!(understated(&shown(1, 1, none.clone())).is_none());
        assert!(understated(&shown(0, 0, none.clone())).is_none());
        assert!(understated(&shown(9, 2, none)).is_some());
    }
}
