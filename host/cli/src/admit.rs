//! Verify before compile: the one path from a component file to a [`Provenance`] the runtime
//! accepts. A signature envelope beside the component must verify against the trust policy
//! (with the versions this host has already pulled as rollback floors); without one, the
//! component runs only if the operator explicitly said `--insecure-unsigned`.

use std::path::{Path, PathBuf};

use tend_registry::envelope::Envelope;
use tend_registry::local::LocalStore;
use tend_registry::trust::{TrustPolicy, VerifyOptions};
use tend_runtime::{Manifest, Provenance};

use crate::Failure;

/// Where the trust policy is read from.
#[derive(Debug, Clone, clap::Args)]
pub struct TrustArgs {
    /// The trust policy: trusted publisher keys, revocations, rollback floors
    /// [default: $TEND_TRUST, else ~/.config/tend/trust.toml]
    #[arg(long, env = "TEND_TRUST", value_name = "FILE")]
    pub trust: Option<PathBuf>,
    /// Accept a version older than the highest seen (logged and shown in the reasons)
    #[arg(long)]
    pub allow_downgrade: bool,
}

impl TrustArgs {
    pub fn path(&self) -> PathBuf {
        self.trust.clone().unwrap_or_else(|| {
            let home = std::env::var_os("HOME").map_or(PathBuf::from("."), PathBuf::from);
            home.join(".config/tend/trust.toml")
        })
    }

    pub fn policy(&self) -> Result<TrustPolicy, Failure> {
        let path = self.path();
        if !path.exists() {
            return Err(Failure::bad_input(format!(
                "no trust policy at {}: create one listing the publisher keys you trust (see docs/artifact-format.md), or pass --trust FILE",
                path.display()
            )));
        }
        TrustPolicy::from_file(&path).map_err(Failure::bad_input)
    }

    pub fn options(&self) -> VerifyOptions {
        VerifyOptions {
            allow_downgrade: self.allow_downgrade,
        }
    }
}

/// An artifact cleared to load: its manifest and where it came from.
#[derive(Debug)]
pub struct Admitted {
    pub manifest: Option<Manifest>,
    pub provenance: Provenance,
}

pub fn local_store() -> Result<LocalStore, Failure> {
    LocalStore::open(&LocalStore::default_root()).map_err(Failure::host)
}

/// Verify `bytes` (read from `component`) before anything compiles them.
pub fn admit(
    component: &Path,
    bytes: &[u8],
    signature: Option<&Path>,
    manifest: Option<&Path>,
    trust: &TrustArgs,
    insecure_unsigned: bool,
) -> Result<Admitted, Failure> {
    let user_manifest = match manifest {
        Some(path) => Some((
            path,
            std::fs::read_to_string(path).map_err(|e| {
                Failure::bad_input(format!("cannot read manifest {}: {e}", path.display()))
            })?,
        )),
        None => None,
    };
    if insecure_unsigned {
        let manifest = match user_manifest {
            Some((path, text)) => Some(
                Manifest::parse(&text, &path.display().to_string()).map_err(Failure::bad_input)?,
            ),
            None => None,
        };
        tracing::warn!(component = %component.display(), "running an UNSIGNED component (--insecure-unsigned)");
        return Ok(Admitted {
            manifest,
            provenance: Provenance::InsecureUnsigned,
        });
    }
    let sig_path = signature
        .map(Path::to_path_buf)
        .unwrap_or_else(|| crate::skill::default_signature_path(component));
    let sig = match std::fs::read(&sig_path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Failure::bad_input(format!(
                "refusing to run unsigned {}: no signature envelope at {}. Sign it (`tend skill sign`) with a key your trust policy lists, or pass --insecure-unsigned for local development",
                component.display(),
                sig_path.display()
            )));
        }
        Err(e) => {
            return Err(Failure::bad_input(format!(
                "cannot read {}: {e}",
                sig_path.display()
            )));
        }
    };
    let envelope = Envelope::parse(&sig)
        .map_err(|e| Failure::bad_input(format!("{}: {e}", sig_path.display())))?;
    let policy = local_store()?
        .with_seen_floors(&trust.policy()?)
        .map_err(Failure::bad_input)?;
    let verified = policy
        .verify(bytes, &envelope, trust.options())
        .map_err(|e| Failure::bad_input(format!("not trusted: {}: {e}", component.display())))?;
    if let Some((path, text)) = user_manifest
        && text != verified.manifest_text
    {
        return Err(Failure::bad_input(format!(
            "{} differs from the manifest signed in {}: a signed skill runs with its signed manifest (drop --manifest, or sign the new one)",
            path.display(),
            sig_path.display()
        )));
    }
    tracing::info!(
        skill = %verified.manifest.skill.name, digest = %verified.digest,
        publisher = %verified.publisher, key_id = %verified.key_id, "verified"
    );
    Ok(Admitted {
        manifest: Some(verified.manifest.clone()),
        provenance: Provenance::Signed {
            publisher: verified.publisher.clone(),
            key_id: verified.key_id.clone(),
            digest: verified.digest.clone(),
        },
    })
}
