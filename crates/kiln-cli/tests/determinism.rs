//! Determinism across processes: the same wasm step run by two `kiln` processes, in two
//! workspaces at different paths with their own state folders, more than a second apart, with
//! its input folder's files created in different orders, writes the same bytes, although the
//! guest reads every clock, random source and piece of file metadata it can.
//!
//! The guest is `clockwork` from `crates/kiln-wasm/tests/guests`, built by this test.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::Value;

mod support;

/// Builds the `clockwork` guest (once per process) and returns its `.wasm` file.
fn clockwork() -> &'static Path {
    static WASM: OnceLock<PathBuf> = OnceLock::new();
    WASM.get_or_init(|| support::build_guests(&["clockwork"]).join("clockwork.wasm"))
}

const PIPELINE: &str = "\
apiVersion: kiln/v1
name: determinism
steps:
  clock:
    wasm: clockwork.wasm
    inputs: {data: ./data}
    outputs: [report]
";

/// The input folder's files (path under `data/`, bytes), in the order the first workspace
/// creates them.
const FILES: &[(&str, &[u8])] = &[
    ("a.txt", b"alpha\n"),
    ("b.csv", b"x,y\n1,2\n3,4\n"),
    ("c.bin", &[0, 1, 2, 3, 255]),
    ("sub/d.txt", b"nested file\n"),
    ("sub/e.txt", b""),
];

/// What one `kiln run` left: its JSON summary, the report's bytes, the step's record.
struct Ran {
    summary: Value,
    report: String,
    record: Value,
}

