//! Helpers shared by the integration tests: planned container steps and tasks laid out the way
//! the engine lays them out (`<workdir>/in/<name>`, `<workdir>/out/<name>`), and the check
//! that decides whether a test that needs podman runs, skips or fails.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kiln_engine::StagedTask;
use kiln_plan::{CacheKeyMaterial, ContainerPlan, PlannedStep, Policy, StepKind};

/// A planned container step.
pub fn container_step(id: &str, image: &str, command: &[&str], args: &[&str]) -> PlannedStep {
    step_of_kind(
        id,
        StepKind::Container(ContainerPlan {
            image: image.to_owned(),
            command: command.iter().map(|s| s.to_string()).collect(),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: BTreeMap::new(),
            cpu_millis: None,
            cpu_request_millis: None,
            memory_bytes: None,
            memory_request_bytes: None,
            gpu: 0,
            gpu_kind: None,
            secrets: BTreeMap::new(),
        }),
    )
}

/// A planned wasm step (which container executors must ignore in preflight).
pub fn wasm_step(id: &str) -> PlannedStep {
    step_of_kind(
        id,
        StepKind::Wasm {
            component: kiln_plan::ComponentSource::Path {
                path: "x.wasm".to_owned(),
            },
            memory_bytes: None,
            fuel: None,
            command: Default::default(),
        },
    )
}

fn step_of_kind(id: &str, kind: StepKind) -> PlannedStep {
    PlannedStep {
        id: id.into(),
        step: id.split('[').next().unwrap_or(id).to_owned(),
        instance: None,
        kind,
        inputs: BTreeMap::new(),
        outputs: Vec::new(),
        output_files: BTreeMap::new(),
        metrics: None,
        params: BTreeMap::new(),
        depends_on: Vec::new(),
        when: None,
        when_scope: None,
        policy: Policy {
            retries: 0,
            run: Default::default(),
            retry: Default::default(),
            parallelism: None,
            concurrency: None,
            timeout_ms: None,
            cache: true,
            max_age_ms: None,
        },
        cache_key: CacheKeyMaterial {
            version: kiln_plan::PLAN_VERSION,
            kind: "container".into(),
            container: None,
            params: BTreeMap::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            output_files: BTreeMap::new(),
            metrics: None,
            command: None,
            key: None,
        },
        for_each: None,
        values: Vec::new(),
        optional: Vec::new(),
        after_on: Default::default(),
    }
}

/// The container part of a step, to change env or resources.
pub fn plan_mut(step: &mut PlannedStep) -> &mut ContainerPlan {
    match &mut step.kind {
        StepKind::Container(plan) => plan,
        StepKind::Wasm { .. } => panic!("not a container step"),
    }
}

/// A task for `step` in `root`: each input written as a file with its text, outputs under
/// `<root>/work/out`, the log at `<root>/logs/<step>.log`.
pub fn task(
    root: &Path,
    step: PlannedStep,
    inputs: &[(&str, &str)],
    outputs: &[&str],
) -> StagedTask {
    let workdir = root.join("work");
    let in_dir = workdir.join("in");
    let out_dir = workdir.join("out");
    std::fs::create_dir_all(&in_dir).unwrap();
    std::fs::create_dir_all(&out_dir).unwrap();
    let inputs = inputs
        .iter()
        .map(|(name, text)| {
            let path = in_dir.join(name);
            std::fs::write(&path, text).unwrap();
            (name.to_string(), path)
        })
        .collect();
    let outputs = outputs
        .iter()
        .map(|name| (name.to_string(), out_dir.join(name)))
        .collect();
    StagedTask {
        run_id: "20260101-000000-000-ab12".to_owned(),
        log: root.join("logs").join(format!("{}.log", step.id)),
        recorded: Default::default(),
        step,
        attempt: 1,
        cache_key: "blake3:test".to_owned(),
        workdir,
        inputs,
        outputs,
        component: None,
    }
}

/// A task with made-up absolute paths (nothing is created), for command-line tests.
pub fn paper_task(step: PlannedStep) -> StagedTask {
    StagedTask {
        run_id: "r1".to_owned(),
        log: PathBuf::from("/s/logs/x.log"),
        recorded: Default::default(),
        step,
        attempt: 2,
        cache_key: "blake3:test".to_owned(),
        workdir: PathBuf::from("/s/work"),
        inputs: BTreeMap::from([
            ("cfg".to_owned(), PathBuf::from("/s/work/in/cfg")),
            ("data".to_owned(), PathBuf::from("/s/work/in/data")),
        ]),
        outputs: BTreeMap::from([
            ("metrics".to_owned(), PathBuf::from("/s/work/out/metrics")),
            ("model".to_owned(), PathBuf::from("/s/work/out/model")),
        ]),
        component: None,
    }
}

/// The failure's kind, exit code and message, or a panic naming the success.
pub fn failure(outcome: kiln_engine::ExecOutcome) -> (String, Option<i32>, String) {
    match outcome {
        kiln_engine::ExecOutcome::Failed {
            message,
            exit_code,
            kind,
            ..
        } => (kind.to_string(), exit_code, message),
        other => panic!("expected a failure, got {other:?}"),
    }
}

// Not every test file that includes this module needs podman.
#[allow(unused_imports)]
pub use kiln_test_support::{PODMAN_IMAGE, podman_or_skip};
