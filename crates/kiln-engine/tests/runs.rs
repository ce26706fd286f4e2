//! Runs through the engine's API as a server would use it: many at once in one process, and
//! the whole run against an object store instead of the state folder's own.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use kiln_cas::{BlobStore, BucketStore, Digest};
use kiln_engine::{
    Engine, EngineConfig, Event, ExecOutcome, Executor, ExecutorError, Executors, FileMetadata,
    MetadataStore, RunInput, RunStatus, StagedTask, StateDir, StepStatus,
};
use kiln_engine::{EngineError, RecordError, RecordEvent};

/// Writes each output from its step's name, params and inputs' bytes: the same step with the
/// same inputs writes the same bytes in every run.
struct Echo;

#[async_trait]
impl Executor for Echo {
    fn name(&self) -> &str {
        "echo"
    }

    async fn run_staged(&self, task: &StagedTask) -> Result<ExecOutcome, ExecutorError> {
        let read: Vec<String> = task
            .inputs
            .values()
            .map(|p| kiln_test_support::read_tree_text(p))
            .collect();
        for (name, path) in &task.outputs {
            let text = format!("{}:{name}:{:?}:{read:?}", task.step.step, task.step.params);
            std::fs::write(path, text).unwrap();
        }
        Ok(ExecOutcome::success())
    }
}

const PIPELINE: &str = "apiVersion: kiln/v1
name: runs
steps:
  prep:
    container: {image: fake}
    inputs: {data: ./data.csv}
    outputs: [clean]
  train:
    container: {image: fake}
    for_each: [1, 2, 3]
    with: {lr: '{{item}}'}
    inputs: {data: prep.clean}
    outputs: [model]
  pick:
    container: {image: fake}
    inputs: {models: train.model}
    outputs: [best]
";

/// The run's input with its workspace file pinned into `store` (as `kiln run` pins it); the workspace file is written
/// once, before any run reads it.
async fn input_in(dir: &Path, store: Arc<dyn BlobStore>) -> RunInput {
    let mut input = input(dir);
    for step in &input.plan.steps {
        for source in step.inputs.values() {
            if let kiln_plan::InputSource::Workspace { path } = source {
                let digest = store.put_file(&dir.join(path)).await.unwrap();
                input.workspace.insert(path.clone(), digest);
            }
        }
    }
    input
}

/// The run's input, not yet pinned.
fn input(dir: &Path) -> RunInput {
    let data = dir.join("data.csv");
    if !data.exists() {
        std::fs::write(&data, "a,b\n1,2\n").unwrap();
    }
    let pipeline = kiln_spec::parse(PIPELINE).unwrap_or_else(|d| panic!("{d:?}"));
    let compiled = kiln_plan::compile(
        &pipeline,
        &kiln_plan::PlanOptions {
            base_dir: dir.to_path_buf(),
            overrides: vec![],
        },
    );
    RunInput {
        plan: compiled
            .plan
            .unwrap_or_else(|| panic!("{:?}", compiled.diagnostics)),
        components: Default::default(),
        workspace: Default::default(),
        pipeline_file: "pipeline.yaml".into(),
        pipeline_text: PIPELINE.into(),
    }
}

fn engine(state: &StateDir, use_cache: bool) -> Engine {
    Engine::new(
        state.clone(),
        Executors {
            wasm: None,
            container: Some(Arc::new(Echo)),
        },
        EngineConfig {
            jobs: 4,
            use_cache,
            ..EngineConfig::default()
        },
    )
}

