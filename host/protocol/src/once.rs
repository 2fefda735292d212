//! An approval binds one invocation, and a runner (an agent, the orchestrator's local worker)
//! runs an approved repair for it once: before it runs one, it records the invocation digest
//! under `<its state dir>/ran/`, and refuses a job whose digest is already there. So whoever
//! controls the orchestrator's database cannot replay an approved repair on that host while its
//! approval window is open (after that, the approvals no longer count anyway, and the record
//! is dropped).

use std::io::Write;
use std::path::{Path, PathBuf};

/// Why a run was not recorded.
#[derive(Debug, thiserror::Error)]
pub enum RanError {
    #[error(
        "this approved repair (invocation digest {0}) already ran on this host: an approval is for one run"
    )]
    AlreadyRan(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug)]
pub struct RanOnce {
    dir: PathBuf,
}

impl RanOnce {
    /// `<state dir>/ran`, made if missing (0700); records whose window has closed are dropped.
    pub fn open(state_dir: &Path) -> std::io::Result<RanOnce> {
        let dir = state_dir.join("ran");
        std::fs::create_dir_all(&dir)?;
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        let now = crate::now_ms();
        for entry in std::fs::read_dir(&dir)?.flatten() {
            let expired = std::fs::read_to_string(entry.path())
                .ok()
                .and_then(|t| t.trim().parse::<i64>().ok())
                .is_none_or(|until| until < now);
            if expired {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(RanOnce { dir })
    }

    /// Record that the approved invocation `digest` (valid until `expires_ms`) runs here now;
    /// a refusal if it already ran here.
    pub fn claim(&self, digest: &str, expires_ms: i64) -> Result<(), RanError> {
        // The digest is ours (recomputed and compared at admission), but it becomes a file
        // name: only lower-case hex.
        if digest.is_empty() || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(RanError::AlreadyRan(digest.chars().take(80).collect()));
        }
        let path = self.dir.join(digest.to_ascii_lowercase());
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut f) => {
                let _ = writeln!(f, "{expires_ms}");
                let _ = f.sync_all();
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(RanError::AlreadyRan(digest.to_string()))
            }
            Err(source) => Err(RanError::Io { path, source }),
        }
    }

    /// Forget that `digest` runs here: only for a run that certainly did not start (it was
    /// recorded, then could not be marked started), so it may still run here once.
    pub fn unclaim(&self, digest: &str) {
        if !digest.is_empty() && digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            let _ = std::fs::remove_file(self.dir.join(digest.to_ascii_lowercase()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_approved_repair_runs_once_and_the_record_outlives_a_restart() {
        let dir = tempfile::tempdir().expect("dir");
        let until = crate::now_ms() + 60_000;
        let ran = RanOnce::open(dir.path()).expect("open");
        ran.claim("ab12", until).expect("first");
        assert!(matches!(
            ran.claim("ab12", until),
            Err(RanError::AlreadyRan(_))
        ));
        let again = RanOnce::open(dir.path()).expect("reopen");
        assert!(matches!(
            again.claim("ab12", until),
            Err(RanError::AlreadyRan(_))
        ));
        assert!(again.claim("../x", until).is_err());
        // A run that did not start is forgotten, so it may still run once.
        again.claim("ef56", until).expect("claimed");
        again.unclaim("ef56");
        again.claim("ef56", until).expect("claimed again");
        assert!(again.claim("ef56", until).is_err());
        again.unclaim("../ab12");
        assert!(again.claim("ab12", until).is_err());
        // A closed window's record is dropped at the next start.
        again.claim("cd34", 1).expect("old");
        let later = RanOnce::open(dir.path()).expect("reopen");
        later.claim("cd34", until).expect("dropped");
    }
}
