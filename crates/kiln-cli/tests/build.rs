//! `kiln build` and the build cache, with a recipe that needs no compiler: a shell command
//! that copies a checked-in file into place and counts its runs in a file outside the
//! source folder, so that each test can tell whether the recipe really ran.

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

mod support;

/// A pipeline whose two steps share one source folder, each with its own command.
struct Workspace {
    dir: tempfile::TempDir,
}

impl Workspace {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("steps/src")).unwrap();
        std::fs::write(root.join("steps/component.wasm.in"), "not really wasm\n").unwrap();
        std::fs::write(root.join("steps/src/lib.txt"), "version 1\n").unwrap();
        std::fs::write(root.join("steps/.gitignore"), "*.tmp\n").unwrap();
        Self::write_pipeline(root, "exit 0");
        Self { dir }
    }

    /// `tail` ends the first step's command (`exit 0`, or a failure).
    fn write_pipeline(root: &Path, tail: &str) {
        let recipe = |name: &str, tail: &str| {
            format!(
                "    wasm:\n      source: steps\n      command: echo {name} >> ../builds.txt && mkdir -p out && cp component.wasm.in out/{name}.wasm && {tail}\n      artifact: out/{name}.wasm\n"
            )
        };
        std::fs::write(
            root.join("pipeline.yaml"),
            format!(
                "apiVersion: kiln/v1\nname: built\nsteps:\n  first:\n{}  second:\n    after: [first]\n{}",
                recipe("first", tail),
                recipe("second", "exit 0")
            ),
        )
        .unwrap();
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    fn kiln(&self, args: &[&str]) -> Output {
        support::kiln()
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("kiln runs")
    }

    /// `kiln build --output json`, with its exit code and stderr.
    fn build(&self, extra: &[&str]) -> (Option<i32>, Value, String) {
        let mut args = vec!["build", "pipeline.yaml", "--output", "json"];
        args.extend_from_slice(extra);
        let out = self.kiln(&args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let json = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}); stderr:\n{stderr}"));
        (out.status.code(), json, stderr)
    }

    /// The steps whose recipe ran, in order, since the workspace was made.
    fn builds(&self) -> Vec<String> {
        std::fs::read_to_string(self.path("builds.txt"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

fn statuses(json: &Value) -> Vec<(String, String)> {
    json["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["step"].as_str().unwrap().to_owned(),
                s["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn builds_once_then_only_what_changed() {
    let ws = Workspace::new();
    let (code, json, stderr) = ws.build(&[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        statuses(&json),
        pairs(&[("first", "built"), ("second", "built")])
    );
    assert_eq!(ws.builds(), ["first", "second"]);
    assert!(stderr.contains("building first: echo first"), "{stderr}");
    let component = json["steps"][0]["path"].as_str().unwrap();
    assert_eq!(
        std::fs::read_to_string(component).unwrap(),
        "not really wasm\n"
    );

    // Nothing changed: nothing runs.
    let (code, json, stderr) = ws.build(&[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        statuses(&json),
        pairs(&[("first", "cached"), ("second", "cached")])
    );
    assert_eq!(ws.builds().len(), 2);
    assert!(!stderr.contains("building"), "{stderr}");

    // Build outputs, ignored files and a clean do not make a build stale.
    std::fs::write(ws.path("steps/notes.tmp"), "ignored").unwrap();
    std::fs::create_dir_all(ws.path("steps/target/debug")).unwrap();
    std::fs::write(ws.path("steps/target/debug/x"), "output").unwrap();
    std::fs::remove_dir_all(ws.path("steps/out")).unwrap();
    let (_, json, stderr) = ws.build(&[]);
    assert_eq!(
        statuses(&json),
        pairs(&[("first", "cached"), ("second", "cached")]),
        "{stderr}"
    );
    assert_eq!(ws.builds().len(), 2);

    // A source file changed: both recipes read the folder, both run again.
    std::fs::write(ws.path("steps/src/lib.txt"), "version 2\n").unwrap();
    let (code, json, stderr) = ws.build(&[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        statuses(&json),
        pairs(&[("first", "built"), ("second", "built")])
    );
    assert_eq!(ws.builds(), ["first", "second", "first", "second"]);

    // --force rebuilds what is up to date.
    let (code, json, _) = ws.build(&["--force"]);
    assert_eq!(code, Some(0));
    assert_eq!(
        statuses(&json),
        pairs(&[("first", "built"), ("second", "built")])
    );
    assert_eq!(ws.builds().len(), 6);
}

#[test]
fn a_changed_command_rebuilds_only_its_step() {
    let ws = Workspace::new();
    assert_eq!(ws.build(&[]).0, Some(0));
    Workspace::write_pipeline(ws.dir.path(), "true");
    let (code, json, stderr) = ws.build(&[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        statuses(&json),
        pairs(&[("first", "built"), ("second", "cached")])
    );
    assert_eq!(ws.builds(), ["first", "second", "first"]);
}

#[test]
fn a_failing_build_names_the_step_shows_the_log_tail_and_caches_nothing() {
    let ws = Workspace::new();
    Workspace::write_pipeline(ws.dir.path(), "echo boom near line 3 >&2 && exit 7");
    let (code, json, stderr) = ws.build(&[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(json["status"], "failed");
    assert_eq!(
        statuses(&json),
        pairs(&[("first", "failed"), ("second", "built")])
    );
    let message = json["steps"][0]["message"].as_str().unwrap();
    assert!(message.contains("exit status: 7"), "{message}");
    assert!(message.contains("boom near line 3"), "{message}");
    assert!(stderr.contains("failed  first"), "{stderr}");
    assert!(
        Path::new(json["steps"][0]["log"].as_str().unwrap()).is_file(),
        "{json}"
    );

    // Nothing was cached for the failure: it runs (and fails) again; the other step is a hit.
    let (code, json, _) = ws.build(&[]);
    assert_eq!(code, Some(1));
    assert_eq!(
        statuses(&json),
        pairs(&[("first", "failed"), ("second", "cached")])
    );
    assert_eq!(ws.builds(), ["first", "second", "first"]);

    // Text output: the step, the tail, a summary.
    let out = ws.kiln(&["build", "pipeline.yaml"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("error: step `first`: build `echo first"),
        "{stderr}"
    );
    assert!(stderr.contains("\n  boom near line 3\n"), "{stderr}");
    assert!(
        stderr.contains("0 built, 1 up to date, 1 failed"),
        "{stderr}"
    );
}

#[test]
fn an_invalid_pipeline_exits_2() {
    let ws = Workspace::new();
    std::fs::write(
        ws.path("pipeline.yaml"),
        "apiVersion: kiln/v1\nname: broken\nsteps:\n  a:\n    wasm: {source: missing, command: make, artifact: a.wasm}\n",
    )
    .unwrap();
    let out = ws.kiln(&["build", "pipeline.yaml"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(ws.builds().is_empty());
}

/// `kiln run` builds through the same cache: what `kiln build` built is not built again.
/// The component is a placeholder, so the step itself fails when it runs; what matters here
/// is that the run got past its preflight without running the recipe.
#[test]
fn run_after_build_does_not_rebuild() {
    let ws = Workspace::new();
    assert_eq!(ws.build(&[]).0, Some(0));
    let out = ws.kiln(&["run", "pipeline.yaml"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(
        out.status.code(),
        Some(2),
        "the run did not start: {stderr}"
    );
    assert!(!stderr.contains("building"), "{stderr}");
    assert_eq!(ws.builds().len(), 2);

    // A stale component is built by `kiln run` itself, and then `kiln build` has nothing to do.
    std::fs::write(ws.path("steps/src/lib.txt"), "version 2\n").unwrap();
    let out = ws.kiln(&["run", "pipeline.yaml"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(
        out.status.code(),
        Some(2),
        "the run did not start: {stderr}"
    );
    assert!(stderr.contains("building first"), "{stderr}");
    assert_eq!(ws.builds().len(), 4);
    let (code, json, _) = ws.build(&[]);
    assert_eq!(code, Some(0));
    assert_eq!(
        statuses(&json),
        pairs(&[("first", "cached"), ("second", "cached")])
    );
    assert_eq!(ws.builds().len(), 4);
}
