//! Cache entries: which outputs a step produced for a cache key, kept as small JSON files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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

/// Cache entries stored as small JSON files by key.
#[derive(Debug, Clone)]
pub struct CacheIndex {
    dir: PathBuf,
}

impl CacheIndex {
    /// An index in `dir`.
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    fn path(&self, key: &Digest) -> PathBuf {
        let hex = key.to_hex();
        self.dir.join(&hex[..2]).join(format!("{hex}.json"))
    }

    /// The entry for a key, if there is a readable one.
    pub fn get(&self, key: &Digest) -> Option<CacheEntry> {
        let bytes = std::fs::read(self.path(key)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Stores an entry atomically (write a temporary file, then rename).
    pub fn put(&self, key: &Digest, entry: &CacheEntry) -> Result<(), RecordError> {
        let path = self.path(key);
        let parent = path.parent().expect("entry paths have a parent");
        std::fs::create_dir_all(parent).map_err(|e| RecordError::io(parent, e))?;
        let tmp = parent.join(format!(".{}.{}.tmp", key.to_hex(), std::process::id()));
        let bytes = serde_json::to_vec_pretty(entry).expect("entries serialise");
        std::fs::write(&tmp, bytes).map_err(|e| RecordError::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| RecordError::io(&path, e))
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
