//! Exports: an output copied out of the store to S3, GCS or Azure Blob Storage after a run
//! (the pipeline's `exports:`), the other half of [`crate::external`].
//!
//! A file becomes one object: at the URL, or, when the URL ends in `/`, under it by the
//! output's file name. A folder becomes one object per file, under the URL as a prefix (a
//! `/` is added when the URL has none), by its path in the folder. Nothing else under the
//! prefix is touched: an object that the folder no longer has stays (kiln never deletes).
//!
//! Every object kiln writes carries the blake3 digest of its bytes as user metadata
//! (`kiln-digest`: `x-amz-meta-kiln-digest` on S3, `x-goog-meta-` on GCS, `x-ms-meta-` on
//! Azure). Before an upload a `HEAD` request reads it back: when the object is there with
//! that digest and size, it holds these bytes and is not uploaded again. A digest, unlike an
//! ETag, means the same on every service and for objects uploaded in parts, and needs no
//! memory of earlier runs on this machine: another machine's export of the same bytes is
//! skipped too. An object written by something else (no `kiln-digest`) is overwritten.
//!
//! Bytes are streamed from the store, never held whole: up to 8 MiB in one request, beyond
//! that in 8 MiB parts (a multipart upload, a few parts in flight), hashed as they are read
//! and the upload aborted if they do not match the digest. Credentials and endpoints come
//! from the environment, as for external inputs ([`crate::external`]).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use kiln_cas::{BlobStore, Digest, EntryKind, ObjectKind};
use object_store::{
    Attribute, AttributeValue, Attributes, GetOptions, ObjectStore, PutMultipartOptions,
    PutOptions, PutPayload, WriteMultipart,
};

use crate::external::{describe, open_with};

/// The user metadata that holds an exported object's digest.
pub const DIGEST_METADATA: &str = "kiln-digest";

/// The largest object sent in one request, and the size of each part above it.
const PART_SIZE: usize = 8 << 20;

/// Parts of one object in flight at once, and objects of one folder uploaded at once.
const CONCURRENCY: usize = 4;

/// What an upload is doing, for a progress display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadProgress {
    /// The object.
    pub url: String,
    /// Bytes sent so far.
    pub done: u64,
    /// Its size.
    pub total: u64,
}

/// What an upload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    /// The object's URL, or the prefix a folder's files went under.
    pub url: String,
    /// Bytes of every object.
    pub size: u64,
    /// Objects written or found holding these bytes.
    pub objects: u64,
    /// Of those, the objects uploaded.
    pub uploaded: u64,
}

/// Copies blobs and trees out of a store to buckets.
#[derive(Debug, Clone)]
pub struct Uploader {
    scratch: PathBuf,
    s3_config: Vec<(String, String)>,
}

/// One object to write: its key under the export's URL, and the blob it holds.
struct Object {
    url: String,
    digest: Digest,
}

impl Uploader {
    /// An uploader that stages blobs of a store that is not a local folder in `scratch` (the
    /// state folder's `exports/`) while they are sent.
    pub fn new(scratch: impl Into<PathBuf>) -> Self {
        Uploader {
            scratch: scratch.into(),
            s3_config: Vec::new(),
        }
    }

    /// S3 settings by their variables' names (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`...),
    /// over what the environment says.
    pub fn with_s3_config(mut self, config: Vec<(String, String)>) -> Self {
        self.s3_config = config;
        self
    }

