//! The podman backend, for real, with the tiny local image that `scripts/setup-containers.sh`
//! builds. Without podman or that image each test prints `skipping <test>: ...` on stderr and
//! passes, except where `CI` is set (CI runs the script first): there it fails.

mod common;

use std::time::Duration;

use common::{
    PODMAN_IMAGE as IMAGE, container_step, failure, plan_mut, podman_or_skip, task, wasm_step,
};
use kiln_container::{ContainerEngine, EngineExecutor, container_name, probe};
use kiln_engine::{ExecOutcome, Executor};

/// The podman executor for the test `test`, or `None` when it must skip (see
/// [`podman_or_skip`]).
async fn podman(test: &str) -> Option<EngineExecutor> {
    if !podman_or_skip(test) {
        return None;
    }
    // Podman runs the image, so kiln's own probe must find it usable.
    if let Err(error) = probe(ContainerEngine::Podman).await {
        panic!("podman runs {IMAGE}, but kiln's probe says it is unusable: {error}");
    }
    Some(EngineExecutor::new(ContainerEngine::Podman))
}

async fn podman_cli(args: &[&str]) -> std::process::Output {
    tokio::process::Command::new("podman")
        .args(["--runtime", "runc"])
        .args(args)
        .output()
        .await
        .unwrap()
}

