//! `tend registry serve | token create`: run a skill registry and hand out its tokens.

use std::path::PathBuf;
use std::sync::Arc;

use tend_registry::server::{AppState, router};
use tend_registry::store::{Role, Store};

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
    },
}

pub async fn run(cmd: RegistryCommand) -> Result<u8, Failure> {
    match cmd {
        RegistryCommand::Token(TokenCommand::Create { data, name, role }) => {
            let role: Role = role.parse().map_err(Failure::bad_input)?;
            let store = Store::open(&data).await.map_err(Failure::host)?;
            let token = store
                .create_token(&name, role)
                .await
                .map_err(Failure::host)?;
            store.close().await;
            eprintln!(
                "created {} token for {name:?}; it is shown once, keep it secret:",
                role.as_str()
            );
            crate::out(&token);
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
