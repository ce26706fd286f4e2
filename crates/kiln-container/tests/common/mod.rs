//! Helpers shared by the integration tests: planned container steps and tasks laid out the way
//! the engine lays them out (`<workdir>/in/<name>`, `<workdir>/out/<name>`), and the check
//! that decides whether a test that needs podman runs, skips or fails.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

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
            memory_bytes: None,
            gpu: 0,
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
        },
    )
}

fn step_of_kind(id: &str, kind: StepKind) -> PlannedStep {
    PlannedStep {
        id: id.to_owned(),
        step: id.split('[').next().unwrap_or(id).to_owned(),
        instance: None,
        kind,
        inputs: BTreeMap::new(),
        outputs: Vec::new(),
        params: BTreeMap::new(),
        depends_on: Vec::new(),
        when: None,
        policy: Policy {
            retries: 0,
            timeout_ms: None,
            cache: true,
        },
        cache_key: CacheKeyMaterial {
            version: kiln_plan::PLAN_VERSION,
            kind: "container".into(),
            container: None,
            params: BTreeMap::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
        },
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

/// The image the podman tests run, built by `scripts/setup-containers.sh`.
pub const PODMAN_IMAGE: &str = "localhost/kiln-busybox:test";

/// Whether the test `test` can use podman: true when podman runs [`PODMAN_IMAGE`] here
/// (checked once per test binary). Otherwise it prints `skipping <test>: ...` on stderr and
/// returns false, so that a machine without podman still runs the other tests; but where `CI`
/// is set (not empty) it panics with the same reason, because CI has podman and must not skip.
pub fn podman_or_skip(test: &str) -> bool {
    let Err(reason) = podman_runs_the_image() else {
        return true;
    };
    let reason = format!(
        "needs podman running {PODMAN_IMAGE}, but {reason} (run scripts/setup-containers.sh)"
    );
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
        panic!("{test}: {reason}; CI is set, so this test may not be skipped");
    }
    // Straight to stderr: libtest captures what `eprintln!` prints in a test that passes, and
    // a skip must be seen.
    let _ = writeln!(std::io::stderr(), "skipping {test}: {reason}");
    false
}

/// Runs the image once, with the flags `scripts/setup-containers.sh` checks it with (those
/// kiln passes too), by hand rather than through kiln: a bug in kiln must fail the tests, not
/// skip them.
fn podman_runs_the_image() -> Result<(), String> {
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    CHECKED
        .get_or_init(|| {
            let exists = podman_quietly(&["image", "exists", PODMAN_IMAGE])?;
            match exists.status.code() {
                Some(0) => {}
                // `image exists` says "no" with 1, and fails with anything else.
                Some(1) => return Err("the image is missing".to_owned()),
                _ => {
                    return Err(format!(
                        "`podman image exists` failed: {}",
                        last_line(&exists)
                    ));
                }
            }
            let ran = podman_quietly(&[
                "run",
                "--rm",
                "--pull",
                "never",
                "--network",
                "none",
                "--ulimit",
                "nofile=1024:1024",
                "--ulimit",
                "nproc=1000:1000",
                PODMAN_IMAGE,
                "sh",
                "-c",
                "echo kiln-busybox ok",
            ])?;
            let stdout = String::from_utf8_lossy(&ran.stdout);
            if ran.status.success() && stdout.trim() == "kiln-busybox ok" {
                return Ok(());
            }
            Err(format!("`podman run` of it failed: {}", last_line(&ran)))
        })
        .clone()
}

/// The exit status and the last line podman printed, which says what went wrong.
fn last_line(output: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = |text: &str| {
        text.lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(str::to_owned)
    };
    let line = last(&stderr)
        .or_else(|| last(&stdout))
        .unwrap_or_else(|| "(it printed nothing)".to_owned());
    format!("{}, {}", output.status, line.trim())
}

/// `podman --runtime runc ARGS`, given at most a minute (a wedged podman must not hang the
/// tests; what these commands print is a line or two, so the pipes never fill while it
/// waits); the reason when it cannot be run at all.
fn podman_quietly(args: &[&str]) -> Result<std::process::Output, String> {
    let mut child = Command::new("podman")
        .args(["--runtime", "runc"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                "podman is not installed (not found on PATH)".to_owned()
            }
            _ => format!("podman cannot be started: {e}"),
        })?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().map_err(|e| e.to_string())?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "`podman {}` did not finish within 60 s",
                args.join(" ")
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().map_err(|e| e.to_string())
}
