//! `kiln run` killed with SIGKILL at random moments, fifty times, in one state folder: no
//! stored object is corrupt, every record reads, every cache entry points at stored outputs,
//! and the runs that follow reuse what was published before the kills.
//!
//! The pipeline mixes what a run writes: a wasm fan-out (inputs linked from the store, small
//! outputs moved in), a step collecting the fan-out as a folder, and a process-backend step
//! reading that folder (inputs copied). Each kill lands on a run with one of a few `salt`
//! values (each used twice: fresh, then partly cached), after a pseudo-random delay within
//! the time a whole run takes, so some runs are killed while planning, some mid-fan-out,
//! some while writing their last records.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use kiln_cas::{Digest, LocalStore};
use kiln_record::{CacheIndex, StateDir, read_record};
use kiln_test_support::step_statuses;
use serde_json::Value;
use support::{build_guests, kiln, text};

const KILLS: usize = 50;
/// Runs checked to their end after the kills, of the salts the kills used.
const CHECKED_SALTS: u64 = 5;
const FAN_OUT: usize = 120;

fn pipeline() -> String {
    let items: Vec<String> = (0..FAN_OUT).map(|i| i.to_string()).collect();
    format!(
        r#"apiVersion: kiln/v1
name: crash
params:
  salt:
    type: int
    default: 0
    description: Gives every step a new cache key.
steps:
  row:
    wasm: row.wasm
    for_each: [{}]
    inputs: {{src: ./rows.csv}}
    outputs: [dst]
    with: {{i: "{{{{item}}}}", salt: "{{{{params.salt}}}}"}}
  gather:
    wasm: copy.wasm
    inputs: {{src: ./rows.csv, all: row.dst}}
    outputs: [dst]
    with: {{salt: "{{{{params.salt}}}}"}}
  count:
    container:
      image: busybox
      command: [sh, -c, "ls {{{{inputs.rows}}}} | wc -l > {{{{outputs.n}}}}; echo {{{{params.salt}}}} >> {{{{outputs.n}}}}"]
    inputs: {{rows: row.dst}}
    outputs: [n]
"#,
        items.join(", ")
    )
}

