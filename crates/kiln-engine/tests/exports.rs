//! The engine's side of `exports:`: after the steps, each export whose step succeeded (or
//! came from the cache) goes to the exporter with the step's output; one whose step failed
//! or was skipped is recorded as not exported; a failed upload fails the run; a plan with
//! exports and no exporter cannot start; and exports change no step's cache key. (The
//! exporter here keeps objects in memory; `kiln-cli`'s tests export to a real S3 server.)

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use kiln_cas::{BlobStore, ObjectKind};
use kiln_engine::{
    Engine, EngineConfig, EngineError, ExecOutcome, Executor, ExecutorError, Executors, ExportDone,
    ExportProgress, ExportStatus, ExportTask, Exporter, RecordEvent, RunInput, RunStatus,
    StagedTask, StateDir, StepStatus, read_record,
};

/// Writes `out:NAME` into each output; a step named `broken` fails.
struct Writer;

#[async_trait]
impl Executor for Writer {
    fn name(&self) -> &str {
        "writer"
    }

    async fn run_staged(&self, task: &StagedTask) -> Result<ExecOutcome, ExecutorError> {
        if task.step.step == "broken" {
            return Ok(ExecOutcome::failure(
                kiln_engine::FailureKind::Exit,
                "exit 3",
                Some(3),
            ));
        }
        for (name, path) in &task.outputs {
            std::fs::write(path, format!("out:{name}")).unwrap();
        }
        Ok(ExecOutcome::success())
    }
}

/// Keeps what it is given by URL, refusing URLs of the bucket `missing`.
#[derive(Default)]
struct Remember {
    objects: Mutex<BTreeMap<String, Vec<u8>>>,
}

#[async_trait]
impl Exporter for Remember {
    async fn export(
        &self,
        task: &ExportTask,
        store: Arc<dyn BlobStore>,
        _progress: &(dyn Fn(ExportProgress) + Send + Sync),
    ) -> Result<ExportDone, String> {
        if task.to.starts_with("s3://missing/") {
            return Err(format!("{}: no such bucket", task.to));
        }
        assert_eq!(task.kind, ObjectKind::Blob);
        let bytes = store.read_verified(&task.digest).await.unwrap().to_vec();
        let mut objects = self.objects.lock().unwrap();
        let unchanged = objects.get(&task.to) == Some(&bytes);
        let size = bytes.len() as u64;
        objects.insert(task.to.clone(), bytes);
        Ok(ExportDone {
            url: task.to.clone(),
            size,
            objects: 1,
            uploaded: u64::from(!unchanged),
        })
    }
}

fn plan(yaml: &str, dir: &Path) -> kiln_plan::Plan {
    let pipeline = kiln_spec::parse(yaml).unwrap_or_else(|d| panic!("{d:?}"));
    let compiled = kiln_plan::compile(
        &pipeline,
        &kiln_plan::PlanOptions {
            base_dir: dir.to_path_buf(),
            overrides: vec![],
        },
    );
    compiled
        .plan
        .unwrap_or_else(|| panic!("{:?}", compiled.diagnostics))
}

fn input(plan: kiln_plan::Plan) -> RunInput {
    RunInput {
        plan,
        components: Default::default(),
        workspace: Default::default(),
        pipeline_file: "pipeline.yaml".into(),
        pipeline_text: String::new(),
    }
}

fn engine(state: &StateDir) -> Engine {
    Engine::new(
        state.clone(),
        Executors {
            wasm: None,
            container: Some(Arc::new(Writer)),
        },
        EngineConfig {
            jobs: 2,
            ..EngineConfig::default()
        },
    )
}

const STEPS: &str = "apiVersion: kiln/v1
name: exports
steps:
  train:
    container: {image: fake}
    outputs: [model]
  broken:
    container: {image: fake}
    outputs: [model]
  after-broken:
    container: {image: fake}
    inputs: {model: broken.model}
    outputs: [report]
";

