//! The registry end to end: a real `kiln serve` on loopback, `kiln push`, `kiln components`,
//! and `kiln run --server` of a pipeline that names its components `name@version` and
//! `name@tag` — resolved, downloaded, checked and pinned per run.

mod support;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use support::{kiln, repo, text};

/// A `kiln serve` child on a free port of 127.0.0.1.
struct Served {
    child: Child,
    url: String,
    stderr: std::thread::JoinHandle<String>,
}

impl Served {
    fn start(state: &Path, env: &[(&str, &str)]) -> Served {
        Self::start_with(state, env, &[])
    }

    fn start_with(state: &Path, env: &[(&str, &str)], args: &[&str]) -> Served {
        let mut child = kiln()
            .args(["serve", "--listen", "127.0.0.1:0", "--state"])
            .arg(state)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kiln serve starts");
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut seen = String::new();
        let url = loop {
            let mut line = String::new();
            if stderr.read_line(&mut line).unwrap() == 0 {
                panic!("kiln serve ended before it listened:\n{seen}");
            }
            seen.push_str(&line);
            if let Some(url) = line.trim().strip_prefix("kiln server on ") {
                break url.to_owned();
            }
        };
        // The rest of what it prints, kept for the end (and so that the pipe never fills).
        let stderr = std::thread::spawn(move || {
            let mut rest = String::new();
            let _ = stderr.read_to_string(&mut rest);
            seen + &rest
        });
        Served { child, url, stderr }
    }

    /// SIGTERM: it finishes what it serves and exits 0; what it printed.
    fn stop(self) -> String {
        let (status, printed) = self.signal("TERM");
        assert!(status.success(), "kiln serve exited {status}:\n{printed}");
        printed
    }

    /// SIGKILL, in the middle of whatever it does; what it printed.
    fn kill(self) -> String {
        self.signal("KILL").1
    }

    fn signal(mut self, signal: &str) -> (std::process::ExitStatus, String) {
        send(&self.child, signal);
        let status = self.child.wait().unwrap();
        let printed = std::mem::replace(&mut self.stderr, std::thread::spawn(String::new))
            .join()
            .unwrap();
        (status, printed)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn send(child: &Child, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// The digits example's `ingest` and `validate` steps, built as WASI commands.
fn digits_commands() -> PathBuf {
    kiln_test_support::build_wasm(
        &repo().join("examples/digits/steps"),
        &["-p", "ingest", "-p", "validate"],
    )
}

/// `kiln ARGS` in `dir`: (success, stdout, stderr).
fn kiln_in(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let output = kiln()
        .args(args)
        .current_dir(dir)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        output.status.success(),
        text(&output.stdout),
        text(&output.stderr),
    )
}

/// The component digests the last run's record names (in each step's cache key), by step.
fn ran_components(state: &Path) -> Vec<(String, String)> {
    let runs = state.join("runs");
    let mut ids: Vec<_> = std::fs::read_dir(&runs)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().into_string().unwrap())
        .filter(|n| !n.starts_with('.'))
        .collect();
    ids.sort();
    let record =
        std::fs::read_to_string(runs.join(ids.last().unwrap()).join("record.jsonl")).unwrap();
    let mut found = Vec::new();
    for line in record.lines() {
        let event: serde_json::Value = serde_json::from_str(line).unwrap();
        if let (Some(step), Some(component)) = (
            event.get("step").and_then(|s| s.as_str()),
            event
                .get("key")
                .and_then(|k| k.get("component"))
                .and_then(|c| c.as_str()),
        ) {
            found.push((step.to_owned(), component.to_owned()));
        }
    }
    found.sort();
    found.dedup();
    found
}

const PIPELINE: &str = "apiVersion: kiln/v1
name: registry-e2e
steps:
  ingest:
    wasm: ingest@1.0.0
    inputs: {raw: ./digits.csv}
    outputs: [table]
  validate:
    wasm: validate@stable
    inputs: {table: ingest.table}
    with: {min_rows: 100}
    outputs: [report]
";

#[test]
fn components_pushed_to_a_server_run_by_name_and_tag() {
    let built = digits_commands();
    let ingest = built.join("ingest.wasm");
    let validate = built.join("validate.wasm");
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("pipeline.yaml"), PIPELINE).unwrap();
    std::fs::copy(
        repo().join("examples/digits/data/digits.csv"),
        work.join("digits.csv"),
    )
    .unwrap();
    // The same validate with one more custom section: other bytes, the same program.
    let mut bytes = std::fs::read(&validate).unwrap();
    bytes.extend_from_slice(&[0x00, 0x07, 0x04]);
    bytes.extend_from_slice(b"noteV2");
    let validate_v2 = dir.path().join("validate-v2.wasm");
    std::fs::write(&validate_v2, &bytes).unwrap();

