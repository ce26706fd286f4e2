//! The local store against a real file system.

mod common;

use std::fs::{self, File, FileTimes};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, SystemTime};

use common::{data, files_under, mode, sample_folder, write};
use kiln_cas::{CasError, Digest, EntryKind, LocalStore, ObjectKind};

fn store() -> (tempfile::TempDir, LocalStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::new(dir.path().join("cas"));
    (dir, store)
}

#[test]
fn nothing_is_created_until_the_first_write() {
    let (dir, store) = store();
    assert!(!store.contains(&Digest::of_bytes(b"x")).unwrap());
    assert!(!dir.path().join("cas").exists());
    store.put_bytes(b"x").unwrap();
    assert!(store.contains(&Digest::of_bytes(b"x")).unwrap());
}

#[test]
fn equal_content_is_stored_once() {
    let (dir, store) = store();
    let folder = dir.path().join("out");
    sample_folder(&folder);
    store.put_tree(&folder).unwrap();
    // The same bytes once more, under other names and through other doors.
    store.put_bytes(&data("model", 300_000)).unwrap();
    store.put_reader(&data("model", 300_000)[..]).unwrap();
    store.put_file(&folder.join("copy-of-model.bin")).unwrap();

    // model.bin = copy-of-model.bin, run.sh, eval.json, empty.txt.
    assert_eq!(files_under(&store.root().join("blobs")).len(), 4);
    // root, metrics, metrics/deep, empty.
    assert_eq!(files_under(&store.root().join("trees")).len(), 4);
    assert!(files_under(&store.tmp_dir()).is_empty());
}

#[test]
fn stored_objects_are_never_replaced() {
    let (_dir, store) = store();
    let digest = store.put_bytes(b"first").unwrap();
    let before = fs::metadata(store.blob_path(&digest)).unwrap();
    store.put_reader(&b"first"[..]).unwrap();
    store.put_bytes(b"first").unwrap();
    let after = fs::metadata(store.blob_path(&digest)).unwrap();
    assert_eq!(before.ino(), after.ino());
    assert_eq!(mode(&store.blob_path(&digest)), 0o444);
}

#[test]
fn tree_digest_ignores_times_order_and_modes_other_than_exec() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    write(&a.join("x.txt"), b"x", 0o644);
    write(&a.join("sub/y.txt"), b"y", 0o600);
    write(&a.join("tool"), b"bin", 0o755);
    // The same content, created in the opposite order, with other modes and times.
    write(&b.join("tool"), b"bin", 0o700);
    write(&b.join("sub/y.txt"), b"y", 0o664);
    write(&b.join("x.txt"), b"x", 0o400);
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    File::open(b.join("x.txt"))
        .unwrap()
        .set_times(FileTimes::new().set_modified(old).set_accessed(old))
        .unwrap();

    let (_d1, s1) = store();
    let (_d2, s2) = store();
    let da = s1.put_tree(&a).unwrap();
    assert_eq!(da, s2.put_tree(&b).unwrap());

    let tree = s1.get_tree(&da).unwrap();
    let kinds: Vec<_> = tree
        .entries()
        .iter()
        .map(|e| (e.name.as_str(), e.kind))
        .collect();
    assert_eq!(
        kinds,
        [
            ("sub", EntryKind::Folder),
            ("tool", EntryKind::Executable),
            ("x.txt", EntryKind::File)
        ]
    );

    // What does count: the exec bit, names and content.
    fs::set_permissions(b.join("tool"), fs::Permissions::from_mode(0o644)).unwrap();
    let no_exec = s2.put_tree(&b).unwrap();
    fs::rename(b.join("x.txt"), b.join("z.txt")).unwrap();
    let renamed = s2.put_tree(&b).unwrap();
    assert_eq!(
        [da != no_exec, no_exec != renamed, da != renamed],
        [true; 3]
    );
}

#[test]
fn tree_digest_differs_from_the_blob_of_its_manifest() {
    let (dir, store) = store();
    write(&dir.path().join("f/a"), b"a", 0o644);
    let tree = store.put_tree(&dir.path().join("f")).unwrap();
    let manifest = fs::read(store.tree_path(&tree)).unwrap();
    let as_blob = store.put_bytes(&manifest).unwrap();
    assert_ne!(tree, as_blob);
    assert_eq!(store.kind(&tree).unwrap(), Some(ObjectKind::Tree));
    assert_eq!(store.kind(&as_blob).unwrap(), Some(ObjectKind::Blob));
}

