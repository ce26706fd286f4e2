//! External inputs: one object in S3, GCS, Azure Blob Storage or behind a plain HTTP(S) URL,
//! fetched when a run is pinned and kept in the store by content, so that the cache sees its
//! bytes, never its URL.
//!
//! Fetching is skipped when it can be: every object fetched is remembered in the state folder
//! (`external/<blake3 of the URL>.json`: its size, ETag, version and modification time, and the
//! digest its bytes had). On the next pin, a `HEAD` request asks for the object's metadata; when
//! its ETag (or version) and size are the ones remembered and the blob is still in the store,
//! the remembered digest is used and nothing is downloaded. Otherwise the object is downloaded
//! with `If-Match` on the ETag the `HEAD` returned (an object replaced between the two requests
//! is an error to retry, never a mix), streamed to a file beside the store while its bytes are
//! counted for progress, and stored. Without an ETag or a version (some HTTP servers), nothing
//! proves the object unchanged, and it is downloaded every time; its digest still decides
//! whether steps run again.
//!
//! Credentials and endpoints come from the environment, as each service's own tools read them
//! (object_store's `from_env`): `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
//! `AWS_ENDPOINT_URL` (an S3-compatible server), `AWS_ALLOW_HTTP`; `GOOGLE_SERVICE_ACCOUNT`...;
//! `AZURE_STORAGE_ACCOUNT_NAME`, `AZURE_STORAGE_ACCOUNT_KEY`...

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use kiln_cas::{BlobStore, Digest};
use object_store::{GetOptions, ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

/// What a fetch is doing, for a progress display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchProgress {
    /// The object is unchanged since it was last fetched: nothing is downloaded.
    Unchanged {
        /// The URL.
        url: String,
        /// Its size in bytes.
        size: u64,
    },
    /// Bytes are arriving.
    Downloading {
        /// The URL.
        url: String,
        /// Bytes so far.
        done: u64,
        /// The object's size.
        total: u64,
    },
    /// The object is downloaded and stored.
    Fetched {
        /// The URL.
        url: String,
        /// Its size in bytes.
        size: u64,
    },
}

/// What is remembered of an object fetched before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Remembered {
    url: String,
    size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    e_tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    version: Option<String>,
    last_modified: String,
    digest: Digest,
}

/// Fetches external inputs into a store, remembering what it fetched in `dir`.
pub struct Fetcher {
    dir: PathBuf,
    store: Arc<dyn BlobStore>,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher").field("dir", &self.dir).finish()
    }
}

impl Fetcher {
    /// A fetcher keeping objects in `store` and what it knows of them in `dir` (the state
    /// folder's `external/`, on the same file system as a local store, so that a download
    /// moves into the store without a copy).
    pub fn new(dir: impl Into<PathBuf>, store: Arc<dyn BlobStore>) -> Self {
        Fetcher {
            dir: dir.into(),
            store,
        }
    }

    /// The digest of the object at `url`, stored; `progress` hears how it goes.
    pub async fn fetch(
        &self,
        url: &str,
        progress: &mut (dyn FnMut(FetchProgress) + Send),
    ) -> Result<Digest, String> {
        let (remote, location) = open(url)?;
        let meta = remote
            .head(&location)
            .await
            .map_err(|e| describe(url, &e))?;
        let memo = self.dir.join(format!(
            "{}.json",
            Digest::of_bytes(url.as_bytes()).to_hex()
        ));
        let last_modified = meta.last_modified.to_rfc3339();
        if let Some(before) = read_memo(&memo).await
            && before.url == url
            && before.size == meta.size
            && (before.e_tag.is_some() || before.version.is_some())
            && before.e_tag == meta.e_tag
            && before.version == meta.version
            && self.store.contains(&before.digest).await.unwrap_or(false)
        {
            progress(FetchProgress::Unchanged {
                url: url.to_owned(),
                size: meta.size,
            });
            return Ok(before.digest);
        }

        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(|e| format!("{url}: cannot create {}: {e}", self.dir.display()))?;
        let partial = Partial(self.dir.join(format!(
            ".{}.{}.partial",
            Digest::of_bytes(url.as_bytes()).to_hex(),
            std::process::id()
        )));
        let options = GetOptions {
            if_match: meta.e_tag.clone(),
            version: meta.version.clone(),
            ..GetOptions::default()
        };
        let got = remote
            .get_opts(&location, options)
            .await
            .map_err(|e| describe(url, &e))?;
        let mut file = tokio::fs::File::create(&partial.0)
            .await
            .map_err(|e| format!("{url}: cannot write {}: {e}", partial.0.display()))?;
        let mut stream = got.into_stream();
        let mut done = 0u64;
        let mut last_report = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| describe(url, &e))?;
            file.write_all(&chunk)
                .await
                .map_err(|e| format!("{url}: cannot write {}: {e}", partial.0.display()))?;
            done += chunk.len() as u64;
            // A report per 4 MiB at most: a progress bar, not a flood.
            if done - last_report >= 4 << 20 || done == meta.size {
                last_report = done;
                progress(FetchProgress::Downloading {
                    url: url.to_owned(),
                    done,
                    total: meta.size,
                });
            }
        }
        file.flush()
            .await
            .map_err(|e| format!("{url}: cannot write {}: {e}", partial.0.display()))?;
        drop(file);
        if done != meta.size {
            return Err(format!(
                "{url}: the download ended after {done} of {} bytes; try again",
                meta.size
            ));
        }
        let digest = self
            .store
            .put_file_owned(&partial.0)
            .await
            .map_err(|e| format!("{url}: cannot store it: {e}"))?;
        let remembered = Remembered {
            url: url.to_owned(),
            size: meta.size,
            e_tag: meta.e_tag,
            version: meta.version,
            last_modified,
            digest,
        };
        write_memo(&memo, &remembered).await;
        progress(FetchProgress::Fetched {
            url: url.to_owned(),
            size: meta.size,
        });
        Ok(digest)
    }
}