    let server_state = dir.path().join("server");
    let served = Served::start(&server_state, &[]);
    let server = served.url.clone();
    let with_server = [("KILN_SERVER", server.as_str())];
    // A run here, with the components from the server's registry.
    let with_registry = [("KILN_REGISTRY", server.as_str())];
    let run = |state: &str| {
        kiln_in(
            &work,
            &["run", "pipeline.yaml", "--state", state, "--output", "json"],
            &with_registry,
        )
    };

    // Without a server, the references cannot be resolved, and the message says what to do.
    let (ok, _, stderr) = kiln_in(&work, &["run", "pipeline.yaml", "--state", "local"], &[]);
    assert!(!ok);
    assert!(stderr.contains("kiln run --registry URL"), "{stderr}");
    // With it, before anything is pushed: not found.
    let (ok, _, stderr) = run("local");
    assert!(!ok);
    assert!(
        stderr.contains("the registry has no component `ingest@1.0.0`"),
        "{stderr}"
    );

    let push = |file: &Path, reference: &str, extra: &[&str]| {
        let mut args = vec!["push", file.to_str().unwrap(), reference];
        args.extend_from_slice(extra);
        kiln_in(&work, &args, &with_server)
    };
    let (ok, stdout, stderr) = push(&ingest, "ingest@1.0.0", &[]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("ingest@1.0.0 published: blake3:"),
        "{stdout}"
    );
    let (ok, stdout, stderr) = push(&validate, "validate@1.0.0", &["--tag", "stable"]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("validate@stable now names 1.0.0"),
        "{stdout}"
    );
    let v1 = kiln_cas::Digest::of_file(&validate).unwrap().to_string();
    let v2 = kiln_cas::Digest::of_file(&validate_v2).unwrap().to_string();

    // Other bytes under a published version: refused, naming both digests.
    let (ok, _, stderr) = push(&validate_v2, "validate@1.0.0", &[]);
    assert!(!ok);
    assert!(stderr.contains("version-exists"), "{stderr}");
    assert!(stderr.contains(&v1) && stderr.contains(&v2), "{stderr}");
    // Not a component at all: refused too.
    let (ok, _, stderr) = push(&work.join("digits.csv"), "validate@9.0.0", &[]);
    assert!(!ok);
    assert!(stderr.contains("not-wasm"), "{stderr}");

    // The run resolves both, downloads them into its own store and pins the tag.
    let (ok, stdout, stderr) = run("local");
    assert!(ok, "{stderr}\n{stdout}");
    assert!(
        stderr.contains("component validate@stable is 1.0.0"),
        "{stderr}"
    );
    let summary: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        kiln_test_support::step_statuses(&summary),
        ["succeeded", "succeeded"]
    );
    let ran = ran_components(&work.join("local"));
    assert!(
        ran.contains(&("validate".to_owned(), v1.clone())),
        "{ran:?}"
    );

    // The tag moves: the next run pins the new version; ingest is cached, validate is not
    // (its component changed).
    let (ok, stdout, stderr) = push(&validate_v2, "validate@1.1.0", &["--tag", "stable"]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("validate@stable moved from 1.0.0 to 1.1.0"),
        "{stdout}"
    );
    let (ok, stdout, stderr) = run("local");
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("component validate@stable is 1.1.0"),
        "{stderr}"
    );
    let summary: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        kiln_test_support::step_statuses(&summary),
        ["cached", "succeeded"]
    );
    let ran = ran_components(&work.join("local"));
    assert!(
        ran.contains(&("validate".to_owned(), v2.clone())),
        "{ran:?}"
    );

    // What the registry holds.
    let (ok, stdout, _) = kiln_in(&work, &["components"], &with_server);
    assert!(ok);
    assert!(stdout.contains("validate"), "{stdout}");
    assert!(stdout.contains("1.0.0, 1.1.0"), "{stdout}");
    assert!(stdout.contains("stable=1.1.0"), "{stdout}");
    let (ok, stdout, _) = kiln_in(
        &work,
        &["components", "validate", "-o", "json"],
        &with_server,
    );
    assert!(ok);
    let versions: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(versions[0]["digest"], v1);
    assert_eq!(versions[1]["tags"], serde_json::json!(["stable"]));

    // Killed outright and started again on the same state: the registry is all there.
    let printed = served.kill();
    assert!(printed.contains("component version stored"), "{printed}");
    assert!(printed.contains("component compiled"), "{printed}");
    let served = Served::start(&server_state, &[]);
    let with_server = [("KILN_SERVER", served.url.as_str())];
    let (ok, stdout, stderr) = kiln_in(
        &work,
        &["components", "validate", "-o", "json"],
        &with_server,
    );
    assert!(ok, "{stderr}");
    let again: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(again, versions);
    // A new state folder downloads the components again, and the run is the same.
    let (ok, _, stderr) = kiln_in(
        &work,
        &["run", "pipeline.yaml", "--state", "fresh"],
        &[("KILN_REGISTRY", served.url.as_str())],
    );
    assert!(ok, "{stderr}");
    served.stop();
}