#[tokio::test]
async fn exports_follow_their_steps_and_a_failed_upload_fails_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::new(dir.path().join(".kiln"));
    let exporter = Arc::new(Remember::default());
    let engine = engine(&state).with_exporter(exporter.clone());
    let yaml = format!(
        "{STEPS}exports:
  - {{from: train.model, to: s3://models/model.bin}}
  - {{from: broken.model, to: s3://models/broken.bin}}
  - {{from: after-broken.report, to: s3://models/report.txt}}
"
    );
    let summary = engine
        .start(input(plan(&yaml, dir.path())))
        .join()
        .await
        .unwrap();
    // `broken` fails the run; the exports are what they are.
    assert_eq!(summary.status, RunStatus::Failed);
    let statuses: Vec<_> = summary.exports.iter().map(|e| e.status).collect();
    assert_eq!(
        statuses,
        [
            ExportStatus::Uploaded,
            ExportStatus::NotExported,
            ExportStatus::NotExported
        ]
    );
    assert_eq!(
        summary.exports[1].message.as_deref(),
        Some("step `broken` failed")
    );
    assert!(
        summary.exports[2]
            .message
            .as_deref()
            .unwrap()
            .starts_with("step `after-broken` was skipped"),
        "{:?}",
        summary.exports[2]
    );
    let train = summary.steps.iter().find(|s| s.id == "train").unwrap();
    assert_eq!(summary.exports[0].digest, Some(train.outputs["model"]));
    assert_eq!(
        exporter.objects.lock().unwrap()["s3://models/model.bin"],
        b"out:model"
    );
    // The record has each export, before the run's end.
    let events = read_record(&state.record_path(&summary.run_id)).unwrap();
    let exported: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            RecordEvent::Exported(export) => Some(export.status),
            _ => None,
        })
        .collect();
    assert_eq!(exported, statuses);
    assert!(matches!(
        events.last(),
        Some(RecordEvent::RunFinished { .. })
    ));

    // Only `train`, from the cache: unchanged, and the run succeeds. Then an upload that
    // fails fails the run, although every step succeeded, and the exports after it still go.
    let yaml = "apiVersion: kiln/v1
name: exports
steps:
  train:
    container: {image: fake}
    outputs: [model]
exports:
  - {from: train.model, to: s3://models/model.bin}
";
    let summary = engine
        .start(input(plan(yaml, dir.path())))
        .join()
        .await
        .unwrap();
    assert_eq!(summary.status, RunStatus::Succeeded);
    assert_eq!(summary.steps[0].status, StepStatus::Cached);
    assert_eq!(summary.exports[0].status, ExportStatus::Unchanged);

    let yaml = format!(
        "{yaml}  - {{from: train.model, to: s3://missing/model.bin}}
  - {{from: train.model, to: s3://models/again.bin}}
"
    );
    let summary = engine
        .start(input(plan(&yaml, dir.path())))
        .join()
        .await
        .unwrap();
    assert_eq!(summary.status, RunStatus::Failed);
    assert!(summary.steps.iter().all(|s| s.status.is_ok()));
    assert_eq!(summary.exports[1].status, ExportStatus::Failed);
    assert_eq!(
        summary.exports[1].message.as_deref(),
        Some("s3://missing/model.bin: no such bucket")
    );
    assert_eq!(summary.exports[2].status, ExportStatus::Uploaded);
}

#[tokio::test]
async fn a_plan_with_exports_needs_an_exporter_and_exports_change_no_cache_key() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::new(dir.path().join(".kiln"));
    let yaml = format!("{STEPS}exports:\n  - {{from: train.model, to: s3://models/m.bin}}\n");
    let with = plan(&yaml, dir.path());
    let without = plan(STEPS, dir.path());
    for (a, b) in with.steps.iter().zip(&without.steps) {
        assert_eq!(a.cache_key, b.cache_key, "{}", a.id);
    }
    let err = engine(&state).start(input(with)).join().await.unwrap_err();
    let EngineError::Preflight(problems) = err else {
        panic!("{err}")
    };
    assert!(problems[0].contains("no exporter"), "{problems:?}");
    assert!(
        !state.runs_dir().exists() || std::fs::read_dir(state.runs_dir()).unwrap().count() == 0,
        "a run that cannot start leaves no record"
    );
}