/// Files under a folder, recursively.
fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                found.extend(files(&path));
            } else {
                found.push(path);
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_runs_at_once_in_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::new(dir.path().join(".kiln"));
    // No cache: every run really runs every step, all at the same time.
    let engine = engine(&state, false);
    let pinned = input_in(dir.path(), Arc::new(state.store())).await;
    let mut handles: Vec<_> = (0..20).map(|_| engine.start(pinned.clone())).collect();
    let ids: BTreeSet<String> = handles.iter().map(|h| h.id().to_owned()).collect();
    assert_eq!(ids.len(), 20, "run ids collided: {ids:?}");

    let mut listeners = Vec::new();
    for handle in &mut handles {
        let mut events = handle.events();
        let id = handle.id().to_owned();
        listeners.push(tokio::spawn(async move {
            let mut finished = 0;
            while let Ok(event) = events.recv().await {
                assert_eq!(&*event.run_id, id.as_str(), "an event of another run");
                if matches!(event.event, Event::StepFinished(_)) {
                    finished += 1;
                }
            }
            finished
        }));
    }
    let mut outputs = BTreeSet::new();
    for handle in handles {
        let summary = handle.join().await.unwrap();
        assert_eq!(summary.status, RunStatus::Succeeded);
        assert!(
            summary
                .steps
                .iter()
                .all(|s| s.status == StepStatus::Succeeded)
        );
        for step in &summary.steps {
            outputs.extend(step.outputs.values().copied());
        }
    }
    for listener in listeners {
        assert_eq!(listener.await.unwrap(), 5, "each run reports its 5 steps");
    }
    // Every record is whole and readable, and names its own run.
    let meta = FileMetadata::new(state.clone());
    assert_eq!(
        meta.run_ids()
            .await
            .unwrap()
            .into_iter()
            .collect::<BTreeSet<_>>(),
        ids
    );
    for id in &ids {
        let view = kiln_engine::RunView::from_events(&meta.record(id).await.unwrap());
        assert!(view.finished.is_some(), "run {id} has no end in its record");
        assert_eq!(view.steps.len(), 5);
    }
    // The same outputs, twenty times: each stored once.
    assert_eq!(outputs.len(), 5, "{outputs:?}");
    let blobs = files(&state.root().join("cas/blobs"));
    let expected = outputs.len() + 1; // + the workspace input data.csv
    assert_eq!(blobs.len(), expected, "{blobs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_pipeline_runs_against_an_object_store() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::new(dir.path().join(".kiln"));
    let bucket = BucketStore::new(Arc::new(object_store::memory::InMemory::new()));
    let store: Arc<dyn BlobStore> = Arc::new(bucket.clone());
    let engine = engine(&state, true).with_store(store.clone());

    let first = engine
        .start(input_in(dir.path(), store.clone()).await)
        .join()
        .await
        .unwrap();
    assert_eq!(first.status, RunStatus::Succeeded);
    assert!(
        first
            .steps
            .iter()
            .all(|s| s.status == StepStatus::Succeeded)
    );
    // Everything the run produced is in the bucket, and nothing in a local store.
    for step in &first.steps {
        for digest in step.outputs.values() {
            assert!(
                bucket.contains(digest).await.unwrap(),
                "{} {digest}",
                step.id
            );
        }
    }
    let pick = first.steps.iter().find(|s| s.id == "pick").unwrap();
    let best = store.read_verified(&pick.outputs["best"]).await.unwrap();
    let text = String::from_utf8(best.to_vec()).unwrap();
    assert!(text.starts_with("pick:best:"), "{text}");
    assert!(
        text.contains("train:model"),
        "pick read what train wrote: {text}"
    );
    assert!(
        !state.root().join("cas").exists(),
        "a local store was written"
    );
    let data = Digest::of_bytes(b"a,b\n1,2\n");
    assert!(
        bucket.contains(&data).await.unwrap(),
        "the workspace input was uploaded"
    );

    // A second run is served from the cache, because the bucket still has the outputs.
    let second = engine
        .start(input_in(dir.path(), store.clone()).await)
        .join()
        .await
        .unwrap();
    assert!(second.steps.iter().all(|s| s.status == StepStatus::Cached));
    assert_eq!(
        second.steps.iter().map(|s| &s.outputs).collect::<Vec<_>>(),
        first.steps.iter().map(|s| &s.outputs).collect::<Vec<_>>()
    );
}

/// File metadata whose record refuses every append after the first few, as a full disk would.
#[derive(Debug)]
struct FailingRecord {
    inner: FileMetadata,
    appends_left: std::sync::atomic::AtomicUsize,
}

#[async_trait]
impl MetadataStore for FailingRecord {
    async fn cache_entry(
        &self,
        key: &Digest,
    ) -> Result<Option<kiln_engine::CacheEntry>, RecordError> {
        self.inner.cache_entry(key).await
    }
    async fn put_cache_entry(
        &self,
        key: &Digest,
        entry: &kiln_engine::CacheEntry,
    ) -> Result<(), RecordError> {
        self.inner.put_cache_entry(key, entry).await
    }
    async fn create_run(&self, run_id: &str, plan_json: &[u8]) -> Result<(), RecordError> {
        self.inner.create_run(run_id, plan_json).await
    }
    fn append(&self, run_id: &str, event: &RecordEvent) -> Result<(), RecordError> {
        use std::sync::atomic::Ordering;
        let left = self.appends_left.load(Ordering::SeqCst);
        if left == 0 {
            return Err(RecordError::Invalid("no space left on device".into()));
        }
        self.appends_left.store(left - 1, Ordering::SeqCst);
        self.inner.append(run_id, event)
    }
    async fn record(&self, run_id: &str) -> Result<Vec<RecordEvent>, RecordError> {
        self.inner.record(run_id).await
    }
    async fn plan(&self, run_id: &str) -> Result<Vec<u8>, RecordError> {
        self.inner.plan(run_id).await
    }
    async fn run_ids(&self) -> Result<Vec<String>, RecordError> {
        self.inner.run_ids().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_cannot_be_written_fails_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::new(dir.path().join(".kiln"));
    let meta = Arc::new(FailingRecord {
        inner: FileMetadata::new(state.clone()),
        // The run's start and the first step's start; then the disk is full.
        appends_left: 2.into(),
    });
    let engine = engine(&state, true).with_metadata(meta);
    let pinned = input_in(dir.path(), Arc::new(state.store())).await;
    match engine.start(pinned).join().await {
        Err(EngineError::Record(e)) => {
            assert!(e.to_string().contains("no space left"), "{e}")
        }
        other => panic!("the run went on without its record: {other:?}"),
    }
}
