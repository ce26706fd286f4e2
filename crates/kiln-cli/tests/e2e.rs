//! End-to-end cases: each folder under `tests/e2e/` is a pipeline, its files and a script
//! (`case.json`) played against the real `kiln` binary. See `tests/e2e/README.md`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

mod support;

fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/e2e")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The image `scripts/setup-containers.sh` builds; a case that needs podman needs it too.
use kiln_test_support::PODMAN_IMAGE;

/// How a case ended when nothing in it failed.
enum Outcome {
    Played,
    /// It needs something this machine lacks (and `CI` is not set): why.
    Skipped(String),
}

/// Whether podman runs here with the test image.
fn podman_ready() -> bool {
    kiln_test_support::podman_runs_the_image().is_ok()
}

/// In CI (`CI` set) a case never skips: what it needs must be there.
fn in_ci() -> bool {
    kiln_test_support::in_ci()
}

/// Checks a case's optional first action, `{"needs": "podman"}`.
fn check_needs(name: &str, needs: &Value) -> Result<Option<Outcome>, String> {
    match needs.as_str() {
        Some("podman") => {
            if podman_ready() {
                Ok(None)
            } else if in_ci() {
                Err(format!(
                    "needs podman and the image {PODMAN_IMAGE}, which are missing, and CI is set \
                     (run scripts/setup-containers.sh)"
                ))
            } else {
                // Straight to the process's stderr: libtest captures `eprintln!` of a passing
                // test, and a skip must be seen.
                let line = format!(
                    "skipping e2e case {name}: needs podman (run scripts/setup-containers.sh)"
                );
                let _ = writeln!(std::io::stderr(), "{line}");
                Ok(Some(Outcome::Skipped(line)))
            }
        }
        // Started by `play`, which keeps the server for the case.
        Some("s3") => Ok(None),
        _ => Err(format!("unknown need {needs} (known: \"podman\", \"s3\")")),
    }
}

