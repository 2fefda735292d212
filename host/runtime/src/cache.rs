//! On-disk cache of precompiled components, so nothing is compiled on the invoke path.
//!
//! An entry is `<sha256>.<wasmtime version>.<engine hash>.cwasm` plus a `.meta` JSON sidecar
//! holding the digest of the component it was made from and the sha256 of the cwasm itself.
//! Precompiled code is native code that wasmtime trusts, so before loading an entry the cache
//! checks that the directory is the owner's alone (0700), that the files are 0600, that the
//! sidecar names the requested component, and that the cwasm hashes to what was recorded.
//! Writes go to a temp file and are renamed into place: a crash leaves no half entry.

use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache directory {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cache directory {path} is not safe to load native code from: {why} (fix it with `chmod 700 {path}` or choose another --cache-dir)"
    )]
    Unsafe { path: PathBuf, why: String },
}

#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    component_sha256: String,
    cwasm_sha256: String,
    wasmtime: String,
}

/// A directory of precompiled components for one engine configuration.
#[derive(Debug, Clone)]
pub struct ComponentCache {
    dir: PathBuf,
    engine_key: String,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The default cache directory: `$TEND_CACHE_DIR`, else `$XDG_CACHE_HOME/tend/components`,
/// else `~/.cache/tend/components`.
pub fn default_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("TEND_CACHE_DIR") {
        return PathBuf::from(d);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| std::env::temp_dir().join("tend-cache"));
    base.join("tend").join("components")
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl ComponentCache {
    /// Open (creating with mode 0700 if needed) a cache directory for `engine`.
    pub fn open(dir: &Path, engine: &Engine) -> Result<Self, CacheError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(dir))?;
        let md = fs::metadata(dir).map_err(io(dir))?;
        let uid = rustix::process::geteuid().as_raw();
        if md.uid() != uid {
            return Err(CacheError::Unsafe {
                path: dir.to_path_buf(),
                why: format!("owned by uid {}, not by uid {uid}", md.uid()),
            });
        }
        if md.mode() & 0o022 != 0 {
            return Err(CacheError::Unsafe {
                path: dir.to_path_buf(),
                why: format!("writable by others (mode {:o})", md.mode() & 0o777),
            });
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        Ok(ComponentCache {
            dir: dir.to_path_buf(),
            engine_key: format!("{}.{:016x}", wasmtime_version(), h.finish()),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn paths(&self, digest: &str) -> (PathBuf, PathBuf) {
        let stem = format!("{digest}.{}", self.engine_key);
        (
            self.dir.join(format!("{stem}.cwasm")),
            self.dir.join(format!("{stem}.meta")),
        )
    }

    /// Load the precompiled component for `digest` (hex sha256 of the component bytes), if a
    /// sound entry exists. A corrupt or foreign entry is removed and reported as a miss.
    pub fn get(&self, engine: &Engine, digest: &str) -> Option<Component> {
        let (cwasm, meta) = self.paths(digest);
        let meta_text = fs::read_to_string(&meta).ok()?;
        match self.check(&cwasm, &meta_text, digest) {
            Ok(()) => {}
            Err(why) => {
                tracing::warn!(path = %cwasm.display(), "discarding cache entry: {why}");
                let _ = fs::remove_file(&cwasm);
                let _ = fs::remove_file(&meta);
                return None;
            }
        }
        match deserialize(engine, &cwasm) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(path = %cwasm.display(), error = %e, "discarding cache entry");
                let _ = fs::remove_file(&cwasm);
                let _ = fs::remove_file(&meta);
                None
            }
        }
    }

    fn check(&self, cwasm: &Path, meta_text: &str, digest: &str) -> Result<(), String> {
        let meta: Meta =
            serde_json::from_str(meta_text).map_err(|e| format!("bad sidecar: {e}"))?;
        if meta.component_sha256 != digest {
            return Err(format!(
                "made from {}, not from {digest}",
                meta.component_sha256
            ));
        }
        let md = fs::metadata(cwasm).map_err(|e| e.to_string())?;
        if md.mode() & 0o077 != 0 || md.uid() != rustix::process::geteuid().as_raw() {
            return Err(format!("unsafe owner or mode {:o}", md.mode() & 0o777));
        }
        let bytes = fs::read(cwasm).map_err(|e| e.to_string())?;
        if sha256_hex(&bytes) != meta.cwasm_sha256 {
            return Err("precompiled bytes do not match their recorded hash".into());
        }
        Ok(())
    }

    /// Store a precompiled component. Atomic: temp file + rename, cwasm before its sidecar.
    pub fn put(&self, digest: &str, cwasm_bytes: &[u8]) -> Result<(), CacheError> {
        let (cwasm, meta) = self.paths(digest);
        let m = Meta {
            component_sha256: digest.to_string(),
            cwasm_sha256: sha256_hex(cwasm_bytes),
            wasmtime: wasmtime_version().to_string(),
        };
        let meta_bytes = serde_json::to_vec(&m).unwrap_or_default();
        self.write_atomic(&cwasm, cwasm_bytes)?;
        self.write_atomic(&meta, &meta_bytes)?;
        Ok(())
    }

    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<(), CacheError> {
        let mut tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .permissions(fs::Permissions::from_mode(0o600))
            .tempfile_in(&self.dir)
            .map_err(io(&self.dir))?;
        tmp.write_all(bytes).map_err(io(path))?;
        tmp.as_file().sync_all().map_err(io(path))?;
        tmp.persist(path).map_err(|e| CacheError::Io {
            path: path.to_path_buf(),
            source: e.error,
        })?;
        Ok(())
    }
}

/// The wasmtime version compiled in, part of every cache key.
pub fn wasmtime_version() -> &'static str {
    // Keep in step with the workspace pin; a mismatch only costs a cache miss.
    "48.0.8"
}

#[allow(unsafe_code)]
fn deserialize(engine: &Engine, path: &Path) -> wasmtime::Result<Component> {
    // SAFETY: `Component::deserialize_file` trusts the file to be wasmtime output for this
    // engine. The caller has just checked that the file is owned by us, not writable by
    // others, and hashes to the value recorded when we wrote it from our own compiler.
    unsafe { Component::deserialize_file(engine, path) }
}

/// Load a component from bytes this process just produced with `Engine::precompile_component`.
#[allow(unsafe_code)]
pub(crate) fn deserialize_fresh(engine: &Engine, cwasm: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: the bytes come straight from `engine.precompile_component` in this process.
    unsafe { Component::deserialize(engine, cwasm) }
}
