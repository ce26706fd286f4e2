//! The wasm executor against real guests built from `tests/guests` and the digits example:
//! the calling convention, every limit and its failure kind, the sandbox, determinism, and
//! the precompiled cache.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use kiln_engine::{ExecOutcome, Executor, StagedTask};
use kiln_spec::Value;
use kiln_wasm::{LoadSource, RuntimeOptions, WasmExecutor, WasmRuntime};
use support::{TaskSpec, digits_component, digits_step, guest, task};

/// One runtime for the whole test process, as in kiln; its cache outlives the process, so
/// components are compiled once per checkout.
fn executor() -> &'static WasmExecutor {
    static EXECUTOR: OnceLock<WasmExecutor> = OnceLock::new();
    EXECUTOR
        .get_or_init(|| WasmExecutor::new(WasmRuntime::new(shared_cache(), 4).expect("runtime")))
}

/// The precompiled cache the tests share (the pool's size does not change compiled code, so
/// runtimes of other sizes find their components there too).
fn shared_cache() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("kiln-wasm-cache")
}

async fn run(task: &StagedTask) -> ExecOutcome {
    executor()
        .run_staged(task)
        .await
        .expect("the executor runs the step")
}

fn failure(outcome: &ExecOutcome) -> (&str, &str, Option<i32>) {
    match outcome {
        ExecOutcome::Failed {
            message,
            exit_code,
            kind,
            ..
        } => (kind.as_str(), message, *exit_code),
        other => panic!("expected a failure, got {other:?}"),
    }
}

fn details(outcome: &ExecOutcome) -> &BTreeMap<String, serde_json::Value> {
    match outcome {
        ExecOutcome::Succeeded { details, .. } => details,
        other => panic!("expected success, got {other:?}"),
    }
}

#[tokio::test]
async fn copies_input_to_output_and_logs_stdout_and_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let params = BTreeMap::from([
        ("b".to_owned(), Value::Float(0.5)),
        ("a".to_owned(), Value::String("x y".into())),
        (
            "lrs".to_owned(),
            Value::List(vec![Value::Float(0.1), Value::Int(1)]),
        ),
    ]);
    let t = task(
        dir.path(),
        "copy",
        &guest("copy"),
        TaskSpec {
            inputs: vec![("src", b"hello".to_vec())],
            outputs: vec!["dst", "args"],
            params,
            ..Default::default()
        },
    );
    let outcome = run(&t).await;
    let details = details(&outcome);
    assert_eq!(std::fs::read(&t.outputs["dst"]).unwrap(), b"hello");
    assert_eq!(
        std::fs::read_to_string(&t.outputs["args"]).unwrap(),
        "copy\n--in\nsrc=/in/src\n--out\nargs=/out/args\n--out\ndst=/out/dst\n\
         --param\na=x y\n--param\nb=0.5\n--param\nlrs=0.1,1"
    );
    let log = std::fs::read_to_string(&t.log).unwrap();
    assert!(log.contains("copied 5 bytes\n"), "{log}");
    assert!(log.contains("a line on stderr\n"), "{log}");
    assert!(details["fuel_used"].as_u64().unwrap() > 0);
    assert_eq!(details["seed"].as_str().unwrap().len(), 64);
    assert_eq!(
        details["clock_wall_start_ns"],
        serde_json::json!(kiln_wasm::DEFAULT_WALL_START_NS)
    );
    assert!(
        details["component"]
            .as_str()
            .unwrap()
            .starts_with("blake3:")
    );
}

#[tokio::test]
async fn a_program_gets_its_own_args_env_and_streams() {
    let dir = tempfile::tempdir().unwrap();
    let command = kiln_plan::CommandLine {
        args: Some(
            [
                "--size",
                "{{inputs.data}}",
                "--touch",
                "{{outputs.made}}",
                "--say",
                "to the log",
                "-p={{outputs.printed}}",
            ]
            .map(String::from)
            .to_vec(),
        ),
        env: BTreeMap::from([
            ("LC_ALL".to_owned(), "C".to_owned()),
            ("DATA".to_owned(), "{{inputs.data}}".to_owned()),
        ]),
        stdin: Some("data".into()),
        stdout: Some("printed".into()),
    };
    let t = task(
        dir.path(),
        "argv",
        &guest("argv"),
        TaskSpec {
            inputs: vec![("data", b"some words\n".to_vec())],
            outputs: vec!["made", "printed"],
            // Params reach a program with its own args only through them.
            params: BTreeMap::from([("ignored".to_owned(), Value::Int(1))]),
            command,
            ..Default::default()
        },
    );
    let outcome = run(&t).await;
    assert!(
        matches!(outcome, ExecOutcome::Succeeded { .. }),
        "{outcome:?}"
    );
    // The host's environment (HOME, PATH, ...) is not there: only what the step declares.
    assert_eq!(
        std::fs::read_to_string(&t.outputs["printed"]).unwrap(),
        "argv0: argv\n\
         arg: --size\nsize of /in/data: 11\n\
         arg: --touch\n\
         arg: --say\n\
         arg: -p=/out/printed\n\
         env: DATA=/in/data\nenv: LC_ALL=C\n\
         stdin: SOME WORDS\n"
    );
    assert_eq!(std::fs::read(&t.outputs["made"]).unwrap(), b"touched\n");
    // stdout is the output, so the log has only stderr.
    let log = std::fs::read_to_string(&t.log).unwrap();
    assert!(log.contains("to the log\n"), "{log}");
    assert!(!log.contains("argv0"), "{log}");
}