/// Plays one case; returns a description of the first mismatch. Actions after a failed one
/// are not played, except those marked `"always": true` (clean-ups).
fn play(case: &Path) -> Result<Outcome, String> {
    let name = case.file_name().unwrap().to_string_lossy().into_owned();
    let script: Vec<Value> = serde_json::from_str(
        &std::fs::read_to_string(case.join("case.json")).map_err(|e| format!("case.json: {e}"))?,
    )
    .map_err(|e| format!("case.json: {e}"))?;
    let mut actions = script.iter().enumerate().peekable();
    let mut s3 = None;
    if let Some((_, first)) = actions.peek()
        && let Some(needs) = first.get("needs")
    {
        if let Some(skipped) = check_needs(&name, needs)? {
            return Ok(skipped);
        }
        if needs == "s3" {
            match kiln_test_support::s3::s3_server_or_skip(&format!("e2e case {name}")) {
                Some(server) => s3 = Some(server),
                None => {
                    return Ok(Outcome::Skipped(format!(
                        "skipping e2e case {name}: needs the S3 server (run scripts/setup.sh)"
                    )));
                }
            }
        }
        actions.next();
    }
    // What every command of the case gets: the S3 server's endpoint and credentials.
    let env: Vec<(String, String)> = s3.as_ref().map(|s| s.env()).unwrap_or_default();
    let work = tempfile::tempdir().unwrap();
    copy_dir(case, work.path());
    let mut last: Option<Value> = None;
    let mut failure: Option<String> = None;
    for (n, action) in actions {
        let always = action.get("always").and_then(Value::as_bool) == Some(true);
        if failure.is_some() && !always {
            continue;
        }
        let at = format!("action {} ({action})", n + 1);
        let result = act(work.path(), n, action, &mut last, s3.as_ref(), &env)
            .map_err(|e| format!("{at}: {e}"));
        if let Err(e) = result {
            failure.get_or_insert(e);
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(Outcome::Played),
    }
}

/// The action `n` of a case, played in `work`; `last` is the JSON of the last run; `s3` the
/// case's S3 server, if it needs one, and `env` what every command gets.
fn act(
    work: &Path,
    n: usize,
    action: &Value,
    last: &mut Option<Value>,
    s3: Option<&kiln_test_support::s3::S3Server>,
    env: &[(String, String)],
) -> Result<(), String> {
    let obj = action.as_object().ok_or("not an object")?;
    if let Some(args) = obj.get("run") {
        let args: Vec<&str> = args
            .as_array()
            .ok_or("`run` takes a list")?
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .arg("run")
            .arg("pipeline.yaml")
            .args(["--output", "json"])
            .args(&args)
            .current_dir(work)
            .envs(env.iter().cloned())
            .env("NO_COLOR", "1")
            .env_remove("KILN_HOME")
            .output()
            .map_err(|e| e.to_string())?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        let want_exit = obj.get("exit").and_then(Value::as_i64).unwrap_or(0);
        if out.status.code() != Some(want_exit as i32) {
            return Err(format!(
                "exit {:?}, expected {want_exit}\n{stderr}",
                out.status.code()
            ));
        }
        let json: Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("stdout is not JSON ({e})\n{stderr}"))?;
        if let Some(want) = obj.get("steps").and_then(Value::as_object) {
            for (step, status) in want {
                let got = step_of(&json, step).map(|s| s["status"].clone());
                if got.as_ref() != Some(status) {
                    return Err(format!(
                        "step `{step}` is {got:?}, expected {status}\n{stderr}"
                    ));
                }
            }
        }
        *last = Some(json);
    } else if let Some(want) = obj.get("messages").and_then(Value::as_object) {
        let json = last.as_ref().ok_or("no run yet")?;
        for (step, text) in want {
            let message = step_of(json, step)
                .and_then(|s| s["message"].as_str().map(str::to_owned))
                .unwrap_or_default();
            if !message.contains(text.as_str().unwrap()) {
                return Err(format!("step `{step}` message {message:?} lacks {text}"));
            }
        }
    } else if let Some(want) = obj.get("metrics").and_then(Value::as_object) {
        let json = last.as_ref().ok_or("no run yet")?;
        for (step, metrics) in want {
            let got = step_of(json, step).map(|s| s["metrics"].clone());
            if got.as_ref() != Some(metrics) {
                return Err(format!(
                    "step `{step}` has metrics {got:?}, expected {metrics}"
                ));
            }
        }
    } else if let Some(want) = obj.get("labels").and_then(Value::as_object) {
        let json = last.as_ref().ok_or("no run yet")?;
        for (step, label) in want {
            let got = step_of(json, step).map(|s| s["label"].clone());
            if got.as_ref() != Some(label) {
                return Err(format!(
                    "step `{step}` is labelled {got:?}, expected {label}"
                ));
            }
        }
    } else if let Some(spec) = obj.get("output").and_then(Value::as_array) {
        let json = last.as_ref().ok_or("no run yet")?;
        let (step, output, want) = (
            spec[0].as_str().unwrap(),
            spec[1].as_str().unwrap(),
            spec[2].as_str().unwrap(),
        );
        let run_id = json["run_id"].as_str().unwrap();
        let dest = work.join(format!("got-{n}"));
        let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["artifact", "get", run_id, step, output, "-o"])
            .arg(&dest)
            .args(["--state", ".kiln"])
            .current_dir(work)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "artifact get failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let got = std::fs::read_to_string(&dest).unwrap();
        if got != want {
            return Err(format!("output is {got:?}, expected {want:?}"));
        }
    } else if let Some(spec) = obj.get("explain").and_then(Value::as_array) {
        let json = last.as_ref().ok_or("no run yet")?;
        let step = spec
            .first()
            .and_then(Value::as_str)
            .ok_or("`explain` takes [STEP, TEXT...]")?;
        let run_id = json["run_id"].as_str().unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["explain", run_id, step, "--state", ".kiln"])
            .current_dir(work)
            .env("NO_COLOR", "1")
            .env_remove("KILN_HOME")
            .output()
            .map_err(|e| e.to_string())?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(format!(
                "explain failed ({:?}): {stdout}{}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        for text in &spec[1..] {
            let text = text.as_str().ok_or("`explain` texts are strings")?;
            if !stdout.contains(text) {
                return Err(format!("explain of `{step}` lacks {text:?}:\n{stdout}"));
            }
        }
    } else if let Some(line) = obj.get("sh") {
        let line = line.as_str().ok_or("`sh` takes a command line")?;
        let out = Command::new("sh")
            .args(["-c", line])
            .current_dir(work)
            .envs(env.iter().cloned())
            .env("KILN", env!("CARGO_BIN_EXE_kiln"))
            .env("NO_COLOR", "1")
            .env_remove("KILN_HOME")
            .output()
            .map_err(|e| format!("sh: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "sh exited with {:?}\nstdout: {}\nstderr: {}",
                out.status.code(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    } else if let Some(spec) = obj.get("write").and_then(Value::as_array) {
        std::fs::write(
            work.join(spec[0].as_str().unwrap()),
            spec[1].as_str().unwrap(),
        )
        .unwrap();
    } else if let Some(spec) = obj.get("rename").and_then(Value::as_array) {
        std::fs::rename(
            work.join(spec[0].as_str().unwrap()),
            work.join(spec[1].as_str().unwrap()),
        )
        .unwrap();
    } else if let Some(spec) = obj.get("replace").and_then(Value::as_array) {
        let path = work.join(spec[0].as_str().unwrap());
        let text = std::fs::read_to_string(&path).unwrap();
        let (from, to) = (spec[1].as_str().unwrap(), spec[2].as_str().unwrap());
        if !text.contains(from) {
            return Err(format!("{from:?} is not in the file"));
        }
        std::fs::write(&path, text.replace(from, to)).unwrap();
    } else if let Some(want) = obj.get("exports").and_then(Value::as_object) {
        let json = last.as_ref().ok_or("no run yet")?;
        for (from, status) in want {
            let got = json["exports"]
                .as_array()
                .and_then(|e| e.iter().find(|e| e["from"] == from.as_str()))
                .map(|e| e["status"].clone());
            if got.as_ref() != Some(status) {
                return Err(format!("export of `{from}` is {got:?}, expected {status}"));
            }
        }
    } else if let Some(bucket) = obj.get("bucket").and_then(Value::as_str) {
        s3.ok_or("`bucket` needs `{\"needs\": \"s3\"}`")?
            .create_bucket(bucket)?;
    } else if let Some(spec) = obj.get("object").and_then(Value::as_array) {
        let server = s3.ok_or("`object` needs `{\"needs\": \"s3\"}`")?;
        let (bucket, key, want) = (
            spec[0].as_str().unwrap(),
            spec[1].as_str().unwrap(),
            spec[2].as_str().unwrap(),
        );
        let got = server.get_object(bucket, key)?;
        if got != want.as_bytes() {
            return Err(format!(
                "s3://{bucket}/{key} holds {:?}, expected {want:?}",
                String::from_utf8_lossy(&got)
            ));
        }
    } else if obj.contains_key("needs") {
        return Err("`needs` must be the first action".into());
    } else {
        return Err("unknown action".into());
    }
    Ok(())
}

fn step_of<'a>(run: &'a Value, id: &str) -> Option<&'a Value> {
    run["steps"].as_array()?.iter().find(|s| s["id"] == id)
}

