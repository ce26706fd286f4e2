//! The content-addressed store (CAS) of kiln: every artifact, a file or a folder, is stored
//! once under the blake3 digest of its content and verified against that digest whenever it
//! is read back.
//!
//! A file is a *blob*; a folder is a *tree*, a canonical, versioned manifest of its entries
//! (see [`tree`]). [`LocalStore`] keeps objects in a folder of the local file system (the
//! default under `.kiln/` or `KILN_HOME`), [`BucketStore`] in anything the `object_store`
//! crate speaks (S3-compatible storage on a cluster). Both publish atomically and never
//! overwrite: a reader sees a whole, correctly hashed object or nothing, even if the writer
//! was killed halfway. [`BlobStore`] is the async interface both share. A [`StatCache`] remembers
//! the digests of files by their size, times and inode, so that storing an unchanged file or
//! folder again reads nothing ([`LocalStore::put_file_cached`], [`LocalStore::put_tree_cached`]).
//! Files are read through buffers of a few MiB, never mapped or read whole: memory stays
//! small whatever the size of what is stored.
//!
//! This crate deliberately knows nothing of steps, pipelines, runs or cache keys: it maps
//! digests to bytes and back, and it never deletes stored objects (garbage collection of
//! unreferenced objects needs to know what is referenced, which is the engine's business).
//!
//! ```
//! # fn main() -> kiln_cas::Result<()> {
//! # let dir = tempfile::tempdir().unwrap();
//! use kiln_cas::{Digest, LocalStore};
//!
//! let store = LocalStore::new(dir.path().join("cas"));
//! let digest = store.put_bytes(b"hello")?;
//! assert_eq!(
//!     digest.to_string(),
//!     "blake3:ea8f163db38682925e4491c5e58d4bb3506ef8c14eb78a86e908c5624a67200f",
//! );
//! assert_eq!(store.read_verified(&digest)?, b"hello");
//! assert_eq!(digest, "blake3:ea8f163db38682925e4491c5e58d4bb3506ef8c14eb78a86e908c5624a67200f".parse::<Digest>()?);
//! # Ok(())
//! # }
//! ```

use std::path::Path;

use bytes::Bytes;

mod bucket;
mod digest;
mod error;
mod local;
pub mod stat_cache;
pub mod tree;
mod verify;

pub use bucket::{BucketStore, read_part};
pub use digest::Digest;
pub use error::{CasError, Result};
pub use local::LocalStore;
pub use stat_cache::{FileStamp, StatCache, StatCounts};
pub use tree::{EntryKind, EntryName, Tree, TreeEntry};
pub use verify::VerifiedReader;

use bucket::blocking;

/// What a digest names in a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    /// File content.
    Blob,
    /// A folder's manifest.
    Tree,
}

/// The operations every store offers, async so that local and remote stores look the same
/// to the engine, and dyn-compatible so that the engine, replay and export hold an
/// `Arc<dyn BlobStore>` and never name a backend.
///
/// [`LocalStore`] runs its (blocking, `std::fs`) work on tokio's blocking pool — all but a
/// single `stat`, done in place — so its implementation needs a tokio runtime; its inherent
/// methods are the synchronous originals.
#[async_trait::async_trait]
pub trait BlobStore: Send + Sync + std::fmt::Debug {
    /// Whether a blob or a tree with this digest is stored.
    async fn contains(&self, digest: &Digest) -> Result<bool> {
        Ok(self.kind(digest).await?.is_some())
    }

    /// Whether this digest names a stored blob, a stored tree, or nothing.
    async fn kind(&self, digest: &Digest) -> Result<Option<ObjectKind>>;

    /// The size in bytes of a stored blob, if it is stored.
    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>>;

    /// Stores bytes as a blob.
    async fn put_bytes(&self, bytes: Bytes) -> Result<Digest>;

    /// Stores a copy of a file as a blob.
    async fn put_file(&self, path: &Path) -> Result<Digest>;

    /// Stores a file that nobody else uses any more (a step's output in its scratch folder):
    /// a local store may move it in instead of copying. By default, a copy.
    async fn put_file_owned(&self, path: &Path) -> Result<Digest> {
        self.put_file(path).await
    }

    /// Stores a folder and returns its tree digest.
    async fn put_tree(&self, folder: &Path) -> Result<Digest>;

    /// Stores a folder that nobody else uses any more; see [`BlobStore::put_file_owned`].
    async fn put_tree_owned(&self, folder: &Path) -> Result<Digest> {
        self.put_tree(folder).await
    }

    /// Stores a manifest as a tree (its entries must be stored already).
    async fn put_manifest(&self, tree: &Tree) -> Result<Digest>;

    /// Reads a whole blob, checking its digest.
    async fn read_verified(&self, digest: &Digest) -> Result<Bytes>;

    /// Reads a tree manifest, checking its digest.
    async fn get_tree(&self, digest: &Digest) -> Result<Tree>;

    /// Writes a blob or a tree to `dest` (which must not exist) as read-only, verified copies.
    async fn materialize(&self, digest: &Digest, dest: &Path) -> Result<ObjectKind>;

    /// Makes a blob or a tree appear at `dest` (which must not exist) for a reader that
    /// cannot write to it (a read-only preopen or bind mount): a store on this machine links
    /// its own objects there instead of copying them ([`LocalStore::link_into`]). By default,
    /// [`BlobStore::materialize`].
    async fn link_into(&self, digest: &Digest, dest: &Path) -> Result<ObjectKind> {
        self.materialize(digest, dest).await
    }

