//! A fully cached re-run, whole process: the real `kiln` binary, from spawn to exit.
//!
//! `cargo bench -p kiln-cli --bench rerun` (cargo builds `kiln` in release for it). For each
//! pipeline — container steps on the process backend, each
//! `command: [sh, -c, "echo i > {{outputs.out}}"]`, chained (`deep`) or independent (`wide`) —
//! `kiln run` runs once to fill the cache, once more to check that every step is now cached,
//! then the timed rounds begin. In each round, one after the other (so a change in the
//! machine's load hits all of them alike):
//! - `kiln --version`: process start alone;
//! - `kiln validate FILE`: process start + read + parse + plan;
//! - `kiln run FILE`: all of that + the engine serving every step from the cache.
//!
//! Standard output and error go to /dev/null (not a terminal: no progress bar).
//!
//! Environment: `KILN_BENCH_STEPS` (default `10,100`), `KILN_BENCH_SHAPES` (default
//! `deep,wide`), `KILN_BENCH_RUNS` (default 15; one untimed warm-up round comes first),
//! `KILN_BENCH_DIR` (default the system temp folder).

#![allow(missing_docs)]

use std::path::PathBuf;
use std::time::Duration;

mod common;

use common::*;
/// The target for a fully cached re-run of 10 steps.
const TARGET_10: Duration = Duration::from_millis(30);

fn pipeline(shape: &str, n: usize) -> String {
    let mut yaml = format!("apiVersion: kiln/v1\nname: rerun-{shape}-{n}\nsteps:\n");
    for i in 0..n {
        yaml.push_str(&format!(
            "  s{i}:\n    container:\n      image: busybox\n      command: [sh, -c, \"echo {i} > {{{{outputs.out}}}}\"]\n    outputs: [out]\n"
        ));
        match shape {
            "deep" if i > 0 => yaml.push_str(&format!("    inputs: {{x: s{}.out}}\n", i - 1)),
            "deep" | "wide" => {}
            other => panic!("unknown shape `{other}` (deep, wide)"),
        }
    }
    yaml
}

/// Median and p90 (nearest rank), in ms.
fn stats(times: &mut [Duration]) -> (f64, f64) {
    times.sort();
    let n = times.len();
    let p90 = times[(n * 9).div_ceil(10).max(1) - 1];
    (times[n / 2].as_secs_f64() * 1e3, p90.as_secs_f64() * 1e3)
}

fn main() {
    if std::env::args()
        .skip(1)
        .any(|a| !a.starts_with("--") && a != "rerun")
    {
        return;
    }
    let counts: Vec<usize> = std::env::var("KILN_BENCH_STEPS")
        .unwrap_or_else(|_| "10,100".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let shapes: Vec<String> = std::env::var("KILN_BENCH_SHAPES")
        .unwrap_or_else(|_| "deep,wide".into())
        .split(',')
        .map(|s| s.trim().to_owned())
        .collect();
    let runs = env_or("KILN_BENCH_RUNS", 15).max(1);
    let base: PathBuf = std::env::var_os("KILN_BENCH_DIR")
        .map(Into::into)
        .unwrap_or_else(std::env::temp_dir);
    let root = tempfile::tempdir_in(base).unwrap();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "{KILN}\nfully cached re-runs, spawn to exit; {runs} runs each after a warm-up; {cores} cores"
    );
    println!("load average at start: {}", load_average());
    println!(
        "{:<6} {:>5}  {:>17}  {:>17}  {:>17}  {:>11}",
        "shape", "steps", "--version med/p90", "validate med/p90", "run med/p90", "run-validate"
    );
    let mut missed = false;
    for &n in &counts {
        for shape in &shapes {
            let dir = root.path().join(format!("{shape}-{n}"));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("pipeline.yaml"), pipeline(shape, n)).unwrap();
            // Fill the cache, then check that a re-run is served from it entirely.
            time_kiln(&dir, &["run", "pipeline.yaml"]);
            let words = statuses(&dir, &["run", "pipeline.yaml"]);
            assert_eq!(words.len(), n);
            assert!(words.iter().all(|w| w == "cached"), "{words:?}");

            let mut times: [Vec<Duration>; 3] = Default::default();
            for round in 0..=runs {
                let t = [
                    time_kiln(&dir, &["--version"]),
                    time_kiln(&dir, &["validate", "pipeline.yaml"]),
                    time_kiln(&dir, &["run", "pipeline.yaml"]),
                ];
                if round > 0 {
                    for (all, t) in times.iter_mut().zip(t) {
                        all.push(t);
                    }
                }
            }
            let [version, validate, run] = times.each_mut().map(|t| stats(t));
            println!(
                "{shape:<6} {n:>5}  {:>7.1} / {:>7.1}  {:>7.1} / {:>7.1}  {:>7.1} / {:>7.1}  {:>8.1} ms",
                version.0,
                version.1,
                validate.0,
                validate.1,
                run.0,
                run.1,
                run.0 - validate.0
            );
            if n == 10 && run.0 > TARGET_10.as_secs_f64() * 1e3 {
                missed = true;
            }
        }
    }
    if counts.contains(&10) {
        println!(
            "target: a cached re-run of 10 steps in ≤ {} ms (median): {}",
            TARGET_10.as_millis(),
            if missed { "MISSED" } else { "met" }
        );
    }
    println!("load average at end: {}", load_average());
}
