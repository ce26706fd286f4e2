//! The object-store backend against `object_store`'s in-memory and local file system stores,
//! and the `BlobStore` interface against all three stores.

mod common;

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{data, mode, sample_folder, write};
use futures_util::TryStreamExt;
use kiln_cas::{BlobStore, BucketStore, CasError, Digest, LocalStore, ObjectKind};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as Location;
use object_store::{ObjectStore, PutMode, PutPayload};

/// An in-memory bucket and a bucket in a folder, both under a prefix.
fn buckets(dir: &Path) -> Vec<(&'static str, BucketStore)> {
    let folder = dir.join("bucket");
    fs::create_dir_all(&folder).unwrap();
    let stores: [(&str, Arc<dyn ObjectStore>); 2] = [
        ("memory", Arc::new(InMemory::new())),
        (
            "local-fs",
            Arc::new(LocalFileSystem::new_with_prefix(&folder).unwrap()),
        ),
    ];
    stores
        .into_iter()
        .map(|(name, store)| {
            let bucket = BucketStore::new(store)
                .with_prefix("kiln/cas")
                .unwrap()
                .with_multipart_threshold(1 << 20);
            (name, bucket)
        })
        .collect()
}

async fn count(bucket: &BucketStore, folder: &str) -> usize {
    let prefix = Location::from(format!("kiln/cas/{folder}"));
    let listed: Vec<_> = bucket
        .object_store()
        .list(Some(&prefix))
        .try_collect()
        .await
        .unwrap();
    listed.len()
}

/// Overwrites a stored object behind the store's back.
async fn tamper(bucket: &BucketStore, location: &Location, bytes: &[u8]) {
    bucket
        .object_store()
        .put_opts(
            location,
            PutPayload::from(bytes.to_vec()),
            PutMode::Overwrite.into(),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn create_if_absent_dedups_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    for (name, bucket) in buckets(dir.path()) {
        let digest = bucket.put_bytes(Bytes::from_static(b"same")).await.unwrap();
        // The second put meets `AlreadyExists`, which counts as success.
        let again = bucket.put_bytes(Bytes::from_static(b"same")).await.unwrap();
        assert_eq!(digest, again, "{name}");
        assert_eq!(count(&bucket, "blobs").await, 1, "{name}");
        assert_eq!(
            bucket.blob_location(&digest).to_string(),
            format!(
                "kiln/cas/blobs/{}/{}",
                &digest.to_hex()[..2],
                &digest.to_hex()[2..]
            )
        );
        assert!(bucket.contains(&digest).await.unwrap());
        assert_eq!(bucket.kind(&digest).await.unwrap(), Some(ObjectKind::Blob));
        assert_eq!(&bucket.read_verified(&digest).await.unwrap()[..], b"same");
    }
}

#[tokio::test]
async fn a_tampered_object_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    for (name, bucket) in buckets(dir.path()) {
        let content = data("weights", 50_000);
        let digest = bucket.put_bytes(content.clone().into()).await.unwrap();
        let mut tampered = content.clone();
        tampered[7] ^= 0x80;
        tamper(&bucket, &bucket.blob_location(&digest), &tampered).await;

        match bucket.read_verified(&digest).await {
            Err(CasError::Corrupt {
                digest: d,
                actual,
                location,
            }) => {
                assert_eq!(d, digest, "{name}");
                assert_eq!(actual, Digest::of_bytes(&tampered), "{name}");
                assert_eq!(location, bucket.blob_location(&digest).to_string());
            }
            other => panic!("{name}: unexpected {other:?}"),
        }
        let dest = dir.path().join(format!("{name}.bin"));
        let err = bucket.materialize(&digest, &dest).await.unwrap_err();
        assert!(matches!(err, CasError::Corrupt { .. }), "{name}: {err}");
        assert!(!dest.exists());

        // Never overwrite: storing the good bytes again keeps what is there (and the read
        // keeps failing loudly rather than serving it).
        bucket.put_bytes(content.into()).await.unwrap();
        assert!(bucket.read_verified(&digest).await.is_err());
    }
}