#[test]
fn a_tampered_blob_is_detected_on_every_read() {
    let (dir, store) = store();
    let content = data("weights", 100_000);
    let digest = store.put_bytes(&content).unwrap();
    let path = store.blob_path(&digest);
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    let mut tampered = content.clone();
    tampered[50_000] ^= 1;
    fs::write(&path, &tampered).unwrap();
    let tampered_digest = Digest::of_bytes(&tampered);

    let err = store.read_verified(&digest).unwrap_err();
    match &err {
        CasError::Corrupt {
            digest: d,
            actual,
            location,
        } => {
            assert_eq!((d, actual), (&digest, &tampered_digest));
            assert_eq!(location, &path.display().to_string());
        }
        other => panic!("unexpected error: {other}"),
    }
    assert_eq!(
        err.to_string(),
        format!(
            "{digest} is corrupt at `{}`: its content hashes to {tampered_digest}",
            path.display()
        )
    );

    let io = store
        .open_verified(&digest)
        .unwrap()
        .read_to_end(&mut Vec::new())
        .unwrap_err();
    assert_eq!(io.kind(), ErrorKind::InvalidData);
    assert!(matches!(
        io.get_ref().unwrap().downcast_ref::<CasError>(),
        Some(CasError::Corrupt { .. })
    ));

    let dest = dir.path().join("input.bin");
    let err = store.materialize(&digest, &dest).unwrap_err();
    assert!(matches!(err, CasError::Corrupt { .. }), "{err}");
    assert!(!dest.exists());
    assert!(
        fs::read_dir(dir.path()).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(".kiln-")),
        "no staging file is left behind"
    );
}

#[test]
fn a_tampered_tree_is_detected() {
    let (dir, store) = store();
    write(&dir.path().join("f/a"), b"a", 0o644);
    let tree = store.put_tree(&dir.path().join("f")).unwrap();
    let path = store.tree_path(&tree);
    let mut bytes = fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&path, bytes).unwrap();
    assert!(matches!(
        store.get_tree(&tree),
        Err(CasError::Corrupt { .. })
    ));
    let dest = dir.path().join("m");
    assert!(store.materialize(&tree, &dest).is_err());
    assert!(!dest.exists());
}

#[test]
fn materialized_copies_are_read_only_and_detached_from_the_store() {
    let (dir, store) = store();
    let folder = dir.path().join("out");
    sample_folder(&folder);
    let digest = store.put_tree(&folder).unwrap();

    let dest = dir.path().join("inputs/prep");
    fs::create_dir_all(dest.parent().unwrap()).unwrap();
    assert_eq!(store.materialize(&digest, &dest).unwrap(), ObjectKind::Tree);

    for rel in [
        "model.bin",
        "copy-of-model.bin",
        "run.sh",
        "metrics/eval.json",
        "metrics/deep/empty.txt",
    ] {
        assert_eq!(
            fs::read(dest.join(rel)).unwrap(),
            fs::read(folder.join(rel)).unwrap()
        );
        let want = if rel == "run.sh" { 0o555 } else { 0o444 };
        assert_eq!(mode(&dest.join(rel)), want, "{rel}");
    }
    for rel in ["", "metrics", "metrics/deep", "empty"] {
        assert_eq!(mode(&dest.join(rel)), 0o755, "{rel}");
    }
    assert_eq!(fs::read_dir(dest.join("empty")).unwrap().count(), 0);
    // Stored again, the copy has the same digest: the round trip loses nothing that counts.
    assert_eq!(store.put_tree(&dest).unwrap(), digest);

    // A step that makes its input writable and writes to it changes only its copy.
    let copy = dest.join("model.bin");
    let blob = store.blob_path(&Digest::of_bytes(&data("model", 300_000)));
    assert_ne!(
        fs::metadata(&copy).unwrap().ino(),
        fs::metadata(&blob).unwrap().ino()
    );
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&copy, b"overwritten by a step").unwrap();
    let blob_digest = Digest::of_bytes(&data("model", 300_000));
    assert_eq!(
        store.read_verified(&blob_digest).unwrap(),
        data("model", 300_000)
    );

    // A single blob materialises as a file.
    let file = dir.path().join("eval.json");
    let eval = Digest::of_bytes(br#"{"acc":0.9}"#);
    assert_eq!(store.materialize(&eval, &file).unwrap(), ObjectKind::Blob);
    assert_eq!(fs::read(&file).unwrap(), br#"{"acc":0.9}"#);
    assert_eq!(mode(&file), 0o444);

    // Nothing is written over.
    for target in [&dest, &file] {
        assert!(matches!(
            store.materialize(&digest, target),
            Err(CasError::DestinationExists { .. })
        ));
    }
}

#[test]
fn an_owned_file_is_moved_not_copied() {
    let (dir, store) = store();
    let path = dir.path().join("checkpoint.pt");
    write(&path, &data("ckpt", 2_000_000), 0o644);
    let inode = fs::metadata(&path).unwrap().ino();

    let digest = store.put_file_owned(&path).unwrap();
    assert_eq!(digest, Digest::of_bytes(&data("ckpt", 2_000_000)));
    assert!(!path.exists());
    let blob = store.blob_path(&digest);
    assert_eq!(
        fs::metadata(&blob).unwrap().ino(),
        inode,
        "renamed, not copied"
    );
    assert_eq!(mode(&blob), 0o444);
    assert_eq!(
        store.read_verified(&digest).unwrap(),
        data("ckpt", 2_000_000)
    );

    // Known content: the given file is dropped, the stored one kept.
    write(&path, &data("ckpt", 2_000_000), 0o644);
    assert_eq!(store.put_file_owned(&path).unwrap(), digest);
    assert!(!path.exists());
    assert_eq!(fs::metadata(&blob).unwrap().ino(), inode);
    assert!(files_under(&store.tmp_dir()).is_empty());
}

#[test]
fn an_owned_file_with_another_link_is_copied() {
    let (dir, store) = store();
    let path = dir.path().join("a");
    let other = dir.path().join("b");
    write(&path, b"shared", 0o644);
    fs::hard_link(&path, &other).unwrap();

    let digest = store.put_file_owned(&path).unwrap();
    assert!(!path.exists());
    // Writing through the other name must not reach the store.
    fs::write(&other, b"changed").unwrap();
    assert_eq!(store.read_verified(&digest).unwrap(), b"shared");
}

#[test]
fn an_owned_folder_is_moved_in() {
    let (dir, store) = store();
    let folder = dir.path().join("out");
    sample_folder(&folder);
    let copy = store.put_tree(&folder).unwrap();
    let (_d2, other) = self::store();
    assert_eq!(other.put_tree_owned(&folder).unwrap(), copy);
    assert!(!folder.exists());
    assert_eq!(files_under(&other.root().join("blobs")).len(), 4);
}

#[test]
fn symlinks_and_odd_names_are_refused_before_anything_is_stored() {
    let (dir, store) = store();
    let folder = dir.path().join("out");
    write(&folder.join("a.txt"), b"a", 0o644);
    std::os::unix::fs::symlink("/etc/passwd", folder.join("link")).unwrap();
    let err = store.put_tree(&folder).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "refusing symlink `{}`: artifacts hold only files and folders (replace the link with a copy of what it points to)",
            folder.join("link").display()
        )
    );
    assert!(!store.root().exists());

    let odd = dir.path().join("odd");
    fs::create_dir(&odd).unwrap();
    let name = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b"bad\xff");
    fs::write(odd.join(name), b"").unwrap();
    let err = store.put_tree(&odd).unwrap_err().to_string();
    assert!(err.contains("names must be UTF-8"), "{err}");
}

