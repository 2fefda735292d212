//! Filesystem grants: each `fs_read` directory is preopened read-only (and each `fs_write`
//! directory read-write) at the same path in the guest. cap-std resolves every guest path
//! inside its preopen, so `..` and symlinks cannot lead out of it. Nothing else is visible.

use std::path::Path;

use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

/// Preopen the granted directories; one that is missing or not a directory on this host is
/// skipped with a note rather than failing the invocation.
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
        if !Path::new(path).is_dir() {
            notes.push(format!(
                "fs grant {path} is not a directory on this host; not mounted"
            ));
            continue;
        }
        if let Err(e) = builder.preopened_dir(path, path, perms) {
            notes.push(format!(
                "fs grant {path} could not be opened: {e}; not mounted"
            ));
        }
    }
}
