//! kiln's metadata store ([`MetadataStore`]) in SQL: what a server's engine keeps its runs,
//! their records and the result cache in, on SQLite or PostgreSQL alike.
//!
//! A record is one row per event, numbered in order. [`MetadataStore::append`] must not wait,
//! so appends (and cache entries) go to one writer task that commits them in batches (a
//! transaction each); a lookup of a cache entry finds what this store queued without waiting
//! (another replica sees an entry once it is committed: until then, a miss);
//! a failed batch fails the runs it held, at their next append or at
//! [`MetadataStore::finish_run`], which waits until everything appended is committed. A read
//! of a record first waits for what was appended to it, so it is readable as soon as it was
//! appended, as the trait promises.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kiln_cas::Digest;
use kiln_record::{CacheEntry, MetadataStore, RecordError, RecordEvent};
use sqlx::Row;
use tokio::sync::{mpsc, oneshot};

use crate::db::Db;

/// The most events one batch commits.
const BATCH: usize = 512;

enum Write {
    Event {
        run_id: String,
        seq: i64,
        json: String,
    },
    Cache {
        key: String,
        json: String,
    },
    Flush(oneshot::Sender<()>),
}

/// One batch: record events and cache entries, committed in one transaction.
#[derive(Default)]
struct Batch {
    events: Vec<(String, i64, String)>,
    cache: Vec<(String, String)>,
}

impl Batch {
    fn len(&self) -> usize {
        self.events.len() + self.cache.len()
    }
}

/// Per run in progress here: its next sequence number, and the failure that ended its record.
#[derive(Debug, Default)]
struct Open {
    next_seq: i64,
}

/// The metadata store on a [`Db`].
#[derive(Debug, Clone)]
pub struct SqlMetadata {
    db: Db,
    writes: mpsc::UnboundedSender<Write>,
    /// How many batches have been committed: changes after each, so that readers of a run in
    /// progress wake when there is something new rather than polling.
    committed: tokio::sync::watch::Receiver<u64>,
    open: Arc<Mutex<HashMap<String, Open>>>,
    failed: Arc<Mutex<HashMap<String, String>>>,
    /// Cache entries queued and not yet committed, by key: a lookup finds them here without
    /// waiting for the writer.
    queued: Queued,
}

type Queued = Arc<Mutex<HashMap<String, String>>>;

fn db_error(e: sqlx::Error) -> RecordError {
    RecordError::Invalid(format!("database: {e}"))
}

impl SqlMetadata {
    /// A store on `db`, with its writer task on the current tokio runtime.
    pub fn new(db: Db) -> Self {
        let (writes, rx) = mpsc::unbounded_channel();
        let failed: Arc<Mutex<HashMap<String, String>>> = Arc::default();
        let (batches, committed) = tokio::sync::watch::channel(0);
        let queued = Queued::default();
        tokio::spawn(writer(
            db.clone(),
            rx,
            failed.clone(),
            batches,
            queued.clone(),
        ));
        Self {
            db,
            writes,
            committed,
            queued,
            open: Arc::default(),
            failed,
        }
    }

    /// Waits until everything queued so far (record events, cache entries) is committed (or
    /// failed).
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.writes.send(Write::Flush(done)).is_ok() {
            let _ = wait.await;
        }
    }

    /// Changes whenever appended events have been committed.
    pub fn committed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.committed.clone()
    }

    /// A run's record events after the first `after`, in order, with their positions (from
    /// 1); waits for what was appended first. `Err(NoRun)` for a run the database lacks.
    pub async fn events_after(
        &self,
        run_id: &str,
        after: usize,
    ) -> Result<Vec<(usize, RecordEvent)>, RecordError> {
        self.flush().await;
        let rows = sqlx::query(
            "SELECT seq, event FROM run_events WHERE run_id = $1 AND seq > $2 ORDER BY seq",
        )
        .bind(run_id)
        .bind(i64::try_from(after).unwrap_or(i64::MAX))
        .fetch_all(self.db.pool())
        .await
        .map_err(db_error)?;
        if rows.is_empty() && after == 0 {
            let exists = sqlx::query("SELECT 1 AS one FROM runs WHERE id = $1")
                .bind(run_id)
                .fetch_optional(self.db.pool())
                .await
                .map_err(db_error)?;
            if exists.is_none() {
                return Err(RecordError::NoRun(run_id.to_owned()));
            }
        }
        rows.iter()
            .map(|row| {
                let seq: i64 = row.try_get("seq").map_err(db_error)?;
                let json: String = row.try_get("event").map_err(db_error)?;
                let event = serde_json::from_str(&json).map_err(|e| {
                    RecordError::Invalid(format!("run {run_id}: a record event: {e}"))
                })?;
                Ok((usize::try_from(seq).unwrap_or(0), event))
            })
            .collect()
    }

    fn failure(&self, run_id: &str) -> Option<String> {
        self.failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(run_id)
            .cloned()
    }
}