#[tokio::test]
async fn large_files_go_up_in_parts_and_are_published_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.bin");
    let content = data("big", 20 << 20);
    write(&path, &content, 0o644);
    for (name, bucket) in buckets(dir.path()) {
        let digest = bucket.put_file(&path).await.unwrap();
        assert_eq!(digest, Digest::of_bytes(&content), "{name}");
        assert_eq!(
            count(&bucket, "tmp").await,
            0,
            "{name}: staging object deleted"
        );
        assert_eq!(bucket.put_file(&path).await.unwrap(), digest);
        assert_eq!(count(&bucket, "blobs").await, 1, "{name}");
        assert_eq!(bucket.read_verified(&digest).await.unwrap(), content);

        let dest = dir.path().join(format!("{name}-big.bin"));
        bucket.materialize(&digest, &dest).await.unwrap();
        assert_eq!(fs::read(&dest).unwrap(), content);
        assert_eq!(mode(&dest), 0o444);
    }
}

#[tokio::test]
async fn gc_tmp_deletes_stale_staging_objects() {
    let dir = tempfile::tempdir().unwrap();
    for (name, bucket) in buckets(dir.path()) {
        let staging = Location::from("kiln/cas/tmp/left-over");
        tamper(&bucket, &staging, b"part").await;
        assert_eq!(bucket.gc_tmp(Duration::from_secs(600)).await.unwrap(), 0);
        assert_eq!(bucket.gc_tmp(Duration::ZERO).await.unwrap(), 1, "{name}");
        assert_eq!(count(&bucket, "tmp").await, 0, "{name}");
    }
}

/// Stores a folder, reads it back and materialises it through the shared interface.
async fn round_trip(store: &impl BlobStore, dir: &Path, name: &str) -> Digest {
    let folder = dir.join("out");
    if !folder.exists() {
        sample_folder(&folder);
    }
    let digest = store.put_tree(&folder).await.unwrap();
    assert!(store.contains(&digest).await.unwrap(), "{name}");

    let tree = store.get_tree(&digest).await.unwrap();
    let model = tree.get("model.bin").unwrap().digest;
    assert_eq!(
        store.read_verified(&model).await.unwrap(),
        data("model", 300_000),
        "{name}"
    );
    let small = store.put_bytes(Bytes::from_static(b"small")).await.unwrap();
    let file = dir.join("small.txt");
    write(&file, b"small", 0o644);
    assert_eq!(store.put_file(&file).await.unwrap(), small, "{name}");

    let dest = dir.join(format!("materialized-{name}"));
    assert_eq!(
        store.materialize(&digest, &dest).await.unwrap(),
        ObjectKind::Tree
    );
    for rel in [
        "model.bin",
        "run.sh",
        "metrics/eval.json",
        "metrics/deep/empty.txt",
    ] {
        assert_eq!(
            fs::read(dest.join(rel)).unwrap(),
            fs::read(folder.join(rel)).unwrap(),
            "{name}: {rel}"
        );
    }
    assert_eq!(mode(&dest.join("run.sh")), 0o555, "{name}");
    assert_eq!(mode(&dest.join("model.bin")), 0o444, "{name}");
    assert_eq!(mode(&dest.join("empty")), 0o755, "{name}");
    assert!(matches!(
        store.materialize(&digest, &dest).await,
        Err(CasError::DestinationExists { .. })
    ));
    assert!(matches!(
        store.get_tree(&model).await,
        Err(CasError::NotATree { .. })
    ));
    digest
}

#[tokio::test]
async fn every_store_gives_the_same_digests_through_the_shared_interface() {
    let dir = tempfile::tempdir().unwrap();
    let local = LocalStore::new(dir.path().join("cas"));
    let expected = round_trip(&local, dir.path(), "local").await;
    for (name, bucket) in buckets(dir.path()) {
        assert_eq!(
            round_trip(&bucket, dir.path(), name).await,
            expected,
            "{name}"
        );
        // root, metrics, metrics/deep, empty
        assert_eq!(count(&bucket, "trees").await, 4, "{name}");
    }
}