/// A download in progress: removed if the fetch stops before it is stored.
struct Partial(PathBuf);

impl Drop for Partial {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn read_memo(path: &Path) -> Option<Remembered> {
    let bytes = tokio::fs::read(path).await.ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Writes what is known of an object, atomically; a failure only costs a download next time.
async fn write_memo(path: &Path, remembered: &Remembered) {
    let Ok(text) = serde_json::to_vec_pretty(remembered) else {
        return;
    };
    let temp = path.with_extension(format!("json.{}.tmp", std::process::id()));
    let written = async {
        tokio::fs::write(&temp, &text).await?;
        tokio::fs::rename(&temp, path).await
    };
    if let Err(e) = written.await {
        let _ = tokio::fs::remove_file(&temp).await;
        tracing::warn!(path = %path.display(), error = %e, "cannot remember a fetched object");
    }
}

/// A blob store in the bucket and under the prefix `url` names (`s3://bucket/prefix`,
/// `gs://...`, `az://...`): what a server keeps components and artifacts in. Endpoint and
/// credentials come from the environment (`AWS_ENDPOINT`, `AWS_ACCESS_KEY_ID`, ...), with
/// `s3_config` (the same names) over them.
pub fn bucket_store(
    url: &str,
    s3_config: &[(String, String)],
) -> Result<kiln_cas::BucketStore, String> {
    if !["s3://", "gs://", "az://"]
        .iter()
        .any(|s| url.starts_with(s))
    {
        return Err(format!(
            "{url}: a store is an s3://, gs:// or az:// URL (a bucket and a prefix)"
        ));
    }
    let (remote, prefix) = open_with(url, s3_config)?;
    kiln_cas::BucketStore::new(remote)
        .with_prefix(prefix.as_ref())
        .map_err(|e| format!("{url}: {e}"))
}

/// The store serving `url` and the object's path in it.
fn open(url: &str) -> Result<(Arc<dyn ObjectStore>, object_store::path::Path), String> {
    open_with(url, &[])
}

/// [`open`], with `s3_config` (`AWS_*` names and values) over what the environment says.
pub(crate) fn open_with(
    url: &str,
    s3_config: &[(String, String)],
) -> Result<(Arc<dyn ObjectStore>, object_store::path::Path), String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("{url} is not a valid URL: {e}"))?;
    let location = object_store::path::Path::from_url_path(parsed.path())
        .map_err(|e| format!("{url}: bad object path: {e}"))?;
    let bad = |e: object_store::Error| format!("{url}: {e}");
    let remote: Arc<dyn ObjectStore> = match parsed.scheme() {
        "s3" => {
            let mut builder = object_store::aws::AmazonS3Builder::from_env();
            for (name, value) in s3_config {
                if let Ok(key) = name.to_ascii_lowercase().parse() {
                    builder = builder.with_config(key, value);
                }
            }
            Arc::new(builder.with_url(url).build().map_err(bad)?)
        }
        "gs" => Arc::new(
            object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_url(url)
                .build()
                .map_err(bad)?,
        ),
        "az" => Arc::new(
            object_store::azure::MicrosoftAzureBuilder::from_env()
                .with_url(url)
                .build()
                .map_err(bad)?,
        ),
        "http" | "https" => {
            let origin = parsed.origin().ascii_serialization();
            Arc::new(
                object_store::http::HttpBuilder::new()
                    .with_url(origin)
                    .with_client_options(
                        object_store::ClientOptions::new()
                            .with_allow_http(parsed.scheme() == "http"),
                    )
                    .build()
                    .map_err(bad)?,
            )
        }
        other => {
            return Err(format!(
                "{url}: kiln cannot fetch `{other}://` inputs (s3, gs, az, https and http are supported)"
            ));
        }
    };
    Ok((remote, location))
}

/// An object store's error as one line that says what to check.
pub(crate) fn describe(url: &str, error: &object_store::Error) -> String {
    match error {
        object_store::Error::NotFound { .. } => {
            format!("{url}: no such object (or no permission to see it)")
        }
        object_store::Error::Precondition { .. } => {
            format!("{url}: the object changed while it was being fetched; run again")
        }
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => {
            format!(
                "{url}: access denied ({error}); credentials come from the environment (for S3: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL)"
            )
        }
        other => format!("{url}: {other}"),
    }
}
