//! Golden tests for what people read about past runs: `kiln runs` with params and metrics as
//! columns (text and CSV), its filters, and `kiln diff` (text and JSON), over real runs of
//! `tests/golden/history/pipeline.yaml` (a fan-out over learning rates, trained by a
//! process-backend step that reports its metrics, run with `epochs` 20, 30 and 0; 0 fails).
//!
//! Run ids and durations differ from run to run: they are replaced by `<run-1>`... and
//! `<time>` in the named columns only. Digests are not replaced: the steps write the same
//! bytes every time. Run `KILN_BLESS=1 cargo test -p kiln-cli --test history` to rewrite the
//! expected files, then review the diff.

use std::path::{Path, PathBuf};
use std::process::Output;

mod support;

const BLESS_HINT: &str = "to accept the new output, run `KILN_BLESS=1 cargo test -p kiln-cli --test history` and review the diff";

fn case_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/history")
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

fn stdout_of(work: &Path, args: &[&str]) -> String {
    let out = kiln(work, args);
    assert!(
        out.status.success(),
        "kiln {args:?}: exit {:?}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 on stdout")
}

/// Three runs of the case, in a fresh folder; returns the folder and the run ids, oldest first.
fn three_runs() -> (tempfile::TempDir, Vec<String>) {
    let work = tempfile::tempdir().unwrap();
    for file in ["pipeline.yaml", "train.py"] {
        std::fs::copy(case_dir().join(file), work.path().join(file)).unwrap();
    }
    for (epochs, exit) in [("20", 0), ("30", 0), ("0", 1)] {
        let out = kiln(
            work.path(),
            &["run", "pipeline.yaml", "-p", &format!("epochs={epochs}")],
        );
        assert_eq!(
            out.status.code(),
            Some(exit),
            "run with epochs={epochs}:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let runs: serde_json::Value =
        serde_json::from_str(&stdout_of(work.path(), &["runs", "-o", "json"])).unwrap();
    let ids: Vec<String> = runs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 3, "{runs}");
    (work, ids)
}

/// `text` with each run id replaced by its placeholder.
fn without_ids(text: &str, ids: &[String]) -> String {
    let mut text = text.to_owned();
    for (n, id) in ids.iter().enumerate() {
        text = text.replace(id.as_str(), &format!("<run-{}>", n + 1));
    }
    text
}

/// A table as `kiln` prints it (columns two spaces apart at least, no empty cells), with the
/// cells of the `columns` named replaced by `<time>` and the columns aligned again.
fn table_without(text: &str, columns: &[&str]) -> String {
    let rows: Vec<Vec<String>> = text
        .lines()
        .map(|line| {
            line.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .collect();
    let Some((header, body)) = rows.split_first() else {
        return String::new();
    };
    let replaced: Vec<usize> = header
        .iter()
        .enumerate()
        .filter(|(_, h)| columns.contains(&h.as_str()))
        .map(|(i, _)| i)
        .collect();
    let mut rows = vec![header.clone()];
    for row in body {
        assert_eq!(row.len(), header.len(), "a row of another width: {row:?}");
        let mut row = row.clone();
        for &i in &replaced {
            if row[i] != "-" {
                row[i] = "<time>".to_owned();
            }
        }
        rows.push(row);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap())
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// CSV with the cells of `columns` replaced by `<ms>`.
fn csv_without(text: &str, columns: &[&str]) -> String {
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let header = reader.headers().unwrap().clone();
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer.write_record(&header).unwrap();
    for record in reader.records() {
        let record = record.unwrap();
        let cells: Vec<&str> = record
            .iter()
            .zip(header.iter())
            .map(|(cell, name)| {
                if columns.contains(&name) && !cell.is_empty() {
                    "<ms>"
                } else {
                    cell
                }
            })
            .collect();
        writer.write_record(&cells).unwrap();
    }
    String::from_utf8(writer.into_inner().unwrap()).unwrap()
}

#[test]
fn runs_and_diff_read_as_the_golden_files() {
    let (work, ids) = three_runs();
    let work = work.path();
    let (a, b, failed) = (ids[0].as_str(), ids[1].as_str(), ids[2].as_str());
    let outputs = [
        (
            "runs.txt",
            table_without(
                &without_ids(
                    &stdout_of(
                        work,
                        &["runs", "--params", "epochs", "--metrics", "accuracy"],
                    ),
                    &ids,
                ),
                &["TIME"],
            ),
        ),
        (
            "runs.csv",
            csv_without(
                &without_ids(
                    &stdout_of(
                        work,
                        &[
                            "runs",
                            "--params",
                            "epochs,lrs",
                            "--metrics",
                            "accuracy,train[lr=0.2].loss",
                            "-o",
                            "csv",
                        ],
                    ),
                    &ids,
                ),
                &["duration_ms"],
            ),
        ),
        (
            "runs-failed.txt",
            table_without(
                &without_ids(&stdout_of(work, &["runs", "--status", "failed"]), &ids),
                &["TIME"],
            ),
        ),
        (
            "diff.txt",
            without_ids(&stdout_of(work, &["diff", a, b]), &ids),
        ),
        (
            "diff.json",
            without_ids(&stdout_of(work, &["diff", a, b, "-o", "json"]), &ids),
        ),
        (
            "diff-failed-all.txt",
            without_ids(&stdout_of(work, &["diff", b, failed, "--all"]), &ids),
        ),
    ];
    let bless = support::blessing();
    let failures: Vec<String> = outputs
        .iter()
        .filter_map(|(name, actual)| support::compare_golden(&case_dir(), name, actual, bless))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of the history golden files differ:\n\n{}\n\n{BLESS_HINT}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn runs_json_has_every_param_and_metric_and_filters_narrow_the_list() {
    let (work, ids) = three_runs();
    let work = work.path();
    let runs: serde_json::Value = serde_json::from_str(&stdout_of(
        work,
        // The columns asked for do not narrow the JSON.
        &[
            "runs",
            "-o",
            "json",
            "--metrics",
            "loss",
            "--status",
            "succeeded",
        ],
    ))
    .unwrap();
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(runs[1]["run_id"], ids[1].as_str());
    assert_eq!(runs[1]["params"]["epochs"], 30);
    assert_eq!(runs[1]["params"]["lrs"], serde_json::json!([0.1, 0.2]));
    let accuracy = runs[1]["metrics"]["train[lr=0.2]"]["accuracy"]
        .as_f64()
        .unwrap();
    assert_eq!(accuracy.to_bits(), (1.0f64 - 0.2 / 30.0).to_bits());
    assert!(runs[1]["metrics"]["train[lr=0.1]"]["loss"].is_number());
    assert!(runs[1]["duration_ms"].is_u64());

    let last = stdout_of(work, &["runs", "--last", "1", "-o", "json"]);
    let last: serde_json::Value = serde_json::from_str(&last).unwrap();
    assert_eq!(last[0]["run_id"], ids[2].as_str());
    assert_eq!(last.as_array().unwrap().len(), 1);
    let none = kiln(work, &["runs", "--pipeline", "other"]);
    assert!(none.status.success());
    assert!(none.stdout.is_empty());
    assert!(String::from_utf8_lossy(&none.stderr).contains("no runs in"));

    // `kiln show -o json` carries the pipeline, the params and each step's label.
    let show: serde_json::Value =
        serde_json::from_str(&stdout_of(work, &["show", &ids[0], "-o", "json"])).unwrap();
    assert_eq!(show["pipeline"], "sweep");
    assert_eq!(show["params"]["epochs"], 20);
    let steps: Vec<(&str, &str)> = show["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["step"].as_str().unwrap(), s["label"].as_str().unwrap()))
        .collect();
    assert_eq!(
        steps,
        [
            ("prep", "prep"),
            ("train[0]", "train[lr=0.1]"),
            ("train[1]", "train[lr=0.2]")
        ]
    );
    let text = stdout_of(work, &["show", &ids[0]]);
    assert!(text.contains("\ntrain[lr=0.2]  "), "{text}");
}

#[test]
fn dash_as_the_output_file_is_stdout() {
    let (work, ids) = three_runs();
    let work = work.path();
    let data = stdout_of(
        work,
        &["artifact", "get", "latest", "prep", "data", "-o", "-"],
    );
    assert_eq!(data, "rows 100\n");
    // A fan-out instance by its label.
    let model = stdout_of(
        work,
        &[
            "artifact",
            "get",
            &ids[1],
            "train[lr=0.2]",
            "model",
            "-o",
            "-",
        ],
    );
    assert_eq!(model, "weights lr=0.2 epochs=30\n");
    let schema = stdout_of(work, &["schema", "-o", "-"]);
    assert!(schema.starts_with('{'), "{schema}");
    let out = kiln(work, &["export", &ids[1], "-o", "-"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.len() > 100, "the bundle went to stdout");
    assert!(!work.join("-").exists(), "a file named `-` was written");
    // The bundle on stdout is a whole bundle: replay reads it.
    let bundle = work.join("copy.kiln");
    std::fs::write(&bundle, &out.stdout).unwrap();
    let replay = kiln(work, &["replay", bundle.to_str().unwrap()]);
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
}
