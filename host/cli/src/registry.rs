//! `tend registry serve | token create|list|revoke`: run a skill registry and manage its
//! tokens (database-direct on its data directory).

use std::path::PathBuf;
use std::sync::Arc;

use tend_registry::server::{AppState, router};
use tend_registry::store::{Role, Store, now_ms};

use crate::Failure;
use crate::admit::TrustArgs;

#[derive(Debug, clap::Subcommand)]
pub enum RegistryCommand {
    /// Serve a skill registry over HTTP
    #[command(
        after_help = "Example:\n  tend registry token create --data /var/lib/tend-registry --name ci --role publisher\n  tend registry serve --listen 127.0.0.1:7070 --data /var/lib/tend-registry --trust /etc/tend/trust.toml\n\nThe registry accepts a publication only if its signature verifies against --trust. Reads are\nopen unless --private. Put TLS in front of it (a reverse proxy) when it is not on loopback."
    )]
    Serve {
        /// Address to listen on
        #[arg(long, default_value = "127.0.0.1:7070", value_name = "ADDR:PORT")]
        listen: String,
        /// Data directory: index.db (SQLite) and blobs/
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        #[command(flatten)]
        trust: TrustArgs,
        /// Reads need a token too (viewer or publisher)
        #[arg(long)]
        private: bool,
    },
    /// Tokens for publishing (and reading a --private registry)
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Create a token; it is printed once and only its hash is stored
    Create {
        /// The registry's data directory
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// Who the token is for (shown in logs and on each publication)
        #[arg(long)]
        name: String,
        /// viewer (read) or publisher (read and publish)
        #[arg(long, value_parser = ["viewer", "publisher"])]
        role: String,
        /// How long it lives, e.g. 30d or 12h (default: until revoked)
        #[arg(long, value_name = "DURATION")]
        expires: Option<String>,
    },
    /// List tokens: prefix, name, role, created, expires, revoked (never a secret)
    List {
        /// The registry's data directory
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by its prefix: refused from the next request on
    Revoke {
        /// The registry's data directory
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// The token's prefix (12 hex digits: `tendreg_<prefix>_...`, or from `token list`)
        prefix: String,
    },
    /// Replace a token by a new one for the same name and role, then revoke the old one
    Rotate {
        /// The registry's data directory
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// The old token's prefix
        prefix: String,
        /// How long the new one lives, e.g. 30d (default: until revoked)
        #[arg(long, value_name = "DURATION")]
        expires: Option<String>,
    },
}

/// `--expires` as an absolute time (unix ms), or none.
fn expiry(expires: Option<&str>) -> Result<Option<i64>, Failure> {
    Ok(expires
        .map(|v| tend_protocol::tokens::parse_lifetime("--expires", v))
        .transpose()
        .map_err(Failure::bad_input)?
        .map(|d| now_ms().saturating_add(d.as_millis().min(i64::MAX as u128) as i64)))
}

fn check_prefix(prefix: &str) -> Result<(), Failure> {
    if tend_protocol::tokens::is_token_prefix(prefix) {
        Ok(())
    } else {
        Err(Failure::bad_input(format!(
            "{:?} is not a token prefix: 12 hex digits (tend registry token list)",
            prefix.chars().take(40).collect::<String>()
        )))
    }
}

/// An existing registry's index (never a new, empty one made by a mistyped path).
async fn open_existing(data: &std::path::Path) -> Result<Store, Failure> {
    if !data.join("index.db").is_file() {
        return Err(Failure::bad_input(format!(
            "--data {}: no registry index there (index.db)",
            data.display()
        )));
    }
    Store::open(data).await.map_err(Failure::host)
}

fn or_dash(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("-")
}

