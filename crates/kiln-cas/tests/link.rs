//! Stored objects linked where a read-only reader (a wasm guest, a container) reads them.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;

use common::{data, mode, sample_folder};
use kiln_cas::{CasError, Digest, LocalStore, ObjectKind};

#[test]
fn a_linked_blob_is_the_stored_object_itself() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::new(dir.path().join("cas"));
    let digest = store.put_bytes(&data("rows", 100_000)).unwrap();

    let dest = dir.path().join("in/rows.csv");
    fs::create_dir_all(dest.parent().unwrap()).unwrap();
    assert_eq!(store.link_into(&digest, &dest).unwrap(), ObjectKind::Blob);
    let blob = fs::metadata(store.blob_path(&digest)).unwrap();
    let linked = fs::metadata(&dest).unwrap();
    assert_eq!(linked.ino(), blob.ino(), "a link, not a copy");
    assert_eq!(linked.nlink(), 2);
    assert_eq!(mode(&dest), 0o444);
    assert_eq!(fs::read(&dest).unwrap(), data("rows", 100_000));

    // Nothing is written over, and a missing object says so.
    assert!(matches!(
        store.link_into(&digest, &dest),
        Err(CasError::DestinationExists { .. })
    ));
    assert!(matches!(
        store.link_into(&Digest::of_bytes(b"absent"), &dir.path().join("in/x")),
        Err(CasError::NotFound { .. })
    ));

    // Removing the link leaves the stored object.
    fs::remove_file(&dest).unwrap();
    assert_eq!(store.read_verified(&digest).unwrap(), data("rows", 100_000));
}

#[test]
fn a_linked_tree_links_its_files_and_copies_its_executables() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::new(dir.path().join("cas"));
    let folder = dir.path().join("out");
    sample_folder(&folder);
    let digest = store.put_tree(&folder).unwrap();

    let dest = dir.path().join("in/prep");
    fs::create_dir_all(dest.parent().unwrap()).unwrap();
    assert_eq!(store.link_into(&digest, &dest).unwrap(), ObjectKind::Tree);
    for rel in [
        "model.bin",
        "copy-of-model.bin",
        "metrics/eval.json",
        "metrics/deep/empty.txt",
    ] {
        let content = fs::read(folder.join(rel)).unwrap();
        let blob = store.blob_path(&Digest::of_bytes(&content));
        assert_eq!(fs::read(dest.join(rel)).unwrap(), content, "{rel}");
        assert_eq!(
            fs::metadata(dest.join(rel)).unwrap().ino(),
            fs::metadata(&blob).unwrap().ino(),
            "{rel} is linked"
        );
        assert_eq!(mode(&dest.join(rel)), 0o444, "{rel}");
    }
    // The stored object of an executable is 0444: its entry is a copy with 0555.
    let script = b"#!/bin/sh\necho hi\n";
    assert_eq!(fs::read(dest.join("run.sh")).unwrap(), script);
    assert_eq!(mode(&dest.join("run.sh")), 0o555);
    assert_ne!(
        fs::metadata(dest.join("run.sh")).unwrap().ino(),
        fs::metadata(store.blob_path(&Digest::of_bytes(script)))
            .unwrap()
            .ino()
    );
    for rel in ["", "metrics", "metrics/deep", "empty"] {
        assert_eq!(mode(&dest.join(rel)), 0o755, "{rel}");
    }
    // The same tree, stored again from its links.
    assert_eq!(store.put_tree(&dest).unwrap(), digest);
    // Nothing half-made beside it.
    let beside: Vec<_> = fs::read_dir(dest.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(beside, vec![std::ffi::OsString::from("prep")]);
}

#[test]
fn a_tree_with_a_missing_blob_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::new(dir.path().join("cas"));
    let folder = dir.path().join("out");
    sample_folder(&folder);
    let digest = store.put_tree(&folder).unwrap();
    let eval = store.blob_path(&Digest::of_bytes(br#"{"acc":0.9}"#));
    fs::remove_file(&eval).unwrap();

    let parent = dir.path().join("in");
    fs::create_dir_all(&parent).unwrap();
    let err = store.link_into(&digest, &parent.join("prep")).unwrap_err();
    assert!(matches!(err, CasError::NotFound { .. }), "{err}");
    assert_eq!(fs::read_dir(&parent).unwrap().count(), 0);
}

#[test]
fn a_group_commit_store_publishes_at_once_and_syncs_in_one_go() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::new(dir.path().join("cas")).with_group_commit();
    // Published without a sync each: readable, whole, at once.
    let digests: Vec<Digest> = (0..20)
        .map(|i| store.put_bytes(&data(&format!("out-{i}"), 1000)).unwrap())
        .collect();
    for (i, digest) in digests.iter().enumerate() {
        assert_eq!(
            store.read_verified(digest).unwrap(),
            data(&format!("out-{i}"), 1000)
        );
    }
    // Whoever writes a record first syncs; callers at the same moment share the work.
    std::thread::scope(|scope| {
        for _ in 0..8 {
            let store = store.clone();
            scope.spawn(move || store.sync().unwrap());
        }
    });
    store.sync().unwrap();
    // A store that syncs every object has nothing left to do.
    LocalStore::new(dir.path().join("cas")).sync().unwrap();
}