#[tokio::test]
async fn without_stdin_a_program_reads_nothing_and_stdout_is_logged() {
    let dir = tempfile::tempdir().unwrap();
    let t = task(
        dir.path(),
        "argv",
        &guest("argv"),
        TaskSpec {
            outputs: vec!["made"],
            command: kiln_plan::CommandLine {
                args: Some(vec!["--touch".into(), "{{outputs.made}}".into()]),
                ..Default::default()
            },
            ..Default::default()
        },
    );
    let outcome = run(&t).await;
    assert!(
        matches!(outcome, ExecOutcome::Succeeded { .. }),
        "{outcome:?}"
    );
    let log = std::fs::read_to_string(&t.log).unwrap();
    assert!(log.contains("argv0: argv\narg: --touch\nstdin: "), "{log}");
    assert_eq!(std::fs::read(&t.outputs["made"]).unwrap(), b"touched\n");
}

#[tokio::test]
async fn a_step_world_component_refuses_args_and_streams() {
    let dir = tempfile::tempdir().unwrap();
    let t = task(
        dir.path(),
        "pick",
        &digits_component("pick"),
        TaskSpec {
            inputs: vec![("candidates", b"{}".to_vec())],
            outputs: vec!["best"],
            command: kiln_plan::CommandLine {
                stdout: Some("best".into()),
                ..Default::default()
            },
            ..Default::default()
        },
    );
    let e = executor().run_staged(&t).await.unwrap_err().to_string();
    assert!(
        e.contains("`stdout` is for command components (`wasi:cli/run`), and this one is of the kiln step world"),
        "{e}"
    );
}

#[tokio::test]
async fn a_nonzero_exit_is_an_exit_failure_with_the_end_of_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let t = task(dir.path(), "fail", &guest("exit3"), TaskSpec::default());
    let outcome = run(&t).await;
    let (kind, message, code) = failure(&outcome);
    assert_eq!(kind, "exit");
    assert_eq!(code, Some(3), "{message}");
    assert!(message.contains("exited with code 3"), "{message}");
    assert!(
        message.contains("error: the data is bad (row 7)"),
        "{message}"
    );
    let log = std::fs::read_to_string(&t.log).unwrap();
    assert!(log.contains("about to fail"), "{log}");
}

#[tokio::test]
async fn an_infinite_loop_runs_out_of_fuel() {
    let dir = tempfile::tempdir().unwrap();
    let t = task(
        dir.path(),
        "spin",
        &guest("spin"),
        TaskSpec {
            fuel: Some(20_000_000),
            ..Default::default()
        },
    );
    let outcome = run(&t).await;
    let (kind, message, _) = failure(&outcome);
    assert_eq!(kind, "out-of-fuel");
    assert_eq!(message, "the step used all of its fuel (20000000)");
}

#[tokio::test]
async fn dropping_the_future_stops_an_infinite_loop() {
    let dir = tempfile::tempdir().unwrap();
    let t = task(dir.path(), "spin", &guest("spin"), TaskSpec::default());
    // Load first, so the timeout measures the run and not a first compile.
    executor()
        .runtime()
        .load(t.component.as_ref().unwrap())
        .await
        .unwrap();
    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_millis(300), executor().run_staged(&t)).await;
    assert!(result.is_err(), "the loop ended by itself: {result:?}");
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
    // The instance slot it held is free again: a run after it works.
    let dir2 = tempfile::tempdir().unwrap();
    let t2 = task(dir2.path(), "noop", &guest("noop"), TaskSpec::default());
    details(&run(&t2).await);
}

