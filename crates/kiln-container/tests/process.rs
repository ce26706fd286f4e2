//! The process backend, for real: host processes, their logs, environments and deaths.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{container_step, failure, plan_mut, task, wasm_step};
use kiln_container::ProcessExecutor;
use kiln_engine::{ExecOutcome, Executor};

const IMAGE: &str = "python:3.11-slim";

#[tokio::test]
async fn writes_an_output_from_an_input() {
    let dir = tempfile::tempdir().unwrap();
    let step = container_step(
        "upper",
        IMAGE,
        &["sh", "-c", r#"tr a-z A-Z < "$1" > "$2"; echo converted"#],
        &["sh", "{{inputs.text}}", "{{outputs.upper}}"],
    );
    let task = task(dir.path(), step, &[("text", "hello kiln\n")], &["upper"]);

    let outcome = ProcessExecutor::new().run_staged(&task).await.unwrap();

    assert_eq!(outcome, ExecOutcome::success());
    assert_eq!(
        std::fs::read_to_string(&task.outputs["upper"]).unwrap(),
        "HELLO KILN\n"
    );
    let log = std::fs::read_to_string(&task.log).unwrap();
    let first = log.lines().next().unwrap();
    assert!(
        first.starts_with("process backend: running `sh -c ")
            && first.ends_with("on the host; image `python:3.11-slim` is not used"),
        "{first}"
    );
    assert!(
        first.contains(&task.inputs["text"].display().to_string()),
        "{first}"
    );
    assert!(log.ends_with("converted\n"), "{log}");
}

#[tokio::test]
async fn the_environment_is_only_the_declared_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut step = container_step("env", IMAGE, &["env"], &[]);
    plan_mut(&mut step).env = [
        ("GREETING".to_owned(), "hello world".to_owned()),
        ("DATA".to_owned(), "{{inputs.text}}".to_owned()),
    ]
    .into();
    let task = task(dir.path(), step, &[("text", "x")], &[]);
    // cargo sets this for the test process; the step must not see it.
    assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());

    let outcome = ProcessExecutor::new().run_staged(&task).await.unwrap();

    assert_eq!(outcome, ExecOutcome::success());
    let log = std::fs::read_to_string(&task.log).unwrap();
    let vars: Vec<(&str, &str)> = log
        .lines()
        .skip(1)
        .map(|line| line.split_once('=').unwrap())
        .collect();
    let names: BTreeSet<&str> = vars.iter().map(|(name, _)| *name).collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "DATA",
            "GREETING",
            "HOME",
            "KILN_ATTEMPT",
            "KILN_RUN_ID",
            "KILN_STEP",
            "LANG",
            "PATH"
        ])
    );
    let var = |name: &str| vars.iter().find(|(n, _)| *n == name).unwrap().1;
    assert_eq!(var("GREETING"), "hello world");
    assert_eq!(var("DATA"), task.inputs["text"].display().to_string());
    assert_eq!(var("HOME"), task.workdir.display().to_string());
    assert_eq!(var("PATH"), std::env::var("PATH").unwrap());
    assert_eq!(var("LANG"), "C.UTF-8");
    assert_eq!(var("KILN_RUN_ID"), task.run_id);
    assert_eq!(var("KILN_STEP"), "env");
    assert_eq!(var("KILN_ATTEMPT"), "1");
}

#[tokio::test]
async fn runs_in_the_workdir() {
    let dir = tempfile::tempdir().unwrap();
    let step = container_step("pwd", IMAGE, &["sh", "-c", "pwd > here"], &[]);
    let task = task(dir.path(), step, &[], &[]);
    assert_eq!(
        ProcessExecutor::new().run_staged(&task).await.unwrap(),
        ExecOutcome::success()
    );
    let here = std::fs::read_to_string(task.workdir.join("here")).unwrap();
    assert_eq!(here.trim(), task.workdir.display().to_string());
}

#[tokio::test]
async fn a_non_zero_exit_is_a_failure_that_quotes_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let script =
        "for i in $(seq 1 20); do echo progress $i; done; echo 'bad input: no rows' >&2; exit 3";
    let step = container_step("fail", IMAGE, &["sh", "-c", script], &[]);
    let task = task(dir.path(), step, &[], &[]);

    let (kind, code, message) = failure(ProcessExecutor::new().run_staged(&task).await.unwrap());

    assert_eq!(kind, "exit");
    assert_eq!(code, Some(3));
    assert_eq!(
        message,
        "`sh` exited with code 3; last lines of the log:\n\
         progress 12\nprogress 13\nprogress 14\nprogress 15\nprogress 16\n\
         progress 17\nprogress 18\nprogress 19\nprogress 20\nbad input: no rows"
    );
    // The log keeps everything.
    let log = std::fs::read_to_string(&task.log).unwrap();
    assert!(log.contains("progress 1\n") && log.contains("bad input: no rows"));
}

#[tokio::test]
async fn a_signal_is_its_own_failure_kind() {
    let dir = tempfile::tempdir().unwrap();
    let step = container_step(
        "killed",
        IMAGE,
        &["sh", "-c", "echo dying; kill -9 $$"],
        &[],
    );
    let task = task(dir.path(), step, &[], &[]);

    let (kind, code, message) = failure(ProcessExecutor::new().run_staged(&task).await.unwrap());

    assert_eq!(kind, "signal");
    assert_eq!(code, None);
    assert_eq!(
        message,
        "`sh` was killed by signal 9 (SIGKILL); last lines of the log:\ndying"
    );
}