#[test]
fn misses_say_what_is_missing() {
    let (dir, store) = store();
    let blob = store.put_bytes(b"b").unwrap();
    write(&dir.path().join("t/f"), b"b", 0o644);
    let tree = store.put_tree(&dir.path().join("t")).unwrap();
    let absent = Digest::of_bytes(b"absent");

    assert_eq!(
        store.get_tree(&blob).unwrap_err().to_string(),
        format!("{blob} is a blob, not a tree")
    );
    assert_eq!(
        store.read_verified(&tree).unwrap_err().to_string(),
        format!("{tree} is a tree, not a blob")
    );
    assert_eq!(
        store.read_verified(&absent).unwrap_err().to_string(),
        format!("{absent} is not in the store")
    );
    assert!(matches!(
        store.materialize(&absent, &dir.path().join("x")),
        Err(CasError::NotFound { .. })
    ));
}

#[test]
fn gc_tmp_removes_only_stale_leftovers() {
    let (_dir, store) = store();
    store.put_bytes(b"x").unwrap();
    let tmp = store.tmp_dir();
    write(&tmp.join("put-stale"), b"half", 0o644);
    let old = SystemTime::now() - Duration::from_secs(3600);
    File::open(tmp.join("put-stale"))
        .unwrap()
        .set_modified(old)
        .unwrap();
    write(&tmp.join("put-fresh"), b"half", 0o644);

    assert_eq!(store.gc_tmp(Duration::from_secs(600)).unwrap(), 1);
    assert!(tmp.join("put-fresh").exists());
    assert_eq!(store.gc_tmp(Duration::ZERO).unwrap(), 1);
    assert!(files_under(&tmp).is_empty());
    assert!(store.contains(&Digest::of_bytes(b"x")).unwrap());
}

#[test]
fn a_folder_of_many_files_stored_at_once_has_the_digest_of_its_manifests() {
    let (dir, store) = store();
    let folder = dir.path().join("many");
    let mut expected = Vec::new();
    for sub in 0..4 {
        let at = folder.join(format!("d{sub}"));
        fs::create_dir_all(&at).unwrap();
        let mut entries = Vec::new();
        for i in 0..100 {
            let bytes = data(&format!("{sub}/{i}"), 1 + i * 37);
            write(&at.join(format!("f{i:03}")), &bytes, 0o644);
            entries.push(kiln_cas::TreeEntry {
                name: format!("f{i:03}").try_into().unwrap(),
                kind: EntryKind::File,
                digest: Digest::of_bytes(&bytes),
            });
        }
        expected.push(kiln_cas::TreeEntry {
            name: format!("d{sub}").try_into().unwrap(),
            kind: EntryKind::Folder,
            digest: kiln_cas::Tree::new(entries).unwrap().digest(),
        });
    }
    let root = store.put_tree(&folder).unwrap();
    assert_eq!(root, kiln_cas::Tree::new(expected).unwrap().digest());
    assert_eq!(files_under(&store.root().join("blobs")).len(), 400);
}
