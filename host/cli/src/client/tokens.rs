//! `tend token create|list|revoke|rotate`: API tokens over the orchestrator's admin API. A
//! token's secret is printed once, on stdout alone (so `TOKEN=$(tend token create ...)` works);
//! lists never hold one. (`tend orchestrator token create` writes to the database directly:
//! the way back in when no admin token is left.)

use tend_protocol::{CreatedToken, NewToken, RevokedToken, RotateToken, TokenInfo};

use super::config::ConnArgs;
use super::http::Client;
use super::output;
use crate::{Failure, exit, out};

#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Create a token (admin); its secret is printed once
    Create {
        /// Who it is: the actor of everything done with it (approvers: the name their key is
        /// registered under)
        #[arg(long)]
        name: String,
        /// viewer, operator, approver or admin
        #[arg(long)]
        role: String,
        /// It stops working after this long (30d, 12h, 90m) [default: until revoked]
        #[arg(long, value_name = "DURATION")]
        expires: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// The tokens, without their secrets (admin)
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Revoke a token by its prefix (admin): it stops working on every replica within a second
    Revoke {
        /// The prefix `tend token list` shows (12 hex digits)
        prefix: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Replace a token by a new one for the same name and role, revoking the old (admin)
    Rotate {
        prefix: String,
        #[arg(long, value_name = "DURATION")]
        expires: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: ConnArgs,
    },
}

fn prefix_path(prefix: &str, action: &str) -> Result<String, Failure> {
    if tend_protocol::tokens::is_token_prefix(prefix) {
        Ok(format!("/api/v1/tokens/{prefix}/{action}"))
    } else {
        Err(Failure::bad_input(format!(
            "{:?} is not a token prefix (12 hex digits, as `tend token list` shows)",
            prefix.chars().take(40).collect::<String>()
        )))
    }
}

fn created(token: &CreatedToken, json: bool) {
    if json {
        out(&serde_json::to_string(token).unwrap_or_default());
        return;
    }
    out(&token.token);
    eprintln!(
        "token {} for {} ({}), {}: it is shown only now",
        token.prefix,
        token.name,
        token.role,
        token
            .expires_at
            .as_deref()
            .map_or("valid until revoked".to_string(), |e| format!(
                "expires {e}"
            ))
    );
}

pub async fn run(cmd: TokenCommand) -> Result<u8, Failure> {
    match cmd {
        TokenCommand::Create {
            name,
            role,
            expires,
            json,
            conn,
        } => {
            let client = Client::from_args(&conn)?;
            let body = NewToken {
                name,
                role,
                expires_in: expires,
            };
            let token: CreatedToken = client.post("/api/v1/tokens", &body).await?;
            created(&token, json);
        }
        TokenCommand::List { json, conn } => {
            let client = Client::from_args(&conn)?;
            let list: Vec<TokenInfo> = client.get("/api/v1/tokens").await?;
            if json {
                out(&serde_json::to_string(&list).unwrap_or_default());
                return Ok(exit::OK);
            }
            let rows = list
                .iter()
                .map(|t| {
                    let state = match (&t.revoked_at, &t.expires_at) {
                        (Some(at), _) => format!(
                            "revoked {} by {}",
                            output::age(at),
                            t.revoked_by.as_deref().unwrap_or("?")
                        ),
                        (None, Some(e)) => format!("expires {}", output::relative(e)),
                        (None, None) => "valid".to_string(),
                    };
                    vec![
                        t.prefix.clone(),
                        t.name.clone(),
                        t.role.clone(),
                        output::age(&t.created_at),
                        state,
                    ]
                })
                .collect();
            out(output::table(&["PREFIX", "NAME", "ROLE", "AGE", "STATE"], rows).trim_end());
        }
        TokenCommand::Revoke { prefix, json, conn } => {
            let path = prefix_path(&prefix, "revoke")?;
            let client = Client::from_args(&conn)?;
            let revoked: RevokedToken = client.post(&path, &serde_json::json!({})).await?;
            if json {
                out(&serde_json::to_string(&revoked).unwrap_or_default());
            } else if revoked.already_revoked {
                out(&format!(
                    "token {prefix} ({}) was already revoked",
                    revoked.token.name
                ));
            } else {
                out(&format!(
                    "token {prefix} ({}, {}) is revoked: every replica refuses it within a second",
                    revoked.token.name, revoked.token.role
                ));
            }
        }
        TokenCommand::Rotate {
            prefix,
            expires,
            json,
            conn,
        } => {
            let path = prefix_path(&prefix, "rotate")?;
            let client = Client::from_args(&conn)?;
            let token: CreatedToken = client
                .post(
                    &path,
                    &RotateToken {
                        expires_in: expires,
                    },
                )
                .await?;
            created(&token, json);
            if !json {
                eprintln!("the old token {prefix} is revoked");
            }
        }
    }
    Ok(exit::OK)
}