#[tokio::test]
async fn a_command_that_cannot_start_is_a_spawn_failure() {
    let dir = tempfile::tempdir().unwrap();
    let step = container_step("missing", IMAGE, &["./no-such-script.sh"], &[]);
    let task = task(dir.path(), step, &[], &[]);

    let (kind, code, message) = failure(ProcessExecutor::new().run_staged(&task).await.unwrap());

    assert_eq!((kind.as_str(), code), ("spawn", None));
    assert!(
        message.starts_with("could not start `./no-such-script.sh`: "),
        "{message}"
    );
}

#[tokio::test]
async fn dropping_the_future_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    // Two background sleeps (grandchildren of kiln) and the shell waiting for them.
    let script = "sleep 100 & echo $! > pids; sleep 100 & echo $! >> pids; echo $$ >> pids; wait";
    let step = container_step("sleepy", IMAGE, &["sh", "-c", script], &[]);
    let task = task(dir.path(), step, &[], &[]);
    let pids_file = task.workdir.join("pids");
    let executor = ProcessExecutor::new();

    let pids: Vec<i32> = tokio::select! {
        outcome = executor.run_staged(&task) => panic!("the step ended: {outcome:?}"),
        pids = async {
            loop {
                let text = std::fs::read_to_string(&pids_file).unwrap_or_default();
                let pids: Vec<i32> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
                if pids.len() == 3 {
                    break pids;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        } => pids,
    };
    // The `run` future has been dropped here.
    let group = pids[2];
    for pid in &pids {
        assert!(dies_soon(*pid), "process {pid} survived the drop");
    }
    assert!(
        live_members(group).is_empty(),
        "process group {group} still has live members: {:?}",
        live_members(group)
    );
}

#[tokio::test]
async fn background_processes_do_not_outlive_a_finished_step() {
    let dir = tempfile::tempdir().unwrap();
    let step = container_step(
        "daemon",
        IMAGE,
        &["sh", "-c", "sleep 100 & echo $! > bg; echo started"],
        &[],
    );
    let task = task(dir.path(), step, &[], &[]);
    let started = Instant::now();

    let outcome = ProcessExecutor::new().run_staged(&task).await.unwrap();

    assert_eq!(outcome, ExecOutcome::success());
    // The background sleep holds the log pipe; the step still ends promptly.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    let bg: i32 = std::fs::read_to_string(task.workdir.join("bg"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(dies_soon(bg), "background process {bg} survived its step");
}

#[tokio::test]
async fn the_log_is_capped_with_a_note() {
    let dir = tempfile::tempdir().unwrap();
    let step = container_step(
        "flood",
        IMAGE,
        &[
            "sh",
            "-c",
            "i=0; while [ $i -lt 500 ]; do echo 0123456789012345678; i=$((i+1)); done; echo tail-line",
        ],
        &[],
    );
    let task = task(dir.path(), step, &[], &[]);

    let outcome = ProcessExecutor::new()
        .with_log_cap(1000)
        .run_staged(&task)
        .await
        .unwrap();

    assert_eq!(outcome, ExecOutcome::success());
    let log = std::fs::read_to_string(&task.log).unwrap();
    let (header, rest) = log.split_once('\n').unwrap();
    assert!(header.starts_with("process backend:"));
    assert_eq!(
        rest,
        format!(
            "{}\n[kiln: the log reached its cap of 1000 bytes; further output is dropped]\n",
            &"0123456789012345678\n".repeat(50)[..1000]
        )
    );
}

#[tokio::test]
async fn preflight_names_every_missing_command() {
    let sh = container_step("ok", IMAGE, &["sh", "-c", "true"], &[]);
    let missing = container_step("train", IMAGE, &["kiln-no-such-python3"], &["train.py"]);
    let missing_too = container_step("eval", IMAGE, &["kiln-no-such-tool"], &[]);
    let no_command = container_step("entry", IMAGE, &[], &["--epochs", "3"]);
    let relative = container_step("script", IMAGE, &["./run.sh"], &[]);
    let wasm = wasm_step("prep");
    let steps = [&sh, &missing, &missing_too, &no_command, &relative, &wasm];

    let problems = ProcessExecutor::new().preflight(&steps).await.unwrap_err();

    assert_eq!(
        problems,
        [
            "step `train`: command `kiln-no-such-python3` is not on PATH; the process backend runs commands on the host (image `python:3.11-slim` is not used)",
            "step `eval`: command `kiln-no-such-tool` is not on PATH; the process backend runs commands on the host (image `python:3.11-slim` is not used)",
            "step `entry`: the process backend needs a `command`, because it runs on the host and cannot use the entrypoint of image `python:3.11-slim`; add `command:` or use `--containers podman`",
        ]
    );
    assert_eq!(
        ProcessExecutor::new()
            .preflight(&[&sh, &relative, &wasm])
            .await,
        Ok(())
    );
}

/// Whether `pid` is gone (or a zombie waiting for its parent) within two seconds.
fn dies_soon(pid: i32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if !alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A process that exists and is not a zombie.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => state(&stat) != Some('Z'),
        Err(_) => false,
    }
}

/// The state letter of a `/proc/<pid>/stat` line (after the parenthesised command name).
fn state(stat: &str) -> Option<char> {
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Live (non-zombie) processes whose process group is `group`.
fn live_members(group: i32) -> Vec<i32> {
    let mut members = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        // Fields after the name: state, ppid, pgrp, ...
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.get(2).and_then(|g| g.parse::<i32>().ok()) == Some(group) && fields[0] != "Z" {
            members.push(pid);
        }
    }
    members
}
