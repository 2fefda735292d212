//! Filesystem grants: each `fs_read` directory is preopened read-only (and each `fs_write`
//! directory read-write) at the same path in the guest. cap-std resolves every guest path
//! inside its preopen, so `..` and symlinks cannot lead out of it. Nothing else is visible.
//!
//! The grant root itself is opened exactly: a root that is a symlink, or that is reached
//! through one (`/srv/data` where `/srv` links to `/root`), is refused, because the policy
//! judged the path as written and must not be made to open another place. The directory is
//! opened once without following a final symlink, its real path is read back from the open
//! descriptor, and that same descriptor is what the guest gets (no window to swap it).

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use rustix::fs::{FileType, Mode, OFlags};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

/// Preopen the granted directories; one that is missing, not a directory, or reached through
/// a symlink on this host is skipped with a note rather than failing the invocation.
pub fn preopen(
    builder: &mut WasiCtxBuilder,
    read: &[String],
    write: &[String],
    notes: &mut Vec<String>,
) {
    let grants = read
        .iter()
        .map(|p| (p, FsPerms::ReadOnly))
        .chain(write.iter().map(|p| (p, FsPerms::ReadWrite)));
    for (path, perms) in grants {
        let dir = match open_exact(path) {
            Ok(dir) => dir,
            Err(why) => {
                notes.push(format!("fs grant {path} {why}; not mounted"));
                continue;
            }
        };
        // Reopening through the descriptor gives the guest the very directory checked above.
        let by_fd = format!("/proc/self/fd/{}", dir.as_raw_fd());
        if let Err(e) = builder.preopened_dir(&by_fd, path, perms) {
            notes.push(format!(
                "fs grant {path} could not be opened: {e}; not mounted"
            ));
        }
    }
}

/// Open `path` as a directory, refusing a symlink at any component.
fn open_exact(path: &str) -> Result<OwnedFd, String> {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err("is a symlink (grant the directory it points to)".into());
    }
    if !Path::new(path).is_dir() {
        return Err("is not a directory on this host".into());
    }
    let dir = rustix::fs::open(
        path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("could not be opened: {e}"))?;
    let stat = rustix::fs::fstat(&dir).map_err(|e| format!("could not be examined: {e}"))?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::Directory {
        return Err("is a symlink or not a directory".into());
    }
    let real = std::fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd()))
        .map_err(|e| format!("could not be resolved: {e}"))?;
    if real != Path::new(path) {
        return Err(format!(
            "is reached through a symlink (it is really {}); grant the real path",
            real.display()
        ));
    }
    Ok(dir)
}