#[test]
fn a_pipeline_publishes_what_it_builds_under_the_names_it_gives() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(&dir.path().join("server"), &[]);
    let with_server = [("KILN_SERVER", served.url.as_str())];
    let pipeline = repo().join("examples/digits/pipeline.yaml");
    let state = dir.path().join("state");
    let args = [
        "push",
        pipeline.to_str().unwrap(),
        "--state",
        state.to_str().unwrap(),
        "--tag",
        "stable",
    ];
    let (ok, stdout, stderr) = kiln_in(dir.path(), &args, &with_server);
    assert!(ok, "{stderr}");
    for name in ["digits-ingest", "digits-validate"] {
        assert!(
            stdout.contains(&format!("{name}@1.0.0 published: blake3:")),
            "{stdout}"
        );
        assert!(
            stdout.contains(&format!("{name}@stable now names 1.0.0")),
            "{stdout}"
        );
    }
    // Again: the same bytes, nothing new.
    let (ok, stdout, stderr) = kiln_in(dir.path(), &args, &with_server);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("digits-validate@1.0.0 unchanged"),
        "{stdout}"
    );
    let (ok, stdout, _) = kiln_in(dir.path(), &["components"], &with_server);
    assert!(ok);
    assert!(
        stdout.contains("digits-ingest") && stdout.contains("digits-validate"),
        "{stdout}"
    );
    // A pipeline with nothing to publish says what to add.
    let plain = dir.path().join("plain.yaml");
    std::fs::write(&plain, "apiVersion: kiln/v1\nname: plain\nsteps:\n  a:\n    container: {image: busybox, command: [true]}\n").unwrap();
    let (ok, _, stderr) = kiln_in(dir.path(), &["push", plain.to_str().unwrap()], &with_server);
    assert!(!ok);
    assert!(stderr.contains("add `publish: NAME@VERSION`"), "{stderr}");
    served.stop();
}

#[test]
fn tokens_decide_who_may_push_and_without_them_only_loopback() {
    let built = digits_commands();
    let dir = tempfile::tempdir().unwrap();
    let tokens = "read read-token-0123456789 reader\nwrite write-token-0123456789 ci\n";
    let served = Served::start_with(
        &dir.path().join("server"),
        &[("KILN_SERVER_TOKENS", tokens)],
        &["--log-format", "json"],
    );
    let push = |token: Option<&str>| {
        let mut env = vec![("KILN_SERVER", served.url.as_str())];
        if let Some(token) = token {
            env.push(("KILN_TOKEN", token));
        }
        let file = built.join("ingest.wasm");
        kiln_in(
            dir.path(),
            &["push", file.to_str().unwrap(), "ingest@1.0.0"],
            &env,
        )
    };
    let (ok, _, stderr) = push(None);
    assert!(!ok);
    assert!(stderr.contains("unauthorized"), "{stderr}");
    let (ok, _, stderr) = push(Some("read-token-0123456789"));
    assert!(!ok);
    assert!(stderr.contains("forbidden"), "{stderr}");
    let (ok, _, stderr) = push(Some("write-token-0123456789"));
    assert!(ok, "{stderr}");
    let printed = served.stop();
    assert!(printed.contains("2 token(s) accepted"), "{printed}");
    // Its logs are JSON lines: the start, and the version stored, by whom.
    let logs: Vec<serde_json::Value> = printed
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    assert!(
        logs.iter()
            .any(|l| l["fields"]["message"] == "kiln server started" && l["fields"]["tokens"] == 2),
        "{printed}"
    );
    assert!(
        logs.iter()
            .any(|l| l["fields"]["message"] == "component version stored"),
        "{printed}"
    );

    // No tokens and an address beyond loopback: refused before it listens.
    let (ok, _, stderr) = kiln_in(
        dir.path(),
        &["serve", "--listen", "0.0.0.0:0", "--state", "elsewhere"],
        &[("KILN_SERVER_TOKENS", "")],
    );
    assert!(!ok);
    assert!(stderr.contains("without tokens"), "{stderr}");
}