#[test]
fn end_to_end_cases() {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(cases_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("case.json").is_file())
        .collect();
    cases.sort();
    assert!(cases.len() >= 5, "the e2e cases are missing");
    let mut failures = Vec::new();
    let mut skipped = Vec::new();
    for case in &cases {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        match play(case) {
            Ok(Outcome::Played) => {}
            Ok(Outcome::Skipped(why)) => skipped.push(why),
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    if !skipped.is_empty() {
        let _ = writeln!(
            std::io::stderr(),
            "{} of {} e2e cases skipped",
            skipped.len(),
            cases.len()
        );
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
}

/// Ctrl-C: the running step (and its children) are stopped, the run is recorded as
/// cancelled, nothing of the step is published, and kiln exits 130.
#[test]
fn ctrl_c_cancels_the_run_cleanly() {
    let work = tempfile::tempdir().unwrap();
    let marker = work.path().join("child-alive");
    std::fs::write(
        work.path().join("pipeline.yaml"),
        format!(
            "apiVersion: kiln/v1\nname: cancel\nsteps:\n  slow:\n    container:\n      image: busybox\n      command: [sh, -c, \"echo partial > {{{{outputs.x}}}}; (sleep 3; touch {}) & sleep 60\"]\n    outputs: [x]\n",
            marker.display()
        ),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["run", "pipeline.yaml", "--output", "json"])
        .current_dir(work.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the step is running, then interrupt kiln as a terminal's Ctrl-C would.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let started = work.path().join(".kiln/runs");
    while std::time::Instant::now() < deadline {
        let running = std::fs::read_dir(&started)
            .into_iter()
            .flatten()
            .flatten()
            .any(|run| run.path().join("logs/slow.log").exists());
        if running {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["status"], "cancelled");
    assert_eq!(step_of(&json, "slow").unwrap()["status"], "cancelled");
    // Nothing was published, and the step's background child died with it.
    let blobs = work.path().join(".kiln/cas/blobs");
    assert!(
        !blobs.exists() || std::fs::read_dir(&blobs).unwrap().next().is_none(),
        "a blob was published"
    );
    std::thread::sleep(std::time::Duration::from_secs(4));
    assert!(
        !marker.exists(),
        "the step's child process outlived the cancel"
    );
}

/// The digits example end to end: wasm steps built from source and run in-process (plain
/// command programs, step-world components in Rust and one in Python), the training fan-out
/// as local Python processes, the best model picked and reported, metrics recorded; then all
/// cached, metrics included. Needs what `scripts/setup.sh` installs (the wasm32-wasip2
/// target, numpy, componentize-py).
#[test]
fn the_digits_example_runs_end_to_end() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let state = tempfile::tempdir().unwrap();
    let run = || {
        support::kiln()
            .args([
                "run",
                "examples/digits/pipeline.yaml",
                "--output",
                "json",
                "--state",
            ])
            .arg(state.path())
            .current_dir(&repo)
            .output()
            .unwrap()
    };
    let out = run();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    let steps = json["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 11);
    assert!(steps.iter().all(|s| s["status"] == "succeeded"), "{json}");
    let metric = |json: &Value, step: &str, name: &str| {
        step_of(json, step).and_then(|s| s["metrics"][name].as_f64())
    };
    // Metrics come from step-world components: Rust (`pick`) and Python (`report`).
    let picked = metric(&json, "pick", "accuracy").expect("pick reports its accuracy");
    assert_eq!(metric(&json, "report", "best_accuracy"), Some(picked));

    let best = state.path().join("best.json");
    let got = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args([
            "artifact",
            "get",
            json["run_id"].as_str().unwrap(),
            "pick",
            "best",
            "-o",
        ])
        .arg(&best)
        .arg("--state")
        .arg(state.path())
        .output()
        .unwrap();
    assert!(
        got.status.success(),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    let best: Value = serde_json::from_str(&std::fs::read_to_string(&best).unwrap()).unwrap();
    let accuracy = best["accuracy"].as_f64().unwrap();
    assert!(accuracy > 0.9, "best accuracy {accuracy}: {best}");

    let again: Value = serde_json::from_slice(&run().stdout).unwrap();
    assert!(
        again["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["status"] == "cached"),
        "{again}"
    );
    assert_eq!(metric(&again, "pick", "accuracy"), Some(picked));
}
