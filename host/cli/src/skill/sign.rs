//! `tend skill sign` and `tend skill verify`.

use std::path::{Path, PathBuf};

use serde::Serialize;
use tend_registry::envelope::{self, Envelope};
use tend_registry::keys;
use tend_registry::trust::{TrustPolicy, VerifyOptions};

use crate::{Failure, read_component};

/// `<component>.sig` beside the component.
pub fn default_signature_path(component: &Path) -> PathBuf {
    let mut name = component.as_os_str().to_owned();
    name.push(".sig");
    PathBuf::from(name)
}

#[cfg(feature = "authoring")]
pub fn sign(
    component: &Path,
    manifest: &Path,
    key: &Path,
    out: Option<PathBuf>,
) -> Result<u8, Failure> {
    let bytes = read_component(component)?;
    let manifest_text = std::fs::read_to_string(manifest).map_err(|e| {
        Failure::bad_input(format!("cannot read manifest {}: {e}", manifest.display()))
    })?;
    let key = keys::read_private_key(key).map_err(Failure::bad_input)?;
    let env = envelope::sign(&bytes, &manifest_text, &key)
        .map_err(|e| Failure::bad_input(format!("{}: {e}", manifest.display())))?;
    // Signing is the last moment the publisher can still fix what readers of the manifest see.
    if let Some(w) = tend_runtime::Manifest::parse(&manifest_text, &manifest.display().to_string())
        .ok()
        .as_ref()
        .and_then(super::build::level_warning)
    {
        eprintln!("warning: {}: {w}", manifest.display());
    }
    let out = out.unwrap_or_else(|| default_signature_path(component));
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(Failure::host)?;
    std::io::Write::write_all(&mut tmp, env.to_json().as_bytes()).map_err(Failure::host)?;
    tmp.persist(&out).map_err(|e| Failure::host(e.error))?;
    crate::out(&format!(
        "signed {} (sha256:{}) with key {}\nwrote {}",
        component.display(),
        env.component_sha256,
        env.key_id,
        out.display()
    ));
    Ok(0)
}

#[derive(Serialize)]
struct Verdict<'a> {
    trusted: bool,
    skill: Option<&'a str>,
    version: Option<&'a str>,
    digest: Option<&'a str>,
    publisher: Option<&'a str>,
    key_id: Option<&'a str>,
    reasons: Vec<String>,
}

pub fn verify(
    component: &Path,
    trust: &Path,
    signature: Option<PathBuf>,
    allow_downgrade: bool,
    json: bool,
) -> Result<u8, Failure> {
    let bytes = read_component(component)?;
    let policy = TrustPolicy::from_file(trust).map_err(Failure::bad_input)?;
    let sig_path = signature.unwrap_or_else(|| default_signature_path(component));
    let sig = std::fs::read(&sig_path).map_err(|e| {
        Failure::bad_input(format!(
            "{}: no signature envelope at {} ({e}); sign it with `tend skill sign`",
            component.display(),
            sig_path.display()
        ))
    })?;
    let env = Envelope::parse(&sig)
        .map_err(|e| Failure::bad_input(format!("{}: {e}", sig_path.display())))?;
    match policy.verify(&bytes, &env, VerifyOptions { allow_downgrade }) {
        Ok(v) => {
            if json {
                let verdict = Verdict {
                    trusted: true,
                    skill: Some(&v.manifest.skill.name),
                    version: Some(&v.manifest.skill.version),
                    digest: Some(&v.digest),
                    publisher: Some(&v.publisher),
                    key_id: Some(&v.key_id),
                    reasons: v.reasons.clone(),
                };
                crate::out(&serde_json::to_string_pretty(&verdict).map_err(Failure::host)?);
            } else {
                crate::out(&format!(
                    "trusted: {} {} ({}) signed by {} (key {})",
                    v.manifest.skill.name,
                    v.manifest.skill.version,
                    v.digest,
                    v.publisher,
                    v.key_id
                ));
                for r in &v.reasons {
                    crate::out(&format!("  - {r}"));
                }
            }
            Ok(0)
        }
        Err(e) => {
            if json {
                let verdict = Verdict {
                    trusted: false,
                    skill: None,
                    version: None,
                    digest: None,
                    publisher: None,
                    key_id: Some(&env.key_id),
                    reasons: vec![e.to_string()],
                };
                crate::out(&serde_json::to_string_pretty(&verdict).map_err(Failure::host)?);
            }
            Err(Failure::bad_input(format!(
                "not trusted: {}: {e}",
                component.display()
            )))
        }
    }
}
