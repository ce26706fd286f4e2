//! Hostile guests: each tries to hurt the runner (recursing without end, writing 10 GiB to
//! the log or to its outputs, writing outside its outputs, spawning a thread, asking for
//! 8 GiB), must end with its own typed failure kind, and must leave the runtime healthy: a
//! well-behaved guest runs right after each one, and beside them all at once.

mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use kiln_engine::{ExecOutcome, Executor, StagedTask};
use kiln_spec::Value;
use kiln_wasm::{
    DEFAULT_LOG_LIMIT_BYTES, MAX_MEMORY_BYTES, RuntimeOptions, WasmExecutor, WasmRuntime,
};
use support::{TaskSpec, guest, task};

/// The cap on bytes written under `/out` in these tests: small, so a guest that gets past it
/// cannot fill the disk.
const OUTPUT_CAP: u64 = 64 << 20;

/// How far past [`OUTPUT_CAP`] a guest may get: the cap is checked at each epoch tick (10 ms),
/// and a guest writes a few GB/s into the page cache, more while the ticker thread waits for
/// a core on a busy machine. Far below the 10 GiB the guests try to write.
const OUTPUT_SLACK: u64 = 512 << 20;

fn options(concurrency: usize) -> RuntimeOptions {
    let mut options = RuntimeOptions::new();
    options
        .concurrency(concurrency)
        .output_limit_bytes(OUTPUT_CAP);
    options
}

/// One runtime for the tests that run one guest at a time.
fn executor() -> &'static WasmExecutor {
    static EXECUTOR: OnceLock<WasmExecutor> = OnceLock::new();
    EXECUTOR.get_or_init(|| {
        WasmExecutor::new(WasmRuntime::with_options(shared_cache(), &options(4)).expect("runtime"))
    })
}

/// The precompiled cache `tests/executor.rs` uses too: each guest is compiled once.
fn shared_cache() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("kiln-wasm-cache")
}

async fn run_on(exec: &WasmExecutor, task: &StagedTask) -> ExecOutcome {
    exec.run_staged(task)
        .await
        .expect("the executor runs the step")
}

/// The failure's kind and message; panics on success.
fn failure(outcome: &ExecOutcome) -> (&str, &str) {
    match outcome {
        ExecOutcome::Failed { kind, message, .. } => (kind.as_str(), message),
        other => panic!("expected a failure, got {other:?}"),
    }
}

/// A `copy` step with these bytes as its input, in a folder of its own.
fn copy_task(dir: &Path, bytes: &[u8]) -> StagedTask {
    task(
        dir,
        "copy",
        &guest("copy"),
        TaskSpec {
            inputs: vec![("src", bytes.to_vec())],
            outputs: vec!["dst"],
            ..Default::default()
        },
    )
}

/// Runs a well-behaved guest on `exec` and checks it did its job.
async fn assert_healthy(exec: &WasmExecutor) {
    let dir = tempfile::tempdir().unwrap();
    let t = copy_task(dir.path(), b"still fine");
    let outcome = run_on(exec, &t).await;
    assert!(
        matches!(outcome, ExecOutcome::Succeeded { .. }),
        "a good guest after a hostile one: {outcome:?}"
    );
    assert_eq!(std::fs::read(&t.outputs["dst"]).unwrap(), b"still fine");
}

fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Value::String((*v).to_owned())))
        .collect()
}

/// Bytes in the plain files under `dir`, at any depth.
fn bytes_under(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total += meta.len();
            }
        }
    }
    total
}

/// Every path under `dir` (relative, sorted) with its size, for "nothing else changed".
fn tree(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let meta = std::fs::symlink_metadata(entry.path()).unwrap();
            if meta.is_dir() {
                stack.push(entry.path());
            }
            let rel = entry.path().strip_prefix(dir).unwrap().to_owned();
            found.push((rel, if meta.is_file() { meta.len() } else { 0 }));
        }
    }
    found.sort();
    found
}

fn recurse_task(dir: &Path) -> StagedTask {
    task(dir, "recurse", &guest("recurse"), TaskSpec::default())
}

fn stdout_flood_task(dir: &Path) -> StagedTask {
    task(
        dir,
        "flood",
        &guest("bigout"),
        TaskSpec {
            params: params(&[("to", "stdout")]),
            ..Default::default()
        },
    )
}

fn big_output_task(dir: &Path, files: Option<&str>) -> StagedTask {
    task(
        dir,
        "bigout",
        &guest("bigout"),
        TaskSpec {
            outputs: vec!["big"],
            params: files.map_or_else(BTreeMap::new, |n| params(&[("files", n)])),
            ..Default::default()
        },
    )
}

fn hog_task(dir: &Path, how: &str, memory_bytes: Option<u64>) -> StagedTask {
    task(
        dir,
        "hog",
        &guest("hog"),
        TaskSpec {
            params: params(&[("how", how)]),
            memory_bytes,
            ..Default::default()
        },
    )
}

