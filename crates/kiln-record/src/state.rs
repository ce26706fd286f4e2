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
/// ```
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

    /// A step's log in a run.
    pub fn log_path(&self, run_id: &str, step_id: &str) -> PathBuf {
        self.run_dir(run_id)
            .join("logs")
            .join(format!("{step_id}.log"))
    }

    /// Scratch space of a run.
    pub fn scratch_dir(&self, run_id: &str) -> PathBuf {
        self.root.join("scratch").join(run_id)
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
                    if entry.file_type()?.is_dir()
                        && let Some(name) = entry.file_name().to_str()
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

/// A new run id: the UTC time to the millisecond and a random suffix, so ids sort by time.
pub fn new_run_id() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    let suffix =
        kiln_cas::Digest::of_bytes(format!("{:?}{}", now, std::process::id()).as_bytes()).to_hex();
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}-{:03}-{}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        now.subsec_millis(),
        &suffix[..4]
    )
}

/// Days since 1970-01-01 to a calendar date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
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
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_780), (2026, 11, 23));
    }

    #[test]
    fn run_ids_sort_by_time() {
        let a = new_run_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = new_run_id();
        assert!(a < b, "{a} {b}");
    }
}
