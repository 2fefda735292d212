//! Results go to disk before they go on the wire: `<dir>/spool/<invocation>.json`, removed only
//! once the orchestrator has acknowledged it. After a crash or restart the agent sends whatever
//! is still there.
//!
//! - A result is written to `.<invocation>.<random>.tmp`, fsynced, renamed into place, and the
//!   directory is fsynced, so a crash leaves either the old state or the whole result. A temp
//!   file found at start (a crash between write and rename) is promoted if it holds a complete
//!   result, and removed otherwise ([`Spool::open`]).
//! - File names come from invocation ids the orchestrator sent, so an id is checked against the
//!   orchestrator's format ([`is_invocation_id`]) before it becomes a path: `../../x` or
//!   `/abs/path` never touch the disk.
//! - A result the orchestrator refuses for good (a 4xx other than authentication) several
//!   times moves to `spool/dead/` ([`Spool::bury`]): kept for an operator, never blocking the
//!   results behind it.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tend_protocol::{JobResult, is_invocation_id};

/// Why a spool operation did nothing.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("{0:?} is not an invocation id (inv_ and 16 hex digits): nothing was written")]
    BadId(String),
    #[error("spool {path}: {message}")]
    Io { path: String, message: String },
}

fn io(path: &Path, e: impl std::fmt::Display) -> SpoolError {
    SpoolError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
    /// Definitive refusals per result since this agent started.
    refusals: Arc<Mutex<HashMap<String, u32>>>,
}

/// Durably record a rename or removal in `dir`.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// The invocation id in a temp file's name `.<id>.<random>.tmp`.
fn tmp_id(name: &str) -> Option<&str> {
    let rest = name.strip_prefix('.')?.strip_suffix(".tmp")?;
    let (id, _) = rest.split_once('.')?;
    Some(id)
}

