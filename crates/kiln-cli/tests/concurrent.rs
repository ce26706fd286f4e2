//! Two `kiln run` processes started at the same moment on the same state folder: both finish,
//! each has its own readable record, `kiln runs` lists both, and an output that both runs
//! (and two steps of each) produce is stored once.

use std::io::Read as _;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// What `twin-a` and `twin-b` both write, by different commands.
const TWIN: &str = "kiln concurrent twin output 7f3c\n";

/// A few container steps (process backend): a source, a fan-out reading it, a step that
/// collects the fan-out, and two steps that write the same bytes.
const PIPELINE: &str = r#"apiVersion: kiln/v1
name: concurrent
steps:
  source:
    container:
      image: busybox
      command: [sh, -c, "printf 'a\nb\nc\n' > {{outputs.rows}}"]
    outputs: [rows]
  fan:
    container:
      image: busybox
      command: [sh, -c, "echo item {{item}} of $(wc -l < {{inputs.rows}}) > {{outputs.line}}"]
    for_each: [1, 2, 3, 4]
    inputs: {rows: source.rows}
    outputs: [line]
  gather:
    container:
      image: busybox
      command: [sh, -c, "cat {{inputs.lines}}/* > {{outputs.all}}"]
    inputs: {lines: fan.line}
    outputs: [all]
  twin-a:
    container:
      image: busybox
      command: [sh, -c, "printf 'kiln concurrent twin output 7f3c\n' > {{outputs.same}}"]
    outputs: [same]
  twin-b:
    container:
      image: busybox
      command: [sh, -c, "echo kiln concurrent twin output 7f3c > {{outputs.same}}"]
    outputs: [same]
"#;

/// How long one `kiln` process may take before the test calls it hung.
const DEADLINE: Duration = Duration::from_secs(120);

/// A started `kiln` with its stdout and stderr read on threads (so neither pipe fills up).
struct Running {
    child: Child,
    stdout: std::thread::JoinHandle<Vec<u8>>,
    stderr: std::thread::JoinHandle<Vec<u8>>,
}

fn start(work: &Path, state: &Path) -> Running {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["run", "pipeline.yaml", "--output", "json", "--state"])
        .arg(state)
        .current_dir(work)
        .env("NO_COLOR", "1")
        .env_remove("KILN_HOME")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kiln");
    let drain = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    Running {
        child,
        stdout,
        stderr,
    }
}

impl Running {
    /// Waits for the process, killing it (and failing the test) past [`DEADLINE`].
    fn finish(mut self, started: Instant) -> Output {
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > DEADLINE {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let stderr = self.stderr.join().unwrap();
                panic!(
                    "kiln run did not finish within {DEADLINE:?} (a deadlock?)\n{}",
                    String::from_utf8_lossy(&stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Output {
            status,
            stdout: self.stdout.join().unwrap(),
            stderr: self.stderr.join().unwrap(),
        }
    }
}

/// Runs a read-only `kiln` command on the state folder; returns its stdout, failing the test
/// on a non-zero exit.
fn kiln(state: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .arg("--state")
        .arg(state)
        .env("NO_COLOR", "1")
        .env_remove("KILN_HOME")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kiln {args:?} failed ({:?}):\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path, found: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            files_under(&entry.path(), found);
        } else {
            found.push(entry.path());
        }
    }
}

/// One round: a fresh state folder, two runs at once, then everything checked.
fn round(round: usize) {
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("pipeline.yaml"), PIPELINE).unwrap();
    let state_dir = tempfile::tempdir().unwrap();
    let state = state_dir.path();

    let started = Instant::now();
    let first = start(work.path(), state);
    let second = start(work.path(), state);
    let outputs = [first.finish(started), second.finish(started)];

    let mut run_ids = Vec::new();
    for (n, out) in outputs.iter().enumerate() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(0),
            "round {round}, run {n}: kiln run exited {:?}\n{stderr}",
            out.status.code()
        );
        let json: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("round {round}, run {n}: stdout is not JSON ({e})\n{stderr}")
        });
        let steps = json["steps"].as_array().expect("steps");
        // source, fan[0..4], gather, twin-a, twin-b
        assert_eq!(steps.len(), 8, "round {round}, run {n}: {json}");
        for step in steps {
            let status = step["status"].as_str().unwrap_or("?");
            assert!(
                status == "succeeded" || status == "cached",
                "round {round}, run {n}: step {} is {status}\n{json}\n{stderr}",
                step["id"]
            );
        }
        run_ids.push(json["run_id"].as_str().expect("run_id").to_owned());
    }
    assert_ne!(
        run_ids[0], run_ids[1],
        "round {round}: both runs have the same id"
    );

    // Each record is whole and readable, and each run's outputs come back from the store.
    for id in &run_ids {
        let show: Value = serde_json::from_str(&kiln(state, &["show", id, "--output", "json"]))
            .unwrap_or_else(|e| panic!("round {round}: `kiln show {id}` is not JSON: {e}"));
        assert_eq!(show["run_id"], id.as_str());
        assert!(
            !show["finished"].is_null(),
            "round {round}: run {id} is not recorded as finished: {show}"
        );
        let steps = show["steps"].as_array().expect("steps");
        assert_eq!(steps.len(), 8, "round {round}: run {id}: {show}");
        for step in steps {
            assert!(
                !step["last"].is_null(),
                "round {round}: run {id}: step {} has no attempt: {show}",
                step["step"]
            );
        }
        for twin in ["twin-a", "twin-b"] {
            let dest = work.path().join(format!("{id}-{twin}"));
            let dest_str = dest.to_str().unwrap();
            kiln(
                state,
                &["artifact", "get", id, twin, "same", "-o", dest_str],
            );
            assert_eq!(std::fs::read_to_string(&dest).unwrap(), TWIN);
        }
        let dest = work.path().join(format!("{id}-gather"));
        kiln(
            state,
            &[
                "artifact",
                "get",
                id,
                "gather",
                "all",
                "-o",
                dest.to_str().unwrap(),
            ],
        );
        assert_eq!(
            std::fs::read_to_string(&dest).unwrap(),
            "item 1 of 3\nitem 2 of 3\nitem 3 of 3\nitem 4 of 3\n",
            "round {round}: run {id}"
        );
    }

    let runs: Value = serde_json::from_str(&kiln(state, &["runs", "--output", "json"]))
        .expect("`kiln runs --output json` is JSON");
    let listed: Vec<&str> = runs
        .as_array()
        .expect("a list of runs")
        .iter()
        .filter_map(|r| r["run_id"].as_str())
        .collect();
    for id in &run_ids {
        assert!(
            listed.contains(&id.as_str()),
            "round {round}: `kiln runs` lacks {id}: {runs}"
        );
    }
    let table = kiln(state, &["runs"]);
    for id in &run_ids {
        assert!(
            table.contains(id.as_str()),
            "round {round}: `kiln runs` lacks {id}:\n{table}"
        );
    }

    // Four writers (two steps in each of two runs) of the same bytes: one blob.
    let mut blobs = Vec::new();
    files_under(&state.join("cas/blobs"), &mut blobs);
    assert!(
        !blobs.is_empty(),
        "round {round}: no blobs under {}",
        state.join("cas/blobs").display()
    );
    let twins: Vec<_> = blobs
        .iter()
        .filter(|path| std::fs::read(path).unwrap() == TWIN.as_bytes())
        .collect();
    assert_eq!(
        twins.len(),
        1,
        "round {round}: the identical output is stored {} times: {twins:?}",
        twins.len()
    );
}

#[test]
fn two_runs_at_once_on_one_state_folder() {
    for n in 0..5 {
        round(n);
    }
}