/// A run of `salt` to its end, with its summary.
fn run_to_end(dir: &Path, salt: u64) -> Value {
    let out = kiln()
        .args([
            "run",
            "pipeline.yaml",
            "--state",
            "state",
            "--output",
            "json",
        ])
        .args(["-p", &format!("salt={salt}")])
        .current_dir(dir)
        .output()
        .expect("kiln runs");
    assert!(
        out.status.success(),
        "salt {salt}: {}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("a JSON summary")
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// The digest a store object's path names (`blobs/ab/cdef…`).
fn named_digest(path: &Path) -> Digest {
    let shard = path
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap();
    let rest = path.file_name().unwrap().to_str().unwrap();
    format!("blake3:{shard}{rest}")
        .parse()
        .expect("a digest name")
}

/// What a state folder must be after any kill: every object whole, every record readable,
/// every cache entry pointing at stored outputs. Returns how many cache entries there are.
fn check_state(state: &Path, when: &str) -> usize {
    let store = LocalStore::new(state.join("cas"));
    for blob in files(&state.join("cas/blobs")) {
        let digest = named_digest(&blob);
        assert_eq!(
            Digest::of_file(&blob).unwrap(),
            digest,
            "{when}: {} holds other bytes than its name says",
            blob.display()
        );
    }
    for tree in files(&state.join("cas/trees")) {
        let digest = named_digest(&tree);
        let manifest = store
            .get_tree(&digest)
            .unwrap_or_else(|e| panic!("{when}: tree {digest}: {e}"));
        for entry in manifest.entries() {
            assert!(
                store.contains(&entry.digest).unwrap(),
                "{when}: tree {digest} names {} ({}), which is not stored",
                entry.name.as_str(),
                entry.digest
            );
        }
    }
    let state_dir = StateDir::new(state);
    for run in state_dir.run_ids().unwrap() {
        read_record(&state_dir.record_path(&run))
            .unwrap_or_else(|e| panic!("{when}: the record of run {run} cannot be read: {e}"));
    }
    let entries = CacheIndex::new(state.join("cache")).entries();
    for entry in &entries {
        for (name, digest) in &entry.outputs {
            assert!(
                store.contains(digest).unwrap(),
                "{when}: the cache entry of {} names output `{name}` {digest}, which is not stored",
                entry.step
            );
        }
    }
    entries.len()
}

/// A small deterministic generator (xorshift64*), so that a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[test]
fn fifty_kills_leave_a_sound_state_that_later_runs_reuse() {
    let guests = build_guests(&["row", "copy"]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pipeline.yaml"), pipeline()).unwrap();
    let rows: String = (0..100).map(|i| format!("{i},{}\n", i * 3)).collect();
    std::fs::write(dir.path().join("rows.csv"), format!("id,x\n{rows}")).unwrap();
    for guest in ["row", "copy"] {
        std::fs::copy(
            guests.join(format!("{guest}.wasm")),
            dir.path().join(format!("{guest}.wasm")),
        )
        .unwrap();
    }
    let state = dir.path().join("state");

    // One whole run first: what it published must survive every kill that follows. (It
    // compiles the components, so the second, with fresh steps, says how long a run takes.)
    let first = run_to_end(dir.path(), 0);
    assert!(step_statuses(&first).iter().all(|s| s == "succeeded"));
    let started = Instant::now();
    run_to_end(dir.path(), 1_000_000);
    let whole_run = started.elapsed();

    let seed = std::env::var("KILN_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x9e37_79b9_7f4a_7c15_u64);
    eprintln!("seed {seed} (set KILN_CRASH_SEED to replay), a whole run takes {whole_run:?}");
    let mut rng = Rng(seed);
    let window = whole_run.as_micros().max(1) as u64;
    let mut finished_anyway = 0;
    for kill in 0..KILLS {
        // Each salt twice: a fresh run, then one partly cached by what the first published.
        let salt = 1 + kill as u64 / 2;
        let delay = Duration::from_micros(rng.next() % window);
        let mut child = kiln()
            .args(["run", "pipeline.yaml", "--state", "state"])
            .args(["-p", &format!("salt={salt}")])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("kiln starts");
        std::thread::sleep(delay);
        // SIGKILL: nothing of kiln's runs after it.
        let _ = child.kill();
        let status = child.wait().unwrap();
        if status.success() {
            finished_anyway += 1;
        }
        check_state(
            &state,
            &format!("after kill {kill} (salt {salt}, {delay:?})"),
        );
    }
    eprintln!("{finished_anyway} of {KILLS} runs ended before their kill");
    assert!(
        finished_anyway < KILLS / 2,
        "most runs must be killed mid-way for the test to mean anything"
    );

    // A killed run's lock file without a scratch folder is swept only once it is 2 s old
    // (younger, it may be a run's that is about to lock it).
    std::thread::sleep(Duration::from_millis(2500));
    // What the first run published is all there: its salt again is all cached.
    let again = run_to_end(dir.path(), 0);
    assert!(
        step_statuses(&again).iter().all(|s| s == "cached"),
        "{:?}",
        step_statuses(&again)
    );
    // Salts the kills used now run to their end, reusing what killed runs published.
    let mut reused = 0;
    for salt in 1..=CHECKED_SALTS {
        let summary = run_to_end(dir.path(), salt);
        reused += step_statuses(&summary)
            .iter()
            .filter(|s| *s == "cached")
            .count();
        let replayed = run_to_end(dir.path(), salt);
        assert!(
            step_statuses(&replayed).iter().all(|s| s == "cached"),
            "salt {salt}: {:?}",
            step_statuses(&replayed)
        );
    }
    eprintln!("{reused} steps of the runs after the kills came from the cache");
    assert!(reused > 0, "nothing that killed runs published was reused");
    check_state(&state, "at the end");
    // No scratch folder of a killed run is left behind.
    let scratch: BTreeSet<String> = std::fs::read_dir(state.join("scratch"))
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(scratch.is_empty(), "left in scratch/: {scratch:?}");
}
