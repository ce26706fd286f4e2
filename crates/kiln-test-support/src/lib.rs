//! What kiln's tests and benchmarks share, so that no crate keeps its own copy: building
//! guest components from the sources in this repository for `wasm32-wasip2`, deciding
//! whether a test that needs podman can run (or must say why it skips), starting a real
//! S3-compatible server on 127.0.0.1 ([`s3`]), and running a process to read its peak memory
//! ([`rss`]).
//!
//! It is a dev-dependency only; nothing here is part of kiln.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub mod postgres;
pub mod rss;
pub mod s3;

/// The repository's root.
pub fn repo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The cargo workspace of the test guests (`crates/kiln-wasm/tests/guests`).
pub fn guests_dir() -> PathBuf {
    repo_dir().join("crates/kiln-wasm/tests/guests")
}

/// Builds a cargo workspace for `wasm32-wasip2` in release, into its own `target/` (cargo
/// keeps the build between runs), with `args` added (`-p NAME`, `--bin NAME`...); returns the
/// folder holding the `.wasm` files. The outer cargo's settings are not the guests' business.
pub fn build_wasm(workspace: &Path, args: &[&str]) -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target_dir = workspace.join("target");
    let status = Command::new(cargo)
        .current_dir(workspace)
        .args(["build", "--quiet", "--release", "--target", "wasm32-wasip2"])
        .args(args)
        .env("CARGO_TARGET_DIR", &target_dir)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo for {}: {e}", workspace.display()));
    assert!(
        status.success(),
        "building {} for wasm32-wasip2 failed (is the target installed? \
         `rustup target add wasm32-wasip2`)",
        workspace.display()
    );
    target_dir.join("wasm32-wasip2/release")
}

/// A file's text, or a folder as `[name=content,...]` (sorted, recursively): what a fake
/// executor makes of its inputs, so that an output shows what the step read.
pub fn read_tree_text(path: &Path) -> String {
    if path.is_dir() {
        let mut entries: Vec<String> = std::fs::read_dir(path)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                format!(
                    "{}={}",
                    e.file_name().to_string_lossy(),
                    read_tree_text(&e.path())
                )
            })
            .collect();
        entries.sort();
        format!("[{}]", entries.join(","))
    } else {
        std::fs::read_to_string(path).unwrap()
    }
}

/// The image the podman tests run, built by `scripts/setup-containers.sh`.
pub const PODMAN_IMAGE: &str = "localhost/kiln-busybox:test";

/// Every step's status word (`succeeded`, `cached`, ...) in a `kiln run --output json`
/// summary, in its order.
pub fn step_statuses(summary: &serde_json::Value) -> Vec<String> {
    summary["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["status"].as_str().expect("a status").to_owned())
        .collect()
}

/// Whether `CI` is set (not empty): there, a test never skips; what it needs must be there.
pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

/// Whether `what` (a test, a case) can use podman: true when podman runs [`PODMAN_IMAGE`]
/// here (checked once per process). Otherwise it prints `skipping <what>: ...` on stderr and
/// returns false, so that a machine without podman still runs the rest; but where `CI` is set
/// it panics with the reason, because CI has podman and must not skip.
pub fn podman_or_skip(what: &str) -> bool {
    let Err(reason) = podman_runs_the_image() else {
        return true;
    };
    let reason = format!(
        "needs podman running {PODMAN_IMAGE}, but {reason} (run scripts/setup-containers.sh)"
    );
    if in_ci() {
        panic!("{what}: {reason}; CI is set, so it may not be skipped");
    }
    // Straight to stderr: libtest captures what `eprintln!` prints in a test that passes, and
    // a skip must be seen.
    let _ = writeln!(std::io::stderr(), "skipping {what}: {reason}");
    false
}

/// Runs the image once, with the flags `scripts/setup-containers.sh` checks it with (those
/// kiln passes too), by hand rather than through kiln: a bug in kiln must fail the tests, not
/// skip them.
pub fn podman_runs_the_image() -> Result<(), String> {
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    CHECKED
        .get_or_init(|| {
            let exists = podman_quietly(&["image", "exists", PODMAN_IMAGE])?;
            match exists.status.code() {
                Some(0) => {}
                // `image exists` says "no" with 1, and fails with anything else.
                Some(1) => return Err("the image is missing".to_owned()),
                _ => {
                    return Err(format!(
                        "`podman image exists` failed: {}",
                        last_line(&exists)
                    ));
                }
            }
            let ran = podman_quietly(&[
                "run",
                "--rm",
                "--pull",
                "never",
                "--network",
                "none",
                "--ulimit",
                "nofile=1024:1024",
                "--ulimit",
                "nproc=1000:1000",
                PODMAN_IMAGE,
                "sh",
                "-c",
                "echo kiln-busybox ok",
            ])?;
            let stdout = String::from_utf8_lossy(&ran.stdout);
            if ran.status.success() && stdout.trim() == "kiln-busybox ok" {
                return Ok(());
            }
            Err(format!("`podman run` of it failed: {}", last_line(&ran)))
        })
        .clone()
}

/// The exit status and the last line podman printed, which says what went wrong.
fn last_line(output: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = |text: &str| {
        text.lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(str::to_owned)
    };
    let line = last(&stderr)
        .or_else(|| last(&stdout))
        .unwrap_or_else(|| "(it printed nothing)".to_owned());
    format!("{}, {}", output.status, line.trim())
}

/// `podman --runtime runc ARGS`, given at most a minute (a wedged podman must not hang the
/// tests; what these commands print is a line or two, so the pipes never fill while it
/// waits); the reason when it cannot be run at all.
fn podman_quietly(args: &[&str]) -> Result<std::process::Output, String> {
    let mut child = Command::new("podman")
        .args(["--runtime", "runc"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                "podman is not installed (not found on PATH)".to_owned()
            }
            _ => format!("podman cannot be started: {e}"),
        })?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().map_err(|e| e.to_string())?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "`podman {}` did not finish within 60 s",
                args.join(" ")
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().map_err(|e| e.to_string())
}
