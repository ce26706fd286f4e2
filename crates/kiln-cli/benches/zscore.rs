//! A 10-step chain of real (small) work, whole process: each step reads a 10,000 × 5 CSV,
//! z-scores one column and writes the CSV; the same chain as wasm components and as Python
//! processes. The real `kiln` binary, spawn to exit.
//!
//! `cargo bench -p kiln-cli --bench zscore` (cargo builds `kiln` in release for it). Needs
//! `python3` (standard library only) and the `wasm32-wasip2` Rust target.
//!
//! Everything the chain runs is in `bench/zscore/`: `make_data.py` writes the input
//! (deterministic: 10,000 rows, columns `x0..x4`, seed 7), `rust/` is the step as a plain
//! `wasi:cli/command` program (built here with `cargo build --release --target
//! wasm32-wasip2`), `zscore.py` the same step in Python with `csv` and `statistics`. Step `zK`
//! reads `z(K-1)`'s output (`z0` reads the data file) and z-scores column `x(K mod 5)`, so
//! each column is z-scored twice. Variants (`KILN_BENCH_VARIANTS`, default all three):
//! - `rust-wasm`: `wasm: zscore.wasm`;
//! - `python-wasm`: the same step as a Python component of the kiln step world, built with
//!   componentize-py (a slot for now, [`python_component`]): `KILN_BENCH_PY_COMPONENT`, else
//!   `bench/zscore/python/target/zscore.wasm` where it exists; skipped without one;
//! - `python`: a container step on the process backend, `command: [python3]`, `args:
//!   [zscore.py, ...]`: one `python3` process per step, on the host. `python3` is the
//!   interpreter itself (`sys.executable`), put first on `PATH`, not a shim such as pyenv's
//!   (which costs more than the step here).
//!
//! For each variant: `KILN_BENCH_COLD` (default 3) **cold** runs, each in a new state folder
//! (the wasm component is compiled first); then, in one state folder, an untimed run and
//! `KILN_BENCH_RUNS` (default 7) **warm** runs, each with a new `-p salt=N` (every step's
//! cache key changes): precompiled cache warm, result cache cold. Each warm run prints
//! `--output json`, which gives every step's duration (whole milliseconds) and shows that
//! every step ran. Reported: the chain's wall time (median, min–max), the median step
//! duration, and the chain's time over 10. The last chain's output of each variant is
//! compared with the first variant's, number by number.
//!
//! State folders go under `KILN_BENCH_DIR` (default the system temp folder).

#![allow(missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::*;
/// Steps in the chain.
const STEPS: usize = 10;
/// Rows of the input table.
const ROWS: usize = 10_000;
/// The seed `make_data.py` draws the table with.
const SEED: u64 = 7;

fn bench_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/zscore")
}

/// `bench/zscore/rust`, built for `wasm32-wasip2` (release).
fn rust_component() -> PathBuf {
    kiln_test_support::build_wasm(&bench_dir().join("rust"), &[]).join("zscore.wasm")
}

