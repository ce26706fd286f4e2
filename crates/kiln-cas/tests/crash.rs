//! A writer killed mid-write leaves no visible blob.
//!
//! The test re-runs its own binary as a child that stores a blob slowly (the child is the
//! `child_writer` test, which does nothing unless `KILN_CAS_CRASH_CHILD` names a store), waits
//! until the child has written part of it, kills it with SIGKILL and inspects the store.

mod common;

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::{data, files_under};
use kiln_cas::{Digest, LocalStore};

const CHILD_ENV: &str = "KILN_CAS_CRASH_CHILD";
const LEN: usize = 16 << 20;
const PIECE: usize = 64 << 10;

/// Yields `data` in small pieces with a pause between them, and creates `marker` once it
/// has handed out a couple of MiB (by then most of it has been written to the temp file).
struct SlowReader {
    data: Vec<u8>,
    pos: usize,
    marker: PathBuf,
}

impl Read for SlowReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= 2 << 20 && !self.marker.exists() {
            std::fs::write(&self.marker, b"")?;
        }
        sleep(Duration::from_millis(5));
        let n = buf.len().min(PIECE).min(self.data.len() - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn marker(root: &Path) -> PathBuf {
    root.with_extension("started")
}

#[test]
fn child_writer() {
    let Some(root) = std::env::var_os(CHILD_ENV) else {
        return; // Only meaningful as the child of `killed_writer_leaves_no_blob`.
    };
    let root = PathBuf::from(root);
    let reader = SlowReader {
        data: data("crash", LEN),
        pos: 0,
        marker: marker(&root),
    };
    LocalStore::new(&root).put_reader(reader).unwrap();
    unreachable!("the parent kills this process before the write completes");
}

#[test]
fn killed_writer_leaves_no_blob() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cas");
    let content = data("crash", LEN);
    let digest = Digest::of_bytes(&content);

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["child_writer", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &root)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !marker(&root).exists() {
        assert!(Instant::now() < deadline, "the child never started writing");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the child exited early"
        );
        sleep(Duration::from_millis(10));
    }
    child.kill().unwrap(); // SIGKILL: no destructor, no cleanup runs in the child.
    child.wait().unwrap();

    let store = LocalStore::new(&root);
    let partial = files_under(&store.tmp_dir());
    assert_eq!(partial.len(), 1, "the killed write left its temp file");
    let written = std::fs::metadata(&partial[0]).unwrap().len() as usize;
    assert!(
        written > 0 && written < LEN,
        "killed mid-write ({written} bytes)"
    );
    assert!(!store.contains(&digest).unwrap());
    assert!(files_under(&root.join("blobs")).is_empty());

    assert_eq!(store.gc_tmp(Duration::ZERO).unwrap(), 1);
    assert_eq!(store.put_bytes(&content).unwrap(), digest);
    assert!(store.contains(&digest).unwrap());
    assert_eq!(store.read_verified(&digest).unwrap(), content);
    assert!(files_under(&store.tmp_dir()).is_empty());
}
