//! Registry upload and validation of a large component: the digits example's Python step
//! (`examples/digits/steps-py`, about 18 MiB, built with componentize-py).
//!
//! `cargo bench -p kiln-server --bench upload`. A real server in this process on a free port
//! of 127.0.0.1, SQLite and a local store in a new state folder under `KILN_BENCH_DIR`
//! (default the system temp folder: point it at the disk a server would use) for every run:
//! - **validate**: `kiln_server::validate::inspect` of the bytes alone (wasmparser, the whole
//!   component);
//! - **upload new**: `PUT /v1/components/report/versions/1.0.0` to a new server, answered 201:
//!   streamed to a file while hashed (blake3 and sha256), read back and validated, stored,
//!   recorded;
//! - **upload again**: the same bytes again to the same server, answered 200 (everything but
//!   storing and recording).
//!
//! `KILN_BENCH_RUNS` (default 7) runs of each; median and min–max, and MiB/s.

#![allow(missing_docs)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_cas::LocalStore;
use kiln_server::{Db, Server, ServerOptions, Tokens};

fn component() -> Vec<u8> {
    let dir = kiln_test_support::repo_dir().join("examples/digits/steps-py");
    let wasm = dir.join("target/report.wasm");
    if !wasm.is_file() {
        eprintln!("building the Python step with componentize-py (once)...");
        let status = std::process::Command::new("python3")
            .current_dir(&dir)
            .args(["../../../sdk/python/kiln_step.py", "build", "report", "-o"])
            .arg(&wasm)
            .status()
            .expect("python3 runs");
        assert!(
            status.success(),
            "the Python step does not build (run scripts/setup.sh)"
        );
    }
    std::fs::read(&wasm).unwrap()
}

fn median(mut times: Vec<Duration>) -> (Duration, Duration, Duration) {
    times.sort();
    (times[times.len() / 2], times[0], times[times.len() - 1])
}

fn report(what: &str, times: Vec<Duration>, bytes: usize) {
    let (median, min, max) = median(times);
    let mib = bytes as f64 / (1024.0 * 1024.0);
    println!(
        "{what:<14} median {:>7.1} ms   (min {:.1}, max {:.1})   {:>6.0} MiB/s",
        median.as_secs_f64() * 1e3,
        min.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3,
        mib / median.as_secs_f64()
    );
}

struct Running {
    url: String,
    stop: tokio::sync::oneshot::Sender<()>,
    served: tokio::task::JoinHandle<std::io::Result<()>>,
    _dir: tempfile::TempDir,
}

async fn start(base: &PathBuf) -> Running {
    let dir = tempfile::tempdir_in(base).unwrap();
    let state = dir.path().to_owned();
    let server = Server::new(ServerOptions {
        db: Db::sqlite(&state.join("server.db")).await.unwrap(),
        store: Arc::new(LocalStore::new(state.join("store"))),
        state_dir: state,
        tokens: Tokens::none(),
        max_upload_bytes: kiln_server::DEFAULT_MAX_UPLOAD_BYTES,
        max_blob_bytes: kiln_server::DEFAULT_MAX_BLOB_BYTES,
        on_component: None,
        runs: None,
    })
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(server.serve(listener, async {
        let _ = stopped.await;
    }));
    Running {
        url,
        stop,
        served,
        _dir: dir,
    }
}

async fn put(client: &reqwest::Client, url: &str, bytes: &[u8]) -> (reqwest::StatusCode, Duration) {
    let started = Instant::now();
    let response = client
        .put(format!("{url}/v1/components/report/versions/1.0.0"))
        .header("content-type", "application/wasm")
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap();
    let status = response.status();
    let _ = response.bytes().await.unwrap();
    (status, started.elapsed())
}

fn main() {
    let runs = std::env::var("KILN_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7usize)
        .max(1);
    let base = std::env::var_os("KILN_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    let bytes = component();
    println!(
        "component: {:.1} MiB ({} bytes); state folders under {}; {runs} runs each",
        bytes.len() as f64 / (1024.0 * 1024.0),
        bytes.len(),
        base.display()
    );
    let validate: Vec<Duration> = (0..runs)
        .map(|_| {
            let started = Instant::now();
            kiln_server::validate::inspect(&bytes).expect("a kiln-step component");
            started.elapsed()
        })
        .collect();
    report("validate", validate, bytes.len());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = reqwest::Client::new();
        let (mut new, mut again) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let server = start(&base).await;
            let (status, took) = put(&client, &server.url, &bytes).await;
            assert_eq!(status, reqwest::StatusCode::CREATED);
            new.push(took);
            let (status, took) = put(&client, &server.url, &bytes).await;
            assert_eq!(status, reqwest::StatusCode::OK);
            again.push(took);
            let _ = server.stop.send(());
            server.served.await.unwrap().unwrap();
        }
        report("upload new", new, bytes.len());
        report("upload again", again, bytes.len());
    });
}