#[tokio::test]
async fn unbounded_recursion_is_a_stack_overflow() {
    let dir = tempfile::tempdir().unwrap();
    let t = recurse_task(dir.path());
    let outcome = run_on(executor(), &t).await;
    let (kind, message) = failure(&outcome);
    assert_eq!(kind, "stack-overflow", "{message}");
    let log = std::fs::read_to_string(&t.log).unwrap();
    assert!(log.contains("descending from 1"), "{log}");
    assert_healthy(executor()).await;
}

#[tokio::test]
async fn ten_gib_on_stdout_stops_at_the_log_cap() {
    let dir = tempfile::tempdir().unwrap();
    let t = stdout_flood_task(dir.path());
    let outcome = run_on(executor(), &t).await;
    let (kind, message) = failure(&outcome);
    assert_eq!(kind, "log-limit", "{message}");
    // The guest was stopped at the cap, not after 10 GiB: the log holds the cap's worth of
    // its bytes and a note.
    let log = std::fs::metadata(&t.log).unwrap().len();
    assert!(
        log > DEFAULT_LOG_LIMIT_BYTES && log < DEFAULT_LOG_LIMIT_BYTES + 1024,
        "log is {log} bytes"
    );
    assert_healthy(executor()).await;
}

#[tokio::test]
async fn ten_gib_into_an_output_file_stops_near_the_output_cap() {
    let dir = tempfile::tempdir().unwrap();
    let t = big_output_task(dir.path(), None);
    let outcome = run_on(executor(), &t).await;
    let (kind, message) = failure(&outcome);
    assert_eq!(kind, "output-limit", "{message}");
    let written = bytes_under(&t.workdir.join("out"));
    assert!(
        written <= OUTPUT_CAP + OUTPUT_SLACK,
        "{written} bytes under /out, cap {OUTPUT_CAP}"
    );
    let log = std::fs::read_to_string(&t.log).unwrap();
    assert!(!log.contains("wrote all 10 GiB"), "{log}");
    assert_healthy(executor()).await;
}

#[tokio::test]
async fn ten_gib_spread_over_many_output_files_stops_near_the_output_cap() {
    // The cap is on all bytes under /out together, not per file.
    let dir = tempfile::tempdir().unwrap();
    let t = big_output_task(dir.path(), Some("16"));
    let outcome = run_on(executor(), &t).await;
    let (kind, message) = failure(&outcome);
    assert_eq!(kind, "output-limit", "{message}");
    let written = bytes_under(&t.workdir.join("out"));
    assert!(
        written <= OUTPUT_CAP + OUTPUT_SLACK,
        "{written} bytes under /out, cap {OUTPUT_CAP}"
    );
    assert_healthy(executor()).await;
}

#[tokio::test]
async fn writes_outside_the_outputs_are_refused() {
    const PROBE: &str = "kiln-escape-probe";
    let dir = tempfile::tempdir().unwrap();
    let t = task(
        dir.path(),
        "escape",
        &guest("escape"),
        TaskSpec {
            inputs: vec![("data", b"input bytes".to_vec())],
            outputs: vec!["report"],
            ..Default::default()
        },
    );
    // The input is a link to a read-only object outside the scratch folder, as the store's
    // objects are linked into a wasm step's `in/`.
    let object = dir.path().join("stored-object");
    std::fs::write(&object, b"input bytes").unwrap();
    std::fs::set_permissions(&object, std::fs::Permissions::from_mode(0o444)).unwrap();
    std::fs::remove_file(&t.inputs["data"]).unwrap();
    std::fs::hard_link(&object, &t.inputs["data"]).unwrap();
    let object_modified = std::fs::metadata(&object).unwrap().modified().unwrap();
    let out_dir = t.workdir.join("out");
    let outside_out = |root: &Path| {
        tree(root)
            .into_iter()
            .filter(|(p, _)| !root.join(p).starts_with(&out_dir))
            .filter(|(p, _)| root.join(p) != t.log)
            .collect::<Vec<_>>()
    };
    let before = outside_out(dir.path());
    let outcome = run_on(executor(), &t).await;
    let report = std::fs::read_to_string(&t.outputs["report"]).unwrap_or_default();
    assert!(
        matches!(outcome, ExecOutcome::Succeeded { .. }),
        "{outcome:?}\n{report}"
    );
    // 9 paths × (write, mkdir, create-new), 6 on the input, 3 targets × (rename, 2 links).
    assert_eq!(report.lines().count(), 9 * 3 + 6 + 3 * 3, "{report}");
    for line in report.lines() {
        assert!(line.contains(": denied ("), "{line}\n{report}");
    }
    // Nothing appeared or changed on the host outside /out; /out holds the report only.
    assert_eq!(outside_out(dir.path()), before);
    assert_eq!(std::fs::read(&t.inputs["data"]).unwrap(), b"input bytes");
    assert_eq!(std::fs::read(&object).unwrap(), b"input bytes");
    assert_eq!(
        std::fs::metadata(&object).unwrap().modified().unwrap(),
        object_modified
    );
    assert_eq!(
        tree(&out_dir),
        vec![(PathBuf::from("report"), report.len() as u64)]
    );
    for host in [std::env::temp_dir(), PathBuf::from("/")] {
        for suffix in ["", ".d", ".new"] {
            let path = host.join(format!("{PROBE}{suffix}"));
            assert!(!path.exists(), "{} exists", path.display());
        }
    }
    assert_healthy(executor()).await;
}

