//! The stat cache against a real file system: real files, real times, no timed assertions.
//!
//! A file just written is too recent to be recorded (the racy rule), so most tests give the
//! cache a clock an hour ahead: every file then looks settled. The racy test uses the real
//! clock. What proves that a file was not read is the cache's count of files it hashed,
//! taken where the store reads them.

mod common;

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use common::data;
use kiln_cas::{Digest, LocalStore, StatCache, StatCounts};

struct Setup {
    dir: tempfile::TempDir,
    store: LocalStore,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path().join("cas"));
        fs::create_dir(dir.path().join("work")).unwrap();
        Setup { dir, store }
    }

    fn work(&self, name: &str) -> PathBuf {
        self.dir.path().join("work").join(name)
    }

    fn cache_file(&self) -> PathBuf {
        self.dir.path().join("stat-cache")
    }

    /// The cache as a new run finds it, with a clock an hour ahead.
    fn settled_cache(&self) -> StatCache {
        let mut cache = StatCache::open(self.cache_file());
        cache.set_clock(|| SystemTime::now() + Duration::from_secs(3600));
        cache
    }

    /// Writes `bytes` to `file` and stores it through a settled cache, which is saved: the
    /// file is recorded, as a run long after it was written would record it.
    fn recorded(&self, file: &Path, bytes: &[u8]) -> Digest {
        fs::write(file, bytes).unwrap();
        let cache = self.settled_cache();
        let digest = self.store.put_file_cached(file, &cache).unwrap();
        cache.save().unwrap();
        digest
    }
}

fn counts(unchanged: u64, hashed: u64) -> StatCounts {
    StatCounts { unchanged, hashed }
}

fn set_mtime(path: &Path, time: SystemTime) {
    File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(time)
        .unwrap();
}

fn mtime(path: &Path) -> SystemTime {
    fs::metadata(path).unwrap().modified().unwrap()
}

#[test]
fn an_unchanged_file_is_not_read_again() {
    let s = Setup::new();
    let file = s.work("big.bin");
    fs::write(&file, data("a", 300_000)).unwrap();

    let first = s.settled_cache();
    let digest = s.store.put_file_cached(&file, &first).unwrap();
    assert_eq!(first.counts(), counts(0, 1));
    first.save().unwrap();

    let second = s.settled_cache();
    assert_eq!(second.discarded(), None);
    assert_eq!(s.store.put_file_cached(&file, &second).unwrap(), digest);
    assert_eq!(second.counts(), counts(1, 0));
    assert_eq!(s.store.put_file(&file).unwrap(), digest);
}

#[test]
fn a_file_rewritten_within_the_racy_window_is_hashed_again() {
    let s = Setup::new();
    let file = s.work("f");
    fs::write(&file, b"aaaa").unwrap();
    let written = mtime(&file);

    // The real clock: the file changed just now, so it is hashed but not recorded...
    let cache = StatCache::open(s.cache_file());
    let first = s.store.put_file_cached(&file, &cache).unwrap();
    cache.save().unwrap();
    let cache = StatCache::open(s.cache_file());
    assert_eq!(s.store.put_file_cached(&file, &cache).unwrap(), first);
    assert_eq!(cache.counts(), counts(0, 1), "a racy entry was trusted");

    // ...so the same size and modification time with other bytes is seen.
    fs::write(&file, b"bbbb").unwrap();
    set_mtime(&file, written);
    let cache = StatCache::open(s.cache_file());
    let second = s.store.put_file_cached(&file, &cache).unwrap();
    assert_ne!(second, first);
    assert_eq!(second, s.store.put_bytes(b"bbbb").unwrap());

    // Hashed once it has settled, it is recorded, and then trusted.
    let settled = s.settled_cache();
    s.store.put_file_cached(&file, &settled).unwrap();
    settled.save().unwrap();
    let again = s.settled_cache();
    assert_eq!(s.store.put_file_cached(&file, &again).unwrap(), second);
    assert_eq!(again.counts(), counts(1, 0));
}

#[test]
fn a_touched_file_is_hashed_again() {
    let s = Setup::new();
    let file = s.work("f");
    let digest = s.recorded(&file, b"same bytes");

    set_mtime(&file, mtime(&file) - Duration::from_secs(60));
    let cache = s.settled_cache();
    assert_eq!(s.store.put_file_cached(&file, &cache).unwrap(), digest);
    assert_eq!(cache.counts(), counts(0, 1));
}

#[test]
fn a_replaced_file_is_hashed_again() {
    let s = Setup::new();
    let file = s.work("f");
    s.recorded(&file, b"first");

    // Another file of the same size and modification time, renamed over it: a new inode.
    let other = s.work("other");
    fs::write(&other, b"other").unwrap();
    set_mtime(&other, mtime(&file));
    fs::rename(&other, &file).unwrap();
    let cache = s.settled_cache();
    let digest = s.store.put_file_cached(&file, &cache).unwrap();
    assert_eq!(digest, s.store.put_bytes(b"other").unwrap());
    assert_eq!(cache.counts(), counts(0, 1));
}