#[tokio::test]
async fn dropping_the_future_frees_the_slot_of_a_single_slot_runtime() {
    let exec = WasmExecutor::new(WasmRuntime::new(shared_cache(), 1).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let t = task(dir.path(), "spin", &guest("spin"), TaskSpec::default());
    for _ in 0..3 {
        let result = tokio::time::timeout(Duration::from_millis(100), exec.run_staged(&t)).await;
        assert!(result.is_err());
    }
    let t2 = task(dir.path(), "noop", &guest("noop"), TaskSpec::default());
    let outcome = tokio::time::timeout(Duration::from_secs(30), exec.run_staged(&t2))
        .await
        .expect("a slot is free")
        .unwrap();
    details(&outcome);
}

#[tokio::test]
async fn a_memory_bomb_hits_the_memory_limit() {
    let dir = tempfile::tempdir().unwrap();
    let t = task(
        dir.path(),
        "bomb",
        &guest("membomb"),
        TaskSpec {
            memory_bytes: Some(64 << 20),
            ..Default::default()
        },
    );
    let outcome = run(&t).await;
    let (kind, message, _) = failure(&outcome);
    assert_eq!(kind, "memory", "{message}");
    assert!(
        message.starts_with("the step needs more than its memory limit of 64 MiB"),
        "{message}"
    );
    let log = std::fs::read_to_string(&t.log).unwrap();
    assert!(log.contains("holding 48 MiB"), "{log}");
    assert!(!log.contains("holding 64 MiB"), "{log}");
}

#[tokio::test]
async fn an_output_flood_hits_the_log_limit() {
    let dir = tempfile::tempdir().unwrap();
    let t = task(dir.path(), "flood", &guest("flood"), TaskSpec::default());
    let outcome = run(&t).await;
    let (kind, message, _) = failure(&outcome);
    assert_eq!(kind, "log-limit", "{message}");
    assert!(message.contains("more than 16 MiB"), "{message}");
    let log = std::fs::metadata(&t.log).unwrap().len();
    assert!(
        log > 16 << 20 && log < (16 << 20) + 1024,
        "log is {log} bytes"
    );
}

#[tokio::test]
async fn the_sandbox_shows_only_the_inputs_and_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let t = task(
        dir.path(),
        "probe",
        &guest("probe"),
        TaskSpec {
            inputs: vec![("data", b"secret-free".to_vec())],
            outputs: vec!["report"],
            ..Default::default()
        },
    );
    details(&run(&t).await);
    let report = std::fs::read_to_string(&t.outputs["report"]).unwrap();
    let line = |name: &str| {
        report
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no `{name}` in:\n{report}"))
            .to_owned()
    };
    assert_eq!(line("read-input"), "ok \"secret-free\"");
    for denied in [
        "read-etc-passwd",
        "read-dotdot",
        "read-dotdot-out",
        "write-in",
        "overwrite-input",
        "write-root",
        "hard-link-in-to-out",
        "symlink-out-to-host",
        "tcp-connect",
        "tcp-bind",
        "udp-bind",
        "resolve",
    ] {
        assert!(
            line(denied).starts_with("denied"),
            "{denied}: {}\n{report}",
            line(denied)
        );
    }
    assert_eq!(line("env"), "ok []");
    assert_eq!(line("cwd"), "ok \"/\"");
    assert_eq!(line("stdin"), "ok (0, \"\")");
    // The input is untouched on the host.
    assert_eq!(std::fs::read(&t.inputs["data"]).unwrap(), b"secret-free");
    assert!(!t.workdir.join("in/new-file").exists());
}

#[tokio::test]
async fn a_symbolic_link_left_in_the_outputs_fails_the_step() {
    // wasmtime-wasi lets a guest create a relative link pointing out of /out (it cannot follow
    // it); the engine storing the outputs would, so the executor refuses them.
    let dir = tempfile::tempdir().unwrap();
    let t = task(
        dir.path(),
        "probe",
        &guest("probe"),
        TaskSpec {
            inputs: vec![("data", b"x".to_vec())],
            outputs: vec!["report"],
            params: BTreeMap::from([("keep_links".to_owned(), Value::Int(1))]),
            ..Default::default()
        },
    );
    let outcome = run(&t).await;
    let (kind, message, _) = failure(&outcome);
    assert_eq!(kind, "sandbox");
    assert_eq!(
        message,
        "the step left a symbolic link at `/out/inside`; outputs must be plain files and \
         folders (a link could make kiln read outside the sandbox when it stores them)"
    );
}

