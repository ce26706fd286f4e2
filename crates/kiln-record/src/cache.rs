//! Cache entries: which outputs a step produced for a cache key.
//!
//! Kept in journals: each process that stores entries appends them, one JSON line each, to
//! a journal of its own (`journal-<id>.jsonl`), and reads every journal once, on its first
//! lookup. A cached step then costs no file of its own, written or read: on ext4, making a
//! file (an inode) was most of what a tiny step cost. Entries older kilns wrote as one file
//! per key (`ab/abcd….json`) are still read when no journal has the key.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use kiln_cas::Digest;
use kiln_spec::StepId;
use serde::{Deserialize, Serialize};

use crate::error::RecordError;

/// A cache entry: the outputs a step produced for a key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheEntry {
    /// The key.
    pub key: Digest,
    /// Output digests by name.
    pub outputs: BTreeMap<String, Digest>,
    /// The run that produced them.
    pub run_id: String,
    /// The step that produced them (for people; not part of the key).
    pub step: StepId,
    /// The metrics the step reported with them, given again on a hit.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, f64>,
    /// When the entry was made, in milliseconds since the Unix epoch. Entries written before
    /// kiln noted it have none: for a step with `cache.max_age`, such an entry is too old.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_ms: Option<u64>,
}

/// Cache entries by key, in journals (see the module).
#[derive(Debug, Clone)]
pub struct CacheIndex {
    dir: PathBuf,
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    /// Every journal's entries, the newest for each key; read on the first lookup.
    loaded: OnceLock<Mutex<HashMap<Digest, CacheEntry>>>,
    /// This process's journal, created on the first entry stored.
    journal: Mutex<Option<File>>,
}