/// Commits appended events in batches, in the order they were appended.
async fn writer(
    db: Db,
    mut rx: mpsc::UnboundedReceiver<Write>,
    failed: Arc<Mutex<HashMap<String, String>>>,
    batches: tokio::sync::watch::Sender<u64>,
    queued: Queued,
) {
    let mut batch = Batch::default();
    let mut flushes: Vec<oneshot::Sender<()>> = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(write) = next.take() {
            match write {
                Write::Event { run_id, seq, json } => batch.events.push((run_id, seq, json)),
                Write::Cache { key, json } => batch.cache.push((key, json)),
                Write::Flush(done) => flushes.push(done),
            }
            if batch.len() < BATCH {
                next = rx.try_recv().ok();
            }
        }
        if batch.len() > 0 {
            if let Err(e) = commit(&db, &batch).await {
                tracing::error!(error = %e, events = batch.events.len(), entries = batch.cache.len(), "cannot commit run records and cache entries");
                let mut failed = failed.lock().unwrap_or_else(|e| e.into_inner());
                for (run_id, _, _) in &batch.events {
                    failed
                        .entry(run_id.clone())
                        .or_insert_with(|| format!("the record could not be written: {e}"));
                }
            }
            // Committed (or failed: then a miss, as a lost entry would be).
            {
                let mut queued = queued.lock().unwrap_or_else(|e| e.into_inner());
                for (key, json) in &batch.cache {
                    if queued.get(key) == Some(json) {
                        queued.remove(key);
                    }
                }
            }
            batch = Batch::default();
            batches.send_modify(|n| *n += 1);
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}

async fn commit(db: &Db, batch: &Batch) -> Result<(), sqlx::Error> {
    let mut tx = db.pool().begin().await?;
    for (key, json) in &batch.cache {
        sqlx::query(
            "INSERT INTO cache_entries (cache_key, entry) VALUES ($1, $2) \
             ON CONFLICT (cache_key) DO UPDATE SET entry = excluded.entry",
        )
        .bind(key)
        .bind(json)
        .execute(&mut *tx)
        .await?;
    }
    for (run_id, seq, json) in &batch.events {
        sqlx::query("INSERT INTO run_events (run_id, seq, event) VALUES ($1, $2, $3)")
            .bind(run_id)
            .bind(*seq)
            .bind(json)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}

#[async_trait::async_trait]
impl MetadataStore for SqlMetadata {
    async fn cache_entry(&self, key: &Digest) -> Result<Option<CacheEntry>, RecordError> {
        // An entry put here a moment ago may still be in the writer's queue.
        let queued = self
            .queued
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key.to_string())
            .cloned();
        if let Some(json) = queued {
            return Ok(serde_json::from_str(&json).ok());
        }
        let row = sqlx::query("SELECT entry FROM cache_entries WHERE cache_key = $1")
            .bind(key.to_string())
            .fetch_optional(self.db.pool())
            .await
            .map_err(db_error)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let json: String = row.try_get("entry").map_err(db_error)?;
        // An entry that does not read is a miss, as in the file store.
        Ok(serde_json::from_str(&json).ok())
    }

    async fn put_cache_entry(&self, key: &Digest, entry: &CacheEntry) -> Result<(), RecordError> {
        // Committed with the next batch, not waited for: a lost entry is a cache miss, and a
        // run's steps finish many at once.
        let json = serde_json::to_string(entry)
            .map_err(|e| RecordError::Invalid(format!("a cache entry: {e}")))?;
        self.queued
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_string(), json.clone());
        self.writes
            .send(Write::Cache {
                key: key.to_string(),
                json,
            })
            .map_err(|_| RecordError::Invalid("the record writer has stopped".into()))
    }

    async fn create_run(&self, run_id: &str, plan_json: &[u8]) -> Result<(), RecordError> {
        let plan = std::str::from_utf8(plan_json)
            .map_err(|e| RecordError::Invalid(format!("a plan that is not UTF-8: {e}")))?;
        let done = sqlx::query(
            "INSERT INTO runs (id, plan, created_ms) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING",
        )
        .bind(run_id)
        .bind(plan)
        .bind(i64::try_from(kiln_record::now_ms()).unwrap_or(i64::MAX))
        .execute(self.db.pool())
        .await
        .map_err(db_error)?;
        if done.rows_affected() == 0 {
            return Err(RecordError::RunExists(run_id.to_owned()));
        }
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(run_id.to_owned(), Open::default());
        Ok(())
    }

    fn append(&self, run_id: &str, event: &RecordEvent) -> Result<(), RecordError> {
        if let Some(failure) = self.failure(run_id) {
            return Err(RecordError::Invalid(failure));
        }
        let json = serde_json::to_string(event)
            .map_err(|e| RecordError::Invalid(format!("a record event: {e}")))?;
        let seq = {
            let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
            let Some(run) = open.get_mut(run_id) else {
                return Err(RecordError::Invalid(format!(
                    "run {run_id} was not created by this store, so it cannot be appended to"
                )));
            };
            run.next_seq += 1;
            run.next_seq
        };
        self.writes
            .send(Write::Event {
                run_id: run_id.to_owned(),
                seq,
                json,
            })
            .map_err(|_| RecordError::Invalid("the record writer has stopped".into()))
    }

    async fn finish_run(&self, run_id: &str) -> Result<(), RecordError> {
        self.flush().await;
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(run_id);
        match self
            .failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(run_id)
        {
            Some(failure) => Err(RecordError::Invalid(failure)),
            None => Ok(()),
        }
    }

    async fn record(&self, run_id: &str) -> Result<Vec<RecordEvent>, RecordError> {
        self.flush().await;
        let exists = sqlx::query("SELECT 1 AS one FROM runs WHERE id = $1")
            .bind(run_id)
            .fetch_optional(self.db.pool())
            .await
            .map_err(db_error)?;
        if exists.is_none() {
            return Err(RecordError::NoRun(run_id.to_owned()));
        }
        let rows = sqlx::query("SELECT event FROM run_events WHERE run_id = $1 ORDER BY seq")
            .bind(run_id)
            .fetch_all(self.db.pool())
            .await
            .map_err(db_error)?;
        rows.iter()
            .map(|row| {
                let json: String = row.try_get("event").map_err(db_error)?;
                serde_json::from_str(&json)
                    .map_err(|e| RecordError::Invalid(format!("run {run_id}: a record event: {e}")))
            })
            .collect()
    }

    async fn plan(&self, run_id: &str) -> Result<Vec<u8>, RecordError> {
        let row = sqlx::query("SELECT plan FROM runs WHERE id = $1")
            .bind(run_id)
            .fetch_optional(self.db.pool())
            .await
            .map_err(db_error)?
            .ok_or_else(|| RecordError::NoRun(run_id.to_owned()))?;
        let plan: String = row.try_get("plan").map_err(db_error)?;
        Ok(plan.into_bytes())
    }

    async fn run_ids(&self) -> Result<Vec<String>, RecordError> {
        sqlx::query("SELECT id FROM runs ORDER BY created_ms, id")
            .fetch_all(self.db.pool())
            .await
            .map_err(db_error)?
            .iter()
            .map(|row| row.try_get("id").map_err(db_error))
            .collect()
    }
}
