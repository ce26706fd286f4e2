//! Programs nobody wrote for kiln, built from crates.io for wasm32-wasip2 and run unchanged
//! as steps with their own command lines (`args`, `stdin`, `stdout`): the `cli-tools`
//! example end to end. Needs the network to crates.io the first time (`cargo install`).

use std::path::Path;
use std::process::Output;

use serde_json::Value;

mod support;

use support::{repo, text};

fn kiln(args: &[&str]) -> Output {
    support::run_in(&repo(), args)
}

fn run_json(args: &[&str]) -> Value {
    let out = kiln(args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn artifact(state: &str, run: &str, step: &str, output: &str) -> String {
    let out = kiln(&[
        "artifact", "get", run, step, output, "-o", "-", "--state", state,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}

fn cached(run: &Value, step: &str) -> bool {
    let steps = run["steps"].as_array().unwrap();
    let step = steps.iter().find(|s| s["id"] == step).unwrap();
    step["status"] == "cached"
}

#[test]
fn choose_and_ripgrep_run_unchanged_with_their_own_command_lines() {
    let state = tempfile::tempdir().unwrap();
    let state = state.path().to_str().unwrap().to_owned();
    let pipeline = "examples/cli-tools/pipeline.yaml";
    let run = run_json(&["run", pipeline, "--state", &state, "--output", "json"]);
    let id = run["run_id"].as_str().unwrap();

    // What `cut -d, -f1-3` would print, from the CSV itself.
    let csv = std::fs::read_to_string(repo().join("examples/cli-tools/data/stations.csv")).unwrap();
    let expected: String = csv
        .lines()
        .map(|l| l.split(',').take(3).collect::<Vec<_>>().join(",") + "\n")
        .collect();
    let columns = artifact(&state, id, "columns", "table");
    assert_eq!(columns, expected);
    // ripgrep kept the rows whose elevation has four digits, in order.
    let high: String = expected
        .lines()
        .filter(|l| {
            l.rsplit(',')
                .next()
                .is_some_and(|e| e.len() == 4 && e.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(artifact(&state, id, "high", "rows"), high);
    assert_eq!(high.lines().count(), 4, "{high}");

    // Another pattern changes ripgrep's command line only: `columns` comes from the cache.
    let again = run_json(&[
        "run",
        pipeline,
        "--state",
        &state,
        "-p",
        "pattern=,NO,",
        "--output",
        "json",
    ]);
    assert!(cached(&again, "columns"), "{again}");
    assert!(!cached(&again, "high"), "{again}");
    let id = again["run_id"].as_str().unwrap();
    assert_eq!(artifact(&state, id, "high", "rows"), "Oslo,NO,94\n");
    let why = kiln(&["explain", id, "high", "--state", &state]);
    assert!(why.status.success(), "{}", text(&why.stderr));
    assert!(
        text(&why.stdout).contains("pattern"),
        "{}",
        text(&why.stdout)
    );
}

/// BLAKE3's own CLI prints kiln's digest of the same bytes. It builds for wasm32-wasip2, but
/// it always starts a rayon thread pool, which a WASI 0.2 program cannot (it exits with
/// `Not supported (os error 58)`), so this waits for threads in components.
#[test]
#[ignore = "needs threads in WASI 0.2 components: b3sum always starts a thread pool"]
fn b3sum_prints_the_digest_kiln_gives_the_same_bytes() {
    let tools = Path::new(env!("CARGO_TARGET_TMPDIR")).join("b3sum");
    let wasm = tools.join("bin/b3sum.wasm");
    if !wasm.is_file() {
        let status = std::process::Command::new("cargo")
            .args([
                "install",
                "--locked",
                "--quiet",
                "--target",
                "wasm32-wasip2",
            ])
            .arg("--root")
            .arg(&tools)
            .arg("b3sum@1.8.7")
            .env_remove("CARGO_TARGET_DIR")
            .status()
            .expect("cargo runs");
        assert!(status.success(), "cargo install b3sum failed");
    }
    let ws = tempfile::tempdir().unwrap();
    let root = ws.path();
    std::fs::copy(&wasm, root.join("b3sum.wasm")).unwrap();
    let data = repo().join("examples/cli-tools/data/stations.csv");
    std::fs::copy(&data, root.join("data.csv")).unwrap();
    std::fs::write(
        root.join("pipeline.yaml"),
        "apiVersion: kiln/v1
name: b3sum
steps:
  digest:
    wasm: b3sum.wasm
    args: [--no-mmap, --no-names, \"{{inputs.data}}\"]
    stdout: outputs.digest
    inputs:
      data: ./data.csv
    outputs: [digest]
",
    )
    .unwrap();
    let out = support::kiln()
        .args(["run", "pipeline.yaml"])
        .current_dir(root)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let state = root.join(".kiln");
    let printed = artifact(state.to_str().unwrap(), "latest", "digest", "digest");
    let kilns = kiln_cas::Digest::of_file(&data).unwrap();
    assert_eq!(printed.trim(), kilns.to_hex());
}