#[tokio::test]
async fn a_thread_spawn_panics_and_the_trap_carries_the_panic_message() {
    let dir = tempfile::tempdir().unwrap();
    let t = task(dir.path(), "thread", &guest("thread"), TaskSpec::default());
    let outcome = run_on(executor(), &t).await;
    let (kind, message) = failure(&outcome);
    assert_eq!(kind, "trap", "{message}");
    assert!(message.contains("cannot spawn a thread: "), "{message}");
    assert!(!message.contains("a thread ran"), "{message}");
    assert_healthy(executor()).await;
}

#[tokio::test]
async fn one_8_gib_memory_grow_is_a_memory_failure() {
    // More than a 32-bit memory can ever hold, in one ask; the guest panics when refused, and
    // the outcome names the limit, not the panic.
    let dir = tempfile::tempdir().unwrap();
    let t = hog_task(dir.path(), "grow", None);
    let outcome = run_on(executor(), &t).await;
    let (kind, message) = failure(&outcome);
    assert_eq!(kind, "memory", "{message}");
    assert!(
        message.starts_with("the step needs more than its memory limit of 512 MiB"),
        "{message}"
    );
    assert_healthy(executor()).await;
}

#[tokio::test]
async fn allocating_8_gib_is_a_memory_failure() {
    let dir = tempfile::tempdir().unwrap();
    let t = hog_task(dir.path(), "vec", None);
    let outcome = run_on(executor(), &t).await;
    let (kind, message) = failure(&outcome);
    assert_eq!(kind, "memory", "{message}");
    assert!(
        message.starts_with("the step needs more than its memory limit of 512 MiB"),
        "{message}"
    );
    let log = std::fs::read_to_string(&t.log).unwrap();
    assert!(
        log.contains("asking for 1 GiB more (1 GiB in all)"),
        "{log}"
    );
    assert!(!log.contains("holding 1 GiB"), "{log}");
    assert_healthy(executor()).await;
}

#[tokio::test]
async fn allocating_8_gib_under_the_largest_limit_is_a_memory_failure() {
    // The guest gets 3 GiB (never touched, so only address space), then the 4th would take
    // its memory past what a 32-bit memory can address.
    let dir = tempfile::tempdir().unwrap();
    let t = hog_task(dir.path(), "vec", Some(MAX_MEMORY_BYTES));
    let outcome = run_on(executor(), &t).await;
    let (kind, message) = failure(&outcome);
    assert_eq!(kind, "memory", "{message}");
    assert!(
        message.starts_with("the step needs more than its memory limit of 4096 MiB"),
        "{message}"
    );
    let log = std::fs::read_to_string(&t.log).unwrap();
    assert!(log.contains("holding 3 GiB"), "{log}");
    assert!(!log.contains("holding 4 GiB"), "{log}");
    assert_healthy(executor()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_guests_beside_a_good_one_leave_it_alone() {
    // A runtime of its own, with a slot for every guest, so they all run at once.
    let exec = WasmExecutor::new(WasmRuntime::with_options(shared_cache(), &options(6)).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let hostile = [
        (recurse_task(&dir.path().join("recurse")), "stack-overflow"),
        (stdout_flood_task(&dir.path().join("flood")), "log-limit"),
        (
            big_output_task(&dir.path().join("bigout"), None),
            "output-limit",
        ),
        (hog_task(&dir.path().join("hog"), "vec", None), "memory"),
    ];
    let mut running = tokio::task::JoinSet::new();
    for (t, want) in hostile {
        let exec = exec.clone();
        running.spawn(async move {
            let outcome = run_on(&exec, &t).await;
            let (kind, message) = failure(&outcome);
            assert_eq!(kind, want, "{}: {message}", t.step.id);
        });
    }
    // The good guest copies 4 MiB, again and again while the others run.
    let payload: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
    let good = {
        let (exec, root, payload) = (exec.clone(), dir.path().join("good"), payload.clone());
        tokio::spawn(async move {
            for round in 0..5 {
                let t = copy_task(&root.join(round.to_string()), &payload);
                let outcome = run_on(&exec, &t).await;
                assert!(
                    matches!(outcome, ExecOutcome::Succeeded { .. }),
                    "round {round}: {outcome:?}"
                );
                assert!(std::fs::read(&t.outputs["dst"]).unwrap() == payload);
                let log = std::fs::read_to_string(&t.log).unwrap();
                assert_eq!(log, "copied 4194304 bytes\na line on stderr\n");
            }
        })
    };
    good.await.expect("the good guest's runs");
    while let Some(done) = running.join_next().await {
        done.expect("a hostile guest's run");
    }
    assert_healthy(&exec).await;
}
