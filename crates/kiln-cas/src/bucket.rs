//! The store on an object store (S3-compatible storage, or anything else `object_store` speaks).

use std::collections::HashMap;
use std::fs::{self, File, Permissions};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path as Location;
use object_store::{
    CopyMode, CopyOptions, GetOptions, ObjectStore, PutMode, PutMultipartOptions, PutPayload,
    WriteMultipart,
};

use crate::digest::CHUNK;
use crate::local::rename_noclobber;
use crate::tree::{EntryKind, scan};
use crate::{CasError, Digest, ObjectKind, Result, Tree};

/// Files larger than this are uploaded in parts unless configured otherwise.
const DEFAULT_MULTIPART_THRESHOLD: u64 = 64 << 20;
/// Size of one uploaded part (S3 wants at least 5 MiB for all but the last).
const PART_SIZE: usize = 8 << 20;
/// Parts (and files of a tree) in flight at once.
const CONCURRENCY: usize = 4;

/// A content-addressed store in an object store, under a prefix.
///
/// Layout: `<prefix>/blobs/ab/cdef…`, `<prefix>/trees/ab/cdef…` (named as in
/// [`crate::LocalStore`]) and `<prefix>/tmp/` for parts of large uploads. Objects are
/// published with `PutMode::Create` (create-if-absent): when the object is already there the
/// put fails with `AlreadyExists`, which means success, and the stored object is never
/// replaced. Files larger than the multipart threshold are uploaded in parts to `tmp/`, hashed
/// on the way, then copied into place with `CopyMode::Create` and the staging object deleted;
/// on S3 that needs a bucket configured for conditional copies (`S3CopyIfNotExists`).
/// Everything read back is verified against its digest.
#[derive(Clone, Debug)]
pub struct BucketStore {
    store: Arc<dyn ObjectStore>,
    prefix: Location,
    multipart_threshold: u64,
}

