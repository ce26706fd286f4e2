//! Per-run overhead of the wasm executor, and compile vs cached load.
//!
//! ```text
//! cargo bench -p kiln-wasm --bench overhead
//! KILN_BENCH_RUNS=500 KILN_BENCH_GUESTS=copy cargo bench -p kiln-wasm --bench overhead
//! ```
//!
//! Prints, for a trivial guest (`fn main() {}`) and a small one that reads an input and
//! writes an output: the first compile (into an empty cache), the load of the precompiled
//! file by a fresh runtime, and warm runs through `Executor::run` (median, p99, mean).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use kiln_engine::{ExecOutcome, Executor};
use kiln_wasm::{WasmExecutor, WasmRuntime};
use support::{TaskSpec, guest, task};

fn main() {
    let runs: usize = std::env::var("KILN_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let guests = std::env::var("KILN_BENCH_GUESTS").unwrap_or_else(|_| "noop,copy".into());
    rt.block_on(async {
        for name in guests.split(',') {
            bench(name, runs).await;
        }
    });
}

async fn bench(name: &str, runs: usize) {
    let component = guest(name);
    let cache = tempfile::tempdir().unwrap();

    let first = WasmRuntime::new(cache.path(), 4).unwrap();
    let started = Instant::now();
    first.load(&component).await.unwrap();
    let compile = started.elapsed();
    drop(first);

    let runtime = WasmRuntime::new(cache.path(), 4).unwrap();
    let started = Instant::now();
    runtime.load(&component).await.unwrap();
    let cached = started.elapsed();

    let exec = WasmExecutor::new(runtime);
    let dir = tempfile::tempdir().unwrap();
    let spec = || match name {
        "copy" => TaskSpec {
            inputs: vec![("src", vec![7u8; 4096])],
            outputs: vec!["dst"],
            ..Default::default()
        },
        _ => TaskSpec::default(),
    };
    let t = task(dir.path(), name, &component, spec());
    let mut times = Vec::with_capacity(runs);
    for i in 0..runs + runs / 10 {
        // Each engine attempt writes into a fresh folder; rewriting the same file instead
        // would time ext4's flush-on-truncate, not kiln.
        for path in t.outputs.values() {
            let _ = std::fs::remove_file(path);
        }
        let started = Instant::now();
        let outcome = exec.run_staged(&t).await.unwrap();
        let took = started.elapsed();
        assert!(
            matches!(outcome, ExecOutcome::Succeeded { .. }),
            "{outcome:?}"
        );
        // The first tenth warms caches up and is not counted.
        if i >= runs / 10 {
            times.push(took);
        }
    }
    times.sort();
    let pct = |p: f64| times[((times.len() as f64 - 1.0) * p).round() as usize];
    let mean = times.iter().sum::<Duration>() / times.len() as u32;
    println!(
        "{name:>5}: {} bytes; first compile {:>8.2} ms, cached load {:>6.2} ms; \
         warm run ({runs} runs) median {:>6.1} µs, p99 {:>6.1} µs, mean {:>6.1} µs",
        std::fs::metadata(&component).unwrap().len(),
        ms(compile),
        ms(cached),
        us(pct(0.5)),
        us(pct(0.99)),
        us(mean),
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