#[tokio::test]
async fn the_same_guest_twice_writes_the_same_bytes() {
    let mut seen = Vec::new();
    for _ in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        let t = task(
            dir.path(),
            "entropy",
            &guest("entropy"),
            TaskSpec {
                outputs: vec!["seen"],
                params: BTreeMap::from([("k".to_owned(), Value::Int(1))]),
                ..Default::default()
            },
        );
        let outcome = run(&t).await;
        let details = details(&outcome).clone();
        seen.push((
            std::fs::read_to_string(&t.outputs["seen"]).unwrap(),
            details,
        ));
    }
    assert_eq!(seen[0].0, seen[1].0);
    assert_eq!(seen[0].1, seen[1].1, "the run facts are deterministic too");
    let text = &seen[0].0;
    // The wall clock is the virtual one, not the host's.
    let wall: Vec<u64> = text
        .lines()
        .find_map(|l| l.strip_prefix("wall "))
        .unwrap()
        .split(' ')
        .map(|n| n.parse().unwrap())
        .collect();
    assert!(
        wall[0] >= kiln_wasm::DEFAULT_WALL_START_NS
            && wall[0] < kiln_wasm::DEFAULT_WALL_START_NS + 1_000_000,
        "{text}"
    );
    assert_eq!(wall[1] - wall[0], kiln_wasm::CLOCK_TICK_NS, "{text}");

    // Other params, other seed: the random-seeded hashes change.
    let dir = tempfile::tempdir().unwrap();
    let t = task(
        dir.path(),
        "entropy",
        &guest("entropy"),
        TaskSpec {
            outputs: vec!["seen"],
            params: BTreeMap::from([("k".to_owned(), Value::Int(2))]),
            ..Default::default()
        },
    );
    run(&t).await;
    let other = std::fs::read_to_string(&t.outputs["seen"]).unwrap();
    let hashes = |s: &str| {
        s.lines()
            .filter(|l| l.starts_with("hash "))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_ne!(hashes(text), hashes(&other));
}

