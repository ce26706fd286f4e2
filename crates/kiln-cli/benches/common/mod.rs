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

/// Runs `kiln ARGS` in `dir`, output discarded; returns the wall time from spawn to exit.
pub fn time_kiln(dir: &Path, args: &[&str]) -> Duration {
    let start = Instant::now();
    let status = Command::new(KILN)
        .args(args)
        .current_dir(dir)
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
    let out = Command::new(KILN)
        .args(args)
        .args(["--output", "json"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .expect("kiln starts");
    assert!(out.status.success(), "kiln {args:?}: {}", out.status);
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON summary");
    summary["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["status"].as_str().expect("a status").to_owned())
        .collect()
}

/// The first three fields of /proc/loadavg, where there is one: on a shared machine, other
/// work on the cores shows in the figures.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").map_or_else(
        |_| "unknown".into(),
        |s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
    )
}
