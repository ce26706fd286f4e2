//! A 4 GiB workspace input moved through a step by the real `kiln` binary, with kiln's peak
//! resident memory checked: hashing, storing and staging stream through small buffers, so
//! memory does not grow with the data.
//!
//! The input is real data on the disk that holds cargo's target folder (not a sparse file),
//! written and removed by the test. The step is a wasm step that reads every byte (the `wc`
//! guest), so its input is the stored object itself, linked, not a third copy: the run keeps
//! two copies (the workspace's and the store's), and the test needs 9 GiB free there.
//! Without them it says so and skips, except where `CI` is set, where it fails.
//! `KILN_TEST_BIG_MIB` sets another size (in MiB) for a disk with less room; the memory
//! limit stays the same.

mod support;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use kiln_test_support::rss::run_measured;

/// The size of the input, unless `KILN_TEST_BIG_MIB` says otherwise.
const SIZE: u64 = 4 << 30;
/// The most kiln may hold in memory at once.
const PEAK_LIMIT: u64 = 100 << 20;

/// Whether the file system of `dir` has `bytes` free; otherwise says why the test skips (or
/// fails, under CI).
fn room_or_skip(dir: &Path, bytes: u64) -> bool {
    let stat = rustix::fs::statvfs(dir).expect("statvfs of the test folder");
    let free = stat.f_bavail * stat.f_frsize;
    if free >= bytes {
        return true;
    }
    let reason = format!(
        "needs {} GiB free in {}, has {:.1} GiB",
        bytes >> 30,
        dir.display(),
        free as f64 / (1u64 << 30) as f64
    );
    assert!(
        !kiln_test_support::in_ci(),
        "{reason}; CI is set, so it may not be skipped"
    );
    let _ = writeln!(std::io::stderr(), "skipping the big-input test: {reason}");
    false
}

/// Writes `size` bytes of a fast pattern that differs from MiB to MiB.
fn write_data(path: &Path, size: u64) {
    let mut out = BufWriter::new(File::create(path).unwrap());
    let mut block = vec![0u8; 1 << 20];
    for i in 0..size >> 20 {
        let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        for chunk in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        out.write_all(&block).unwrap();
    }
    out.into_inner().unwrap().sync_all().unwrap();
}

#[test]
fn a_4_gib_input_goes_through_a_step_with_kiln_under_100_mb() {
    let size = std::env::var("KILN_TEST_BIG_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(SIZE, |mib| mib << 20);
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    if !room_or_skip(dir.path(), 2 * size + (1 << 30)) {
        return;
    }
    let guests = support::build_guests(&["wc"]);
    std::fs::copy(guests.join("wc.wasm"), dir.path().join("wc.wasm")).unwrap();
    let big = dir.path().join("big.bin");
    write_data(&big, size);
    assert_eq!(std::fs::metadata(&big).unwrap().len(), size);
    std::fs::write(
        dir.path().join("pipeline.yaml"),
        "apiVersion: kiln/v1\nname: big\nsteps:\n  count:\n    wasm: wc.wasm\n    \
         inputs: {src: ./big.bin}\n    outputs: [n]\n",
    )
    .unwrap();

    let measured = run_measured(
        support::kiln()
            .args(["run", "pipeline.yaml", "--output", "json"])
            .current_dir(dir.path()),
    )
    .expect("kiln runs");
    let out = &measured.output;
    assert!(
        out.status.success(),
        "kiln run: {}\n{}",
        out.status,
        support::text(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let digest: kiln_cas::Digest = summary["steps"][0]["outputs"]["n"]
        .as_str()
        .expect("the step's output")
        .parse()
        .unwrap();
    let store = kiln_cas::LocalStore::new(dir.path().join(".kiln/cas"));
    let counted = String::from_utf8(store.read_verified(&digest).unwrap()).unwrap();
    assert_eq!(counted.trim(), size.to_string());
    let _ = writeln!(
        std::io::stderr(),
        "{} MiB through a step: kiln took {:.1} s, peak RSS {:.1} MB",
        size >> 20,
        measured.wall.as_secs_f64(),
        measured.peak_rss as f64 / 1e6
    );
    assert!(
        measured.peak_rss < PEAK_LIMIT,
        "kiln's peak RSS was {} MiB moving a {} MiB input (limit {} MiB)",
        measured.peak_rss >> 20,
        size >> 20,
        PEAK_LIMIT >> 20
    );
}
