//! On-disk cache of precompiled components, so nothing is compiled on the invoke path.
//!
//! An entry is `<sha256>.<wasmtime version>.<engine hash>.cwasm` plus a `.meta` JSON sidecar
//! naming the component it was made from and the identity of the cwasm file as written (inode,
//! size, modification and change times). Precompiled code is native code that wasmtime trusts,
//! so before an entry is used the cache checks, on the open file descriptors (no path is
//! followed twice): that the directory is the current user's and writable by no one else, that
//! both files are regular files owned by the current user with no group or other permissions,
//! opened without following a symlink, that the sidecar names the requested component, and
//! that the cwasm is still the very file this process family wrote (any write, truncate,
//! rename onto it or chmod changes its change time, which no unprivileged process can set).
//! It does not re-hash the precompiled file: that cost ~70 ms for the 41 MB entry of a Python
//! skill and protects only against someone who can already write as this user
//! (docs/runtime.md gives the reasoning). Writes go to a temp file and are renamed into place:
//! a crash leaves no half entry.

use std::fs;
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::fs::{Mode, OFlags};

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
    wasmtime: String,
    /// The cwasm file as it was when this process family wrote it.
    cwasm: FileStamp,
}

/// What identifies one version of a file without reading it: any write, truncate, chmod or
/// rename onto the path gives a different inode, size or change time (`ctime`, which only the
/// kernel sets: no unprivileged call can put it back).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct FileStamp {
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileStamp {
    fn of(md: &fs::Metadata) -> FileStamp {
        FileStamp {
            ino: md.ino(),
            size: md.size(),
            mtime: (md.mtime(), md.mtime_nsec()),
            ctime: (md.ctime(), md.ctime_nsec()),
        }
    }
}

/// The longest a filesystem's clock may lag the system clock: file times come from the kernel's
/// coarse clock, which advances once a tick (1–10 ms).
const COARSE_CLOCK_LAG: Duration = Duration::from_millis(12);

/// Wait until a change made from now on would get a change time other than `ctime`. Called
/// once per write, after a compile that took far longer; without it a write within the same
/// clock tick as ours could keep the recorded ctime.
fn settle(ctime: (i64, i64)) {
    // A filesystem that keeps whole seconds only shows nanoseconds of 0: wait for the next second.
    let lag = if ctime.1 == 0 {
        Duration::from_secs(1)
    } else {
        COARSE_CLOCK_LAG
    };
    let (Ok(secs), Ok(nanos)) = (u64::try_from(ctime.0), u32::try_from(ctime.1)) else {
        return;
    };
    let stamped = std::time::UNIX_EPOCH + Duration::new(secs, nanos);
    let until = stamped + lag;
    if let Ok(left) = until.duration_since(std::time::SystemTime::now()) {
        std::thread::sleep(left.min(Duration::from_secs(1) + COARSE_CLOCK_LAG));
    }
}

/// Why a cache entry was not used.
#[derive(Debug)]
enum Miss {
    /// No entry: compile.
    Absent,
    /// An entry that must not be trusted: remove it and compile.
    Unsound(String),
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

    /// File names (in [`ComponentCache::dir`]) of the entry for `digest`. The precompiled code
    /// depends only on the component bytes and the engine (its compiler settings, tunables and
    /// wasmtime version); the manifest is applied at link and invoke time, from the verified
    /// envelope, on every load.
    fn names(&self, digest: &str) -> (String, String) {
        let stem = format!("{digest}.{}", self.engine_key);
        (format!("{stem}.cwasm"), format!("{stem}.meta"))
    }

    /// Load the precompiled component for `digest` (hex sha256 of the component bytes), if a
    /// sound entry exists. A foreign, changed or corrupt entry is removed and reported as a miss.
    pub fn get(&self, engine: &Engine, digest: &str) -> Option<Component> {
        let (cwasm, meta) = self.names(digest);
        let why = match self.open_entry(digest, &cwasm, &meta) {
            Ok(file) => match deserialize(engine, &file, &self.dir.join(&cwasm)) {
                Ok(c) => return Some(c),
                Err(e) => format!("{e:#}"),
            },
            Err(Miss::Absent) => return None,
            Err(Miss::Unsound(why)) => why,
        };
        tracing::warn!(path = %self.dir.join(&cwasm).display(), "discarding cache entry: {why}");
        let _ = fs::remove_file(self.dir.join(&cwasm));
        let _ = fs::remove_file(self.dir.join(&meta));
        None
    }

