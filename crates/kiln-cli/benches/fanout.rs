//! A fan-out of tiny wasm steps, whole process: the real `kiln` binary, spawn to exit.
//!
//! `cargo bench -p kiln-cli --bench fanout` (cargo builds `kiln` in release for it). The
//! pipeline is the one the per-step cost targets are stated for: one step, `wasm: row.wasm`
//! (a guest of kiln-wasm's tests, built for `wasm32-wasip2`), fanned out with
//! `for_each: "{{params.xs}}"` over N items; each instance reads a 100-row CSV (a workspace
//! input) and writes one small file of its own (its row and its params, so no two outputs
//! are alike and every one is a new blob). A last step, `collect`, reads all N outputs as
//! one folder (the trivial `noop` guest): its duration is what staging N inputs costs.
//! `KILN_BENCH_STEPS` lists the sizes (default `1000`; `1000,10000` also compares their
//! per-step cost). For each size, each a `kiln run` with its output captured (no progress
//! bar):
//! - **cold**: a new state folder, so kiln compiles the components first (and caches them);
//!   `KILN_BENCH_COLD` (default 3) runs, each in a new state folder;
//! - **warm**: the same state folder every time, so the precompiled components are cached,
//!   but every run passes a new `-p salt=N`, so no step result is: the precompiled cache is
//!   warm and the result cache cold. `KILN_BENCH_RUNS` (default 7) runs after one untimed
//!   one, each checked (`--output json`): every step ran;
//! - **cached**: the last warm run again, every step a cache hit (`KILN_BENCH_RUNS` runs);
//! - **replay**: `kiln replay` of that run, every step run again and compared, with `-j` at
//!   its default and with `-j 1` (`KILN_BENCH_RUNS` runs each), as a ratio to the warm run.
//!
//! Median and min–max; kiln's peak resident memory (the largest of the warm runs, from the
//! kernel's accounting of the child); the record's size per step; and the targets. State
//! folders go under `KILN_BENCH_DIR` (default the system temp folder). Measure on the disk
//! kiln will use: tmpfs (`/dev/shm`) hides most of what a step costs.

#![allow(missing_docs)]

use std::path::{Path, PathBuf};
use std::time::Duration;

mod common;

use common::*;
/// The target for the whole fan-out of 1,000 fresh steps, precompiled cache warm.
const TARGET_1000: Duration = Duration::from_millis(500);
/// The target for 10,000 fresh steps, precompiled cache warm.
const TARGET_10000: Duration = Duration::from_millis(4000);
/// The target for 10,000 cache hits.
const TARGET_10000_CACHED: Duration = Duration::from_millis(300);
/// The target for staging 10,000 inputs as one folder.
const TARGET_COLLECT_10000: Duration = Duration::from_millis(500);
/// kiln's peak resident memory for 10,000 steps, in bytes.
const TARGET_RSS_10000: u64 = 150_000_000;
/// How much more a step may cost in a run ten times as large.
const TARGET_PER_STEP_GROWTH: f64 = 1.3;

/// A guest of kiln-wasm's tests, built from `crates/kiln-wasm/tests/guests` for
/// `wasm32-wasip2`.
fn guest(name: &str) -> PathBuf {
    kiln_test_support::build_wasm(&kiln_test_support::guests_dir(), &["--bin", name])
        .join(format!("{name}.wasm"))
}

fn pipeline(n: usize) -> String {
    let items: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    format!(
        "apiVersion: kiln/v1\nname: fanout-{n}\nparams:\n  xs:\n    type: list[int]\n    \
         default: [{}]\n    description: One step each.\n  salt:\n    type: int\n    \
         default: 0\n    description: Gives every step a new cache key.\nsteps:\n  row:\n    \
         wasm: row.wasm\n    for_each: \"{{{{params.xs}}}}\"\n    inputs: {{src: ./rows.csv}}\n    \
         outputs: [dst]\n    with: {{i: \"{{{{item}}}}\", salt: \"{{{{params.salt}}}}\"}}\n  \
         collect:\n    wasm: noop.wasm\n    inputs: {{all: row.dst}}\n",
        items.join(", ")
    )
}

/// A 100-row CSV.
fn rows_csv() -> String {
    let mut csv = String::from("id,x,y\n");
    for i in 0..100 {
        csv.push_str(&format!("{i},{},{}\n", i * 7 % 13, i * i % 17));
    }
    csv
}