/// Names of all containers (running or not) whose name is exactly `name`.
async fn containers_named(name: &str) -> String {
    let filter = format!("name=^{name}$");
    let out = podman_cli(&["ps", "-a", "--filter", &filter, "--format", "{{.Names}}"]).await;
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Waits (at most 30 s) until the container `name` is running.
async fn wait_until_running(name: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let out = podman_cli(&[
            "container",
            "inspect",
            "--format",
            "{{.State.Status}}",
            name,
        ])
        .await;
        if String::from_utf8_lossy(&out.stdout).trim() == "running" {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "container {name} did not start within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn reads_an_input_and_writes_outputs_in_the_image() {
    let Some(executor) = podman("reads_an_input_and_writes_outputs_in_the_image").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let script = r#"tr a-z A-Z < {{inputs.text}} > {{outputs.upper}}
        { echo "$GREETING $KILN_STEP $KILN_ATTEMPT"; pwd; ls /sys/class/net; } > {{outputs.facts}}
        echo done"#;
    let mut step = container_step("shout", IMAGE, &["sh", "-c", script], &[]);
    plan_mut(&mut step).env = [("GREETING".to_owned(), "hi".to_owned())].into();
    plan_mut(&mut step).memory_bytes = Some(64 * 1024 * 1024);
    plan_mut(&mut step).cpu_millis = Some(500);
    let task = task(
        dir.path(),
        step,
        &[("text", "hello kiln\n")],
        &["upper", "facts"],
    );

    let outcome = executor.run_staged(&task).await.unwrap();

    let log = std::fs::read_to_string(&task.log).unwrap_or_default();
    let ExecOutcome::Succeeded { details, .. } = &outcome else {
        panic!("{outcome:?}\nlog:\n{log}");
    };
    // The record gets the image the tag named: the id podman reports for it.
    assert_eq!(details["image"], IMAGE);
    let id = details["image_id"].as_str().expect("an image id");
    let inspected = podman_cli(&["image", "inspect", "--format", "{{.Id}}", IMAGE]).await;
    let expected = String::from_utf8_lossy(&inspected.stdout).trim().to_owned();
    assert_eq!(
        id,
        format!("sha256:{}", expected.trim_start_matches("sha256:"))
    );
    assert_eq!(
        std::fs::read_to_string(&task.outputs["upper"]).unwrap(),
        "HELLO KILN\n"
    );
    // The declared env and kiln's, the working directory, and no network but loopback.
    assert_eq!(
        std::fs::read_to_string(&task.outputs["facts"]).unwrap(),
        "hi shout 1\n/kiln/work\nlo\n"
    );
    assert!(
        log.starts_with("podman backend: podman --runtime runc run --rm "),
        "{log}"
    );
    assert!(log.ends_with("done\n"), "{log}");
    assert_eq!(containers_named(&container_name(&task)).await, "");
}

#[tokio::test]
async fn inputs_are_read_only() {
    let Some(executor) = podman("inputs_are_read_only").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let step = container_step(
        "tamper",
        IMAGE,
        &["sh", "-c", "echo evil > {{inputs.text}}"],
        &[],
    );
    let task = task(dir.path(), step, &[("text", "original\n")], &[]);

    let (kind, code, message) = failure(executor.run_staged(&task).await.unwrap());

    assert_eq!((kind.as_str(), code), ("exit", Some(1)));
    assert!(message.contains("Read-only file system"), "{message}");
    assert_eq!(
        std::fs::read_to_string(&task.inputs["text"]).unwrap(),
        "original\n"
    );
}

#[tokio::test]
async fn linked_inputs_cannot_be_written_through_the_working_directory() {
    let Some(executor) =
        podman("linked_inputs_cannot_be_written_through_the_working_directory").await
    else {
        return;
    };
    // Staged by the engine's own code: the input is the stored object, linked into `in/`
    // of the working directory, which the container sees read-write at /kiln/work.
    assert!(executor.reads_inputs_read_only());
    let dir = tempfile::tempdir().unwrap();
    let store = kiln_cas::LocalStore::new(dir.path().join("cas"));
    let digest = store.put_bytes(b"original\n").unwrap();
    let step = container_step(
        "tamper",
        IMAGE,
        &[
            "sh",
            "-c",
            "for f in /kiln/work/in/text {{inputs.text}}; do \
             if echo evil > $f; then echo \"wrote $f\"; else echo \"refused $f\"; fi; done \
             > {{outputs.report}}; cat {{inputs.text}} >> {{outputs.report}}",
        ],
        &[],
    );
    let task = kiln_engine::StepTask {
        run_id: "r1".into(),
        step,
        attempt: 1,
        cache_key: kiln_cas::Digest::of_bytes(b"key"),
        inputs: [("text".to_owned(), digest)].into(),
        outputs: vec!["report".into()],
        component: None,
        recorded: Default::default(),
    };
    let area = kiln_engine::StagingArea {
        store: std::sync::Arc::new(store.clone()),
        scratch: dir.path().join("scratch"),
        components: dir.path().join("components"),
        log: dir.path().join("tamper.log"),
        keep_failed: None,
        pool: None,
    };
    let outputs = match executor.run(&task, &area).await.unwrap() {
        ExecOutcome::Succeeded { outputs, .. } => outputs,
        other => panic!("{other:?}\n{}", std::fs::read_to_string(&area.log).unwrap()),
    };
    let report = String::from_utf8(store.read_verified(&outputs["report"]).unwrap()).unwrap();
    assert_eq!(
        report,
        "refused /kiln/work/in/text\nrefused /kiln/inputs/text\noriginal\n"
    );
    assert_eq!(store.read_verified(&digest).unwrap(), b"original\n");
}

#[tokio::test]
async fn a_failing_step_quotes_its_log() {
    let Some(executor) = podman("a_failing_step_quotes_its_log").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let step = container_step(
        "fail",
        IMAGE,
        &[
            "sh",
            "-c",
            "echo working; echo 'no rows in input' >&2; exit 4",
        ],
        &[],
    );
    let task = task(dir.path(), step, &[], &[]);

    let (kind, code, message) = failure(executor.run_staged(&task).await.unwrap());

    assert_eq!(kind, "exit");
    assert_eq!(code, Some(4));
    assert_eq!(
        message,
        "`sh` in image `localhost/kiln-busybox:test` exited with code 4; last lines of the log:\nworking\nno rows in input"
    );
    assert_eq!(containers_named(&container_name(&task)).await, "");
}

#[tokio::test]
async fn a_missing_command_is_reported_by_the_engine() {
    let Some(executor) = podman("a_missing_command_is_reported_by_the_engine").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let step = container_step("nope", IMAGE, &["kiln-no-such-program"], &[]);
    let task = task(dir.path(), step, &[], &[]);

    let (kind, code, message) = failure(executor.run_staged(&task).await.unwrap());

    assert_eq!((kind.as_str(), code), ("exit", Some(127)));
    assert!(message.contains("executable file not found"), "{message}");
}

#[tokio::test]
async fn dropping_the_future_removes_the_container() {
    let Some(executor) = podman("dropping_the_future_removes_the_container").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // PID 1 ignores SIGTERM: only a forced removal stops this quickly.
    let step = container_step("sleepy", IMAGE, &["sleep", "300"], &[]);
    let task = task(dir.path(), step, &[], &[]);
    let name = container_name(&task);

    tokio::select! {
        outcome = executor.run_staged(&task) => panic!("the step ended: {outcome:?}"),
        // Once the container really runs, the select drops `run`.
        () = wait_until_running(&name) => {}
    }
    kiln_container::cleanups_done().await;

    assert_eq!(
        containers_named(&name).await,
        "",
        "the container outlived the drop"
    );
}

#[tokio::test]
async fn a_timeout_stops_the_step() {
    let Some(executor) = podman("a_timeout_stops_the_step").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let step = container_step("slow", IMAGE, &["sleep", "300"], &[]);
    let task = task(dir.path(), step, &[], &[]);

    let started = std::time::Instant::now();
    let result = tokio::time::timeout(Duration::from_millis(300), executor.run_staged(&task)).await;

    assert!(result.is_err(), "the step ended: {result:?}");
    kiln_container::cleanups_done().await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(containers_named(&container_name(&task)).await, "");
}

#[tokio::test]
async fn preflight_checks_the_images() {
    let Some(executor) = podman("preflight_checks_the_images").await else {
        return;
    };
    let present = container_step("ok", IMAGE, &["true"], &[]);
    let missing = container_step("train", "localhost/kiln-no-such-image:1", &["true"], &[]);
    let missing_too = container_step("eval", "localhost/kiln-no-such-image:1", &[], &[]);
    let wasm = wasm_step("prep");

    assert_eq!(executor.preflight(&[&present, &wasm]).await, Ok(()));
    assert_eq!(
        executor
            .preflight(&[&present, &missing, &missing_too, &wasm])
            .await,
        Err(vec![
            "image `localhost/kiln-no-such-image:1` is not present locally; pull or build it first (used by step `train`, `eval`)"
                .to_owned()
        ])
    );
}