/// The Python interpreter's own path (`sys.executable`), through any shim.
fn python() -> PathBuf {
    let name = std::env::var("KILN_BENCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&name)
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{name}`: {e}; this benchmark needs python3"));
    assert!(out.status.success(), "`{name}` failed");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// How a variant's step `k` reads `input` (`./data.csv` or `z(k-1).data`) and z-scores
/// column `x(k mod 5)`: the YAML of the step's body. `None`: the variant cannot run here.
fn step_body(variant: &str, k: usize, input: &str) -> Option<String> {
    let column = format!("x{}", k % 5);
    match variant {
        "rust-wasm" => Some(format!(
            "    wasm: zscore.wasm\n    inputs: {{data: {input}}}\n    \
             with: {{column: {column}, salt: \"{{{{params.salt}}}}\"}}\n    outputs: [data]\n"
        )),
        "python-wasm" => python_wasm_step(input, &column),
        "python" => Some(format!(
            "    container:\n      image: python:3.11-slim\n      command: [python3]\n      \
             args: [\"{{{{inputs.script}}}}\", --in, \"data={{{{inputs.data}}}}\", --out, \
             \"data={{{{outputs.data}}}}\", --param, column={column}]\n    \
             inputs: {{script: ./zscore.py, data: {input}}}\n    \
             with: {{salt: \"{{{{params.salt}}}}\"}}\n    outputs: [data]\n"
        )),
        other => panic!("unknown variant `{other}` (rust-wasm, python-wasm, python)"),
    }
}

/// SLOT (b): the z-score step as a Python WebAssembly component of kiln's step world
/// (`zscore.zscore_file` from `bench/zscore/zscore.py`, compiled with componentize-py). The
/// step reads input `data` (the CSV), z-scores the column named by the string param `column`,
/// writes output `data`, and ignores the int param `salt`. The component is the file named
/// by `KILN_BENCH_PY_COMPONENT`, else `bench/zscore/python/target/zscore.wasm` where it has
/// been built; without one the variant is skipped. This bench does not build it.
fn python_component() -> Option<PathBuf> {
    match std::env::var_os("KILN_BENCH_PY_COMPONENT") {
        Some(path) => Some(path.into()),
        None => Some(bench_dir().join("python/target/zscore.wasm")).filter(|p| p.is_file()),
    }
}

/// A step of the Python component variant (see [`python_component`]): the same body as the
/// Rust step's, the component copied in as `zscore-py.wasm`.
fn python_wasm_step(input: &str, column: &str) -> Option<String> {
    python_component()?;
    Some(format!(
        "    wasm: zscore-py.wasm\n    inputs: {{data: {input}}}\n    \
         with: {{column: {column}, salt: \"{{{{params.salt}}}}\"}}\n    outputs: [data]\n"
    ))
}

fn pipeline(variant: &str) -> Option<String> {
    let mut yaml = format!(
        "apiVersion: kiln/v1\nname: zscore-{variant}\nparams:\n  salt:\n    type: int\n    \
         default: 0\n    description: Gives every step a new cache key.\nsteps:\n"
    );
    for k in 0..STEPS {
        let input = match k {
            0 => "./data.csv".to_owned(),
            k => format!("z{}.data", k - 1),
        };
        yaml.push_str(&format!("  z{k}:\n"));
        yaml.push_str(&step_body(variant, k, &input)?);
    }
    Some(yaml)
}

/// One `kiln run` with `--output json`: the wall time from spawn to exit and the summary.
fn run_json(
    dir: &Path,
    path_var: &std::ffi::OsStr,
    state: &str,
    salt: usize,
) -> (Duration, serde_json::Value) {
    let salt = format!("salt={salt}");
    let start = Instant::now();
    let out = kiln_in(
        dir,
        &["run", "pipeline.yaml", "--state", state, "-p", &salt],
    )
    .args(["--output", "json"])
    .env("PATH", path_var)
    .stdin(Stdio::null())
    .output()
    .expect("kiln starts");
    let time = start.elapsed();
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert!(
        out.status.success(),
        "kiln run in {}: {}\n{summary:#}\n{}",
        dir.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let steps = summary["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), STEPS);
    for step in steps {
        assert_eq!(step["status"], "succeeded", "{step}");
    }
    (time, summary)
}

/// The numbers of a CSV (header left out), cell by cell.
fn numbers(path: &Path) -> Vec<f64> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .skip(1)
        .flat_map(|l| {
            l.split(',')
                .map(|c| c.parse::<f64>().unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn median_ms(times: &mut [Duration]) -> f64 {
    times.sort();
    times[times.len() / 2].as_secs_f64() * 1e3
}

fn main() {
    if std::env::args()
        .skip(1)
        .any(|a| !a.starts_with("--") && a != "zscore")
    {
        return;
    }
    let runs = env_or("KILN_BENCH_RUNS", 7).max(1);
    let colds = env_or("KILN_BENCH_COLD", 3).max(1);
    let variants = std::env::var("KILN_BENCH_VARIANTS")
        .unwrap_or_else(|_| "rust-wasm,python-wasm,python".into());
    let base: PathBuf = std::env::var_os("KILN_BENCH_DIR")
        .map(Into::into)
        .unwrap_or_else(std::env::temp_dir);
    let root = tempfile::tempdir_in(base).unwrap();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    let python = python();
    let mut paths = vec![python.parent().unwrap().to_owned()];
    paths.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    let path_var = std::env::join_paths(paths).unwrap();
    let data = root.path().join("data.csv");
    let status = Command::new(&python)
        .arg(bench_dir().join("make_data.py"))
        .args([
            data.as_os_str(),
            ROWS.to_string().as_ref(),
            SEED.to_string().as_ref(),
        ])
        .status()
        .expect("python3 runs");
    assert!(status.success(), "make_data.py failed");
    let data_bytes = std::fs::read(&data).unwrap();
    println!(
        "{KILN}\n{STEPS}-step z-score chain, spawn to exit; {cores} cores; {}; under {}",
        python.display(),
        root.path().display()
    );
    println!(
        "input: {ROWS} × 5 CSV, {} bytes, {}",
        data_bytes.len(),
        kiln_cas::Digest::of_bytes(&data_bytes)
    );
    println!("load average at start: {}", load_average());
    println!(
        "{:<12} {:>20}  {:>22}  {:>13}  {:>9}  output",
        "variant", "cold ms", "warm chain ms", "step ms (med)", "chain/10"
    );

    let mut reference: Option<(String, Vec<f64>, Vec<u8>)> = None;
    for variant in variants.split(',') {
        let Some(yaml) = pipeline(variant) else {
            println!(
                "{variant:<12} skipped: no component (see `python_component`; set KILN_BENCH_PY_COMPONENT)"
            );
            continue;
        };
        let dir = root.path().join(variant);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("pipeline.yaml"), yaml).unwrap();
        std::fs::copy(&data, dir.join("data.csv")).unwrap();
        match variant {
            "rust-wasm" => {
                std::fs::copy(rust_component(), dir.join("zscore.wasm")).unwrap();
            }
            "python-wasm" => {
                let component = python_component().unwrap();
                std::fs::copy(&component, dir.join("zscore-py.wasm"))
                    .unwrap_or_else(|e| panic!("{}: {e}", component.display()));
            }
            _ => {
                std::fs::copy(bench_dir().join("zscore.py"), dir.join("zscore.py")).unwrap();
            }
        }

        let mut salt = 0;
        let mut cold = Vec::new();
        for k in 0..colds {
            salt += 1;
            let state = format!("cold-{k}");
            cold.push(run_json(&dir, &path_var, &state, salt).0);
            std::fs::remove_dir_all(dir.join(state)).unwrap();
        }
        salt += 1;
        run_json(&dir, &path_var, "warm", salt);
        let (mut warm, mut steps) = (Vec::new(), Vec::new());
        let mut last = serde_json::Value::Null;
        for _ in 0..runs {
            salt += 1;
            let (time, summary) = run_json(&dir, &path_var, "warm", salt);
            warm.push(time);
            steps.extend(
                summary["steps"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s["duration_ms"].as_u64().unwrap()),
            );
            last = summary;
        }

        // The chain's result, against the first variant's.
        let digest = last["steps"][STEPS - 1]["outputs"]["data"]
            .as_str()
            .unwrap()
            .to_owned();
        let out = root.path().join(format!("{variant}.csv"));
        let status = Command::new(KILN)
            .args(["artifact", "get", &digest, "-o"])
            .arg(&out)
            .args(["--state", "warm"])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("kiln starts");
        assert!(status.success(), "kiln artifact get {digest}");
        let (bytes, values) = (std::fs::read(&out).unwrap(), numbers(&out));
        let check = match &reference {
            None => {
                reference = Some((variant.to_owned(), values, bytes));
                "(reference)".to_owned()
            }
            Some((name, _, b)) if *b == bytes => format!("same bytes as {name}"),
            Some((name, v, _)) => {
                assert_eq!(v.len(), values.len());
                let diff = v
                    .iter()
                    .zip(&values)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f64::max);
                assert!(diff <= 2e-6, "{variant} differs from {name} by {diff}");
                format!("max |Δ| {diff:.1e} against {name}")
            }
        };

        steps.sort_unstable();
        let (cold_ms, warm_ms) = (median_ms(&mut cold), median_ms(&mut warm));
        let ms = |d: &Duration| d.as_secs_f64() * 1e3;
        println!(
            "{variant:<12} {:>20}  {:>22}  {:>13}  {:>9.1}  {check}",
            format!(
                "{cold_ms:.0} ({:.0}–{:.0})",
                ms(&cold[0]),
                ms(&cold[colds - 1])
            ),
            format!(
                "{warm_ms:.1} ({:.1}–{:.1})",
                ms(&warm[0]),
                ms(&warm[runs - 1])
            ),
            steps[steps.len() / 2],
            warm_ms / STEPS as f64,
        );
    }
    println!("load average at end: {}", load_average());
}