impl Spool {
    /// Open (or create) `<agent_dir>/spool` and recover what a crash left there.
    pub fn open(agent_dir: &Path) -> Result<Spool, SpoolError> {
        let dir = agent_dir.join("spool");
        std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        let spool = Spool {
            dir,
            refusals: Arc::default(),
        };
        spool.recover();
        Ok(spool)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where a dead-lettered result goes.
    pub fn dead_dir(&self) -> PathBuf {
        self.dir.join("dead")
    }

    fn path(&self, id: &str) -> Result<PathBuf, SpoolError> {
        if !is_invocation_id(id) {
            return Err(SpoolError::BadId(id.chars().take(80).collect()));
        }
        Ok(self.dir.join(format!("{id}.json")))
    }

    /// Temp files left by a crash: a complete result is promoted to the spool (unless a newer
    /// one is already there), anything else is removed.
    fn recover(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.filter_map(Result::ok) {
            let Ok(name) = e.file_name().into_string() else {
                continue;
            };
            if !name.starts_with('.') || !e.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            let tmp = e.path();
            let complete = tmp_id(&name)
                .filter(|id| is_invocation_id(id))
                .zip(std::fs::read(&tmp).ok())
                .filter(|(_, bytes)| serde_json::from_slice::<JobResult>(bytes).is_ok());
            match complete {
                Some((id, _)) => {
                    let Ok(target) = self.path(id) else { continue };
                    if target.exists() {
                        let _ = std::fs::remove_file(&tmp);
                        continue;
                    }
                    match std::fs::rename(&tmp, &target) {
                        Ok(()) => tracing::info!(
                            invocation = %id,
                            "recovered a result a crash left unsent; it will be delivered"
                        ),
                        Err(e) => {
                            tracing::warn!(file = %tmp.display(), error = %e, "cannot recover a spooled result")
                        }
                    }
                }
                None => {
                    tracing::warn!(file = %tmp.display(), "removing an incomplete result a crash left in the spool");
                    let _ = std::fs::remove_file(&tmp);
                }
            }
        }
        let _ = sync_dir(&self.dir);
    }

    /// Write a result durably: temp file, fsync, rename, fsync the directory.
    pub fn put(&self, id: &str, result: &JobResult) -> Result<(), SpoolError> {
        let target = self.path(id)?;
        let bytes = serde_json::to_vec(result).map_err(|e| io(&target, e))?;
        let mut tmp = tempfile::Builder::new()
            .prefix(&format!(".{id}."))
            .suffix(".tmp")
            .tempfile_in(&self.dir)
            .map_err(|e| io(&self.dir, e))?;
        tmp.write_all(&bytes)
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(|e| io(tmp.path(), e))?;
        tmp.persist(&target).map_err(|e| io(&target, e.error))?;
        sync_dir(&self.dir).map_err(|e| io(&self.dir, e))?;
        Ok(())
    }

    /// Count one more definitive refusal of `id`'s result; returns the count so far.
    pub fn refused(&self, id: &str) -> u32 {
        let mut counts = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
        let n = counts.entry(id.to_string()).or_default();
        *n += 1;
        *n
    }

    pub fn remove(&self, id: &str) {
        self.refusals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        if let Ok(path) = self.path(id) {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Move a result the orchestrator will not take to `spool/dead/`, out of the way of the
    /// others.
    pub fn bury(&self, id: &str) -> Result<PathBuf, SpoolError> {
        let from = self.path(id)?;
        let dead = self.dead_dir();
        std::fs::create_dir_all(&dead).map_err(|e| io(&dead, e))?;
        let to = dead.join(format!("{id}.json"));
        std::fs::rename(&from, &to).map_err(|e| io(&from, e))?;
        self.refusals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        let _ = sync_dir(&dead);
        let _ = sync_dir(&self.dir);
        Ok(to)
    }

    /// Everything not yet acknowledged, oldest first. A spooled file that is not a result
    /// (hand-edited, or named after no invocation) is moved to `spool/dead/`.
    pub fn pending(&self) -> Vec<(String, JobResult)> {
        let mut out: Vec<(std::time::SystemTime, String, JobResult)> = Vec::new();
        for e in std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
        {
            let Ok(name) = e.file_name().into_string() else {
                continue;
            };
            let Some(id) = name.strip_suffix(".json") else {
                continue;
            };
            if name.starts_with('.') || !e.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            let Some(modified) = e.metadata().ok().and_then(|m| m.modified().ok()) else {
                continue;
            };
            let parsed = is_invocation_id(id)
                .then(|| std::fs::read(e.path()).ok())
                .flatten()
                .and_then(|b| serde_json::from_slice::<JobResult>(&b).ok());
            match parsed {
                Some(result) => out.push((modified, id.to_string(), result)),
                None => {
                    let dead = self.dead_dir();
                    let moved = std::fs::create_dir_all(&dead)
                        .and_then(|()| std::fs::rename(e.path(), dead.join(&name)));
                    tracing::warn!(file = %e.path().display(), moved = moved.is_ok(), "not a spooled result; moved to spool/dead/");
                }
            }
        }
        out.sort_by_key(|(t, _, _)| *t);
        out.into_iter().map(|(_, id, r)| (id, r)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result() -> JobResult {
        JobResult {
            outcome: "refused".into(),
            report: None,
            refusal: Some("test".into()),
        }
    }

    const ID: &str = "inv_0123456789abcdef";

    /// Every file under `root`, relative.
    fn files(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d)
                .expect("dir")
                .map(|e| e.expect("entry"))
            {
                if e.file_type().expect("type").is_dir() {
                    stack.push(e.path());
                } else {
                    out.push(
                        e.path()
                            .strip_prefix(root)
                            .expect("inside")
                            .display()
                            .to_string(),
                    );
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn ids_from_the_orchestrator_never_leave_the_spool() {
        let root = tempfile::tempdir().expect("tempdir");
        let agent = root.path().join("agent");
        let spool = Spool::open(&agent).expect("open");
        for bad in [
            "../../x",
            "../escaped",
            "/abs/path",
            "/tmp/x",
            "inv_../../../x",
            "inv_0123456789ABCDEF",
            "inv_0123456789abcdef/../../x",
            "inv_0123456789abcde",
            "",
            ".",
            "..",
            "inv_0123456789abcdef\0",
        ] {
            let e = spool.put(bad, &result()).expect_err(bad);
            assert!(matches!(e, SpoolError::BadId(_)), "{bad}: {e}");
            assert!(spool.bury(bad).is_err());
            spool.remove(bad);
        }
        assert_eq!(
            files(root.path()),
            Vec::<String>::new(),
            "something was written"
        );
        spool.put(ID, &result()).expect("a real id");
        assert_eq!(files(root.path()), [format!("agent/spool/{ID}.json")]);
        assert_eq!(spool.pending().len(), 1);
    }

    #[test]
    fn a_crash_mid_write_leaves_a_result_that_is_recovered_or_removed() {
        let root = tempfile::tempdir().expect("tempdir");
        let spool_dir = root.path().join("spool");
        std::fs::create_dir_all(&spool_dir).expect("dir");
        let whole = serde_json::to_vec(&result()).expect("json");
        // Complete, written but not renamed.
        std::fs::write(spool_dir.join(format!(".{ID}.aB3xYz.tmp")), &whole).expect("tmp");
        // Cut short.
        let other = "inv_fedcba9876543210";
        std::fs::write(
            spool_dir.join(format!(".{other}.Qq1234.tmp")),
            &whole[..whole.len() / 2],
        )
        .expect("tmp");
        // A temp file of an older agent, which does not say whose result it is.
        std::fs::write(spool_dir.join(".tmpAbC123"), &whole).expect("tmp");
        let spool = Spool::open(root.path()).expect("open");
        assert_eq!(files(&spool_dir), [format!("{ID}.json")]);
        let pending = spool.pending();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].0, ID);
        assert_eq!(pending[0].1.refusal.as_deref(), Some("test"));
    }

    #[test]
    fn a_newer_result_wins_over_a_leftover() {
        let root = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(root.path()).expect("open");
        spool.put(ID, &result()).expect("put");
        let mut older = result();
        older.refusal = Some("older".into());
        std::fs::write(
            spool.dir().join(format!(".{ID}.zzzzzz.tmp")),
            serde_json::to_vec(&older).expect("json"),
        )
        .expect("tmp");
        let spool = Spool::open(root.path()).expect("open");
        assert_eq!(files(spool.dir()), [format!("{ID}.json")]);
        assert_eq!(spool.pending()[0].1.refusal.as_deref(), Some("test"));
    }

    #[test]
    fn buried_and_unreadable_results_leave_the_queue() {
        let root = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(root.path()).expect("open");
        spool.put(ID, &result()).expect("put");
        std::fs::write(spool.dir().join("inv_1111111111111111.json"), b"{not json").expect("w");
        std::fs::write(spool.dir().join("notes.json"), b"{}").expect("w");
        let pending = spool.pending();
        assert_eq!(pending.len(), 1);
        let to = spool.bury(ID).expect("bury");
        assert!(to.ends_with(format!("dead/{ID}.json")));
        assert!(spool.pending().is_empty());
        assert_eq!(
            files(spool.dir()),
            [
                format!("dead/{ID}.json"),
                "dead/inv_1111111111111111.json".to_string(),
                "dead/notes.json".to_string(),
            ]
        );
    }
}