    /// Copies `digest` (a file or a folder of `store`) to `to`; `file_name` names a file
    /// exported to a prefix. `progress` hears about objects of 16 MiB and more.
    pub async fn upload(
        &self,
        store: Arc<dyn BlobStore>,
        digest: Digest,
        kind: ObjectKind,
        file_name: &str,
        to: &str,
        progress: &(dyn Fn(UploadProgress) + Send + Sync),
    ) -> Result<Uploaded, String> {
        let (url, objects) = match kind {
            ObjectKind::Blob => {
                let url = if to.ends_with('/') {
                    format!("{to}{}", encode_segment(file_name))
                } else {
                    to.to_owned()
                };
                let objects = vec![Object {
                    url: url.clone(),
                    digest,
                }];
                (url, objects)
            }
            ObjectKind::Tree => {
                let prefix = if to.ends_with('/') {
                    to.to_owned()
                } else {
                    format!("{to}/")
                };
                let mut objects = Vec::new();
                collect(store.as_ref(), digest, &prefix, &mut objects).await?;
                (prefix, objects)
            }
        };
        let total = objects.len() as u64;
        let results: Vec<Result<(u64, bool), String>> = futures::stream::iter(objects)
            .map(|object| {
                let store = store.clone();
                async move { self.upload_one(store, &object, progress).await }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let mut done = Uploaded {
            url,
            size: 0,
            objects: total,
            uploaded: 0,
        };
        for result in results {
            let (size, uploaded) = result?;
            done.size += size;
            done.uploaded += u64::from(uploaded);
        }
        Ok(done)
    }

    /// Writes one object unless it holds these bytes already: its size, and whether it was
    /// uploaded.
    async fn upload_one(
        &self,
        store: Arc<dyn BlobStore>,
        object: &Object,
        progress: &(dyn Fn(UploadProgress) + Send + Sync),
    ) -> Result<(u64, bool), String> {
        let url = object.url.as_str();
        let size = store
            .blob_size(&object.digest)
            .await
            .map_err(|e| format!("{url}: {e}"))?
            .ok_or_else(|| format!("{url}: blob {} is not in the store", object.digest))?;
        let (remote, location) = open_with(url, &self.s3_config)?;
        let head = GetOptions {
            head: true,
            ..GetOptions::default()
        };
        match remote.get_opts(&location, head).await {
            Ok(found)
                if found.meta.size == size
                    && found
                        .attributes
                        .get(&Attribute::Metadata(DIGEST_METADATA.into()))
                        .is_some_and(|d| d.as_ref() == object.digest.to_string()) =>
            {
                return Ok((size, false));
            }
            Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(describe_upload(url, &e)),
        }

        // The blob as a file: the store's own, or a copy staged beside it.
        let staged;
        let path = match store.local() {
            Some(local) => local.blob_path(&object.digest),
            None => {
                tokio::fs::create_dir_all(&self.scratch)
                    .await
                    .map_err(|e| format!("{url}: cannot create {}: {e}", self.scratch.display()))?;
                staged = Staged(self.scratch.join(format!(
                    ".{}.{}.{}",
                    object.digest.to_hex(),
                    std::process::id(),
                    Digest::of_bytes(url.as_bytes()).to_hex()
                )));
                let _ = tokio::fs::remove_file(&staged.0).await;
                store
                    .materialize(&object.digest, &staged.0)
                    .await
                    .map_err(|e| format!("{url}: {e}"))?;
                staged.0.clone()
            }
        };
        let attributes = Attributes::from_iter([(
            Attribute::Metadata(DIGEST_METADATA.into()),
            AttributeValue::from(object.digest.to_string()),
        )]);
        if size <= PART_SIZE as u64 {
            let (bytes, actual) = read_hashed(&path)
                .await
                .map_err(|e| format!("{url}: cannot read {}: {e}", path.display()))?;
            if actual != object.digest {
                return Err(corrupt(url, &object.digest, &actual));
            }
            let options = PutOptions {
                attributes,
                ..PutOptions::default()
            };
            remote
                .put_opts(&location, PutPayload::from(bytes), options)
                .await
                .map_err(|e| describe_upload(url, &e))?;
        } else {
            let options = PutMultipartOptions {
                attributes,
                ..PutMultipartOptions::default()
            };
            let upload = remote
                .put_multipart_opts(&location, options)
                .await
                .map_err(|e| describe_upload(url, &e))?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
            match send_parts(&path, url, size, &mut writer, progress).await {
                Ok(actual) if actual == object.digest => {
                    writer
                        .finish()
                        .await
                        .map_err(|e| describe_upload(url, &e))?;
                }
                Ok(actual) => {
                    let _ = writer.abort().await;
                    return Err(corrupt(url, &object.digest, &actual));
                }
                Err(message) => {
                    let _ = writer.abort().await;
                    return Err(message);
                }
            }
        }
        Ok((size, true))
    }
}

/// Reads `path` in parts into `writer`, hashing them: the digest of what was sent.
async fn send_parts(
    path: &Path,
    url: &str,
    size: u64,
    writer: &mut WriteMultipart,
    progress: &(dyn Fn(UploadProgress) + Send + Sync),
) -> Result<Digest, String> {
    let unreadable = |e: std::io::Error| format!("{url}: cannot read {}: {e}", path.display());
    let owned = path.to_owned();
    let file = tokio::task::spawn_blocking(move || File::open(owned))
        .await
        .map_err(|e| format!("{url}: {e}"))?
        .map_err(unreadable)?;
    let mut state = (file, blake3::Hasher::new());
    let mut done = 0u64;
    loop {
        let (file, hasher, chunk) = tokio::task::spawn_blocking(move || {
            let (mut file, mut hasher) = state;
            let chunk = kiln_cas::read_part(&mut file, &mut hasher, PART_SIZE)?;
            Ok::<_, std::io::Error>((file, hasher, chunk))
        })
        .await
        .map_err(|e| format!("{url}: {e}"))?
        .map_err(unreadable)?;
        if chunk.is_empty() {
            return Ok(Digest::from(hasher.finalize()));
        }
        writer
            .wait_for_capacity(CONCURRENCY)
            .await
            .map_err(|e| describe_upload(url, &e))?;
        done += chunk.len() as u64;
        writer.put(chunk);
        if size >= 16 << 20 {
            progress(UploadProgress {
                url: url.to_owned(),
                done,
                total: size,
            });
        }
        state = (file, hasher);
    }
}

/// A whole small file and the digest of its bytes.
async fn read_hashed(path: &Path) -> std::io::Result<(Bytes, Digest)> {
    let owned = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let bytes = std::fs::read(owned)?;
        let digest = Digest::of_bytes(&bytes);
        Ok((Bytes::from(bytes), digest))
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Every file of tree `digest`, as objects under `prefix` by their paths.
async fn collect(
    store: &dyn BlobStore,
    digest: Digest,
    prefix: &str,
    objects: &mut Vec<Object>,
) -> Result<(), String> {
    // A folder's folders, walked without recursion: (tree, the prefix of its entries).
    let mut pending = vec![(digest, prefix.to_owned())];
    while let Some((tree, under)) = pending.pop() {
        let tree = store
            .get_tree(&tree)
            .await
            .map_err(|e| format!("{prefix}: {e}"))?;
        for entry in tree.entries() {
            let name = encode_segment(entry.name.as_str());
            match entry.kind {
                EntryKind::Folder => pending.push((entry.digest, format!("{under}{name}/"))),
                EntryKind::File | EntryKind::Executable => objects.push(Object {
                    url: format!("{under}{name}"),
                    digest: entry.digest,
                }),
            }
        }
    }
    objects.sort_by(|a, b| a.url.cmp(&b.url));
    Ok(())
}

/// A file or folder name as one segment of a URL's path: what a URL gives a special
/// meaning (`%`, `?`, `#`, spaces...) percent-encoded.
fn encode_segment(name: &str) -> String {
    url::form_urlencoded::byte_serialize(name.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

fn corrupt(url: &str, expected: &Digest, actual: &Digest) -> String {
    format!(
        "{url}: the stored blob {expected} reads back as {actual}; the store is damaged; run the step again with `--no-cache`"
    )
}

/// An object store's error on a write, as one line that says what to check.
fn describe_upload(url: &str, error: &object_store::Error) -> String {
    match error {
        object_store::Error::NotFound { .. } => {
            format!("{url}: no such bucket (or no permission to write to it): {error}")
        }
        _ => describe(url, error),
    }
}

/// A blob staged for an upload: removed when the upload is over.
struct Staged(PathBuf);

impl Drop for Staged {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_cas::BucketStore;
    use kiln_test_support::s3::s3_server_or_skip;

    /// A folder kept in a store that is not a local folder (a bucket), exported to a real S3
    /// server: each blob staged beside the state folder while it is sent, and removed after.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_folder_from_a_bucket_store_is_staged_sent_and_then_found_unchanged() {
        let Some(server) = s3_server_or_skip("exports from a bucket store") else {
            return;
        };
        server.create_bucket("exports").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("plots");
        std::fs::create_dir_all(folder.join("deep")).unwrap();
        std::fs::write(folder.join("a 100%.txt"), b"first").unwrap();
        std::fs::write(folder.join("deep/b.txt"), b"second").unwrap();
        let store: Arc<dyn BlobStore> = Arc::new(BucketStore::new(Arc::new(
            object_store::memory::InMemory::new(),
        )));
        let tree = store.put_tree(&folder).await.unwrap();
        let scratch = dir.path().join("exports");
        let uploader = Uploader::new(&scratch).with_s3_config(server.env());
        let heard = std::sync::Mutex::new(0);
        let progress = |_: UploadProgress| *heard.lock().unwrap() += 1;

        let done = uploader
            .upload(
                store.clone(),
                tree,
                ObjectKind::Tree,
                "plots",
                "s3://exports/run",
                &progress,
            )
            .await
            .unwrap();
        assert_eq!(done.url, "s3://exports/run/");
        assert_eq!((done.objects, done.uploaded, done.size), (2, 2, 11));
        assert_eq!(
            server.get_object("exports", "run/a 100%.txt").unwrap(),
            b"first"
        );
        assert_eq!(
            server.get_object("exports", "run/deep/b.txt").unwrap(),
            b"second"
        );
        assert_eq!(
            std::fs::read_dir(&scratch).unwrap().count(),
            0,
            "staged blobs are left"
        );
        assert_eq!(
            *heard.lock().unwrap(),
            0,
            "small objects make no progress reports"
        );

        let again = uploader
            .upload(
                store.clone(),
                tree,
                ObjectKind::Tree,
                "plots",
                "s3://exports/run/",
                &progress,
            )
            .await
            .unwrap();
        assert_eq!((again.objects, again.uploaded), (2, 0));

        // One file to a prefix goes by its file name.
        let blob = store.put_bytes(Bytes::from_static(b"w")).await.unwrap();
        let one = uploader
            .upload(
                store,
                blob,
                ObjectKind::Blob,
                "model.bin",
                "s3://exports/m/",
                &progress,
            )
            .await
            .unwrap();
        assert_eq!(one.url, "s3://exports/m/model.bin");
        assert_eq!(server.get_object("exports", "m/model.bin").unwrap(), b"w");
    }
}
