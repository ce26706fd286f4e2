//! The `kiln` binary as a user runs it.

use std::process::{Command, Output};

mod support;

use support::{repo, text};

fn kiln(args: &[&str]) -> Output {
    support::run_in(&repo(), args)
}

#[test]
fn validates_the_example() {
    let out = kiln(&["validate", "examples/digits/pipeline.yaml"]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert!(text(&out.stderr).contains("valid: 7 steps (11 planned)"));
}

#[test]
fn reports_every_error_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.yaml");
    std::fs::write(
        &file,
        "apiVersion: kiln/v1\nname: broken\nsteps:\n  a:\n    container: {image: x}\n    inputs: {d: prep.tain}\n  b:\n    container: {image: x}\n    after: [c]\n",
    )
    .unwrap();
    let out = kiln(&["validate", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("there is no step `prep`"), "{stderr}");
    assert!(
        stderr.contains("runs after `c`, which is not a step"),
        "{stderr}"
    );
    assert!(stderr.contains("broken.yaml:6:17"), "{stderr}");
    assert!(stderr.contains("2 errors"), "{stderr}");

    let out = kiln(&["validate", "--output", "json", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json on stdout");
    let diags: Vec<_> = json["files"][0]["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["severity"] == "error")
        .collect();
    assert_eq!(diags.len(), 2);
    assert_eq!(json["files"][0]["errors"], 2);
    assert_eq!(diags[0]["line"], 6);
    assert_eq!(diags[0]["column"], 17);
    assert_eq!(diags[0]["code"], "kiln::plan::unknown-step");
}

#[test]
fn reports_every_format_error_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("format.yaml");
    std::fs::write(
        &file,
        "apiVersion: kiln/v1\nname: format\nsteps:\n  a:\n    wasm: a@1.0.0\n    timeout: 30\n  b:\n    wasm: b@1.0.0\n    retries: yes\n",
    )
    .unwrap();
    let out = kiln(&["validate", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("invalid duration `30`"), "{stderr}");
    assert!(stderr.contains("format.yaml:6:14"), "{stderr}");
    assert!(stderr.contains("found `yes`"), "{stderr}");
    assert!(stderr.contains("format.yaml:9:14"), "{stderr}");
    assert!(stderr.contains("2 errors"), "{stderr}");

    let out = kiln(&["validate", "--output", "json", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json on stdout");
    let lines: Vec<_> = json["files"][0]["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["line"].clone(), d["code"].clone()))
        .collect();
    assert_eq!(
        lines,
        [
            (6.into(), "kiln::spec::invalid-value".into()),
            (9.into(), "kiln::spec::invalid-value".into())
        ]
    );
}

#[test]
fn params_are_overridden_and_checked() {
    let out = kiln(&[
        "validate",
        "examples/digits/pipeline.yaml",
        "-p",
        "learning_rates=[0.1, 0.2]",
    ]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert!(text(&out.stderr).contains("(9 planned)"));
    let out = kiln(&[
        "validate",
        "examples/digits/pipeline.yaml",
        "-p",
        "epochs=many",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("`many` is not an int"));
}

#[test]
fn graph_shows_kinds_and_fan_out() {
    let out = kiln(&["graph", "examples/digits/pipeline.yaml", "--format", "dot"]);
    assert!(out.status.success());
    let dot = text(&out.stdout);
    assert!(dot.starts_with("digraph \"digits\" {"));
    assert!(dot.contains("train ×3\\ncontainer · gpu 1"), "{dot}");
    assert!(dot.contains("shape=box3d"));
    assert!(dot.contains("metrics (all 3)"));
    let out = kiln(&[
        "graph",
        "examples/digits/pipeline.yaml",
        "--format",
        "mermaid",
    ]);
    let mermaid = text(&out.stdout);
    assert!(mermaid.starts_with("flowchart LR"));
    assert!(mermaid.contains("==>|\"metrics (all 3)\"|"), "{mermaid}");
}

/// The committed schema is what `kiln schema` prints: re-bless with `KILN_BLESS=1`.
#[test]
fn committed_schema_is_current() {
    let out = kiln(&["schema"]);
    assert!(out.status.success());
    let path = repo().join("schema/pipeline.schema.json");
    if std::env::var_os("KILN_BLESS").is_some() {
        std::fs::write(&path, &out.stdout).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == text(&out.stdout),
        "schema/pipeline.schema.json is stale: run `KILN_BLESS=1 cargo test -p kiln-cli --test cli`"
    );
}

#[test]
fn help_and_version() {
    let out = kiln(&["--version"]);
    assert!(text(&out.stdout).starts_with("kiln "));
    let out = kiln(&["--help"]);
    let help = text(&out.stdout);
    for command in ["validate", "graph", "schema"] {
        assert!(help.contains(command), "{help}");
    }
}

/// Editors see the same format as kiln: the schema accepts the example and rejects a typo.
/// Checked with the Python `jsonschema` package that `scripts/setup.sh` installs.
#[test]
fn schema_accepts_the_example_and_rejects_typos() {
    let check = r#"
import json, sys, yaml, jsonschema
schema = json.load(open("schema/pipeline.schema.json"))
jsonschema.Draft202012Validator.check_schema(schema)
v = jsonschema.Draft202012Validator(schema)
example = yaml.safe_load(open("examples/digits/pipeline.yaml"))
errors = list(v.iter_errors(example))
assert not errors, errors
example["steps"]["train"]["container"]["resources"]["memroy"] = "1Gi"
assert list(v.iter_errors(example)), "a typo must be rejected"
print("ok")
"#;
    let out = Command::new("python3")
        .args(["-c", check])
        .current_dir(repo())
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success() && text(&out.stdout).trim() == "ok",
        "stdout: {}\nstderr: {}\n(run scripts/setup.sh to install jsonschema and pyyaml)",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// What kiln logs goes to stderr: what `RUST_LOG` asks for when it is set, kiln's info lines
/// with `kiln run -v`, and otherwise no more than warnings.
#[test]
fn rust_log_and_verbose_turn_on_log_lines() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("pipeline.yaml"),
        "apiVersion: kiln/v1\nname: hello\nsteps:\n  hello:\n    container:\n      image: busybox\n      command: [sh, -c, \"echo hi > {{outputs.greeting}}\"]\n    outputs: [greeting]\n",
    )
    .unwrap();
    let stderr = |rust_log: Option<&str>, extra: &[&str]| {
        let mut command = support::kiln();
        command
            .args(["run", "pipeline.yaml", "--no-cache"])
            .args(extra)
            .current_dir(dir.path());
        if let Some(directives) = rust_log {
            command.env("RUST_LOG", directives);
        }
        let out = command.output().expect("kiln runs");
        assert!(out.status.success(), "stderr: {}", text(&out.stderr));
        text(&out.stderr)
    };
    let run_started = |stderr: &str| {
        stderr
            .lines()
            .any(|l| l.contains("kiln_engine") && l.contains("run started"))
    };

    let logged = stderr(Some("kiln_engine=debug"), &[]);
    assert!(run_started(&logged), "{logged}");
    let verbose = stderr(None, &["-v"]);
    assert!(run_started(&verbose), "{verbose}");
    let quiet = stderr(None, &[]);
    assert!(!run_started(&quiet), "{quiet}");
    assert!(
        !quiet
            .lines()
            .any(|l| l.starts_with(" INFO ") || l.starts_with("DEBUG ")),
        "{quiet}"
    );
}

/// A run that cannot start (its command is not on PATH) exits 2 and leaves no run behind for
/// `latest` to find.
#[test]
fn a_run_that_cannot_start_leaves_no_run() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("pipeline.yaml"),
        "apiVersion: kiln/v1\nname: ghost\nsteps:\n  a:\n    container:\n      image: x\n      command: [kiln-no-such-program]\n    outputs: [out]\n",
    )
    .unwrap();
    let out = support::kiln()
        .args(["run", "pipeline.yaml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("kiln-no-such-program"),
        "{}",
        text(&out.stderr)
    );
    let runs = dir.path().join(".kiln/runs");
    let left: Vec<_> = std::fs::read_dir(&runs)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "a ghost run was left: {left:?}");
    let show = support::kiln()
        .args(["show", "latest"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!show.status.success(), "`latest` found a run");
}

/// `examples/sub-pipelines` runs with the process backend: one sub-pipeline reused with
/// different params and in a fan-out, its steps under namespaced ids.
#[test]
fn runs_the_sub_pipelines_example() {
    let dir = tempfile::tempdir().unwrap();
    let example = repo().join("examples/sub-pipelines");
    for file in ["pipeline.yaml", "train.yaml", "data/points.csv"] {
        let to = dir.path().join(file);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(example.join(file), to).unwrap();
    }
    let out = support::run_in(
        dir.path(),
        &[
            "run",
            "pipeline.yaml",
            "--state",
            ".kiln",
            "--output",
            "json",
        ],
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    for id in ["quick/fit", "long/evaluate", "sweep[1]/evaluate", "compare"] {
        assert!(stdout.contains(&format!("\"{id}\"")), "{id} in {stdout}");
    }
    // A sub-pipeline with inputs is refused on its own, located in its file.
    let alone = support::run_in(dir.path(), &["validate", "train.yaml"]);
    assert!(!alone.status.success());
    assert!(
        text(&alone.stderr).contains("kiln::plan::sub-pipeline-only"),
        "{}",
        text(&alone.stderr)
    );
}
