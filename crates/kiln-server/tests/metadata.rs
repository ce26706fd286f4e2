//! The SQL metadata store on SQLite and on a real PostgreSQL: what the file store does (runs
//! claimed once, records in order and readable at once, plans, cache entries), and a whole
//! pipeline through the engine with its runs, records and cache in the database.

mod fixture;

use std::path::Path;
use std::sync::Arc;

use fixture::{PIPELINE, Writes, plan_in};
use kiln_cas::{BlobStore, Digest, LocalStore};
use kiln_engine::{Engine, EngineConfig, Executors, RunInput, StateDir, StepStatus};
use kiln_record::{CacheEntry, MetadataStore, RecordError, RecordEvent, RunStatus};
use kiln_server::{Db, SqlMetadata};
use kiln_test_support::postgres::postgres_or_skip;

async fn pinned(dir: &Path, store: &dyn BlobStore) -> RunInput {
    let mut input = RunInput {
        plan: plan_in(dir),
        components: Default::default(),
        workspace: Default::default(),
        pipeline_file: "pipeline.yaml".into(),
        pipeline_text: PIPELINE.into(),
    };
    let digest = store.put_file(&dir.join("data.csv")).await.unwrap();
    input.workspace.insert("data.csv".into(), digest);
    input
}

async fn suite(db: Db) {
    let meta = SqlMetadata::new(db.clone());

    // Runs: claimed once, records in order and readable at once, plans, ids.
    meta.create_run("r1", b"{\"plan\":1}").await.unwrap();
    assert!(matches!(
        meta.create_run("r1", b"{}").await,
        Err(RecordError::RunExists(_))
    ));
    let skipped = RecordEvent::StepSkipped {
        step: "a".into(),
        reason: "r".into(),
    };
    meta.append("r1", &skipped).unwrap();
    assert_eq!(meta.record("r1").await.unwrap(), vec![skipped.clone()]);
    let finished = RecordEvent::RunFinished {
        status: RunStatus::Succeeded,
        at_ms: 1,
        duration_ms: 2,
    };
    meta.append("r1", &finished).unwrap();
    meta.finish_run("r1").await.unwrap();
    assert_eq!(meta.record("r1").await.unwrap(), vec![skipped, finished]);
    assert_eq!(meta.plan("r1").await.unwrap(), b"{\"plan\":1}");
    assert!(matches!(
        meta.record("r9").await,
        Err(RecordError::NoRun(_))
    ));
    assert!(
        meta.append(
            "r9",
            &RecordEvent::StepSkipped {
                step: "a".into(),
                reason: "r".into()
            }
        )
        .is_err()
    );
    // Another store on the same database (another replica) reads the same runs.
    let other = SqlMetadata::new(db.clone());
    assert_eq!(other.record("r1").await.unwrap().len(), 2);
    assert_eq!(other.run_ids().await.unwrap(), vec!["r1".to_owned()]);

    // Cache entries.
    let key = Digest::of_bytes(b"key");
    assert_eq!(meta.cache_entry(&key).await.unwrap(), None);
    let entry = CacheEntry {
        key,
        outputs: [("out".to_owned(), Digest::of_bytes(b"x"))].into(),
        run_id: "r1".into(),
        step: "a".into(),
        metrics: [("accuracy".to_owned(), 0.5)].into(),
        created_ms: Some(1_700_000_000_000),
    };
    meta.put_cache_entry(&key, &entry).await.unwrap();
    // Read at once where it was put; another replica sees it once it is committed.
    assert_eq!(meta.cache_entry(&key).await.unwrap(), Some(entry.clone()));
    meta.flush().await;
    assert_eq!(other.cache_entry(&key).await.unwrap(), Some(entry.clone()));
    let newer = CacheEntry {
        run_id: "r2".into(),
        ..entry
    };
    meta.put_cache_entry(&key, &newer).await.unwrap();
    assert_eq!(meta.cache_entry(&key).await.unwrap(), Some(newer));

    // A whole pipeline through the engine, twice: the second run is served from the cache
    // the database holds, and both records are there.
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::new(dir.path().join("state"));
    let store: Arc<dyn BlobStore> = Arc::new(LocalStore::new(dir.path().join("store")));
    let engine = Engine::new(
        state,
        Executors {
            wasm: None,
            container: Some(Arc::new(Writes)),
        },
        EngineConfig {
            jobs: 4,
            ..EngineConfig::default()
        },
    )
    .with_store(store.clone())
    .with_metadata(Arc::new(meta.clone()));
    let first = engine
        .start(pinned(dir.path(), &*store).await)
        .join()
        .await
        .unwrap();
    assert_eq!(first.status, RunStatus::Succeeded);
    assert!(
        first
            .steps
            .iter()
            .all(|s| s.status == StepStatus::Succeeded),
        "{first:?}"
    );
    let second = engine
        .start(pinned(dir.path(), &*store).await)
        .join()
        .await
        .unwrap();
    assert!(
        second.steps.iter().all(|s| s.status == StepStatus::Cached),
        "{second:?}"
    );
    assert_eq!(
        first.steps.iter().map(|s| &s.outputs).collect::<Vec<_>>(),
        second.steps.iter().map(|s| &s.outputs).collect::<Vec<_>>()
    );
    for run in [&first, &second] {
        let record = other.record(&run.run_id).await.unwrap();
        assert!(
            matches!(record.first(), Some(RecordEvent::RunStarted { .. })),
            "{record:?}"
        );
        assert!(
            matches!(record.last(), Some(RecordEvent::RunFinished { .. })),
            "{record:?}"
        );
    }
    assert_eq!(meta.run_ids().await.unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_metadata_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    suite(Db::sqlite(&dir.path().join("kiln.db")).await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_metadata_on_postgres() {
    let Some(postgres) = postgres_or_skip("the SQL metadata store on PostgreSQL") else {
        return;
    };
    suite(Db::connect(&postgres.new_database()).await.unwrap()).await;
}
