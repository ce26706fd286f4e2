//! Helpers the `kiln` benchmarks share: they run the real binary, spawn to exit.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The `kiln` binary cargo built for the benchmark.
pub const KILN: &str = env!("CARGO_BIN_EXE_kiln");

pub fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `kiln ARGS` in `dir`, with compiled components kept in the state folder that `--state`
/// names (else `.kiln`) rather than in the user's cache: so a new state folder is a cold
/// start, which is what the cold runs measure, and the user's cache is left alone.
pub fn kiln_in(dir: &Path, args: &[&str]) -> Command {
    let state = args
        .windows(2)
        .find(|pair| pair[0] == "--state")
        .map_or(".kiln", |pair| pair[1]);
    let mut command = Command::new(KILN);
    command
        .args(args)
        .current_dir(dir)
        .env("KILN_CACHE_DIR", dir.join(state).join("wasm-cache"));
    command
}

/// Runs `kiln ARGS` in `dir`, output discarded; returns the wall time from spawn to exit.
pub fn time_kiln(dir: &Path, args: &[&str]) -> Duration {
    let start = Instant::now();
    let status = kiln_in(dir, args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("kiln starts");
    let time = start.elapsed();
    assert!(
        status.success(),
        "kiln {args:?} in {}: {status}",
        dir.display()
    );
    time
}

/// Every step's status word in the summary of `kiln ARGS --output json` (which must succeed).
pub fn statuses(dir: &Path, args: &[&str]) -> Vec<String> {
    let out = kiln_in(dir, args)
        .args(["--output", "json"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .expect("kiln starts");
    assert!(out.status.success(), "kiln {args:?}: {}", out.status);
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON summary");
    step_statuses(&summary)
}

pub use kiln_test_support::step_statuses;

/// The first three fields of /proc/loadavg, where there is one: on a shared machine, other
/// work on the cores shows in the figures.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").map_or_else(
        |_| "unknown".into(),
        |s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
    )
}