/// One `kiln ARGS` in `dir` with `--output json`: its wall time, its peak resident memory
/// (bytes, as the kernel counts it), and its summary.
fn measured(dir: &Path, args: &[&str]) -> (Duration, u64, serde_json::Value) {
    let run = kiln_test_support::rss::run_measured(kiln_in(dir, args).args(["--output", "json"]))
        .expect("kiln starts");
    assert!(
        run.output.status.success(),
        "kiln {args:?} in {}: {}",
        dir.display(),
        run.output.status
    );
    let summary = serde_json::from_slice(&run.output.stdout).expect("JSON summary");
    (run.wall, run.peak_rss, summary)
}

fn collect_duration(summary: &serde_json::Value) -> Duration {
    let ms = summary["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .find(|s| s["id"] == "collect")
        .and_then(|s| s["duration_ms"].as_u64())
        .expect("the collect step's duration");
    Duration::from_millis(ms)
}

/// `median (min–max)` in ms, and the median.
fn spread(times: &mut [Duration]) -> (String, Duration) {
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let median = times[times.len() / 2];
    (
        format!(
            "{:.0} ({:.0}–{:.0})",
            ms(median),
            ms(times[0]),
            ms(times[times.len() - 1])
        ),
        median,
    )
}

fn main() {
    if std::env::args()
        .skip(1)
        .any(|a| !a.starts_with("--") && a != "fanout")
    {
        return;
    }
    let sizes: Vec<usize> = std::env::var("KILN_BENCH_STEPS")
        .unwrap_or_else(|_| "1000".into())
        .split(',')
        .map(|n| {
            n.trim()
                .parse::<usize>()
                .expect("KILN_BENCH_STEPS: numbers")
                .max(1)
        })
        .collect();
    let runs = env_or("KILN_BENCH_RUNS", 7).max(1);
    let colds = env_or("KILN_BENCH_COLD", 3).max(1);
    let base: PathBuf = std::env::var_os("KILN_BENCH_DIR")
        .map(Into::into)
        .unwrap_or_else(std::env::temp_dir);
    let root = tempfile::tempdir_in(base).unwrap();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (row, noop) = (guest("row"), guest("noop"));
    println!(
        "{KILN}\nwasm fan-outs (row.wasm over a 100-row CSV, then one step collecting them all), \
         spawn to exit; {cores} cores; under {}",
        root.path().display()
    );
    println!("load average at start: {}", load_average());
    let mut per_step = Vec::new();
    for n in sizes {
        per_step.push((n, bench(root.path(), n, runs, colds, &row, &noop)));
    }
    if let [(small, a), .., (large, b)] = per_step[..]
        && large > small
    {
        let growth = b / a;
        println!(
            "per step, {large} vs {small} steps: {:.0} µs vs {:.0} µs, {growth:.2}x (target ≤ {TARGET_PER_STEP_GROWTH}x: {})",
            b * 1e6,
            a * 1e6,
            verdict(growth <= TARGET_PER_STEP_GROWTH)
        );
    }
    println!("load average at end: {}", load_average());
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

/// Benchmarks the fan-out of `n`; returns the warm run's median cost per step, in seconds.
fn bench(root: &Path, n: usize, runs: usize, colds: usize, row: &Path, noop: &Path) -> f64 {
    let dir = root.join(format!("fanout-{n}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("pipeline.yaml"), pipeline(n)).unwrap();
    std::fs::write(dir.join("rows.csv"), rows_csv()).unwrap();
    std::fs::copy(row, dir.join("row.wasm")).unwrap();
    std::fs::copy(noop, dir.join("noop.wasm")).unwrap();
    println!("\n{n} steps + 1 collecting them");

    let mut salt = 0usize;
    let run = |state: &str, salt: usize| {
        let salt = format!("salt={salt}");
        measured(
            &dir,
            &["run", "pipeline.yaml", "--state", state, "-p", &salt],
        )
    };
    let mut cold = Vec::new();
    for k in 0..colds {
        salt += 1;
        cold.push(run(&format!("cold-{k}"), salt).0);
        std::fs::remove_dir_all(dir.join(format!("cold-{k}"))).unwrap();
    }

    // Fills the precompiled cache, and checks that a new salt means fresh steps.
    salt += 1;
    let (_, _, first) = run("warm", salt);
    let words = step_statuses(&first);
    assert_eq!(words.len(), n + 1);
    assert!(words.iter().all(|w| w == "succeeded"), "{words:?}");
    let (mut warm, mut collect, mut rss) = (Vec::new(), Vec::new(), Vec::new());
    let mut last = first;
    for _ in 0..runs {
        salt += 1;
        let (time, maxrss, summary) = run("warm", salt);
        assert!(step_statuses(&summary).iter().all(|w| w == "succeeded"));
        warm.push(time);
        collect.push(collect_duration(&summary));
        rss.push(maxrss);
        last = summary;
    }
    let record = dir
        .join("warm/runs")
        .join(last["run_id"].as_str().expect("a run id"))
        .join("record.jsonl");
    let record_bytes = std::fs::metadata(&record)
        .unwrap_or_else(|e| panic!("{}: {e}", record.display()))
        .len();
    let (_, _, again) = run("warm", salt);
    let words = step_statuses(&again);
    assert!(words.iter().all(|w| w == "cached"), "{words:?}");
    let mut cached: Vec<Duration> = (0..runs).map(|_| run("warm", salt).0).collect();
    // The last run's replay: every step run again and compared, `-j` at its default and at 1.
    let replay = |jobs: Option<&str>| {
        let mut args = vec!["replay", "latest", "--state", "warm"];
        if let Some(j) = jobs {
            args.extend(["-j", j]);
        }
        time_kiln(&dir, &args)
    };
    let mut replays: Vec<Duration> = (0..runs).map(|_| replay(None)).collect();
    let mut serial: Vec<Duration> = (0..runs).map(|_| replay(Some("1"))).collect();

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (cold, _) = spread(&mut cold);
    let (warm, warm_median) = spread(&mut warm);
    let (cached, cached_median) = spread(&mut cached);
    let (collect, collect_median) = spread(&mut collect);
    let (replays, replay_median) = spread(&mut replays);
    let (serial, serial_median) = spread(&mut serial);
    let peak_rss = rss.iter().copied().max().unwrap_or(0);
    println!("{:<38} {:>22}", "", "ms, median (min–max)");
    println!(
        "{:<38} {cold:>22}",
        format!("cold: compile + {n} fresh steps")
    );
    println!("{:<38} {warm:>22}", format!("warm: {n} fresh steps"));
    println!(
        "{:<38} {collect:>22}",
        format!("  of which collect ({n} inputs)")
    );
    println!("{:<38} {cached:>22}", format!("cached: {n} cache hits"));
    println!(
        "{:<38} {replays:>22}",
        format!("replay: {n} steps, -j {cores}")
    );
    println!("{:<38} {serial:>22}", format!("replay: {n} steps, -j 1"));
    println!(
        "replay / warm run: {:.2}; replay -j {cores} / -j 1: {:.2} (medians)",
        replay_median.as_secs_f64() / warm_median.as_secs_f64(),
        replay_median.as_secs_f64() / serial_median.as_secs_f64()
    );
    let per_step = warm_median.as_secs_f64() / n as f64;
    println!(
        "warm, per step: {:.0} µs; peak resident memory: {:.1} MB; record: {:.0} bytes per step",
        per_step * 1e6,
        peak_rss as f64 / 1e6,
        record_bytes as f64 / (n + 1) as f64
    );
    let target = |what: &str, limit: Duration, median: Duration| {
        println!(
            "target: {what} ≤ {} ms (median {:.0}): {}",
            limit.as_millis(),
            median.as_secs_f64() * 1e3,
            verdict(median <= limit)
        );
    };
    match n {
        1000 => target("1,000 fresh steps", TARGET_1000, warm_median),
        10000 => {
            target("10,000 fresh steps", TARGET_10000, warm_median);
            target("10,000 cache hits", TARGET_10000_CACHED, cached_median);
            target(
                "staging 10,000 inputs as one folder",
                TARGET_COLLECT_10000,
                collect_median,
            );
            println!(
                "target: peak resident memory ≤ {} MB ({:.1}): {}",
                TARGET_RSS_10000 / 1_000_000,
                peak_rss as f64 / 1e6,
                verdict(peak_rss <= TARGET_RSS_10000)
            );
        }
        _ => {}
    }
    per_step
}