impl BucketStore {
    /// A store at the root of `store`.
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        BucketStore {
            store,
            prefix: Location::default(),
            multipart_threshold: DEFAULT_MULTIPART_THRESHOLD,
        }
    }

    /// Puts every object under `prefix` (`/`-separated, e.g. `kiln/cas`).
    pub fn with_prefix(mut self, prefix: &str) -> Result<Self> {
        self.prefix = Location::parse(prefix).map_err(|e| CasError::ObjectStore {
            location: prefix.to_owned(),
            source: e.into(),
        })?;
        Ok(self)
    }

    /// Uploads files larger than `bytes` in parts instead of in one request.
    pub fn with_multipart_threshold(mut self, bytes: u64) -> Self {
        self.multipart_threshold = bytes;
        self
    }

    /// The underlying object store.
    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The location of the blob with this digest.
    pub fn blob_location(&self, digest: &Digest) -> Location {
        self.object_location("blobs", digest)
    }

    /// The location of the tree manifest with this digest.
    pub fn tree_location(&self, digest: &Digest) -> Location {
        self.object_location("trees", digest)
    }

    fn object_location(&self, folder: &str, digest: &Digest) -> Location {
        let hex = digest.to_hex();
        self.prefix
            .clone()
            .join(folder)
            .join(&hex[..2])
            .join(&hex[2..])
    }

    /// Whether a blob or a tree with this digest is stored.
    pub async fn contains(&self, digest: &Digest) -> Result<bool> {
        Ok(self.kind(digest).await?.is_some())
    }

    /// Whether this digest names a stored blob, a stored tree, or nothing.
    pub async fn kind(&self, digest: &Digest) -> Result<Option<ObjectKind>> {
        if self.exists(&self.blob_location(digest)).await? {
            Ok(Some(ObjectKind::Blob))
        } else if self.exists(&self.tree_location(digest)).await? {
            Ok(Some(ObjectKind::Tree))
        } else {
            Ok(None)
        }
    }

    /// The size of a stored blob, if it is stored.
    pub async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        let location = self.blob_location(digest);
        let head = GetOptions::new().with_head(true);
        match self.store.get_opts(&location, head).await {
            Ok(result) => Ok(Some(result.meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(request_failed(&location)(e)),
        }
    }

    async fn exists(&self, location: &Location) -> Result<bool> {
        let head = GetOptions::new().with_head(true);
        match self.store.get_opts(location, head).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(request_failed(location)(e)),
        }
    }

    /// Stores bytes as a blob.
    pub async fn put_bytes(&self, bytes: Bytes) -> Result<Digest> {
        let digest = if bytes.len() > CHUNK {
            let for_hash = bytes.clone();
            blocking(move || Digest::of_bytes(&for_hash)).await
        } else {
            Digest::of_bytes(&bytes)
        };
        self.create(&self.blob_location(&digest), bytes.into())
            .await?;
        Ok(digest)
    }

    /// Stores a manifest as a tree.
    pub async fn put_manifest(&self, tree: &Tree) -> Result<Digest> {
        let bytes = tree.encode();
        let digest = Digest::of_manifest(&bytes);
        self.create(&self.tree_location(&digest), Bytes::from(bytes).into())
            .await?;
        Ok(digest)
    }

    /// Creates an object unless one is there; one that is there already counts as success.
    async fn create(&self, location: &Location, payload: PutPayload) -> Result<()> {
        match self
            .store
            .put_opts(location, payload, PutMode::Create.into())
            .await
        {
            Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
            Err(e) => Err(request_failed(location)(e)),
        }
    }

    /// Stores a file as a blob: in one request up to the multipart threshold, in parts above.
    ///
    /// Either way the digest is computed over exactly the bytes sent, so a file that changes
    /// meanwhile is reported ([`CasError::ChangedWhileStoring`]), never stored under a wrong
    /// digest.
    pub async fn put_file(&self, path: &Path) -> Result<Digest> {
        let owned = path.to_owned();
        let meta = blocking(move || fs::metadata(&owned))
            .await
            .map_err(CasError::io("inspect", path))?;
        if !meta.is_file() {
            return Err(CasError::UnsupportedFileType { path: path.into() });
        }
        if meta.len() <= self.multipart_threshold {
            let owned = path.to_owned();
            let bytes = blocking(move || fs::read(&owned))
                .await
                .map_err(CasError::io("read", path))?;
            return self.put_bytes(bytes.into()).await;
        }
        self.put_large_file(path).await
    }

    async fn put_large_file(&self, path: &Path) -> Result<Digest> {
        // Hashing in place first is cheap next to an upload and skips it for known content.
        let owned = path.to_owned();
        let before = blocking(move || Digest::of_file(&owned))
            .await
            .map_err(CasError::io("hash", path))?;
        let dest = self.blob_location(&before);
        if self.exists(&dest).await? {
            return Ok(before);
        }

        let staging = self.prefix.clone().join("tmp").join(unique_name());
        let upload = self
            .store
            .put_multipart_opts(&staging, PutMultipartOptions::default())
            .await
            .map_err(request_failed(&staging))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let owned = path.to_owned();
        let file = blocking(move || File::open(owned))
            .await
            .map_err(CasError::io("open", path))?;
        let mut state = (file, blake3::Hasher::new());
        let after = loop {
            let step = blocking(move || {
                let (mut file, mut hasher) = state;
                let chunk = read_part(&mut file, &mut hasher, PART_SIZE)?;
                Ok((file, hasher, chunk))
            })
            .await;
            let (file, hasher, chunk) = match step {
                Ok(step) => step,
                Err(e) => {
                    let _ = writer.abort().await;
                    return Err(CasError::io("read", path)(e));
                }
            };
            if chunk.is_empty() {
                break Digest::from(hasher);
            }
            if let Err(e) = writer.wait_for_capacity(CONCURRENCY).await {
                let _ = writer.abort().await;
                return Err(request_failed(&staging)(e));
            }
            writer.put(chunk);
            state = (file, hasher);
        };
        writer.finish().await.map_err(request_failed(&staging))?;

        let published = if after != before {
            Err(CasError::ChangedWhileStoring {
                path: path.into(),
                before,
                after,
            })
        } else {
            let create = CopyOptions::new().with_mode(CopyMode::Create);
            match self.store.copy_opts(&staging, &dest, create).await {
                Ok(()) | Err(object_store::Error::AlreadyExists { .. }) => Ok(after),
                Err(e) => Err(request_failed(&dest)(e)),
            }
        };
        let deleted = self.delete(&staging).await;
        let digest = published?;
        deleted?;
        Ok(digest)
    }

    async fn delete(&self, location: &Location) -> Result<()> {
        let one = futures_util::stream::once(std::future::ready(Ok(location.clone()))).boxed();
        let mut deleted = self.store.delete_stream(one);
        while let Some(result) = deleted.next().await {
            match result {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(request_failed(location)(e)),
            }
        }
        Ok(())
    }

    /// Stores a folder (files as blobs, folders as trees) and returns the root tree's digest.
    ///
    /// The same rules as [`crate::LocalStore::put_tree`] apply, and the same folder gets the
    /// same digest in either store. Manifests are stored after everything they name.
    pub async fn put_tree(&self, folder: &Path) -> Result<Digest> {
        let owned = folder.to_owned();
        let scanned = blocking(move || scan(&owned)).await?;
        let files: Vec<PathBuf> = scanned.files().into_iter().map(Path::to_owned).collect();
        let digests: HashMap<PathBuf, Digest> = futures_util::stream::iter(files)
            .map(|path| async move {
                let digest = self.put_file(&path).await?;
                Ok::<_, CasError>((path, digest))
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await?;
        let mut trees = Vec::new();
        let root = scanned.build(&mut |path| Ok(digests[path]), &mut trees)?;
        for tree in &trees {
            self.put_manifest(tree).await?;
        }
        Ok(root)
    }

    /// Fetches an object, explaining a miss (absent, or the other kind).
    async fn get(&self, location: &Location, digest: &Digest, want: ObjectKind) -> Result<Bytes> {
        let result = match self.store.get_opts(location, GetOptions::default()).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(match self.kind(digest).await? {
                    Some(_) if want == ObjectKind::Tree => CasError::NotATree { digest: *digest },
                    Some(_) => CasError::NotABlob { digest: *digest },
                    None => CasError::NotFound { digest: *digest },
                });
            }
            Err(e) => return Err(request_failed(location)(e)),
        };
        result.bytes().await.map_err(request_failed(location))
    }

    /// Reads a whole blob, checking its digest.
    pub async fn read_verified(&self, digest: &Digest) -> Result<Bytes> {
        let location = self.blob_location(digest);
        let bytes = self.get(&location, digest, ObjectKind::Blob).await?;
        let for_hash = bytes.clone();
        let actual = blocking(move || Digest::of_bytes(&for_hash)).await;
        if actual != *digest {
            return Err(CasError::Corrupt {
                digest: *digest,
                actual,
                location: location.to_string(),
            });
        }
        Ok(bytes)
    }

    /// Reads and decodes a tree manifest, checking its digest.
    pub async fn get_tree(&self, digest: &Digest) -> Result<Tree> {
        let location = self.tree_location(digest);
        let bytes = self.get(&location, digest, ObjectKind::Tree).await?;
        let actual = Digest::of_manifest(&bytes);
        if actual != *digest {
            return Err(CasError::Corrupt {
                digest: *digest,
                actual,
                location: location.to_string(),
            });
        }
        Tree::decode(&bytes)
    }

    /// Downloads a blob or a tree to `dest`, which must not exist, with the guarantees of
    /// [`crate::LocalStore::materialize`]: verified, read-only files, `0755` folders, and
    /// `dest` either complete or absent.
    pub async fn materialize(&self, digest: &Digest, dest: &Path) -> Result<ObjectKind> {
        let owned = dest.to_owned();
        if blocking(move || fs::symlink_metadata(owned)).await.is_ok() {
            return Err(CasError::DestinationExists { path: dest.into() });
        }
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        let kind = self
            .kind(digest)
            .await?
            .ok_or(CasError::NotFound { digest: *digest })?;
        match kind {
            ObjectKind::Blob => {
                let in_parent = parent.clone();
                let temp = blocking(move || {
                    tempfile::Builder::new()
                        .prefix(".kiln-")
                        .tempfile_in(in_parent)
                })
                .await
                .map_err(CasError::io("create a file in", &parent))?;
                let (file, temp_path) = temp.into_parts();
                self.download(digest, file, temp_path.to_path_buf(), EntryKind::File)
                    .await?;
                let to = dest.to_owned();
                blocking(move || temp_path.persist_noclobber(to))
                    .await
                    .map_err(|e| {
                        if e.error.kind() == std::io::ErrorKind::AlreadyExists {
                            CasError::DestinationExists { path: dest.into() }
                        } else {
                            CasError::io("rename into", dest)(e.error)
                        }
                    })?;
            }
            ObjectKind::Tree => {
                let in_parent = parent.clone();
                let staging = blocking(move || {
                    let dir = tempfile::Builder::new()
                        .prefix(".kiln-")
                        .tempdir_in(in_parent)?;
                    fs::set_permissions(dir.path(), Permissions::from_mode(0o755))?;
                    Ok::<_, std::io::Error>(dir)
                })
                .await
                .map_err(CasError::io("create a folder in", &parent))?;
                self.fill_folder(digest, staging.path()).await?;
                let (from, to) = (staging.path().to_owned(), dest.to_owned());
                blocking(move || rename_noclobber(&from, &to)).await?;
                let _ = staging.keep();
            }
        }
        Ok(kind)
    }

    /// Writes the entries of tree `digest` into the existing, empty folder `root`.
    async fn fill_folder(&self, digest: &Digest, root: &Path) -> Result<()> {
        let mut pending = vec![(*digest, root.to_owned())];
        let mut files = Vec::new();
        while let Some((digest, dir)) = pending.pop() {
            let tree = self.get_tree(&digest).await?;
            for entry in tree.entries() {
                let path = dir.join(entry.name.as_str());
                match entry.kind {
                    EntryKind::Folder => {
                        let owned = path.clone();
                        blocking(move || {
                            fs::create_dir(&owned)?;
                            fs::set_permissions(&owned, Permissions::from_mode(0o755))
                        })
                        .await
                        .map_err(CasError::io("create folder", &path))?;
                        pending.push((entry.digest, path));
                    }
                    kind => files.push((entry.digest, path, kind)),
                }
            }
        }
        futures_util::stream::iter(files)
            .map(|(digest, path, kind)| async move {
                let owned = path.clone();
                let file =
                    blocking(move || File::options().write(true).create_new(true).open(owned))
                        .await
                        .map_err(CasError::io("create", &path))?;
                self.download(&digest, file, path, kind).await
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect::<()>()
            .await
    }

    /// Streams blob `digest` into `file` (empty, at `path`), verifies what was written and
    /// makes the file read-only.
    async fn download(
        &self,
        digest: &Digest,
        file: File,
        path: PathBuf,
        kind: EntryKind,
    ) -> Result<()> {
        let location = self.blob_location(digest);
        let result = match self.store.get_opts(&location, GetOptions::default()).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(CasError::NotFound { digest: *digest });
            }
            Err(e) => return Err(request_failed(&location)(e)),
        };
        let mut stream = result.into_stream();
        let mut state = (file, blake3::Hasher::new());
        let mut pending: Vec<Bytes> = Vec::new();
        let mut pending_len = 0;
        loop {
            let chunk = stream
                .next()
                .await
                .transpose()
                .map_err(request_failed(&location))?;
            let end = chunk.is_none();
            if let Some(chunk) = chunk {
                pending_len += chunk.len();
                pending.push(chunk);
            }
            // Write in batches of about CHUNK: one blocking task per small chunk costs more
            // than the write.
            if !end && pending_len < CHUNK {
                continue;
            }
            let batch = std::mem::take(&mut pending);
            pending_len = 0;
            state = blocking(move || {
                let (mut file, mut hasher) = state;
                for chunk in &batch {
                    hasher.update(chunk);
                    file.write_all(chunk)?;
                }
                Ok::<_, std::io::Error>((file, hasher))
            })
            .await
            .map_err(CasError::io("write", &path))?;
            if end {
                break;
            }
        }
        let (file, hasher) = state;
        let actual = Digest::from(hasher);
        if actual != *digest {
            return Err(CasError::Corrupt {
                digest: *digest,
                actual,
                location: location.to_string(),
            });
        }
        let mode = kind.file_mode();
        blocking(move || file.set_permissions(Permissions::from_mode(mode)))
            .await
            .map_err(CasError::io("set permissions of", &path))
    }

    /// Deletes staging objects of interrupted large uploads not modified for `older_than`;
    /// returns how many were deleted.
    pub async fn gc_tmp(&self, older_than: Duration) -> Result<usize> {
        let tmp = self.prefix.clone().join("tmp");
        let now = SystemTime::now();
        let stale: Vec<Location> = self
            .store
            .list(Some(&tmp))
            .map_err(|e| request_failed(&tmp)(e))
            .try_filter_map(|meta| {
                let modified = SystemTime::from(meta.last_modified);
                let age = now.duration_since(modified).unwrap_or(Duration::ZERO);
                std::future::ready(Ok((age >= older_than).then_some(meta.location)))
            })
            .try_collect()
            .await?;
        for location in &stale {
            self.delete(location).await?;
        }
        Ok(stale.len())
    }
}

/// Wraps an object-store error with the location it concerned.
fn request_failed(location: &Location) -> impl FnOnce(object_store::Error) -> CasError + '_ {
    move |source| CasError::ObjectStore {
        location: location.to_string(),
        source,
    }
}

/// A name no other upload uses: staging objects are never shared.
fn unique_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = blake3::Hasher::new();
    hasher.update(&std::process::id().to_le_bytes());
    hasher.update(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    hasher.update(&now.as_nanos().to_le_bytes());
    hasher.finalize().to_hex()[..32].to_owned()
}

/// Runs blocking work (file I/O, hashing) off the async executor.
pub(crate) async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("blocking task did not finish: {e}"),
        },
    }
}

/// One part of a multipart upload, hashed on the way: up to `size` bytes of `file` (fewer only
/// at its end; none past it), added to `hasher`.
pub fn read_part(
    file: &mut File,
    hasher: &mut blake3::Hasher,
    size: usize,
) -> std::io::Result<Bytes> {
    let mut buf = vec![0; size];
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    hasher.update_rayon(&buf);
    Ok(Bytes::from(buf))
}