pub async fn run(cmd: RegistryCommand) -> Result<u8, Failure> {
    match cmd {
        RegistryCommand::Token(TokenCommand::Create {
            data,
            name,
            role,
            expires,
        }) => {
            let role: Role = role.parse().map_err(Failure::bad_input)?;
            tend_protocol::tokens::check_token_name("--name", &name).map_err(Failure::bad_input)?;
            let expires_ms = expiry(expires.as_deref())?;
            let store = Store::open(&data).await.map_err(Failure::host)?;
            let token = store
                .create_token(&name, role, expires_ms)
                .await
                .map_err(Failure::host)?;
            store.close().await;
            eprintln!(
                "created {} token for {name:?}{}; it is shown once, keep it secret:",
                role.as_str(),
                expires
                    .map(|e| format!(" (expires in {e})"))
                    .unwrap_or_default()
            );
            crate::out(&token);
            Ok(0)
        }
        RegistryCommand::Token(TokenCommand::List { data, json }) => {
            let store = open_existing(&data).await?;
            let tokens = store.tokens().await.map_err(Failure::host)?;
            store.close().await;
            if json {
                crate::out(&serde_json::to_string_pretty(&tokens).map_err(Failure::host)?);
                return Ok(0);
            }
            crate::out(&format!(
                "{:<12}  {:<24}  {:<9}  {:<20}  {:<20}  REVOKED",
                "PREFIX", "NAME", "ROLE", "CREATED", "EXPIRES"
            ));
            for t in &tokens {
                let revoked = match (&t.revoked_at, &t.revoked_by) {
                    (Some(at), Some(by)) => format!("{at} by {by}"),
                    (Some(at), None) => at.clone(),
                    _ => "-".to_string(),
                };
                crate::out(&format!(
                    "{:<12}  {:<24}  {:<9}  {:<20}  {:<20}  {revoked}",
                    t.prefix,
                    t.name,
                    t.role,
                    t.created_at,
                    or_dash(&t.expires_at)
                ));
            }
            Ok(0)
        }
        RegistryCommand::Token(TokenCommand::Rotate {
            data,
            prefix,
            expires,
        }) => {
            check_prefix(&prefix)?;
            let expires_ms = expiry(expires.as_deref())?;
            let store = open_existing(&data).await?;
            let tokens = store.tokens().await.map_err(Failure::host)?;
            let Some(old) = tokens.iter().find(|t| t.prefix == prefix) else {
                store.close().await;
                return Err(Failure::bad_input(format!(
                    "no token {prefix} in {} (tend registry token list)",
                    data.display()
                )));
            };
            if old.revoked_at.is_some() {
                store.close().await;
                return Err(Failure::bad_input(format!(
                    "token {prefix} is revoked: create a new one (tend registry token create)"
                )));
            }
            let role: Role = old.role.parse().map_err(Failure::bad_input)?;
            // The new token first: a crash in between leaves two working tokens, never none.
            let token = store
                .create_token(&old.name, role, expires_ms)
                .await
                .map_err(Failure::host)?;
            store
                .revoke_token(&prefix, "local-admin")
                .await
                .map_err(Failure::host)?;
            store.close().await;
            eprintln!(
                "new {} token for {:?}; {prefix} is revoked. It is shown once, keep it secret:",
                old.role, old.name
            );
            crate::out(&token);
            Ok(0)
        }
        RegistryCommand::Token(TokenCommand::Revoke { data, prefix }) => {
            check_prefix(&prefix)?;
            let store = open_existing(&data).await?;
            let by = "local-admin";
            let revoked = store
                .revoke_token(&prefix, by)
                .await
                .map_err(Failure::host)?;
            store.close().await;
            let Some((token, already)) = revoked else {
                return Err(Failure::bad_input(format!(
                    "no token {prefix} in {} (tend registry token list)",
                    data.display()
                )));
            };
            if already {
                eprintln!(
                    "token {prefix} ({}) was already revoked at {} by {}",
                    token.name,
                    or_dash(&token.revoked_at),
                    or_dash(&token.revoked_by)
                );
            } else {
                tracing::info!(token = %prefix, name = %token.name, by, "registry token revoked");
                eprintln!(
                    "revoked token {prefix} ({}, {}): the registry refuses it from its next request",
                    token.name, token.role
                );
            }
            Ok(0)
        }
        RegistryCommand::Serve {
            listen,
            data,
            trust,
            private,
        } => {
            let policy = trust.policy()?;
            if policy.publishers.is_empty() {
                eprintln!(
                    "warning: {} lists no publishers: this registry will refuse every publication",
                    trust.path().display()
                );
            }
            let store = Arc::new(Store::open(&data).await.map_err(Failure::host)?);
            let listener = tokio::net::TcpListener::bind(&listen)
                .await
                .map_err(|e| Failure::bad_input(format!("cannot listen on {listen}: {e}")))?;
            let addr = listener.local_addr().map_err(Failure::host)?;
            let app = router(AppState {
                store: store.clone(),
                trust: Arc::new(policy),
                private,
            });
            eprintln!(
                "tend registry listening on http://{addr} (data {}, trust {}{})",
                data.display(),
                trust.path().display(),
                if private { ", private" } else { "" }
            );
            axum::serve(listener, app)
                .with_graceful_shutdown(crate::shutdown_signal())
                .await
                .map_err(Failure::host)?;
            store.close().await;
            eprintln!("tend registry stopped");
            Ok(0)
        }
    }
}