#[tokio::test]
async fn the_digits_validate_step_checks_the_ingested_table() {
    let csv = std::fs::read(support::repo_dir().join("examples/digits/data/digits.csv")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ingest = task(
        &dir.path().join("ingest"),
        "ingest",
        &digits_step("ingest"),
        TaskSpec {
            inputs: vec![("raw", csv)],
            outputs: vec!["table"],
            ..Default::default()
        },
    );
    details(&run(&ingest).await);
    let table = std::fs::read(&ingest.outputs["table"]).unwrap();

    let validate = task(
        &dir.path().join("validate"),
        "validate",
        &digits_step("validate"),
        TaskSpec {
            inputs: vec![("table", table)],
            outputs: vec!["report"],
            params: BTreeMap::from([("min_rows".to_owned(), Value::Int(1000))]),
            ..Default::default()
        },
    );
    details(&run(&validate).await);
    assert_eq!(
        std::fs::read_to_string(&validate.outputs["report"]).unwrap(),
        "{\"ok\":true,\"rows\":1797,\"columns\":65,\"classes\":{\"0\":178,\"1\":182,\
         \"2\":177,\"3\":183,\"4\":181,\"5\":182,\"6\":181,\"7\":179,\"8\":174,\"9\":180}}\n"
    );
    let log = std::fs::read_to_string(&validate.log).unwrap();
    assert!(log.contains("validate: ok, 1797 rows"), "{log}");

    // Too few rows: the step's own failure (exit code 1 under wasm) with its message.
    let strict = task(
        &dir.path().join("strict"),
        "validate",
        &digits_step("validate"),
        TaskSpec {
            inputs: vec![("table", std::fs::read(&ingest.outputs["table"]).unwrap())],
            outputs: vec!["report"],
            params: BTreeMap::from([("min_rows".to_owned(), Value::Int(5000))]),
            ..Default::default()
        },
    );
    let outcome = run(&strict).await;
    let (kind, message, code) = failure(&outcome);
    assert_eq!((kind, code), ("exit", Some(1)), "{message}");
    assert!(
        message.contains("only 1797 rows, expected at least 5000 (param min_rows)"),
        "{message}"
    );
    assert!(!strict.outputs["report"].exists());
}

#[tokio::test]
async fn components_are_compiled_once_then_loaded_from_the_cache() {
    let cache = tempfile::tempdir().unwrap();
    let first = WasmRuntime::new(cache.path(), 1).unwrap();
    // The smallest guest: compiling is slow in a debug build of wasmtime.
    let loaded = first.load(&guest("noop")).await.unwrap();
    assert_eq!(loaded.source(), LoadSource::Compiled);
    let again = first.load(&guest("noop")).await.unwrap();
    assert!(std::sync::Arc::ptr_eq(&loaded, &again), "kept in memory");
    let file = first
        .cache_dir()
        .join(format!("{}.cwasm", loaded.digest().to_hex()));
    assert!(file.is_file(), "{}", file.display());
    assert!(first.cache_dir().starts_with(cache.path()));
    drop(first);

    let second = WasmRuntime::new(cache.path(), 1).unwrap();
    let cached = second.load(&guest("noop")).await.unwrap();
    assert_eq!(cached.source(), LoadSource::Cached);
    assert_eq!(cached.digest(), loaded.digest());
}

#[tokio::test]
async fn a_file_that_is_not_a_component_is_an_executor_error() {
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("bogus.wasm");
    std::fs::write(&bogus, b"\0asm not really").unwrap();
    let t = task(dir.path(), "bogus", &bogus, TaskSpec::default());
    let err = executor().run_staged(&t).await.unwrap_err();
    assert!(
        err.message.contains("is not a valid WebAssembly component"),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn more_runs_than_slots_wait_for_a_slot() {
    let exec = WasmExecutor::new(
        WasmRuntime::with_options(shared_cache(), RuntimeOptions::new().concurrency(2)).unwrap(),
    );
    let dirs: Vec<_> = (0..6).map(|_| tempfile::tempdir().unwrap()).collect();
    let tasks: Vec<_> = dirs
        .iter()
        .map(|d| {
            task(
                d.path(),
                "copy",
                &guest("copy"),
                TaskSpec {
                    inputs: vec![("src", b"abc".to_vec())],
                    outputs: vec!["dst"],
                    ..Default::default()
                },
            )
        })
        .collect();
    let outcomes = futures_join_all(tasks.iter().map(|t| exec.run_staged(t))).await;
    for (t, outcome) in tasks.iter().zip(outcomes) {
        details(&outcome.unwrap());
        assert_eq!(std::fs::read(&t.outputs["dst"]).unwrap(), b"abc");
    }
}

#[tokio::test]
async fn preflight_names_limits_the_runner_cannot_give() {
    let dir = tempfile::tempdir().unwrap();
    let big = task(
        dir.path(),
        "big",
        &guest("noop"),
        TaskSpec {
            memory_bytes: Some(8 << 30),
            ..Default::default()
        },
    );
    let ok = task(dir.path(), "ok", &guest("noop"), TaskSpec::default());
    let problems = executor()
        .preflight(&[&big.step, &ok.step])
        .await
        .unwrap_err();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].starts_with("step `big`: memory limit 8589934592 bytes"));
}

/// `join_all` without a futures dependency: spawn nothing, poll all in one task.
async fn futures_join_all<F: std::future::Future>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output> {
    let mut pinned: Vec<_> = futures.map(Box::pin).collect();
    let mut results: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in pinned.iter_mut().zip(results.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    results.into_iter().map(Option::unwrap).collect()
}

/// With `own_threads`, guests run on the runtime's own threads: a step runs as it does on
/// the caller's, and dropping the attempt still stops a guest that never yields by itself.
#[tokio::test]
async fn guests_on_the_runtimes_own_threads_run_and_stop() {
    let runtime = WasmRuntime::with_options(
        shared_cache(),
        kiln_wasm::RuntimeOptions::new()
            .concurrency(2)
            .own_threads(true),
    )
    .expect("runtime");
    let exec = WasmExecutor::new(runtime);
    let dir = tempfile::tempdir().unwrap();
    let ok = task(dir.path(), "noop", &guest("noop"), TaskSpec::default());
    let outcome = exec.run_staged(&ok).await.unwrap();
    assert!(
        matches!(outcome, ExecOutcome::Succeeded { .. }),
        "{outcome:?}"
    );

    let dir = tempfile::tempdir().unwrap();
    let spin = task(dir.path(), "spin", &guest("spin"), TaskSpec::default());
    exec.runtime()
        .load(spin.component.as_ref().unwrap())
        .await
        .unwrap();
    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_millis(300), exec.run_staged(&spin)).await;
    assert!(result.is_err(), "the loop ended by itself: {result:?}");
    // The guest's slot is free again once it has stopped: another run gets it.
    let dir = tempfile::tempdir().unwrap();
    let again = task(dir.path(), "noop", &guest("noop"), TaskSpec::default());
    let outcome = tokio::time::timeout(Duration::from_secs(10), exec.run_staged(&again))
        .await
        .expect("a slot came free")
        .unwrap();
    assert!(
        matches!(outcome, ExecOutcome::Succeeded { .. }),
        "{outcome:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}
