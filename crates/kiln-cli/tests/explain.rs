//! Golden tests for `kiln explain` over real runs of `tests/golden/explain/pipeline.yaml`: a
//! process-backend pipeline where `prep` feeds a fan-out `train` over learning rates, which
//! feeds `evaluate` (paired instance by instance) and `report` (all instances collected).
//!
//! The runs: the defaults; `epochs=30` (a param that reaches `train`'s args, and through its
//! new models `evaluate` and `report`); then the pipeline edited so that `report` has another
//! literal arg (no param explains it); then `lrs=[0.3, 0.2]` (a list param a fan-out item
//! comes from) with a flag added to `train`'s args.
//!
//! Run ids and the state folder differ from run to run: they are replaced by `<run-1>`... and
//! `<state>`. Keys and digests are not replaced: the steps write the same bytes every time.
//! Run `KILN_BLESS=1 cargo test -p kiln-cli --test explain` to rewrite the expected files,
//! then review the diff.

use std::path::{Path, PathBuf};
use std::process::Output;

mod support;

const BLESS_HINT: &str = "to accept the new output, run `KILN_BLESS=1 cargo test -p kiln-cli --test explain` and review the diff";

fn case_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/explain")
}

/// Runs `kiln ARGS` in `work` with its state folder there.
fn kiln(work: &Path, args: &[&str]) -> Output {
    support::kiln()
        .args(args)
        .env("KILN_HOME", work.join(".kiln"))
        .current_dir(work)
        .output()
        .expect("kiln runs")
}

/// A fresh folder with the case's pipeline, run four times (see the file's doc); returns it
/// and the run ids, oldest first.
fn four_runs() -> (tempfile::TempDir, Vec<String>) {
    let work = tempfile::tempdir().unwrap();
    let pipeline = work.path().join("pipeline.yaml");
    std::fs::copy(case_dir().join("pipeline.yaml"), &pipeline).unwrap();
    let edit = |from: &str, to: &str| {
        let text = std::fs::read_to_string(&pipeline).unwrap();
        assert!(text.contains(from), "the case's pipeline has no {from:?}");
        std::fs::write(&pipeline, text.replace(from, to)).unwrap();
    };
    let mut ids = Vec::new();
    let mut run = |params: &[&str]| {
        let mut args = vec!["run", "pipeline.yaml", "--output", "json"];
        for p in params {
            args.extend(["-p", p]);
        }
        let out = kiln(work.path(), &args);
        assert!(
            out.status.success(),
            "kiln {args:?}:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        ids.push(summary["run_id"].as_str().unwrap().to_owned());
    };
    run(&[]);
    run(&["epochs=30"]);
    edit("--format, text", "--format, json");
    run(&["epochs=30"]);
    edit(
        r#"--model, "{{outputs.model}}"]"#,
        r#"--model, "{{outputs.model}}", -v]"#,
    );
    run(&["epochs=30", "lrs=[0.3, 0.2]"]);
    (work, ids)
}

/// `text` with each run id and the state folder replaced by placeholders.
fn normalised(text: &str, work: &Path, ids: &[String]) -> String {
    let mut text = text.replace(&work.join(".kiln").display().to_string(), "<state>");
    for (n, id) in ids.iter().enumerate() {
        text = text.replace(id.as_str(), &format!("<run-{}>", n + 1));
    }
    text
}

/// What `kiln explain RUN STEP` prints for each `(run, step)`, one after the other, each
/// under the command line that printed it (the run by its placeholder); stderr and the exit
/// status too where it fails.
fn explained(work: &Path, ids: &[String], queries: &[(usize, &str)]) -> String {
    let mut text = String::new();
    for &(run, step) in queries {
        let out = kiln(work, &["explain", &ids[run - 1], step]);
        text.push_str(&format!("$ kiln explain <run-{run}> {step}\n"));
        text.push_str(&String::from_utf8_lossy(&out.stdout));
        if !out.status.success() {
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            text.push_str(&format!("(exit {})\n", out.status.code().unwrap_or(-1)));
        }
    }
    normalised(&text, work, ids)
}

#[test]
fn explain_names_the_root_cause_as_the_golden_files_say() {
    let (work, ids) = four_runs();
    let work = work.path();
    let outputs = [
        // A param that lands in a container's args: one line naming it, not two arrays.
        (
            "param-in-args.txt",
            explained(work, &ids, &[(2, "train[lr=0.1]")]),
        ),
        // Downstream steps: the upstream step by its label and the output it made anew, and
        // what made that step run.
        (
            "downstream.txt",
            explained(work, &ids, &[(2, "evaluate[lr=0.2]"), (2, "report")]),
        ),
        // A fan-out step by its name: every instance, each by its label.
        ("fan-out.txt", explained(work, &ids, &[(2, "train")])),
        // An arg no param explains: the one item, named by its flag; an added item; a
        // list param a fan-out's item comes from.
        (
            "args-without-param.txt",
            explained(
                work,
                &ids,
                &[(3, "report"), (4, "train[lr=0.2]"), (4, "train[lr=0.3]")],
            ),
        ),
        // Nothing to compare with, and a cache hit.
        (
            "first-and-cached.txt",
            explained(work, &ids, &[(1, "prep"), (2, "prep")]),
        ),
        // A step the run does not have.
        ("unknown-step.txt", explained(work, &ids, &[(2, "trian")])),
    ];
    let bless = support::blessing();
    let failures: Vec<String> = outputs
        .iter()
        .filter_map(|(name, actual)| support::compare_golden(&case_dir(), name, actual, bless))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of the explain golden files differ:\n\n{}\n\n{BLESS_HINT}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn a_step_is_named_by_its_id_or_its_label_alike() {
    let (work, ids) = four_runs();
    let work = work.path();
    let by_id = kiln(work, &["explain", &ids[1], "train[0]"]);
    let by_label = kiln(work, &["explain", &ids[1], "train[lr=0.1]"]);
    assert!(
        by_id.status.success(),
        "{}",
        String::from_utf8_lossy(&by_id.stderr)
    );
    assert_eq!(by_id.stdout, by_label.stdout);
    let text = String::from_utf8_lossy(&by_id.stdout);
    assert!(text.starts_with("step `train[lr=0.1]` ran in "), "{text}");
    // An unknown step fails with the usage exit status, on stderr only.
    let unknown = kiln(work, &["explain", &ids[1], "nope"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(unknown.stdout.is_empty());
}
