//! The state folder: store, cache index, run records, scratch space.

use std::path::{Path, PathBuf};

use kiln_cas::LocalStore;

/// The layout of a state folder (`.kiln/` next to the pipeline, or `KILN_HOME`).
///
/// ```text
/// cas/                  the content-addressed store
/// cache/ab/<key>.json   cache entries: a step's outputs by cache key
/// runs/<run>/           record.jsonl, plan.json, logs/<step>.log
/// scratch/<run>/        per-attempt working folders, removed when the attempt is done
/// scratch/<run>.lock    held while the run goes; a folder whose lock is free is swept
/// components/<hex>.wasm components staged as files, by digest
/// builds/               the build cache of components built from source, and build logs
/// wasm-cache/           compiled components, when no per-machine cache folder is usable
/// external/             what is known of external inputs fetched before (size, ETag...)
/// stat-cache            digests of workspace files by size, times and inode (not re-read)
/// ```
///
/// Every path of a state folder comes from here.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// A state folder at `root`; nothing is created until it is used.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The folder itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The content-addressed store inside it.
    pub fn store(&self) -> LocalStore {
        LocalStore::new(self.root.join("cas"))
    }

    /// Where cache entries live.
    pub fn cache_dir(&self) -> PathBuf {
        self.root.join("cache")
    }

    /// All runs.
    pub fn runs_dir(&self) -> PathBuf {
        self.root.join("runs")
    }

    /// One run's folder.
    pub fn run_dir(&self, run_id: &str) -> PathBuf {
        self.runs_dir().join(run_id)
    }

    /// A run's record.
    pub fn record_path(&self, run_id: &str) -> PathBuf {
        self.run_dir(run_id).join("record.jsonl")
    }

    /// A step's log in a run (a sub-pipeline step's `a/b` is the file `a~b.log`).
    pub fn log_path(&self, run_id: &str, step_id: &str) -> PathBuf {
        self.run_dir(run_id)
            .join("logs")
            .join(format!("{}.log", step_id.replace('/', "~")))
    }

    /// Scratch space of all runs (and their locks, `<run>.lock`).
    pub fn scratch_root(&self) -> PathBuf {
        self.root.join("scratch")
    }

    /// Scratch space of a run.
    pub fn scratch_dir(&self, run_id: &str) -> PathBuf {
        self.scratch_root().join(run_id)
    }

    /// Where `kiln run --keep-scratch` keeps the scratch folders of a run's failed attempts
    /// (never swept: removing them is the user's call).
    pub fn kept_dir(&self, run_id: &str) -> PathBuf {
        self.root.join("kept").join(run_id)
    }

    /// The build cache of components built from source: `builds/<key>.json`, `builds/logs/`.
    pub fn builds_dir(&self) -> PathBuf {
        self.root.join("builds")
    }

    /// Where compiled components go when no per-machine cache folder can be used.
    pub fn wasm_cache_dir(&self) -> PathBuf {
        self.root.join("wasm-cache")
    }

    /// The stat cache of workspace inputs: each file's digest with its size, times and inode
    /// when it was hashed, so that an unchanged file is not read again.
    pub fn stat_cache_path(&self) -> PathBuf {
        self.root.join("stat-cache")
    }

    /// Built components, by digest, for registry-less local runs.
    pub fn components_dir(&self) -> PathBuf {
        self.root.join("components")
    }

    /// Run ids, oldest first (they sort by time).
    pub fn run_ids(&self) -> std::io::Result<Vec<String>> {
        let mut ids = Vec::new();
        match std::fs::read_dir(self.runs_dir()) {
            Ok(entries) => {
                for entry in entries {
                    let entry = entry?;
                    // A hidden folder is a run's being made (or one a killed kiln left).
                    if entry.file_type()?.is_dir()
                        && let Some(name) = entry.file_name().to_str()
                        && !name.starts_with('.')
                    {
                        ids.push(name.to_owned());
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        ids.sort();
        Ok(ids)
    }

    /// Finds a run by id or unique prefix; `latest` names the newest.
    pub fn resolve_run(&self, query: &str) -> Result<String, String> {
        let ids = self
            .run_ids()
            .map_err(|e| format!("cannot list runs: {e}"))?;
        if query == "latest" || query == "last" {
            return ids
                .last()
                .cloned()
                .ok_or_else(|| format!("no runs in {}", self.root.display()));
        }
        let matches: Vec<&String> = ids.iter().filter(|id| id.starts_with(query)).collect();
        match matches.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(format!(
                "no run `{query}` in {} (`kiln runs` lists them)",
                self.root.display()
            )),
            many => Err(format!(
                "`{query}` matches {} runs: give more of the id",
                many.len()
            )),
        }
    }
}

/// A new run id: a UUIDv7 (RFC 9562), so ids sort by creation time, are unique across
/// processes and machines, and never collide within one (a counter orders ids made in the
/// same millisecond).
pub fn new_run_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Milliseconds since the Unix epoch, for records.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_unique_under_concurrency() {
        let ids: Vec<String> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| (0..1000).map(|_| new_run_id()).collect::<Vec<_>>()))
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().unwrap())
                .collect()
        });
        let unique: std::collections::BTreeSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
    }

    #[test]
    fn run_ids_sort_by_time() {
        let a = new_run_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = new_run_id();
        assert!(a < b, "{a} {b}");
    }
}