#[test]
fn a_file_whose_blob_left_the_store_is_stored_again() {
    let s = Setup::new();
    let file = s.work("f");
    let digest = s.recorded(&file, b"content");

    fs::remove_file(s.store.blob_path(&digest)).unwrap();
    let cache = s.settled_cache();
    assert_eq!(s.store.put_file_cached(&file, &cache).unwrap(), digest);
    assert_eq!(cache.counts(), counts(0, 1));
    assert_eq!(s.store.read_verified(&digest).unwrap(), b"content");
}

#[test]
fn a_folder_with_one_changed_file_hashes_that_file_only() {
    let s = Setup::new();
    let folder = s.work("folder");
    fs::create_dir_all(folder.join("sub")).unwrap();
    for i in 0..30 {
        let at = if i % 3 == 0 {
            folder.join("sub")
        } else {
            folder.clone()
        };
        fs::write(at.join(format!("f{i}")), data(&i.to_string(), 100 + i)).unwrap();
    }
    let cache = s.settled_cache();
    let before = s.store.put_tree_cached(&folder, &cache).unwrap();
    assert_eq!(cache.counts(), counts(0, 30));
    cache.save().unwrap();

    let cache = s.settled_cache();
    assert_eq!(s.store.put_tree_cached(&folder, &cache).unwrap(), before);
    assert_eq!(cache.counts(), counts(30, 0));
    cache.save().unwrap();

    fs::write(folder.join("sub").join("f3"), b"changed").unwrap();
    let cache = s.settled_cache();
    let after = s.store.put_tree_cached(&folder, &cache).unwrap();
    assert_eq!(cache.counts(), counts(29, 1));
    assert_ne!(after, before);
    // The manifests rebuilt from cached digests are those of storing the folder afresh.
    let fresh = LocalStore::new(s.dir.path().join("fresh"));
    assert_eq!(fresh.put_tree(&folder).unwrap(), after);
}

#[test]
fn a_corrupt_or_foreign_cache_file_is_ignored_and_rebuilt() {
    let s = Setup::new();
    let file = s.work("f");
    let digest = s.recorded(&file, b"content");
    let good = fs::read(s.cache_file()).unwrap();

    let mut flipped = good.clone();
    let last = flipped.len() - 40;
    flipped[last] ^= 0x55;
    for bad in [
        b"garbage".to_vec(),
        good[..good.len() / 2].to_vec(),
        flipped,
        Vec::new(),
    ] {
        fs::write(s.cache_file(), &bad).unwrap();
        let cache = s.settled_cache();
        assert!(cache.discarded().is_some(), "{bad:?} was used");
        assert_eq!(s.store.put_file_cached(&file, &cache).unwrap(), digest);
        assert_eq!(cache.counts(), counts(0, 1));
        cache.save().unwrap();

        let rebuilt = s.settled_cache();
        assert_eq!(rebuilt.discarded(), None);
        assert_eq!(s.store.put_file_cached(&file, &rebuilt).unwrap(), digest);
        assert_eq!(rebuilt.counts(), counts(1, 0));
    }

    // A folder where the file should be: ignored as well, and nothing fails but the save.
    fs::remove_file(s.cache_file()).unwrap();
    fs::create_dir(s.cache_file()).unwrap();
    let cache = s.settled_cache();
    assert!(cache.discarded().is_some());
    assert_eq!(s.store.put_file_cached(&file, &cache).unwrap(), digest);
    assert!(cache.save().is_err());
}

#[test]
fn entries_of_files_that_are_gone_are_dropped() {
    let s = Setup::new();
    let (kept, gone) = (s.work("kept"), s.work("gone"));
    fs::write(&kept, b"kept").unwrap();
    fs::write(&gone, b"gone").unwrap();
    let cache = s.settled_cache();
    s.store.put_file_cached(&kept, &cache).unwrap();
    s.store.put_file_cached(&gone, &cache).unwrap();
    cache.save().unwrap();
    let two = fs::metadata(s.cache_file()).unwrap().len();

    fs::remove_file(&gone).unwrap();
    fs::write(s.work("new"), b"new").unwrap();
    let cache = s.settled_cache();
    s.store.put_file_cached(&s.work("new"), &cache).unwrap();
    cache.save().unwrap();
    let text = fs::read(s.cache_file()).unwrap();
    let has = |p: &Path| {
        let p = p.as_os_str().as_encoded_bytes();
        text.windows(p.len()).any(|w| w == p)
    };
    assert!(has(&kept) && has(&s.work("new")));
    assert!(!has(&gone));
    assert_eq!(fs::metadata(s.cache_file()).unwrap().len(), two + 3 - 4);
}
