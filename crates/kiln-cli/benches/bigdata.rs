//! Big workspace inputs, whole process: the real `kiln` binary, spawn to exit, with its peak
//! resident memory.
//!
//! `cargo bench -p kiln-cli --bench bigdata` (cargo builds `kiln` in release for it). The
//! pipeline has three container steps run by the process backend: two read one big workspace
//! file (`wc -c <` it, `head -c 4096` it) and one a workspace folder of many small files
//! (`ls | wc -l`). Measured, each a `kiln run --output json` whose summary is checked:
//! - **cold**: a new state folder, so every input is read, hashed and stored, and every step
//!   runs;
//! - **first re-run**: the same state folder, every step cached;
//! - **re-run**: again, `KILN_BENCH_RUNS` (default 5) times: median and min–max;
//! - **one file changed**: one file of the folder rewritten (same size, new bytes): that
//!   file is hashed again and the folder's step runs again, the big file's steps stay cached.
//!
//! Peak RSS is kiln's `ru_maxrss` (from `wait4`; it includes the steps, which are small
//! next to kiln). The data is written once, before the cold run, and the benchmark then waits
//! a few seconds, so that it is older than the window in which kiln does not trust a file's
//! times (as a workspace's data usually is; see the stat cache in docs/pipeline-format.md).
//!
//! Environment: `KILN_BENCH_BIG_MIB` (default 1024), `KILN_BENCH_FILES` (default 10000),
//! `KILN_BENCH_FILE_BYTES` (default 19600: about 196 MB in all), `KILN_BENCH_RUNS`,
//! `KILN_BENCH_DIR` (default the system temp folder). The data and the state folder are
//! written there: point it at the real disk to measure what users get (a tmpfs measures
//! memory copies, and on some machines the temp folder is one), and leave room for about
//! three copies of the data (the workspace, the store, a step's inputs).

#![allow(missing_docs)]

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

mod common;

use common::*;
use kiln_test_support::rss::{Measured, run_measured};

/// The target for a fully cached re-run.
const TARGET_RERUN: Duration = Duration::from_millis(100);
/// Longer than the window after a change in which kiln hashes a file again whatever its
/// times say.
const SETTLE: Duration = Duration::from_secs(3);

fn pipeline() -> String {
    let step = |name: &str, input: &str, path: &str, script: &str| {
        format!(
            "  {name}:\n    container:\n      image: busybox\n      command: [sh, -c, \"{script}\"]\n    inputs: {{{input}: {path}}}\n    outputs: [n]\n"
        )
    };
    let mut yaml = String::from("apiVersion: kiln/v1\nname: bigdata\nsteps:\n");
    yaml += &step(
        "count",
        "big",
        "./big.bin",
        "wc -c < {{inputs.big}} > {{outputs.n}}",
    );
    yaml += &step(
        "head",
        "big",
        "./big.bin",
        "head -c 4096 {{inputs.big}} | wc -c > {{outputs.n}}",
    );
    yaml += &step(
        "files",
        "files",
        "./files",
        "ls {{inputs.files}} | wc -l > {{outputs.n}}",
    );
    yaml
}

/// Fills `buf` with bytes that differ from block to block (`seed`), fast: real data on disk,
/// not a sparse file, and no two files alike.
fn pattern(buf: &mut [u8], seed: u64) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
}

fn write_data(dir: &Path, big_mib: usize, files: usize, file_bytes: usize) {
    let mut out = BufWriter::new(File::create(dir.join("big.bin")).unwrap());
    let mut block = vec![0; 1 << 20];
    for i in 0..big_mib {
        pattern(&mut block, i as u64);
        out.write_all(&block).unwrap();
    }
    out.into_inner().unwrap().sync_all().unwrap();
    let folder = dir.join("files");
    std::fs::create_dir(&folder).unwrap();
    let mut bytes = vec![0; file_bytes];
    for i in 0..files {
        pattern(&mut bytes, (1 << 40) + i as u64);
        std::fs::write(folder.join(format!("f{i:05}.bin")), &bytes).unwrap();
    }
}