/// Makes a workspace at `root` (files created in `order`), runs the pipeline there with its
/// own state folder, and reads back the report and the record.
fn run_in(root: &Path, order: &[usize]) -> Ran {
    std::fs::create_dir_all(root).unwrap();
    std::fs::write(root.join("pipeline.yaml"), PIPELINE).unwrap();
    std::fs::copy(clockwork(), root.join("clockwork.wasm")).unwrap();
    for &i in order {
        let (name, bytes) = FILES[i];
        let path = root.join("data").join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    let state = root.join("state");
    let kiln = |args: &[&str]| {
        let out = support::kiln()
            .args(args)
            .arg("--state")
            .arg(&state)
            .current_dir(root)
            // Each process compiles the component itself, as on two machines.
            .env("KILN_CACHE_DIR", root.join("compiled"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kiln {args:?}: {:?}\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let summary: Value =
        serde_json::from_slice(&kiln(&["run", "pipeline.yaml", "--output", "json"])).unwrap();
    assert_eq!(summary["steps"][0]["status"], "succeeded", "{summary}");
    let run_id = summary["run_id"].as_str().unwrap().to_owned();
    let got = root.join("report.got");
    kiln(&[
        "artifact",
        "get",
        &run_id,
        "clock",
        "report",
        "-o",
        got.to_str().unwrap(),
    ]);
    let shown: Value = serde_json::from_slice(&kiln(&["show", &run_id, "--output", "json"]))
        .expect("kiln show prints JSON");
    Ran {
        summary,
        report: std::fs::read_to_string(got).unwrap(),
        record: shown["steps"][0]["last"].clone(),
    }
}

/// The numbers after `prefix ` on the report's line that starts with it.
fn numbers(report: &str, prefix: &str) -> Vec<u128> {
    let line = report
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{prefix} ")))
        .unwrap_or_else(|| panic!("no `{prefix}` line in:\n{report}"));
    line.split(' ')
        .map(|n| {
            n.parse()
                .unwrap_or_else(|_| panic!("`{n}` in `{prefix}` is not a number"))
        })
        .collect()
}

/// `key=value` fields of the metadata line of `label` (`file LABEL ...` or `dir LABEL ...`).
fn metadata(report: &str, label: &str) -> (String, Vec<(String, String)>) {
    let line = report
        .lines()
        .find(|l| l.split(' ').nth(1) == Some(label) && !l.starts_with("list "))
        .unwrap_or_else(|| panic!("no metadata of `{label}` in:\n{report}"));
    let mut words = line.split(' ');
    let kind = words.next().unwrap().to_owned();
    words.next();
    let fields = words
        .map(|w| {
            let (k, v) = w.split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect();
    (kind, fields)
}

fn field<'a>(fields: &'a [(String, String)], key: &str) -> &'a str {
    &fields.iter().find(|(k, _)| k == key).unwrap().1
}

#[test]
fn two_processes_far_apart_write_the_same_bytes() {
    let first_root = tempfile::tempdir().unwrap();
    let second_root = tempfile::tempdir().unwrap();
    let first = run_in(&first_root.path().join("one"), &[0, 1, 2, 3, 4]);
    // Host clocks move on, so every host time the guest could see differs between the runs.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let second = run_in(
        &second_root.path().join("somewhere/else/two"),
        &[4, 3, 2, 1, 0],
    );

    assert_eq!(
        first.report, second.report,
        "the two runs' reports differ:\n--- first\n{}\n--- second\n{}",
        first.report, second.report
    );
    let digest = |r: &Ran| r.summary["steps"][0]["outputs"]["report"].clone();
    assert!(digest(&first).as_str().unwrap().starts_with("blake3:"));
    assert_eq!(digest(&first), digest(&second));
    assert_eq!(
        first.record["details"], second.record["details"],
        "the run facts (fuel, seed, clock start) are the same too"
    );

    // The report holds what the guest read, so the equality above says something.
    let report = &first.report;
    let clock_start = u128::from(
        first.record["details"]["clock_wall_start_ns"]
            .as_u64()
            .expect("the record has the wall clock's start"),
    );
    assert!(clock_start > 0);
    let wall = numbers(report, "wall");
    assert_eq!(wall.len(), 4, "{report}");
    assert!(wall[0] >= clock_start, "{report}");
    assert!(wall.windows(2).all(|w| w[0] < w[1]), "{report}");
    let mono = numbers(report, "mono-since-first");
    assert!(mono.windows(2).all(|w| w[0] < w[1]), "{report}");
    let random = numbers(report, "random");
    assert_eq!(random.len(), 4, "{report}");
    assert!(
        random.windows(2).any(|w| w[0] != w[1]),
        "four hashers, one value: {report}"
    );
    let mut order = numbers(report, "hashmap-order");
    order.sort();
    assert_eq!(order, (0..16).collect::<Vec<u128>>(), "{report}");

    // Listings come back sorted by name, whatever order the files were made in.
    assert!(
        report.contains("\nlist data a.txt b.csv c.bin sub\n"),
        "{report}"
    );
    assert!(report.contains("\nlist data/sub d.txt e.txt\n"), "{report}");
    for (name, bytes) in FILES {
        let (kind, fields) = metadata(report, &format!("data/{name}"));
        assert_eq!(kind, "file", "{name}: {report}");
        assert_eq!(field(&fields, "size"), bytes.len().to_string(), "{report}");
        assert_eq!(field(&fields, "nlink"), "1", "{name}: {report}");
    }
    // Every time the guest read, of files and folders, inputs and outputs, is the start of
    // the run's virtual wall clock: not zero, and not a host time.
    let labels = [
        "data",
        "data/sub",
        "/in",
        "/out",
        "/out/scratch",
        "data/a.txt",
        "data/sub/d.txt",
    ];
    for label in labels {
        let (kind, fields) = metadata(report, label);
        for time in ["mtime", "atime", "ctime"] {
            assert_eq!(
                field(&fields, time),
                clock_start.to_string(),
                "{time} of {label}: {report}"
            );
        }
        if kind == "dir" {
            assert_eq!(field(&fields, "size"), "0", "{label}: {report}");
            assert_eq!(field(&fields, "nlink"), "1", "{label}: {report}");
        }
    }
}
