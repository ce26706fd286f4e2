//! `kiln step run`: one wasm step by hand, with guests from `crates/kiln-wasm/tests/guests`
//! (built by this test).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

mod support;

fn guest(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| support::build_guests(&["upper", "exit3"]))
        .join(format!("{name}.wasm"))
}

/// Runs `kiln step run` in `work`, with its temporary folders in `work/tmp`.
fn step_run(work: &Path, args: &[&str]) -> std::process::Output {
    std::fs::create_dir_all(work.join("tmp")).unwrap();
    support::kiln()
        .env("TMPDIR", work.join("tmp"))
        .args(["step", "run"])
        .args(args)
        .current_dir(work)
        .output()
        .unwrap()
}

#[test]
fn a_step_runs_by_hand_and_its_output_lands_where_asked() {
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("words.txt"), "hello, step\n").unwrap();
    let upper = guest("upper");
    let out = step_run(
        work.path(),
        &[
            upper.to_str().unwrap(),
            "--in",
            "src=words.txt",
            "--output",
            "dst",
            "--out",
            "result",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let dst = work.path().join("result/dst");
    assert_eq!(std::fs::read_to_string(&dst).unwrap(), "HELLO, STEP\n");
    // The guest's own output, and where the result went.
    assert!(stderr.contains("copied 12 bytes in upper case"), "{stderr}");
    assert!(stderr.contains("wrote result/dst (blake3:"), "{stderr}");
    // The copy is the user's: writable, unlike the store's.
    std::fs::write(&dst, "mine").unwrap();
    // Nothing is left behind: no state folder here, no temporary one.
    assert!(!work.path().join(".kiln").exists());
    let leftovers: Vec<_> = std::fs::read_dir(work.path().join("tmp"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Running it again replaces the output.
    let out = step_run(
        work.path(),
        &[
            upper.to_str().unwrap(),
            "--in",
            "src=words.txt",
            "--output",
            "dst",
            "--out",
            "result",
        ],
    );
    assert!(out.status.success());
    assert_eq!(std::fs::read_to_string(&dst).unwrap(), "HELLO, STEP\n");
}

#[test]
fn a_failing_step_exits_1_and_bad_arguments_exit_2_or_say_why() {
    let work = tempfile::tempdir().unwrap();
    let out = step_run(work.path(), &[guest("exit3").to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("step exit3 failed (exit)"), "{stderr}");

    // An input that is not there cannot start the step.
    let out = step_run(
        work.path(),
        &[guest("upper").to_str().unwrap(), "--in", "src=missing.txt"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("input `src`") && stderr.contains("missing.txt"),
        "{stderr}"
    );

    let out = step_run(work.path(), &["nope.wasm"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no component at nope.wasm"), "{stderr}");

    let out = step_run(
        work.path(),
        &[guest("upper").to_str().unwrap(), "--output", "Bad Name"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("output `Bad Name`"), "{stderr}");
}