impl CacheIndex {
    /// An index in `dir`.
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            shared: Arc::default(),
        }
    }

    /// Where an older kiln kept the entry for a key.
    fn file_path(&self, key: &Digest) -> PathBuf {
        let hex = key.to_hex();
        self.dir.join(&hex[..2]).join(format!("{hex}.json"))
    }

    fn loaded(&self) -> &Mutex<HashMap<Digest, CacheEntry>> {
        self.shared
            .loaded
            .get_or_init(|| Mutex::new(read_journals(&self.dir)))
    }

    /// The entry for a key, if there is a readable one.
    pub fn get(&self, key: &Digest) -> Option<CacheEntry> {
        if let Some(entry) = self.loaded().lock().expect("cache lock").get(key) {
            return Some(entry.clone());
        }
        let bytes = std::fs::read(self.file_path(key)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Stores an entry: one line appended to this process's journal (a newer entry for a key
    /// replaces the older one). A line cut short by a crash is skipped when read.
    pub fn put(&self, key: &Digest, entry: &CacheEntry) -> Result<(), RecordError> {
        let mut line = serde_json::to_vec(entry).expect("entries serialise");
        line.push(b'\n');
        {
            let mut journal = self.shared.journal.lock().expect("journal lock");
            if journal.is_none() {
                std::fs::create_dir_all(&self.dir).map_err(|e| RecordError::io(&self.dir, e))?;
                let path = self
                    .dir
                    .join(format!("journal-{}.jsonl", crate::new_run_id()));
                let file = OpenOptions::new()
                    .append(true)
                    .create_new(true)
                    .open(&path)
                    .map_err(|e| RecordError::io(&path, e))?;
                *journal = Some(file);
            }
            let file = journal.as_mut().expect("opened above");
            file.write_all(&line)
                .map_err(|e| RecordError::io(&self.dir, e))?;
        }
        if let Some(loaded) = self.shared.loaded.get() {
            loaded
                .lock()
                .expect("cache lock")
                .insert(*key, entry.clone());
        }
        Ok(())
    }

    /// Every entry there is: the journals' (the newest for each key), then those of older
    /// kilns' files that no journal replaces.
    pub fn entries(&self) -> Vec<CacheEntry> {
        let mut all = read_journals(&self.dir);
        let Ok(shards) = std::fs::read_dir(&self.dir) else {
            return all.into_values().collect();
        };
        for shard in shards.flatten() {
            if !shard.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            for file in std::fs::read_dir(shard.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let entry = std::fs::read(file.path())
                    .ok()
                    .and_then(|bytes| serde_json::from_slice::<CacheEntry>(&bytes).ok());
                if let Some(entry) = entry {
                    all.entry(entry.key).or_insert(entry);
                }
            }
        }
        all.into_values().collect()
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Every journal in `dir`, oldest first (their names sort by time), each line an entry; a
/// later entry for a key wins. Unreadable lines (a crash mid-write) are skipped.
fn read_journals(dir: &Path) -> HashMap<Digest, CacheEntry> {
    let mut journals: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("journal-") && n.ends_with(".jsonl"))
        })
        .collect();
    journals.sort();
    let mut entries = HashMap::new();
    for journal in journals {
        let Ok(bytes) = std::fs::read(&journal) else {
            continue;
        };
        for line in bytes.split(|b| *b == b'\n') {
            if let Ok(entry) = serde_json::from_slice::<CacheEntry>(line) {
                entries.insert(entry.key, entry);
            }
        }
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &Digest, run: &str) -> CacheEntry {
        CacheEntry {
            key: *key,
            outputs: BTreeMap::from([("out".to_owned(), Digest::of_bytes(run.as_bytes()))]),
            run_id: run.to_owned(),
            step: "s".into(),
            metrics: BTreeMap::new(),
            created_ms: Some(1),
        }
    }

    #[test]
    fn entries_go_to_one_journal_and_the_newest_wins() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (Digest::of_bytes(b"a"), Digest::of_bytes(b"b"));
        let index = CacheIndex::new(dir.path().join("cache"));
        assert_eq!(index.get(&a), None);
        index.put(&a, &entry(&a, "r1")).unwrap();
        index.put(&b, &entry(&b, "r1")).unwrap();
        index.put(&a, &entry(&a, "r2")).unwrap();
        assert_eq!(index.get(&a).unwrap().run_id, "r2");
        let files: Vec<_> = std::fs::read_dir(dir.path().join("cache"))
            .unwrap()
            .collect();
        assert_eq!(files.len(), 1, "one journal, no file per entry");

        // Another process (another index) reads them all; its own entries go to its own
        // journal, and win over older ones.
        let other = CacheIndex::new(dir.path().join("cache"));
        assert_eq!(other.get(&a).unwrap().run_id, "r2");
        assert_eq!(other.get(&b).unwrap().run_id, "r1");
        other.put(&b, &entry(&b, "r3")).unwrap();
        let third = CacheIndex::new(dir.path().join("cache"));
        assert_eq!(third.get(&b).unwrap().run_id, "r3");
        assert_eq!(third.entries().len(), 2);
    }

    #[test]
    fn a_torn_line_is_skipped_and_older_files_are_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let (a, b, old) = (
            Digest::of_bytes(b"a"),
            Digest::of_bytes(b"b"),
            Digest::of_bytes(b"old"),
        );
        let index = CacheIndex::new(cache.clone());
        index.put(&a, &entry(&a, "r1")).unwrap();
        index.put(&b, &entry(&b, "r1")).unwrap();
        // A crash in the middle of the last line.
        let journal = std::fs::read_dir(&cache)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let bytes = std::fs::read(&journal).unwrap();
        std::fs::write(&journal, &bytes[..bytes.len() - 10]).unwrap();
        // An entry as an older kiln wrote it.
        let hex = old.to_hex();
        std::fs::create_dir_all(cache.join(&hex[..2])).unwrap();
        std::fs::write(
            cache.join(&hex[..2]).join(format!("{hex}.json")),
            serde_json::to_vec_pretty(&entry(&old, "r0")).unwrap(),
        )
        .unwrap();

        let reader = CacheIndex::new(cache);
        assert_eq!(reader.get(&a).unwrap().run_id, "r1");
        assert_eq!(reader.get(&b), None);
        assert_eq!(reader.get(&old).unwrap().run_id, "r0");
        assert_eq!(reader.entries().len(), 2);
    }
}