/// `kiln run pipeline.yaml --output json` in `dir`, measured; checks that it succeeded and
/// that the steps ended as `expect` says (by name).
fn measured_run(dir: &Path, expect: &[(&str, &str)]) -> Measured {
    let measured = run_measured(&mut kiln_in(
        dir,
        &["run", "pipeline.yaml", "--output", "json"],
    ))
    .expect("kiln starts");
    let out = &measured.output;
    assert!(
        out.status.success(),
        "kiln run: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON summary");
    for (name, want) in expect {
        let step = summary["steps"]
            .as_array()
            .expect("steps")
            .iter()
            .find(|s| s["id"] == *name)
            .unwrap_or_else(|| panic!("no step `{name}` in {summary}"));
        assert_eq!(step["status"], *want, "step `{name}`: {step}");
    }
    measured
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

fn main() {
    if std::env::args()
        .skip(1)
        .any(|a| !a.starts_with("--") && a != "bigdata")
    {
        return;
    }
    let big_mib = env_or("KILN_BENCH_BIG_MIB", 1024);
    let files = env_or("KILN_BENCH_FILES", 10_000);
    let file_bytes = env_or("KILN_BENCH_FILE_BYTES", 19_600);
    let runs = env_or("KILN_BENCH_RUNS", 5).max(1);
    let base: PathBuf = std::env::var_os("KILN_BENCH_DIR")
        .map(Into::into)
        .unwrap_or_else(std::env::temp_dir);
    let root = tempfile::tempdir_in(&base).unwrap();
    let dir = root.path();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("{KILN}");
    println!(
        "big file {big_mib} MiB, folder of {files} files of {file_bytes} bytes ({:.0} MB), in {}; {cores} cores",
        mb((files * file_bytes) as u64),
        base.display()
    );
    write_data(dir, big_mib, files, file_bytes);
    std::fs::write(dir.join("pipeline.yaml"), pipeline()).unwrap();
    std::thread::sleep(SETTLE);
    println!("load average at start: {}", load_average());

    let all = |status| [("count", status), ("head", status), ("files", status)];
    let row = |what: &str, time: String, rss: u64| {
        println!("{what:<17} {time:>24}  {:>8.1} MB", mb(rss));
    };
    println!("{:<17} {:>24}  {:>11}", "run", "wall ms", "peak RSS");

    let cold = measured_run(dir, &all("succeeded"));
    row("cold", format!("{:.0}", ms(cold.wall)), cold.peak_rss);
    let first = measured_run(dir, &all("cached"));
    row(
        "first re-run",
        format!("{:.1}", ms(first.wall)),
        first.peak_rss,
    );

    let mut times = Vec::new();
    let mut peak = 0;
    for _ in 0..runs {
        let rerun = measured_run(dir, &all("cached"));
        times.push(rerun.wall);
        peak = peak.max(rerun.peak_rss);
    }
    times.sort();
    let median = times[times.len() / 2];
    row(
        &format!("re-run (x{runs})"),
        format!(
            "{:.1} ({:.1}–{:.1})",
            ms(median),
            ms(times[0]),
            ms(times[times.len() - 1])
        ),
        peak,
    );

    let mut bytes = vec![0; file_bytes];
    pattern(&mut bytes, 7);
    std::fs::write(dir.join("files").join("f00000.bin"), &bytes).unwrap();
    let changed = measured_run(
        dir,
        &[
            ("count", "cached"),
            ("head", "cached"),
            ("files", "succeeded"),
        ],
    );
    row(
        "one file changed",
        format!("{:.0}", ms(changed.wall)),
        changed.peak_rss,
    );

    println!(
        "target: a fully cached re-run in ≤ {} ms (median): {}",
        TARGET_RERUN.as_millis(),
        if median <= TARGET_RERUN {
            "met"
        } else {
            "MISSED"
        }
    );
    println!("load average at end: {}", load_average());
}
