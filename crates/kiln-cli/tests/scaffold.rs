//! `kiln new step`: the folders it writes build and run as they are, with the pipeline entry
//! it prints pasted unchanged, and their declared params are checked. Needs what
//! `scripts/setup.sh` installs (the wasm32-wasip2 target, componentize-py).

use std::path::Path;

mod support;

use support::{repo, run_in as kiln, text};

/// `kiln new step`, which must succeed; its stdout (the pipeline entry).
fn new_step(dir: &Path, args: &[&str]) -> String {
    let mut all = vec!["new", "step"];
    all.extend_from_slice(args);
    let out = kiln(dir, &all);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}

#[test]
fn a_rust_and_a_python_step_from_the_templates_run_as_printed() {
    let ws = tempfile::tempdir().unwrap();
    let root = ws.path();
    std::fs::create_dir_all(root.join("project")).unwrap();
    let repo = repo();
    let rust_sdk = repo.join("sdk/rust/kiln-step");
    let python_sdk = repo.join("sdk/python");
    // Run from another folder, with `--pipeline`: the printed paths are relative to the
    // pipeline's folder, not to where kiln was started.
    let rust = new_step(
        root,
        &[
            "--rust",
            "count-lines",
            "--dir",
            "project/steps/count-lines",
            "--pipeline",
            "project/pipeline.yaml",
            "--sdk",
            rust_sdk.to_str().unwrap(),
        ],
    );
    assert!(rust.contains("source: steps/count-lines\n"), "{rust}");
    assert!(
        rust.contains("artifact: target/wasm32-wasip2/release/count_lines.wasm\n"),
        "{rust}"
    );
    let project = root.join("project");
    let python = new_step(
        &project,
        &[
            "--python",
            "py-count",
            "--sdk",
            python_sdk.to_str().unwrap(),
        ],
    );
    assert!(python.contains("source: py-count\n"), "{python}");
    assert!(project.join("py-count/py_count.py").is_file());
    assert!(project.join("steps/count-lines/src/lib.rs").is_file());

    // The same again is refused, and nothing is changed.
    let lib = std::fs::read(project.join("steps/count-lines/src/lib.rs")).unwrap();
    let again = kiln(
        &project,
        &[
            "new",
            "step",
            "--rust",
            "count-lines",
            "--dir",
            "steps/count-lines",
        ],
    );
    assert_eq!(again.status.code(), Some(2), "{}", text(&again.stderr));
    assert!(
        text(&again.stderr).contains("already exists and is not empty"),
        "{}",
        text(&again.stderr)
    );
    assert_eq!(
        std::fs::read(project.join("steps/count-lines/src/lib.rs")).unwrap(),
        lib
    );

    std::fs::write(project.join("data.txt"), "one\ntwo\nthree\n").unwrap();
    let pipeline = |entries: &str| {
        std::fs::write(
            project.join("pipeline.yaml"),
            format!("apiVersion: kiln/v1\nname: scaffolded\nsteps:\n{entries}"),
        )
        .unwrap();
    };
    pipeline(&format!("{rust}{python}"));
    let out = kiln(&project, &["run", "pipeline.yaml", "--output", "json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let run: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = run["run_id"].as_str().unwrap();
    for step in ["count-lines", "py-count"] {
        let got = kiln(
            &project,
            &["artifact", "get", id, step, "summary", "-o", "-"],
        );
        assert!(got.status.success(), "{}", text(&got.stderr));
        // The declared default of `label` reached the step.
        assert_eq!(text(&got.stdout), "data: 3 lines, 14 bytes\n", "{step}");
    }
    let show = kiln(&project, &["show", id, "-o", "json"]);
    let show = text(&show.stdout);
    assert_eq!(show.matches("\"lines\"").count(), 2, "{show}");

    // Their params are declared: a typo in `with:` is caught for both, before anything runs.
    let typo = |entry: &str| entry.replace("      label: data\n", "      lable: mine\n");
    pipeline(&format!("{}{}", typo(&rust), typo(&python)));
    let out = kiln(&project, &["validate", "pipeline.yaml"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    for step in ["count-lines", "py-count"] {
        assert!(
            err.contains(&format!(
                "step `{step}` has no param `lable` (did you mean `label`?)"
            )),
            "{err}"
        );
    }

    // A step-world component gets its streams in its context: `stdout:` on one is refused
    // before anything runs.
    pipeline(&rust.replace(
        "    outputs: [summary]\n",
        "    stdout: outputs.summary\n    outputs: [summary]\n",
    ));
    let out = kiln(&project, &["validate", "pipeline.yaml"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(
            "step `count-lines` has `stdout`, but its component is of the kiln step world"
        ),
        "{err}"
    );
}

#[test]
fn without_sdk_the_clone_kiln_was_built_from_is_used() {
    // A folder with no kiln checkout above it: the SDK of this repository is found.
    let ws = tempfile::tempdir().unwrap();
    new_step(ws.path(), &["--rust", "solo"]);
    let toml = std::fs::read_to_string(ws.path().join("solo/Cargo.toml")).unwrap();
    let path = toml
        .lines()
        .find_map(|l| l.strip_prefix("kiln-step = { path = \""))
        .and_then(|l| l.strip_suffix("\" }"))
        .unwrap_or_else(|| panic!("{toml}"));
    assert_eq!(
        std::fs::canonicalize(ws.path().join("solo").join(path)).unwrap(),
        repo().join("sdk/rust/kiln-step")
    );

    // Bad names are refused with the rule and nothing is written.
    let out = kiln(ws.path(), &["new", "step", "--python", "My Step"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("invalid step name `My Step` (did you mean `my-step`?)"),
        "{}",
        text(&out.stderr)
    );
    assert!(!ws.path().join("My Step").exists());
}
