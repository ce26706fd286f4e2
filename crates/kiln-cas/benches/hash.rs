//! Hashing and storing throughput on a large file, next to `b3sum` on the same file.
//!
//! `cargo bench -p kiln-cas --bench hash`; `KILN_BENCH_MIB` (default 1024) sets the file size,
//! `KILN_BENCH_RUNS` (default 5) the runs per measurement, `KILN_BENCH_DIR` where the file
//! goes (default the system temp folder). The file is written once and read from the page
//! cache by every contender, so the figures compare hashing, not the disk.

#![allow(missing_docs)]

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use kiln_cas::{Digest, LocalStore};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// As [`median`], with untimed `setup` before and `teardown` after each run.
fn median_with<T>(
    runs: usize,
    mut setup: impl FnMut() -> T,
    mut work: impl FnMut(&T),
    mut teardown: impl FnMut(T),
) -> Duration {
    let mut times: Vec<Duration> = (0..=runs)
        .map(|_| {
            let state = setup();
            let start = Instant::now();
            work(&state);
            let time = start.elapsed();
            teardown(state);
            time
        })
        .skip(1) // warm-up
        .collect();
    times.sort();
    times[times.len() / 2]
}

fn report(name: &str, bytes: u64, time: Duration) -> f64 {
    let mb_s = bytes as f64 / 1e6 / time.as_secs_f64();
    println!(
        "{name:<34} {mb_s:>9.0} MB/s   (median {:.3} s)",
        time.as_secs_f64()
    );
    mb_s
}

fn write_file(path: &Path, bytes: u64) {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut xof = blake3::Hasher::new().update(b"kiln bench").finalize_xof();
    let mut buf = vec![0; 4 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        xof.fill(&mut buf[..n]);
        out.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    out.into_inner().unwrap().sync_all().unwrap();
}

fn b3sum_available() -> bool {
    Command::new("b3sum")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success())
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument that is not ours means "not me".
    if std::env::args()
        .skip(1)
        .any(|a| !a.starts_with("--") && a != "hash")
    {
        return;
    }
    let mib = env_or("KILN_BENCH_MIB", 1024) as u64;
    let runs = env_or("KILN_BENCH_RUNS", 5).max(1);
    let base = std::env::var_os("KILN_BENCH_DIR")
        .map(Into::into)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(base).unwrap();
    let file = dir.path().join("big.bin");
    let bytes = mib << 20;
    write_file(&file, bytes);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "file: {} MiB at {}, {runs} runs each (median), {threads} cores",
        mib,
        file.display()
    );

    // The contenders take turns within each round, so a change in the machine's background
    // load (other builds on a shared box) hits all of them alike.
    let digest = Digest::of_file(&file).unwrap();
    let b3sum = b3sum_available();
    let mut times: [Vec<Duration>; 3] = Default::default();
    for round in 0..=runs {
        let mut time = |i: usize, work: &mut dyn FnMut()| {
            let start = Instant::now();
            work();
            if round > 0 {
                times[i].push(start.elapsed()); // round 0 warms up
            }
        };
        time(0, &mut || {
            assert_eq!(Digest::of_file(&file).unwrap(), digest)
        });
        time(1, &mut || {
            let reader = std::fs::File::open(&file).unwrap();
            assert_eq!(Digest::of_reader(reader).unwrap(), digest);
        });
        if b3sum {
            time(2, &mut || {
                let out = Command::new("b3sum")
                    .arg("--no-names")
                    .arg(&file)
                    .output()
                    .unwrap();
                assert!(out.status.success());
                let hex = String::from_utf8(out.stdout).unwrap();
                assert_eq!(hex.trim(), digest.to_hex(), "b3sum disagrees");
            });
        }
    }
    let median_of = |times: &mut Vec<Duration>| {
        times.sort();
        times[times.len() / 2]
    };
    let ours = report(
        "Digest::of_file (4 MiB reads, rayon)",
        bytes,
        median_of(&mut times[0]),
    );
    report(
        "Digest::of_reader (4 MiB reads)",
        bytes,
        median_of(&mut times[1]),
    );
    if b3sum {
        let version = Command::new("b3sum").arg("--version").output().unwrap();
        let version = String::from_utf8_lossy(&version.stdout);
        let theirs = report(
            &format!("{} (same file)", version.trim()),
            bytes,
            median_of(&mut times[2]),
        );
        println!(
            "Digest::of_file / b3sum             {:>8.1} %",
            100.0 * ours / theirs
        );
    } else {
        println!("b3sum not installed (apt-get install b3sum): no comparison");
    }

    // Storing: a copy into tmp/ (reflink where possible, copy_file_range otherwise) plus
    // hashing the copy; each run goes into a fresh store so that nothing is deduplicated.
    let stores = dir.path().join("stores");
    let mut n = 0;
    let mut fresh_store = || {
        n += 1;
        LocalStore::new(stores.join(n.to_string()))
    };
    let drop_store = |store: LocalStore| std::fs::remove_dir_all(store.root()).unwrap();
    report(
        "LocalStore::put_file (copy + hash)",
        bytes,
        median_with(
            runs,
            &mut fresh_store,
            |store| assert_eq!(store.put_file(&file).unwrap(), digest),
            drop_store,
        ),
    );
    // Handing a file over: rename + hash, no copy (the file to hand over is made untimed).
    let given = dir.path().join("given.bin");
    report(
        "LocalStore::put_file_owned (move)",
        bytes,
        median_with(
            runs,
            || {
                std::fs::copy(&file, &given).unwrap();
                fresh_store()
            },
            |store| assert_eq!(store.put_file_owned(&given).unwrap(), digest),
            drop_store,
        ),
    );
}