    /// Makes every object stored so far durable, for a store that defers it
    /// ([`LocalStore::with_group_commit`]); whoever writes a record naming objects calls it
    /// first. By default there is nothing to do.
    async fn sync(&self) -> Result<()> {
        Ok(())
    }

    /// The store as a folder on this machine, when it is one: code that streams many large
    /// blobs (a bundle being written or read) reads and writes its files directly instead of
    /// holding each blob in memory. `None` by default.
    fn local(&self) -> Option<&LocalStore> {
        None
    }
}

#[async_trait::async_trait]
impl BlobStore for LocalStore {
    fn local(&self) -> Option<&LocalStore> {
        Some(self)
    }

    // A `stat` or two of a local file, in place: it costs less than the trip to the blocking
    // pool, and a cached run asks once per output of every step. Reads, writes and hashing
    // go to the pool.
    async fn contains(&self, digest: &Digest) -> Result<bool> {
        LocalStore::contains(self, digest)
    }

    async fn kind(&self, digest: &Digest) -> Result<Option<ObjectKind>> {
        LocalStore::kind(self, digest)
    }

    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        let path = self.blob_path(digest);
        match std::fs::metadata(&path) {
            Ok(meta) => Ok(Some(meta.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(CasError::io("stat", &path)(e)),
        }
    }

    async fn put_file_owned(&self, path: &Path) -> Result<Digest> {
        let (store, path) = (self.clone(), path.to_owned());
        blocking(move || store.put_file_owned(&path)).await
    }

    async fn put_tree_owned(&self, folder: &Path) -> Result<Digest> {
        let (store, folder) = (self.clone(), folder.to_owned());
        blocking(move || store.put_tree_owned(&folder)).await
    }

    async fn put_manifest(&self, tree: &Tree) -> Result<Digest> {
        let (store, tree) = (self.clone(), tree.clone());
        blocking(move || store.put_manifest(&tree)).await
    }

    async fn put_bytes(&self, bytes: Bytes) -> Result<Digest> {
        let store = self.clone();
        blocking(move || store.put_bytes(&bytes)).await
    }

    async fn put_file(&self, path: &Path) -> Result<Digest> {
        let (store, path) = (self.clone(), path.to_owned());
        blocking(move || store.put_file(&path)).await
    }

    async fn put_tree(&self, folder: &Path) -> Result<Digest> {
        let (store, folder) = (self.clone(), folder.to_owned());
        blocking(move || store.put_tree(&folder)).await
    }

    async fn read_verified(&self, digest: &Digest) -> Result<Bytes> {
        let (store, digest) = (self.clone(), *digest);
        blocking(move || store.read_verified(&digest).map(Bytes::from)).await
    }

    async fn get_tree(&self, digest: &Digest) -> Result<Tree> {
        let (store, digest) = (self.clone(), *digest);
        blocking(move || store.get_tree(&digest)).await
    }

    async fn materialize(&self, digest: &Digest, dest: &Path) -> Result<ObjectKind> {
        let (store, digest, dest) = (self.clone(), *digest, dest.to_owned());
        blocking(move || store.materialize(&digest, &dest)).await
    }

    async fn sync(&self) -> Result<()> {
        if self.group_commit.is_none() {
            return Ok(());
        }
        let store = self.clone();
        blocking(move || store.sync()).await
    }

    async fn link_into(&self, digest: &Digest, dest: &Path) -> Result<ObjectKind> {
        // A blob is two metadata calls, made in place (a trip to the blocking pool would
        // cost more); a tree may be thousands of links.
        if LocalStore::kind(self, digest)? == Some(ObjectKind::Blob) {
            return LocalStore::link_into(self, digest, dest);
        }
        let (store, digest, dest) = (self.clone(), *digest, dest.to_owned());
        blocking(move || store.link_into(&digest, &dest)).await
    }
}

#[async_trait::async_trait]
impl BlobStore for BucketStore {
    async fn contains(&self, digest: &Digest) -> Result<bool> {
        BucketStore::contains(self, digest).await
    }

    async fn kind(&self, digest: &Digest) -> Result<Option<ObjectKind>> {
        BucketStore::kind(self, digest).await
    }

    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        BucketStore::blob_size(self, digest).await
    }

    async fn put_manifest(&self, tree: &Tree) -> Result<Digest> {
        BucketStore::put_manifest(self, tree).await
    }

    async fn put_bytes(&self, bytes: Bytes) -> Result<Digest> {
        BucketStore::put_bytes(self, bytes).await
    }

    async fn put_file(&self, path: &Path) -> Result<Digest> {
        BucketStore::put_file(self, path).await
    }

    async fn put_tree(&self, folder: &Path) -> Result<Digest> {
        BucketStore::put_tree(self, folder).await
    }

    async fn read_verified(&self, digest: &Digest) -> Result<Bytes> {
        BucketStore::read_verified(self, digest).await
    }

    async fn get_tree(&self, digest: &Digest) -> Result<Tree> {
        BucketStore::get_tree(self, digest).await
    }

    async fn materialize(&self, digest: &Digest, dest: &Path) -> Result<ObjectKind> {
        BucketStore::materialize(self, digest, dest).await
    }
}
