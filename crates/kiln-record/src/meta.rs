//! The metadata-store trait and its file implementation.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kiln_cas::Digest;

use crate::cache::{CacheEntry, CacheIndex};
use crate::error::RecordError;
use crate::record::{RecordEvent, RecordWriter, read_record};
use crate::state::StateDir;

/// Where the engine keeps what is not an artifact: cache entries, run records, plans and the
/// list of runs. Dyn-compatible: the engine holds an `Arc<dyn MetadataStore>`.
///
/// Appends to one run's record arrive in order; a run's events are readable as soon as they
/// were appended (a crash leaves a readable prefix).
#[async_trait::async_trait]
pub trait MetadataStore: Send + Sync + std::fmt::Debug {
    /// The cache entry for a key, if there is a readable one.
    async fn cache_entry(&self, key: &Digest) -> Result<Option<CacheEntry>, RecordError>;

    /// Stores a cache entry for its key (replacing an older one).
    async fn put_cache_entry(&self, key: &Digest, entry: &CacheEntry) -> Result<(), RecordError>;

    /// Creates a run with its plan (JSON) and an empty record. Fails with
    /// [`RecordError::RunExists`] if the id is taken.
    async fn create_run(&self, run_id: &str, plan_json: &[u8]) -> Result<(), RecordError>;

    /// Appends one event to a run's record, in order. It must not wait: the engine calls it
    /// as steps change state, and a file write of one line costs less than a trip to another
    /// thread. A store that writes over a network queues the event and reports a failure at
    /// a later append or at [`MetadataStore::finish_run`]. After [`RecordEvent::RunFinished`]
    /// the run takes no more events.
    fn append(&self, run_id: &str, event: &RecordEvent) -> Result<(), RecordError>;

    /// Waits until everything appended to a run's record is stored.
    async fn finish_run(&self, run_id: &str) -> Result<(), RecordError> {
        let _ = run_id;
        Ok(())
    }

    /// A run's record as written so far.
    async fn record(&self, run_id: &str) -> Result<Vec<RecordEvent>, RecordError>;

    /// A run's plan, as given to [`MetadataStore::create_run`].
    async fn plan(&self, run_id: &str) -> Result<Vec<u8>, RecordError>;

    /// Every run id, oldest first.
    async fn run_ids(&self) -> Result<Vec<String>, RecordError>;
}

/// Metadata as files in a state folder: `cache/ab/<key>.json`, `runs/<id>/record.jsonl` and
/// `runs/<id>/plan.json` (see [`StateDir`]).
#[derive(Debug, Clone)]
pub struct FileMetadata {
    state: StateDir,
    cache: CacheIndex,
    /// Open records of the runs in progress in this process.
    writers: Arc<Mutex<HashMap<String, RecordWriter>>>,
}

impl FileMetadata {
    /// Metadata in `state`.
    pub fn new(state: StateDir) -> Self {
        Self {
            cache: CacheIndex::new(state.cache_dir()),
            state,
            writers: Arc::default(),
        }
    }

    /// The state folder.
    pub fn state(&self) -> &StateDir {
        &self.state
    }
}

/// Runs file work on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RecordError> + Send + 'static,
) -> Result<T, RecordError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RecordError::Invalid(format!("a blocking task failed: {e}")))?
}

#[async_trait::async_trait]
impl MetadataStore for FileMetadata {
    async fn cache_entry(&self, key: &Digest) -> Result<Option<CacheEntry>, RecordError> {
        // A read of one small file, in place: on a local disk it costs less than a trip to
        // the blocking pool, and a cached run does one per step.
        Ok(self.cache.get(key))
    }

    async fn put_cache_entry(&self, key: &Digest, entry: &CacheEntry) -> Result<(), RecordError> {
        // One small file written and renamed, in place: like a record line, it costs less
        // than a trip to the blocking pool, and every step that runs writes one.
        self.cache.put(key, entry)
    }

