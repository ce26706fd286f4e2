//! A fan-out of trivial wasm steps, whole process: the real `kiln` binary, spawn to exit.
//!
//! `cargo bench -p kiln-cli --bench fanout` (cargo builds `kiln` in release for it). The
//! pipeline is one step, `wasm: noop.wasm` (the trivial guest of kiln-wasm's tests,
//! `fn main() {}`, built for `wasm32-wasip2`), fanned out with `for_each: "{{params.xs}}"`
//! over `KILN_BENCH_STEPS` (default 1000) items, each instance with `with: {i: ITEM, salt:
//! SALT}`. Three measurements, each a `kiln run` with output to /dev/null (no progress bar):
//! - **cold**: a new state folder, so kiln compiles the component first (and caches it);
//!   `KILN_BENCH_COLD` (default 3) runs, each in a new state folder;
//! - **warm**: the same state folder every time, so the precompiled component is cached,
//!   but every run passes a new `-p salt=N`, so no step result is: the precompiled cache is
//!   warm and the result cache cold. `KILN_BENCH_RUNS` (default 7) runs after one untimed
//!   one, which also checks (`--output json`) that every step ran;
//! - **cached**: the last warm run again, every step a cache hit (`KILN_BENCH_RUNS` runs);
//! - **replay**: `kiln replay` of that run, every step run again and compared, with `-j` at
//!   its default and with `-j 1` (`KILN_BENCH_RUNS` runs each), as a ratio to the warm run.
//!
//! Median and min–max. State folders go under `KILN_BENCH_DIR` (default the system temp
//! folder; `/dev/shm` for tmpfs).

#![allow(missing_docs)]

use std::path::PathBuf;
use std::time::Duration;

mod common;

use common::*;
/// The target for the whole fan-out of 1,000 fresh steps, precompiled cache warm.
const TARGET_1000: Duration = Duration::from_millis(500);

/// The trivial guest, built from `crates/kiln-wasm/tests/guests` for `wasm32-wasip2`.
fn noop_component() -> PathBuf {
    kiln_test_support::build_wasm(&kiln_test_support::guests_dir(), &["--bin", "noop"])
        .join("noop.wasm")
}

fn pipeline(n: usize) -> String {
    let items: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    format!(
        "apiVersion: kiln/v1\nname: fanout-{n}\nparams:\n  xs:\n    type: list[int]\n    \
         default: [{}]\n    description: One step each.\n  salt:\n    type: int\n    \
         default: 0\n    description: Gives every step a new cache key.\nsteps:\n  noop:\n    \
         wasm: noop.wasm\n    for_each: \"{{{{params.xs}}}}\"\n    with: {{i: \"{{{{item}}}}\", \
         salt: \"{{{{params.salt}}}}\"}}\n",
        items.join(", ")
    )
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
    let n = env_or("KILN_BENCH_STEPS", 1000).max(1);
    let runs = env_or("KILN_BENCH_RUNS", 7).max(1);
    let colds = env_or("KILN_BENCH_COLD", 3).max(1);
    let base: PathBuf = std::env::var_os("KILN_BENCH_DIR")
        .map(Into::into)
        .unwrap_or_else(std::env::temp_dir);
    let root = tempfile::tempdir_in(base).unwrap();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let component = noop_component();
    let dir = root.path().join("fanout");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("pipeline.yaml"), pipeline(n)).unwrap();
    std::fs::copy(&component, dir.join("noop.wasm")).unwrap();
    println!(
        "{KILN}\n{n} wasm steps (noop, fan-out), spawn to exit; {cores} cores; under {}",
        root.path().display()
    );
    println!("load average at start: {}", load_average());

    let mut salt = 0usize;
    let run = |state: &str, salt: usize| {
        let salt = format!("salt={salt}");
        time_kiln(
            &dir,
            &["run", "pipeline.yaml", "--state", state, "-p", &salt],
        )
    };
    let mut cold = Vec::new();
    for k in 0..colds {
        salt += 1;
        cold.push(run(&format!("cold-{k}"), salt));
        std::fs::remove_dir_all(dir.join(format!("cold-{k}"))).unwrap();
    }

    // Fills the precompiled cache, and checks that a new salt means fresh steps.
    salt += 1;
    let words = statuses(
        &dir,
        &[
            "run",
            "pipeline.yaml",
            "--state",
            "warm",
            "-p",
            &format!("salt={salt}"),
        ],
    );
    assert_eq!(words.len(), n);
    assert!(words.iter().all(|w| w == "succeeded"), "{words:?}");
    let mut warm = Vec::new();
    for _ in 0..runs {
        salt += 1;
        warm.push(run("warm", salt));
    }
    let words = statuses(
        &dir,
        &[
            "run",
            "pipeline.yaml",
            "--state",
            "warm",
            "-p",
            &format!("salt={salt}"),
        ],
    );
    assert!(words.iter().all(|w| w == "cached"), "{words:?}");
    let mut cached: Vec<Duration> = (0..runs).map(|_| run("warm", salt)).collect();
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

    let (cold, _) = spread(&mut cold);
    let (warm, warm_median) = spread(&mut warm);
    let (cached, _) = spread(&mut cached);
    let (replays, replay_median) = spread(&mut replays);
    let (serial, serial_median) = spread(&mut serial);
    println!("{:<34} {:>22}", "", "ms, median (min–max)");
    println!(
        "{:<34} {cold:>22}",
        format!("cold: compile + {n} fresh steps")
    );
    println!("{:<34} {warm:>22}", format!("warm: {n} fresh steps"));
    println!("{:<34} {cached:>22}", format!("cached: {n} cache hits"));
    println!(
        "{:<34} {replays:>22}",
        format!("replay: {n} steps, -j {cores}")
    );
    println!("{:<34} {serial:>22}", format!("replay: {n} steps, -j 1"));
    println!(
        "replay / warm run: {:.2}; replay -j {cores} / -j 1: {:.2} (medians)",
        replay_median.as_secs_f64() / warm_median.as_secs_f64(),
        replay_median.as_secs_f64() / serial_median.as_secs_f64()
    );
    println!(
        "warm, per step: {:.0} µs",
        warm_median.as_secs_f64() * 1e6 / n as f64
    );
    if n == 1000 {
        println!(
            "target: 1,000 fresh steps, precompiled cache warm, in ≤ {} ms (median): {}",
            TARGET_1000.as_millis(),
            if warm_median <= TARGET_1000 {
                "met"
            } else {
                "MISSED"
            }
        );
    }
    println!("load average at end: {}", load_average());
}
