//! Components of the kiln step world (`wit/step.wit`), with the digits example's `pick` step
//! built as one: typed context in, metrics out, typed errors, the logger, and a command
//! component beside it on the same runtime.

mod support;

use std::path::Path;

use kiln_engine::{ExecOutcome, Executor};
use kiln_wasm::{ComponentKind, WasmExecutor, WasmRuntime};
use support::{TaskSpec, digits_component, guest, task};

fn executor(cache: &Path) -> WasmExecutor {
    WasmExecutor::new(WasmRuntime::new(cache, 2).expect("runtime"))
}

fn shared_cache() -> std::path::PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("kiln-wasm-cache")
}

/// A `pick` task whose `candidates` folder holds these metrics files, named 0, 1, ...
fn pick_task(dir: &Path, accuracies: &[&str]) -> kiln_engine::StagedTask {
    let mut t = task(
        dir,
        "pick",
        &digits_component("pick"),
        TaskSpec {
            outputs: vec!["best"],
            ..Default::default()
        },
    );
    let folder = t.workdir.join("in/candidates");
    std::fs::create_dir_all(&folder).unwrap();
    // Written in reverse: the guest must not depend on the host's listing order.
    for (i, metrics) in accuracies.iter().enumerate().rev() {
        std::fs::write(folder.join(i.to_string()), metrics).unwrap();
    }
    t.inputs.insert("candidates".into(), folder);
    t
}

#[tokio::test]
async fn a_step_world_component_returns_metrics_and_writes_its_output() {
    let dir = tempfile::tempdir().unwrap();
    let exec = executor(&shared_cache());
    let loaded = exec
        .runtime()
        .load(&digits_component("pick"))
        .await
        .unwrap();
    assert_eq!(loaded.kind(), ComponentKind::Step);

    let t = pick_task(
        dir.path(),
        &[
            r#"{"accuracy":0.9,"n":10,"correct":9}"#,
            r#"{"accuracy":0.95,"n":20,"correct":19}"#,
            r#"{"accuracy":0.5,"n":2,"correct":1}"#,
        ],
    );
    let outcome = exec.run_staged(&t).await.unwrap();
    let ExecOutcome::Succeeded {
        metrics, details, ..
    } = &outcome
    else {
        panic!("expected success, got {outcome:?}");
    };
    assert_eq!(metrics.get("accuracy"), Some(&0.95), "{metrics:?}");
    assert!(details["fuel_used"].as_u64().unwrap() > 0);
    let best = std::fs::read_to_string(&t.outputs["best"]).unwrap();
    assert!(
        best.starts_with(r#"{"instance":"1","accuracy":0.950000"#),
        "{best}"
    );
    let log = std::fs::read_to_string(&t.log).unwrap();
    assert!(log.contains("pick: {\"instance\":\"1\""), "{log}");
}

#[tokio::test]
async fn a_step_error_is_a_typed_failure_with_its_kind_and_message() {
    let dir = tempfile::tempdir().unwrap();
    let exec = executor(&shared_cache());
    let t = pick_task(dir.path(), &[r#"{"accuracy":1.5}"#]);
    let outcome = exec.run_staged(&t).await.unwrap();
    let ExecOutcome::Failed {
        kind,
        message,
        exit_code,
        ..
    } = &outcome
    else {
        panic!("expected a failure, got {outcome:?}");
    };
    assert_eq!(
        (kind.as_str(), *exit_code),
        ("step-error", None),
        "{message}"
    );
    assert!(
        message.starts_with("invalid input: ") && message.contains("accuracy 1.5 is not in [0, 1]"),
        "{message}"
    );
    assert!(!t.outputs["best"].exists());
}

#[tokio::test]
async fn step_and_command_components_share_one_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let exec = executor(&shared_cache());
    let copy = task(
        &dir.path().join("copy"),
        "copy",
        &guest("copy"),
        TaskSpec {
            inputs: vec![("src", b"bytes".to_vec())],
            outputs: vec!["dst"],
            ..Default::default()
        },
    );
    let pick = pick_task(&dir.path().join("pick"), &[r#"{"accuracy":0.25}"#]);
    let (a, b) = tokio::join!(exec.run_staged(&copy), exec.run_staged(&pick));
    assert!(matches!(a.unwrap(), ExecOutcome::Succeeded { .. }));
    let ExecOutcome::Succeeded { metrics, .. } = b.unwrap() else {
        panic!("pick failed");
    };
    assert_eq!(metrics["accuracy"], 0.25);
    assert_eq!(
        exec.runtime().load(&guest("copy")).await.unwrap().kind(),
        ComponentKind::Command
    );
}
