//! Results go to disk before they go on the wire: `<dir>/spool/<invocation>.json`, written via
//! temp file + fsync + rename, removed only once the orchestrator has acknowledged it. After a
//! crash or restart the agent sends whatever is still there.

use std::path::{Path, PathBuf};

use tend_orchestrator::protocol::JobResult;

#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
}

impl Spool {
    pub fn open(agent_dir: &Path) -> Result<Spool, String> {
        let dir = agent_dir.join("spool");
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(Spool { dir })
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    pub fn put(&self, id: &str, result: &JobResult) -> Result<(), String> {
        let bytes = serde_json::to_vec(result).map_err(|e| e.to_string())?;
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir).map_err(|e| e.to_string())?;
        std::io::Write::write_all(&mut tmp, &bytes)
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(|e| format!("spooling {id}: {e}"))?;
        tmp.persist(self.path(id))
            .map_err(|e| format!("spooling {id}: {}", e.error))?;
        Ok(())
    }

    pub fn remove(&self, id: &str) {
        let _ = std::fs::remove_file(self.path(id));
    }

    /// Everything not yet acknowledged, oldest first.
    pub fn pending(&self) -> Vec<(String, JobResult)> {
        let mut out: Vec<(std::time::SystemTime, String, JobResult)> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let id = name.strip_suffix(".json")?.to_string();
                let modified = e.metadata().ok()?.modified().ok()?;
                let result = serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok()?;
                Some((modified, id, result))
            })
            .collect();
        out.sort_by_key(|(t, _, _)| *t);
        out.into_iter().map(|(_, id, r)| (id, r)).collect()
    }
}
