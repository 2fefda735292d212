//! The local skill store: what this host has pulled, and what it has seen.
//!
//! ```text
//! <data>/skills/<name>/<version>/component.wasm       the verified component
//! <data>/skills/<name>/<version>/component.wasm.sig   its signature envelope
//! <data>/seen.toml                                    highest version seen per skill, and the
//!                                                     last publication-log head per registry
//! ```
//!
//! The versions in `seen.toml` act as rollback floors on top of the trust policy's own
//! `[versions]`: once this host has pulled 1.2.0, pulling 1.1.0 needs `--allow-downgrade`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::envelope::Envelope;
use crate::publog::Checkpoint;
use crate::trust::{TrustPolicy, Verified};

#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Seen {
    #[serde(default)]
    versions: BTreeMap<String, String>,
    #[serde(default)]
    registries: BTreeMap<String, Checkpoint>,
}

/// A pulled skill on disk.
#[derive(Debug, Clone)]
pub struct Installed {
    pub name: String,
    pub version: String,
    pub component: PathBuf,
    pub signature: PathBuf,
}

fn higher(a: &str, b: &str) -> bool {
    match (semver::Version::parse(a), semver::Version::parse(b)) {
        (Ok(a), Ok(b)) => a > b,
        _ => false,
    }
}

/// The local skill store could not be read or written; the message names the file.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `seen.toml` is not what tend writes.
    #[error("{}:{line}: {message}", path.display())]
    Seen {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> LocalError {
    let path = path.to_path_buf();
    move |source| LocalError::Io {
        action,
        path,
        source,
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), LocalError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io("write in", dir))?;
    std::io::Write::write_all(&mut tmp, bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(io("write", path))?;
    tmp.persist(path).map_err(|e| io("write", path)(e.error))?;
    Ok(())
}

impl LocalStore {
    /// `$TEND_DATA_DIR`, else `~/.local/share/tend`.
    pub fn default_root() -> PathBuf {
        if let Some(d) = std::env::var_os("TEND_DATA_DIR") {
            return PathBuf::from(d);
        }
        let home = std::env::var_os("HOME").map_or(PathBuf::from("."), PathBuf::from);
        home.join(".local/share/tend")
    }

    pub fn open(root: &Path) -> Result<LocalStore, LocalError> {
        let skills = root.join("skills");
        std::fs::create_dir_all(&skills).map_err(io("create", &skills))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700));
        }
        Ok(LocalStore {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn seen_path(&self) -> PathBuf {
        self.root.join("seen.toml")
    }

    fn seen(&self) -> Result<Seen, LocalError> {
        let path = self.seen_path();
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|e| LocalError::Seen {
                line: tend_manifest::toml_error_line(&text, &e),
                message: e.message().trim().to_string(),
                path,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Seen::default()),
            Err(e) => Err(io("read", &path)(e)),
        }
    }

    fn save_seen(&self, seen: &Seen) -> Result<(), LocalError> {
        let text = toml::to_string(seen).map_err(|e| LocalError::Seen {
            path: self.seen_path(),
            line: 1,
            message: e.to_string(),
        })?;
        write_atomic(
            &self.seen_path(),
            format!("# Written by tend: the highest version seen per skill, and the last\n# publication-log head seen per registry. Rollback protection reads it.\n{text}").as_bytes(),
        )
    }

    /// The trust policy with this host's seen versions added as rollback floors.
    pub fn with_seen_floors(&self, trust: &TrustPolicy) -> Result<TrustPolicy, LocalError> {
        let mut policy = trust.clone();
        for (name, v) in self.seen()?.versions {
            let floor = policy.versions.entry(name).or_insert_with(|| v.clone());
            if higher(&v, floor) {
                *floor = v;
            }
        }
        Ok(policy)
    }

    pub fn checkpoint(&self, registry: &str) -> Result<Option<Checkpoint>, LocalError> {
        Ok(self.seen()?.registries.get(registry).cloned())
    }

    pub fn set_checkpoint(&self, registry: &str, head: &Checkpoint) -> Result<(), LocalError> {
        let mut seen = self.seen()?;
        seen.registries.insert(registry.to_string(), head.clone());
        self.save_seen(&seen)
    }

    /// Store a verified component and its envelope, and record its version as seen.
    pub fn install(
        &self,
        component: &[u8],
        envelope: &Envelope,
        verified: &Verified,
    ) -> Result<Installed, LocalError> {
        let name = &verified.manifest.skill.name;
        let version = &verified.manifest.skill.version;
        let parent = self.root.join("skills").join(name);
        std::fs::create_dir_all(&parent).map_err(io("create", &parent))?;
        let staging = tempfile::TempDir::new_in(&parent).map_err(io("write in", &parent))?;
        write_atomic(&staging.path().join("component.wasm"), component)?;
        write_atomic(
            &staging.path().join("component.wasm.sig"),
            envelope.to_json().as_bytes(),
        )?;
        let dest = parent.join(version);
        // What is installed is the component *and* the manifest it was verified under: the same
        // bytes under another signed manifest (other grants, another level) replace it whole.
        let same = std::fs::read(dest.join("component.wasm")).is_ok_and(|old| {
            crate::envelope::sha256_hex(&old) == crate::envelope::sha256_hex(component)
        }) && std::fs::read(dest.join("component.wasm.sig"))
            .is_ok_and(|old| old == envelope.to_json().as_bytes());
        if !same {
            // Swap in the new directory whole: move any old one aside first, then rename.
            if dest.exists() {
                let aside = tempfile::TempDir::new_in(&parent).map_err(io("write in", &parent))?;
                std::fs::rename(&dest, aside.path().join("old")).map_err(io("replace", &dest))?;
            }
            std::fs::rename(staging.keep(), &dest).map_err(io("write", &dest))?;
        }
        let mut seen = self.seen()?;
        let record = seen
            .versions
            .get(name.as_str())
            .is_none_or(|old| higher(version, old));
        if record {
            seen.versions.insert(name.to_string(), version.clone());
            self.save_seen(&seen)?;
        }
        Ok(self.installed(name, version))
    }

    fn installed(&self, name: &str, version: &str) -> Installed {
        let dir = self.root.join("skills").join(name).join(version);
        Installed {
            name: name.to_string(),
            version: version.to_string(),
            component: dir.join("component.wasm"),
            signature: dir.join("component.wasm.sig"),
        }
    }

    /// A pulled skill: that version, or the highest one on disk.
    pub fn find(&self, name: &str, version: Option<&str>) -> Option<Installed> {
        let dir = self.root.join("skills").join(name);
        let version = match version {
            Some(v) => v.to_string(),
            None => std::fs::read_dir(&dir)
                .ok()?
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter_map(|v| semver::Version::parse(&v).ok())
                .max()?
                .to_string(),
        };
        let found = self.installed(name, &version);
        found.component.is_file().then_some(found)
    }
}
