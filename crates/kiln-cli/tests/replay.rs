//! `kiln replay` and `kiln export` end to end, with guests from
//! `crates/kiln-wasm/tests/guests` (built by this test): a deterministic run replays
//! identical, a nondeterministic guest is caught, a replaced component's change is followed
//! downstream, a missing object is reported, and a bundle replays with nothing else present
//! while a damaged one is refused without writing anything.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

use serde_json::Value;

mod support;

/// Builds the guests these tests use (once per process) and returns their folder.
fn guests() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| support::build_guests(&["copy", "upper", "entropy", "jitter"]))
}

fn guest(name: &str) -> PathBuf {
    guests().join(format!("{name}.wasm"))
}

/// A workspace with a pipeline, the guests it names copied next to it, and its own state.
struct Workspace {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Workspace {
    fn new(pipeline: &str, components: &[&str], files: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_owned();
        std::fs::write(root.join("pipeline.yaml"), pipeline).unwrap();
        for name in components {
            std::fs::copy(guest(name), root.join(format!("{name}.wasm"))).unwrap();
        }
        for (name, text) in files {
            std::fs::write(root.join(name), text).unwrap();
        }
        Self { _dir: dir, root }
    }

    fn state(&self) -> PathBuf {
        self.root.join("state")
    }

    /// Runs kiln in the workspace with its state folder.
    fn kiln(&self, args: &[&str]) -> Output {
        support::kiln()
            .args(args)
            .arg("--state")
            .arg(self.state())
            .current_dir(&self.root)
            .output()
            .unwrap()
    }

    fn run(&self) -> String {
        let out = self.kiln(&["run", "pipeline.yaml", "--output", "json"]);
        assert!(out.status.success(), "kiln run: {}", text(&out));
        let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
        summary["run_id"].as_str().unwrap().to_owned()
    }

    /// `kiln replay ARGS --output json`: the exit code and the report.
    fn replay(&self, args: &[&str]) -> (i32, Value) {
        let mut all = vec!["replay"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--output", "json"]);
        let out = self.kiln(&all);
        let report = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("replay printed no JSON ({e}): {}", text(&out)));
        (out.status.code().unwrap(), report)
    }
}

fn text(out: &Output) -> String {
    format!(
        "{:?}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The replay's entry for a step.
fn step<'a>(report: &'a Value, id: &str) -> &'a Value {
    report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == id)
        .unwrap_or_else(|| panic!("no step `{id}` in {report:#}"))
}

/// `seen` reads clocks, random sources and file metadata; `first` and `second` copy a file
/// in a chain; `other` copies another file.
const CHAIN: &str = "\
apiVersion: kiln/v1
name: chain
steps:
  seen:
    wasm: entropy.wasm
    outputs: [seen]
  first:
    wasm: copy.wasm
    inputs: {src: ./data.txt}
    outputs: [dst]
  second:
    wasm: copy.wasm
    inputs: {src: first.dst}
    outputs: [dst]
  other:
    wasm: copy.wasm
    inputs: {src: ./other.txt}
    outputs: [dst]
";

fn chain() -> Workspace {
    Workspace::new(
        CHAIN,
        &["entropy", "copy"],
        &[("data.txt", "some data\n"), ("other.txt", "other data\n")],
    )
}

/// The `.cwasm` files under a compiled-components cache folder.
fn compiled_components(cache: &Path) -> Vec<PathBuf> {
    let Ok(engines) = std::fs::read_dir(cache) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for engine in engines {
        for file in std::fs::read_dir(engine.unwrap().path()).unwrap() {
            let path = file.unwrap().path();
            if path.extension().is_some_and(|e| e == "cwasm") {
                found.push(path);
            }
        }
    }
    found
}