/// Output digests by step id, from `kiln run --output json`.
fn outputs_by_step(summary: &serde_json::Value) -> Vec<(String, serde_json::Value)> {
    summary["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["id"].as_str().unwrap().to_owned(), s["outputs"].clone()))
        .collect()
}

#[test]
fn the_digits_example_runs_on_a_server_as_it_runs_here() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = repo().join("examples/digits/pipeline.yaml");
    let pipeline = pipeline.to_str().unwrap();
    let state = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();

    // Here first.
    let local_state = state("local");
    let (ok, stdout, stderr) = kiln_in(
        dir.path(),
        &["run", pipeline, "--state", &local_state, "--output", "json"],
        &[],
    );
    assert!(ok, "{stderr}");
    let local: serde_json::Value = serde_json::from_str(&stdout).unwrap();

    // Then on a server that runs container steps as host processes (the example's training
    // step is a Python script).
    let served = Served::start_with(
        &dir.path().join("server"),
        &[],
        &["--containers", "process", "--allow-host-processes"],
    );
    let client_state = state("client");
    let remote_run = || {
        kiln_in(
            dir.path(),
            &[
                "run",
                pipeline,
                "--state",
                &client_state,
                "--output",
                "json",
            ],
            &[("KILN_SERVER", served.url.as_str())],
        )
    };
    let (ok, stdout, stderr) = remote_run();
    assert!(ok, "{stderr}\n{stdout}");
    assert!(
        stderr.contains("were missing and were uploaded"),
        "{stderr}"
    );
    assert!(stderr.contains("submitted to"), "{stderr}");
    let remote: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(remote["status"], "succeeded");
    assert_eq!(outputs_by_step(&remote), outputs_by_step(&local));
    assert_ne!(remote["run_id"], local["run_id"]);

    // Again: nothing to upload, every step from the server's cache.
    let (ok, stdout, stderr) = remote_run();
    assert!(ok, "{stderr}");
    assert!(stderr.contains(": 0 of the"), "{stderr}");
    let again: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let statuses = kiln_test_support::step_statuses(&again);
    assert!(statuses.iter().all(|s| s == "cached"), "{statuses:?}");
    assert_eq!(outputs_by_step(&again), outputs_by_step(&local));
    served.stop();
}

/// `GET path` on a server, with a plain HTTP/1.1 request: (status, body).
fn http_get(url: &str, path: &str) -> (u16, String) {
    use std::io::Write;
    let addr = url.strip_prefix("http://").unwrap();
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn a_server_killed_mid_run_reports_the_run_interrupted_and_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("slow.yaml"),
        "apiVersion: kiln/v1\nname: slow\nsteps:\n  nap:\n    container: {image: none, command: [sleep, \"20\"]}\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("quick.yaml"),
        "apiVersion: kiln/v1\nname: quick\nsteps:\n  hello:\n    container: {image: none, command: [echo, hello]}\n",
    )
    .unwrap();
    let server_state = dir.path().join("server");
    let args = ["--containers", "process", "--allow-host-processes"];
    let served = Served::start_with(&server_state, &[], &args);
    let mut client = kiln()
        .args(["run", "slow.yaml", "--server", &served.url])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(client.stderr.take().unwrap()).lines();
    let mut run_id = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("run ") {
            run_id = rest.split_whitespace().next().map(str::to_owned);
        }
        if line.contains("started    nap") {
            break;
        }
    }
    let run_id = run_id.expect("the run was submitted");
    let (status, body) = http_get(&served.url, &format!("/v1/runs/{run_id}"));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""status":"running""#), "{body}");

    // SIGKILL, mid-step; the client loses its stream.
    served.kill();
    let _ = client.kill();
    let _ = client.wait();

    let served = Served::start_with(&server_state, &[], &args);
    let (status, body) = http_get(&served.url, &format!("/v1/runs/{run_id}"));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""status":"interrupted""#), "{body}");
    let (status, body) = http_get(&served.url, &format!("/v1/runs/{run_id}/events"));
    assert_eq!(status, 200);
    assert!(
        body.contains("event: end") && body.contains("interrupted"),
        "{body}"
    );
    let (status, body) = http_get(&served.url, "/readyz");
    assert_eq!(status, 200, "{body}");
    // And the next run goes through.
    let (ok, stdout, stderr) = kiln_in(
        dir.path(),
        &["run", "quick.yaml", "--output", "json"],
        &[("KILN_SERVER", served.url.as_str())],
    );
    assert!(ok, "{stderr}");
    let summary: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(summary["status"], "succeeded");
    served.stop();
}
