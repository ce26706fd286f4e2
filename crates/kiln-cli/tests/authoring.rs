//! Writing steps: a Python step built in a fresh folder (no `.gitignore`) is built once and
//! then found in the build cache, whatever componentize-py leaves in the folder; the params
//! a Rust or a Python step declares are checked against `with:` by `kiln validate` and before
//! `kiln run` starts anything, and their defaults reach the step. Needs what
//! `scripts/setup.sh` installs (componentize-py, the wasm32-wasip2 target).

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

mod support;

fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::copy(from, to).unwrap();
}

use support::{repo, run_in as kiln};

fn stderr(out: &Output) -> String {
    support::text(&out.stderr)
}

/// The digits report step, its SDK and the WIT copied into a folder of their own, as a user
/// who starts from the docs would lay them out: `step/report.py`, `sdk/kiln_step.py`, `wit/`.
fn python_workspace(with: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let repo = repo();
    copy(
        &repo.join("examples/digits/steps-py/report.py"),
        &root.join("step/report.py"),
    );
    copy(
        &repo.join("sdk/python/kiln_step.py"),
        &root.join("sdk/kiln_step.py"),
    );
    copy(&repo.join("wit/step.wit"), &root.join("wit/step.wit"));
    std::fs::write(
        root.join("best.json"),
        r#"{"instance":"1","accuracy":0.95}"#,
    )
    .unwrap();
    for (i, accuracy) in [(0, 0.9), (1, 0.95)] {
        std::fs::create_dir_all(root.join("candidates")).unwrap();
        std::fs::write(
            root.join(format!("candidates/{i}")),
            format!(r#"{{"accuracy":{accuracy},"correct":9,"n":10,"train":{{"lr":0.{i}}}}}"#),
        )
        .unwrap();
    }
    write_python_pipeline(root, with);
    dir
}

fn write_python_pipeline(root: &Path, with: &str) {
    std::fs::write(
        root.join("pipeline.yaml"),
        format!(
            "apiVersion: kiln/v1
name: fresh
steps:
  report:
    wasm:
      source: step
      command: python3 ../sdk/kiln_step.py build report --wit ../wit -o target/report.wasm
      artifact: target/report.wasm
      watch: [../sdk, ../wit]
    inputs:
      best: ./best.json
      candidates: ./candidates
{with}    outputs: [report]
"
        ),
    )
    .unwrap();
}

fn build_json(dir: &Path) -> Value {
    let out = kiln(dir, &["build", "pipeline.yaml", "--output", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_python_step_is_built_once_in_a_folder_without_gitignore_and_its_params_are_checked() {
    let ws = python_workspace("");
    let root = ws.path();
    assert!(!root.join("step/.gitignore").exists());

    let first = build_json(root);
    assert_eq!(first["steps"][0]["status"], "built", "{first}");
    // componentize-py leaves bytecode beside the sources; a user's folder has no
    // `.gitignore` to hide it. Plant some where it did not, so the case is always tested.
    let cache = root.join("step/__pycache__");
    if !cache.is_dir() {
        std::fs::create_dir_all(&cache).unwrap();
    }
    std::fs::write(cache.join("report.cpython-399.pyc"), b"\x00bytecode").unwrap();
    std::fs::write(root.join("step/stale.pyc"), b"\x00bytecode").unwrap();

    let second = build_json(root);
    assert_eq!(second["steps"][0]["status"], "cached", "{second}");
    assert_eq!(second["steps"][0]["key"], first["steps"][0]["key"]);
    assert_eq!(
        second["steps"][0]["component"],
        first["steps"][0]["component"]
    );

    // The component declares `title` (with a default): a typo in `with:` is caught before
    // anything runs, located, with a suggestion; the build is not redone.
    write_python_pipeline(root, "    with:\n      titel: nightly\n");
    let out = kiln(root, &["validate", "pipeline.yaml"]);
    let text = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("step `report` has no param `titel` (did you mean `title`?)"),
        "{text}"
    );
    assert!(text.contains("pipeline.yaml:14:7"), "{text}");
    assert!(
        text.contains(r#"its component declares `title` (string, default "digits")"#),
        "{text}"
    );
    assert!(!text.contains("building"), "rebuilt: {text}");
    let out = kiln(root, &["run", "pipeline.yaml"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no param `titel`"),
        "{}",
        stderr(&out)
    );
    assert!(
        !root.join(".kiln/runs").exists()
            || std::fs::read_dir(root.join(".kiln/runs")).unwrap().count() == 0,
        "a run was recorded"
    );

    // Without `with:`, the step gets the declared default.
    write_python_pipeline(root, "");
    let out = kiln(root, &["validate", "pipeline.yaml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = kiln(root, &["run", "pipeline.yaml", "--output", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let run: Value = serde_json::from_slice(&out.stdout).unwrap();
    let report = root.join("report.md");
    let got = kiln(
        root,
        &[
            "artifact",
            "get",
            run["run_id"].as_str().unwrap(),
            "report",
            "report",
            "-o",
            report.to_str().unwrap(),
        ],
    );
    assert!(got.status.success(), "{}", stderr(&got));
    let text = std::fs::read_to_string(&report).unwrap();
    assert!(text.starts_with("# digits: training report"), "{text}");
}

/// A pipeline file beside the digits example (a step's source folder must be inside the
/// pipeline's folder), removed when dropped.
struct Beside(PathBuf);

impl Drop for Beside {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn a_typo_in_with_of_a_rust_step_is_caught_by_validate() {
    let digits = repo().join("examples/digits");
    let state = tempfile::tempdir().unwrap();
    let file = Beside(digits.join(format!(".with-typo-{}.yaml", std::process::id())));
    let name = file.0.file_name().unwrap().to_str().unwrap().to_owned();
    let pipeline = |with: &str| {
        std::fs::write(
            &file.0,
            format!(
                "apiVersion: kiln/v1
name: rust-step
steps:
  pick:
    wasm:
      source: steps
      command: cargo build --release --target wasm32-wasip2 -p pick --lib --features component
      artifact: target/wasm32-wasip2/release/pick_step.wasm
    inputs:
      candidates: ./data
    with:
{with}    outputs: [best]
"
            ),
        )
        .unwrap();
    };
    let validate = |extra: &[&str]| {
        let mut args = vec!["validate", name.as_str(), "--state"];
        args.push(state.path().to_str().unwrap());
        args.extend_from_slice(extra);
        kiln(&digits, &args)
    };
    pipeline("      min_acuracy: 0.8\n      seed: 3\n");
    let out = validate(&["--output", "json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    let diagnostics = json["files"][0]["diagnostics"].as_array().unwrap();
    let messages: Vec<&str> = diagnostics
        .iter()
        .map(|d| d["message"].as_str().unwrap())
        .collect();
    assert_eq!(
        messages,
        [
            "step `pick` has no param `min_acuracy` (did you mean `min_accuracy`?)",
            "step `pick` has no param `seed`",
        ],
        "{json:#}"
    );
    assert_eq!(diagnostics[0]["line"], 12, "{json:#}");

    // A value of the wrong type, located at the value.
    pipeline("      min_accuracy: high\n");
    let out = validate(&[]);
    let text = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(
            "param `min_accuracy` of step `pick` is a float: expected float, found string `\"high\"`"
        ),
        "{text}"
    );
    assert!(text.contains(":12:21"), "{text}");

    // Spelt right, it is valid.
    pipeline("      min_accuracy: 0.8\n");
    let out = validate(&[]);
    assert!(out.status.success(), "{}", stderr(&out));
}