    /// Open the entry's files through a descriptor of the checked directory, and check them on
    /// the descriptors: what is checked is what is loaded.
    fn open_entry(&self, digest: &str, cwasm: &str, meta: &str) -> Result<fs::File, Miss> {
        let dir = rustix::fs::open(
            &self.dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Miss::Unsound(format!("cannot open the directory: {e}")))?;
        let st = rustix::fs::fstat(&dir).map_err(|e| Miss::Unsound(format!("directory: {e}")))?;
        if st.st_uid != rustix::process::geteuid().as_raw() || st.st_mode & 0o022 != 0 {
            return Err(Miss::Unsound(format!(
                "the directory is owned by uid {} with mode {:o}",
                st.st_uid,
                st.st_mode & 0o777
            )));
        }
        let meta_file = match open_private(&dir, meta) {
            Ok(f) => f,
            Err(Miss::Unsound(why)) if why == NOT_FOUND => return Err(Miss::Absent),
            Err(e) => return Err(e),
        };
        let mut meta_text = String::new();
        (&meta_file.0)
            .read_to_string(&mut meta_text)
            .map_err(|e| Miss::Unsound(format!("sidecar: {e}")))?;
        let m: Meta = serde_json::from_str(&meta_text)
            .map_err(|e| Miss::Unsound(format!("bad sidecar: {e}")))?;
        if m.component_sha256 != digest {
            return Err(Miss::Unsound(format!(
                "made from {}, not from {digest}",
                m.component_sha256
            )));
        }
        let (file, md) = open_private(&dir, cwasm)?;
        if FileStamp::of(&md) != m.cwasm {
            return Err(Miss::Unsound(
                "the precompiled file changed after it was written".into(),
            ));
        }
        Ok(file)
    }

    /// Store a precompiled component. Atomic: temp file + rename, cwasm before its sidecar.
    pub fn put(&self, digest: &str, cwasm_bytes: &[u8]) -> Result<(), CacheError> {
        let (cwasm, meta) = self.names(digest);
        let (cwasm, meta) = (self.dir.join(cwasm), self.dir.join(meta));
        let written = self.write_atomic(&cwasm, cwasm_bytes)?;
        // The stamp is taken after the rename (which itself changes the change time).
        let stamp = FileStamp::of(&written.metadata().map_err(io(&cwasm))?);
        settle(stamp.ctime);
        let m = Meta {
            component_sha256: digest.to_string(),
            wasmtime: wasmtime_version().to_string(),
            cwasm: stamp,
        };
        let meta_bytes = serde_json::to_vec(&m).unwrap_or_default();
        self.write_atomic(&meta, &meta_bytes)?;
        Ok(())
    }

    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<fs::File, CacheError> {
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
        })
    }
}

const NOT_FOUND: &str = "not found";

/// Open `name` in `dir` without following a symlink, and check that it is a regular file of
/// the current user's, with one link and no group or other permissions.
fn open_private(dir: &OwnedFd, name: &str) -> Result<(fs::File, fs::Metadata), Miss> {
    let fd = match rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Err(Miss::Unsound(NOT_FOUND.into())),
        Err(rustix::io::Errno::LOOP) => {
            return Err(Miss::Unsound(format!("{name} is a symlink")));
        }
        Err(e) => return Err(Miss::Unsound(format!("cannot open {name}: {e}"))),
    };
    let file = fs::File::from(fd);
    let md = file
        .metadata()
        .map_err(|e| Miss::Unsound(format!("{name}: {e}")))?;
    let uid = rustix::process::geteuid().as_raw();
    if !md.is_file() || md.uid() != uid || md.mode() & 0o077 != 0 || md.nlink() != 1 {
        return Err(Miss::Unsound(format!(
            "{name}: not a private regular file of uid {uid} (owner {}, mode {:o}, {} links)",
            md.uid(),
            md.mode() & 0o7777,
            md.nlink()
        )));
    }
    Ok((file, md))
}

/// The wasmtime version compiled in, part of every cache key.
pub fn wasmtime_version() -> &'static str {
    // Keep in step with the workspace pin; a mismatch only costs a cache miss.
    "48.0.8"
}

#[allow(unsafe_code)]
fn deserialize(engine: &Engine, file: &fs::File, path: &Path) -> wasmtime::Result<Component> {
    // wasmtime maps the file by path; `/proc/self/fd/N` names the very file that was checked
    // (not whatever the path names now). Without /proc, the path in the checked directory,
    // which only the current user can change, is next best.
    let by_fd = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
    let path = if by_fd.exists() {
        by_fd.as_path()
    } else {
        path
    };
    // SAFETY: `Component::deserialize_file` trusts the file to be wasmtime output for this
    // engine. The caller has just checked, on its open descriptor, that the file is a private
    // regular file of the current user's in a directory only that user can write, and that it
    // is unchanged since it was written from this engine's compiler output (docs/runtime.md).
    unsafe { Component::deserialize_file(engine, path) }
}

/// Load a component from bytes this process just produced with `Engine::precompile_component`.
#[allow(unsafe_code)]
pub(crate) fn deserialize_fresh(engine: &Engine, cwasm: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: the bytes come straight from `engine.precompile_component` in this process.
    unsafe { Component::deserialize(engine, cwasm) }
}