/// `kiln run` compiles components into the user's cache folder (here `KILN_CACHE_DIR`), not
/// the state folder, and `kiln replay` of the run loads them from there without compiling.
#[test]
fn run_and_replay_share_the_compiled_components() {
    let ws = chain();
    let cache = ws.root.join("compiled");
    let kiln = |args: &[&str]| {
        let out = support::kiln()
            .args(args)
            .arg("--state")
            .arg(ws.state())
            .current_dir(&ws.root)
            .env("KILN_CACHE_DIR", &cache)
            .output()
            .unwrap();
        assert!(out.status.success(), "kiln {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };

    let ran = kiln(&["run", "pipeline.yaml"]);
    assert_eq!(compiled_components(&cache).len(), 2, "{ran}");
    let compiled = |stderr: &str| stderr.lines().any(|l| l.starts_with("compiled "));
    assert!(compiled(&ran), "{ran}");
    assert!(!ws.state().join("wasm-cache").exists());

    let replayed = kiln(&["replay", "latest"]);
    assert!(!compiled(&replayed), "{replayed}");
    assert_eq!(compiled_components(&cache).len(), 2);
}

#[test]
fn a_deterministic_run_replays_identical() {
    let ws = chain();
    let run = ws.run();
    let (code, report) = ws.replay(&["latest"]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["run_id"], run.as_str());
    for id in ["seen", "first", "second", "other"] {
        let s = step(&report, id);
        assert_eq!(s["verdict"], "identical", "{s:#}");
        assert_eq!(s["outputs"][0]["same"], true);
        assert_eq!(s["outputs"][0]["recorded"], s["outputs"][0]["replayed"]);
    }
    // The text report says so too.
    let out = ws.kiln(&["replay", &run]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("matches the record: 4 identical"),
        "{stdout}"
    );
}

/// A wasm step that reads only container steps' outputs is identical on what the record
/// served it, and says so: nothing upstream ran again.
#[test]
fn an_identical_step_fed_by_served_steps_says_so() {
    let ws = Workspace::new(
        "\
apiVersion: kiln/v1
name: served
steps:
  prep:
    container:
      image: busybox
      command: [sh, -c, 'echo \"rows 100\" > \"$1\"', prep]
      args: [\"{{outputs.data}}\"]
    outputs: [data]
  copy:
    wasm: copy.wasm
    inputs: {src: prep.data}
    outputs: [dst]
  other:
    wasm: copy.wasm
    inputs: {src: ./other.txt}
    outputs: [dst]
",
        &["copy"],
        &[("other.txt", "other data\n")],
    );
    ws.run();
    let (code, report) = ws.replay(&["latest"]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(step(&report, "prep")["verdict"], "served");
    let copy = step(&report, "copy");
    assert_eq!(copy["verdict"], "identical", "{copy:#}");
    assert_eq!(copy["message"], "its inputs were served from the record");
    // A step that reads the workspace only is plainly identical.
    let other = step(&report, "other");
    assert_eq!(other["verdict"], "identical", "{other:#}");
    assert!(other.get("message").is_none(), "{other:#}");

    let out = ws.kiln(&["replay", "latest"]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let row = stdout
        .lines()
        .find(|l| l.starts_with("copy "))
        .unwrap_or_else(|| panic!("no row for `copy`:\n{stdout}"));
    assert!(row.contains("identical"), "{row}");
    assert!(
        row.ends_with("its inputs were served from the record"),
        "{row}"
    );
}

#[test]
fn a_nondeterministic_guest_is_caught() {
    let ws = Workspace::new(
        "apiVersion: kiln/v1\nname: jitter\nsteps:\n  jitter:\n    wasm: jitter.wasm\n    outputs: [counts]\n",
        &["jitter"],
        &[],
    );
    ws.run();
    let (code, report) = ws.replay(&["latest"]);
    assert_eq!(code, 1, "{report:#}");
    let s = step(&report, "jitter");
    assert_eq!(s["verdict"], "diverged", "{s:#}");
    assert_eq!(s["code"], "kiln::replay::nondeterministic");
    let output = &s["outputs"][0];
    assert_eq!(output["name"], "counts");
    assert_eq!(output["same"], false);
    assert_ne!(output["recorded"], output["replayed"]);
    // The counts are small text: the report shows how they differ.
    let diff = output["diff"].as_str().expect("a diff of small text");
    assert!(
        diff.contains("--- recorded") && diff.contains("+++ replayed"),
        "{diff}"
    );

    let out = ws.kiln(&["replay", "latest"]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("diverged jitter [kiln::replay::nondeterministic]"),
        "{stdout}"
    );
}

#[test]
fn a_replaced_component_is_followed_downstream() {
    let ws = chain();
    ws.run();
    let upper = guest("upper");
    let with = format!("first={}", upper.display());
    let (code, report) = ws.replay(&["latest", "--with", &with]);
    assert_eq!(code, 1, "{report:#}");
    let first = step(&report, "first");
    assert_eq!(first["verdict"], "changed", "{first:#}");
    assert_eq!(first["code"], "kiln::replay::changed");
    assert_eq!(first["replaced"], true);
    assert!(
        first["outputs"][0]["diff"]
            .as_str()
            .unwrap()
            .contains("+SOME DATA"),
        "{first:#}"
    );
    let second = step(&report, "second");
    assert_eq!(second["verdict"], "changed", "{second:#}");
    assert_eq!(second["inputs_changed"], serde_json::json!(["src"]));
    assert!(
        second["message"]
            .as_str()
            .unwrap()
            .contains("input `src` changed upstream")
    );
    // One thing differs: the verb agrees with it.
    assert!(
        second["message"]
            .as_str()
            .unwrap()
            .starts_with("output `dst` differs after "),
        "{second:#}"
    );
    assert_eq!(step(&report, "other")["verdict"], "identical");
    assert_eq!(step(&report, "seen")["verdict"], "identical");

    // Changes a team expects do not fail the replay.
    let (code, _) = ws.replay(&[
        "latest",
        "--with",
        &with,
        "--allow-change",
        "first",
        "--allow-change",
        "second",
    ]);
    assert_eq!(code, 0);
    // Replacing a step with the component it already has changes nothing.
    let same = format!("first={}", guest("copy").display());
    let (code, report) = ws.replay(&["latest", "--with", &same]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(step(&report, "second")["verdict"], "identical");
    // A step that does not exist is an error before anything runs.
    let out = ws.kiln(&["replay", "latest", "--with", "nope=x.wasm"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("the run has no step `nope`"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_missing_object_is_reported() {
    let ws = chain();
    let run = ws.run();
    // Remove the blob of `first`'s workspace input from the store.
    let shown: Value =
        serde_json::from_slice(&ws.kiln(&["show", &run, "--output", "json"]).stdout).unwrap();
    let first = shown["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "first")
        .unwrap();
    let digest = first["last"]["inputs"]["src"].as_str().unwrap();
    let hex = digest.strip_prefix("blake3:").unwrap();
    let blob = ws.state().join("cas/blobs").join(&hex[..2]).join(&hex[2..]);
    std::fs::remove_file(&blob).expect("the input's blob is in the store");

    let (code, report) = ws.replay(&["latest"]);
    assert_eq!(code, 3, "{report:#}");
    let s = step(&report, "first");
    assert_eq!(s["verdict"], "could-not-replay");
    assert_eq!(s["code"], "kiln::replay::missing-object");
    assert!(s["message"].as_str().unwrap().contains(digest), "{s:#}");
    // `second` reads the same bytes (a copy of them), so it cannot run either; the others
    // still replay from what the record says they read.
    assert_eq!(
        step(&report, "second")["code"],
        "kiln::replay::missing-object"
    );
    assert_eq!(step(&report, "other")["verdict"], "identical");
    assert_eq!(step(&report, "seen")["verdict"], "identical");
}

#[test]
fn a_bundle_replays_with_nothing_else_and_a_damaged_one_writes_nothing() {
    let ws = chain();
    let run = ws.run();
    let bundle = ws.root.join("chain.kiln");
    let out = ws.kiln(&["export", &run, "-o", bundle.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("wrote"));

    // Only the bundle is left: no state folder, no workspace files, no components.
    let alone = tempfile::tempdir().unwrap();
    let moved = alone.path().join("run.kiln");
    std::fs::copy(&bundle, &moved).unwrap();
    drop(ws);
    let home = alone.path().join("home");
    let kiln = |args: &[&str]| {
        // No KILN_CACHE_DIR: the default, the user's cache folder, is what is tested here.
        support::kiln()
            .args(args)
            .current_dir(alone.path())
            .env("XDG_CACHE_HOME", &home)
            .env_remove("KILN_CACHE_DIR")
            .output()
            .unwrap()
    };
    let out = kiln(&["replay", "run.kiln", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["run_id"], run.as_str());
    for id in ["seen", "first", "second", "other"] {
        assert_eq!(step(&report, id)["verdict"], "identical", "{report:#}");
    }
    // The compiled components were kept in the user's cache for the next replay.
    assert!(home.join("kiln/compiled").is_dir());

    // Damaged copies: cut short at several points, or one byte flipped.
    let bytes = std::fs::read(&moved).unwrap();
    let mut flipped = bytes.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x55;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("first bytes", bytes[..10].to_vec()),
        ("half", bytes[..bytes.len() / 2].to_vec()),
        ("all but one byte", bytes[..bytes.len() - 1].to_vec()),
        ("a flipped byte", flipped),
        ("not a bundle", b"apiVersion: kiln/v1\n".to_vec()),
    ];
    for (what, damaged) in cases {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.kiln");
        std::fs::write(&file, &damaged).unwrap();
        let work = dir.path().join("work");
        let cache = dir.path().join("cache");
        let out = kiln(&[
            "replay",
            file.to_str().unwrap(),
            "--work",
            work.to_str().unwrap(),
            "--wasm-cache",
            cache.to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(2), "{what}: {}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("error[kiln::bundle::"), "{what}: {stderr}");
        assert!(out.stdout.is_empty(), "{what}: {}", text(&out));
        // Nothing was written: no work folder, no compiled components, only the bundle.
        assert!(!work.exists() && !cache.exists(), "{what}: wrote something");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "{what}: {left:?}");
    }
}

/// The digits example, recorded and exported by `scripts/record-digits-bundle.sh`, replays
/// bit for bit: a change to the runtime that makes old runs replay differently fails here.
#[test]
fn the_committed_digits_bundle_replays_identical() {
    let bundle = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/replay/digits.kiln");
    // Compiled components are kept between test runs (the Python step's takes a while).
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("replay-wasm-cache");
    let out = support::kiln()
        .arg("replay")
        .arg(&bundle)
        .arg("--wasm-cache")
        .arg(&cache)
        .args(["--output", "json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("kiln::replay::determinism-version"),
        "DETERMINISM_VERSION changed: record the bundle again with \
         scripts/record-digits-bundle.sh and commit it (docs/replay.md)\n{stderr}"
    );
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no report ({e}): {}", text(&out)));
    assert_eq!(
        out.status.code(),
        Some(0),
        "the recorded digits run no longer replays identical; if kiln's runtime changed what \
         steps write on purpose, bump DETERMINISM_VERSION and run \
         scripts/record-digits-bundle.sh\n{report:#}"
    );
    assert_eq!(report["pipeline"], "digits");
    let steps = report["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 11);
    for s in steps {
        let expected = if s["step"].as_str().unwrap().starts_with("train") {
            "served"
        } else {
            "identical"
        };
        assert_eq!(s["verdict"], expected, "{s:#}");
    }
    // Not vacuous: the steps ran and compared real outputs and metrics.
    let pick = step(&report, "pick");
    assert_eq!(pick["metrics"][0]["name"], "accuracy");
    assert_eq!(
        pick["metrics"][0]["recorded"],
        pick["metrics"][0]["replayed"]
    );
    assert!(pick["metrics"][0]["replayed"].as_f64().unwrap() > 0.9);
}

/// Steps replayed at once (`-j`) wait for what they read: with a replaced component, whose
/// change must reach the steps downstream, eight at a time give the report one at a time
/// does, in the plan's order.
#[test]
fn replaying_in_parallel_keeps_the_order_and_follows_changes_downstream() {
    let ws = Workspace::new(
        "\
apiVersion: kiln/v1
name: wide
steps:
  first:
    wasm: copy.wasm
    inputs: {src: ./data.txt}
    outputs: [dst]
  spread:
    for_each: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]
    wasm: copy.wasm
    inputs: {src: first.dst}
    outputs: [dst]
    with: {n: \"{{item}}\"}
  last:
    for_each: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]
    wasm: copy.wasm
    inputs: {src: spread.dst}
    outputs: [dst]
",
        &["copy"],
        &[("data.txt", "some data\n")],
    );
    ws.run();
    let with = format!("first={}", guest("upper").display());
    let verdicts = |report: &Value| -> Vec<(String, String)> {
        report["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["step"].as_str().unwrap().to_owned(),
                    s["verdict"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let (code, one) = ws.replay(&["latest", "--with", &with, "-j", "1"]);
    assert_eq!(code, 1, "{one:#}");
    let (code, eight) = ws.replay(&["latest", "--with", &with, "-j", "8"]);
    assert_eq!(code, 1, "{eight:#}");
    assert_eq!(verdicts(&one), verdicts(&eight));
    let ids: Vec<String> = verdicts(&eight).into_iter().map(|(id, _)| id).collect();
    assert_eq!(ids.first().map(String::as_str), Some("first"));
    assert_eq!(ids.len(), 25);
    assert_eq!(ids.last().map(String::as_str), Some("last[11]"));
    // Every step read what the replaced one wrote.
    assert!(
        verdicts(&eight).iter().all(|(_, v)| v == "changed"),
        "{eight:#}"
    );
    // Nothing replaced: all identical, at any width.
    let (code, report) = ws.replay(&["latest", "-j", "8"]);
    assert_eq!(code, 0, "{report:#}");
    assert!(verdicts(&report).iter().all(|(_, v)| v == "identical"));
}
