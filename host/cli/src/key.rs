//! `tend key ...`: publisher keys for signing skills.

use std::path::PathBuf;

use serde::Serialize;
use tend_registry::keys::{self, PublicKey};

use crate::Failure;

#[derive(Debug, clap::Subcommand)]
pub enum KeyCommand {
    /// Make a new ed25519 signing key (PKCS#8 PEM, mode 0600); never overwrites a file
    Gen {
        /// Where to write the private key
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Show a key's id and its public key, ready to paste into a trust policy
    Show {
        /// The private key file
        file: PathBuf,
        /// Print as JSON
        #[arg(long)]
        json: bool,
    },
}

#[derive(Serialize)]
struct Shown {
    key_id: String,
    public_key: String,
}

pub fn run(cmd: KeyCommand) -> Result<u8, Failure> {
    match cmd {
        KeyCommand::Gen { out } => {
            let key = keys::generate().map_err(Failure::host)?;
            // `--out ~/.config/tend/me.key` on a fresh machine: make the directory (0700).
            if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
                #[cfg(unix)]
                {
                    use std::os::unix::fs::DirBuilderExt;
                    std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(dir)
                        .map_err(|e| Failure::bad_input(format!("{}: {e}", dir.display())))?;
                }
            }
            keys::write_private_key(&out, &key).map_err(Failure::bad_input)?;
            let public = PublicKey(key.verifying_key());
            crate::out(&format!(
                "wrote {} (mode 0600)\nkey id:     {}\npublic key: {public}",
                out.display(),
                public.key_id()
            ));
            Ok(0)
        }
        KeyCommand::Show { file, json } => {
            let key = keys::read_private_key(&file).map_err(Failure::bad_input)?;
            let public = PublicKey(key.verifying_key());
            let shown = Shown {
                key_id: public.key_id(),
                public_key: public.to_string(),
            };
            if json {
                crate::out(&serde_json::to_string_pretty(&shown).map_err(Failure::host)?);
            } else {
                crate::out(&format!(
                    "key id:     {}\npublic key: {}\n\nTo trust it, add to trust.toml:\n[[publishers]]\nname = \"your-name\"\nkey = \"{}\"\nprefixes = [\"*\"]",
                    shown.key_id, shown.public_key, shown.public_key
                ));
            }
            Ok(0)
        }
    }
}