    async fn create_run(&self, run_id: &str, plan_json: &[u8]) -> Result<(), RecordError> {
        let (state, id, plan) = (self.state.clone(), run_id.to_owned(), plan_json.to_vec());
        let writer = blocking(move || {
            let runs = state.runs_dir();
            std::fs::create_dir_all(&runs).map_err(|e| RecordError::io(&runs, e))?;
            let dir = state.run_dir(&id);
            if dir.exists() {
                return Err(RecordError::RunExists(id));
            }
            // The run's folder is made under a hidden name and renamed into place whole: a
            // kiln killed while making it leaves no run without its record. The hidden name
            // is the claim on the id: two processes cannot both create it.
            let making = runs.join(format!(".{id}.new"));
            match std::fs::create_dir(&making) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    return Err(RecordError::RunExists(id));
                }
                Err(e) => return Err(RecordError::io(&making, e)),
            }
            let made = (|| {
                let logs = making.join("logs");
                std::fs::create_dir_all(&logs).map_err(|e| RecordError::io(&logs, e))?;
                let plan_path = making.join("plan.json");
                std::fs::write(&plan_path, plan).map_err(|e| RecordError::io(&plan_path, e))?;
                // The writer's file stays the record once the folder is renamed.
                let writer = RecordWriter::create(&making.join("record.jsonl"))?;
                std::fs::rename(&making, &dir).map_err(|e| RecordError::io(&dir, e))?;
                Ok(writer)
            })();
            if made.is_err() {
                let _ = std::fs::remove_dir_all(&making);
            }
            made
        })
        .await?;
        self.writers
            .lock()
            .expect("writers lock")
            .insert(run_id.to_owned(), writer);
        Ok(())
    }

    fn append(&self, run_id: &str, event: &RecordEvent) -> Result<(), RecordError> {
        // One write of one line per event, in place (see the trait).
        let mut writers = self.writers.lock().expect("writers lock");
        let writer = match writers.get_mut(run_id) {
            Some(writer) => writer,
            None => {
                let writer = RecordWriter::open(&self.state.record_path(run_id))?;
                writers.entry(run_id.to_owned()).or_insert(writer)
            }
        };
        writer.append(event)?;
        if matches!(event, RecordEvent::RunFinished { .. }) {
            writers.remove(run_id);
        }
        Ok(())
    }

    async fn record(&self, run_id: &str) -> Result<Vec<RecordEvent>, RecordError> {
        let path = self.state.record_path(run_id);
        blocking(move || read_record(&path)).await
    }

    async fn plan(&self, run_id: &str) -> Result<Vec<u8>, RecordError> {
        let path = self.state.run_dir(run_id).join("plan.json");
        blocking(move || std::fs::read(&path).map_err(|e| RecordError::io(&path, e))).await
    }

    async fn run_ids(&self) -> Result<Vec<String>, RecordError> {
        let state = self.state.clone();
        blocking(move || {
            state
                .run_ids()
                .map_err(|e| RecordError::io(&state.runs_dir(), e))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::RunStatus;

    #[tokio::test]
    async fn runs_round_trip_and_ids_are_claimed_once() {
        let dir = tempfile::tempdir().unwrap();
        let meta = FileMetadata::new(StateDir::new(dir.path()));
        meta.create_run("r1", b"{}").await.unwrap();
        assert!(matches!(
            meta.create_run("r1", b"{}").await,
            Err(RecordError::RunExists(_))
        ));
        let skipped = RecordEvent::StepSkipped {
            step: "a".into(),
            reason: "r".into(),
        };
        meta.append("r1", &skipped).unwrap();
        let finished = RecordEvent::RunFinished {
            status: RunStatus::Succeeded,
            at_ms: 1,
            duration_ms: 2,
        };
        meta.append("r1", &finished).unwrap();
        assert_eq!(meta.record("r1").await.unwrap(), vec![skipped, finished]);
        assert_eq!(meta.plan("r1").await.unwrap(), b"{}");
        assert_eq!(meta.run_ids().await.unwrap(), vec!["r1".to_owned()]);
        // Another process (another FileMetadata) reads the same runs.
        let other = FileMetadata::new(StateDir::new(dir.path()));
        assert_eq!(other.record("r1").await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn cache_entries_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let meta = FileMetadata::new(StateDir::new(dir.path()));
        let key = Digest::of_bytes(b"key");
        assert_eq!(meta.cache_entry(&key).await.unwrap(), None);
        let entry = CacheEntry {
            key,
            outputs: [("out".to_owned(), Digest::of_bytes(b"x"))].into(),
            run_id: "r1".into(),
            step: "a".into(),
            metrics: Default::default(),
            created_ms: Some(1_700_000_000_000),
        };
        meta.put_cache_entry(&key, &entry).await.unwrap();
        assert_eq!(meta.cache_entry(&key).await.unwrap(), Some(entry));
        // An entry written before entries noted their time still reads, without one.
        let old = Digest::of_bytes(b"old");
        let hex = old.to_hex();
        let path = dir
            .path()
            .join("cache")
            .join(&hex[..2])
            .join(format!("{hex}.json"));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let json = format!(r#"{{"key":"{old}","outputs":{{}},"run_id":"r0","step":"a"}}"#);
        std::fs::write(&path, json).unwrap();
        let read = meta
            .cache_entry(&old)
            .await
            .unwrap()
            .expect("an old entry reads");
        assert_eq!(read.created_ms, None);
    }
}
