//! A run through a kiln server against the same run here: whole `kiln` processes, spawn to
//! exit, on loopback.
//!
//! `cargo bench -p kiln-cli --bench remote`. One `kiln serve` (SQLite and a local store in its
//! state folder, under `KILN_BENCH_DIR`, default the system temp folder: point it at the disk
//! a server would use), and a fan-out of the `row` guest of kiln-wasm's tests over N items
//! (each reads a 100-row CSV and writes its own small file), for N in `KILN_BENCH_STEPS`
//! (default `10,1000`):
//! - **here**: `kiln run` in its own state folder;
//! - **server**: `kiln run --server URL`: pinned here, nothing to upload after the first run,
//!   submitted, the record followed as Server-Sent Events to its end, the summary printed.
//!
//! Every run passes a new `-p salt=N`, so every step runs (no cache hits, here or there); the
//! compiled components are warm on both sides after one untimed run each. Runs alternate here
//! and server, `KILN_BENCH_RUNS` (default 5) of each: median, min–max, and the ratio of the
//! medians (target: within 1.5× for 1,000 steps).

#![allow(missing_docs)]

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::*;

const TARGET_RATIO_1000: f64 = 1.5;

fn pipeline(n: usize) -> String {
    let items: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    format!(
        "apiVersion: kiln/v1\nname: remote-{n}\nparams:\n  xs:\n    type: list[int]\n    \
         default: [{}]\n    description: One step each.\n  salt:\n    type: int\n    \
         default: 0\n    description: Gives every step a new cache key.\nsteps:\n  row:\n    \
         wasm: row.wasm\n    for_each: \"{{{{params.xs}}}}\"\n    inputs: {{src: ./rows.csv}}\n    \
         outputs: [dst]\n    with: {{i: \"{{{{item}}}}\", salt: \"{{{{params.salt}}}}\"}}\n",
        items.join(", ")
    )
}

struct Served {
    child: Child,
    url: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(root: &Path) -> Served {
    let state = root.join("server");
    let mut child = Command::new(KILN)
        .args(["serve", "--listen", "127.0.0.1:0", "--state"])
        .arg(&state)
        .env("KILN_CACHE_DIR", state.join("wasm-cache"))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kiln serve starts");
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let url = loop {
        let mut line = String::new();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "kiln serve ended");
        if let Some(url) = line.trim().strip_prefix("kiln server on ") {
            break url.to_owned();
        }
    };
    std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = stderr.read_to_string(&mut rest);
    });
    Served { child, url }
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let runs = env_or("KILN_BENCH_RUNS", 5).max(1);
    let sizes: Vec<usize> = std::env::var("KILN_BENCH_STEPS")
        .unwrap_or_else(|_| "10,1000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let base = std::env::var_os("KILN_BENCH_DIR").map_or_else(std::env::temp_dir, Into::into);
    let root = tempfile::tempdir_in(&base).unwrap();
    let row = kiln_test_support::build_wasm(&kiln_test_support::guests_dir(), &["--bin", "row"])
        .join("row.wasm");
    std::fs::copy(&row, root.path().join("row.wasm")).unwrap();
    let mut csv = String::from("id,x,y\n");
    for i in 0..100 {
        csv.push_str(&format!("{i},{},{}\n", i * 7 % 13, i * i % 17));
    }
    std::fs::write(root.path().join("rows.csv"), csv).unwrap();
    let served = serve(root.path());
    println!(
        "kiln run here and through `kiln serve` on {} ({} runs each, alternating; state under {}; load {})",
        served.url,
        runs,
        base.display(),
        load_average()
    );
    let mut salt = 0u64;
    for n in sizes {
        let file = format!("pipeline-{n}.yaml");
        std::fs::write(root.path().join(&file), pipeline(n)).unwrap();
        let mut run = |remote: bool| {
            salt += 1;
            let salt = format!("salt={salt}");
            let mut args = vec!["run", file.as_str(), "-p", salt.as_str()];
            if remote {
                args.extend(["--state", "client", "--server", served.url.as_str()]);
            } else {
                args.extend(["--state", "local"]);
            }
            let started = Instant::now();
            let status = kiln_in(root.path(), &args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("kiln starts");
            assert!(status.success(), "kiln {args:?}: {status}");
            started.elapsed()
        };
        // Untimed: components compiled on both sides, the inputs uploaded.
        run(false);
        run(true);
        let (mut here, mut there) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            here.push(run(false));
            there.push(run(true));
        }
        let (h, t) = (median(&mut here), median(&mut there));
        let ratio = t.as_secs_f64() / h.as_secs_f64();
        println!(
            "{n:>6} steps: here median {:>8.1} ms ({:.1}–{:.1}), server median {:>8.1} ms ({:.1}–{:.1}), ratio {ratio:.2}{}",
            ms(h),
            ms(here[0]),
            ms(here[here.len() - 1]),
            ms(t),
            ms(there[0]),
            ms(there[there.len() - 1]),
            if n == 1000 {
                if ratio <= TARGET_RATIO_1000 {
                    format!(" (target {TARGET_RATIO_1000}×: met)")
                } else {
                    format!(" (target {TARGET_RATIO_1000}×: missed)")
                }
            } else {
                String::new()
            }
        );
    }
}
