//! The store on the local file system.

use std::collections::HashMap;
use std::fs::{self, File, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tempfile::{NamedTempFile, TempPath};

use crate::digest::CHUNK;
use crate::stat_cache::{FileStamp, StatCache};
use crate::tree::{EntryKind, ScannedFolder, scan};
use crate::verify::unwrap_io;
use crate::{CasError, Digest, ObjectKind, Result, Tree, VerifiedReader};

/// Mode of stored objects: nobody writes to them after they are published.
const STORED_MODE: u32 = 0o444;
/// Mode of materialised folders, whatever the umask.
const FOLDER_MODE: u32 = 0o755;

/// A content-addressed store in a folder of the local file system.
///
/// Layout (folders are created on first write; a missing root is an empty store):
///
/// ```text
/// <root>/blobs/ab/cdef…   file content, named by the 64 hex digits of its digest split 2/62
/// <root>/trees/ab/cdef…   tree manifests, named the same way by their tree digest
/// <root>/tmp/             files being written; only complete, hashed, fsynced files leave it
/// ```
///
/// Every write goes to `tmp/` first and is published by an atomic no-clobber rename (or
/// link), so a reader sees either nothing or the whole object, and an object, once there, is
/// never replaced. Stored files are read-only (`0444`). The store never hands out a hard link
/// or its own path to a step: [`LocalStore::materialize`] makes reflinked or plain copies
/// (only [`LocalStore::link_into`] links, for readers that cannot write).
///
/// Durability: by default every object is synced before it is published, and its folder
/// after. A store made with [`LocalStore::with_group_commit`] publishes without syncing and
/// makes everything published so far durable at once when [`LocalStore::sync`] is called —
/// one `syncfs` for however many objects, shared by the callers that arrive while it runs.
/// Whoever writes a record that names objects calls `sync` first.
#[derive(Clone, Debug)]
pub struct LocalStore {
    root: Arc<Path>,
    pub(crate) group_commit: Option<Arc<GroupCommit>>,
}

/// Objects published without a sync, and how far syncs have got.
#[derive(Debug, Default)]
pub(crate) struct GroupCommit {
    /// How many objects have been published without a sync, ever.
    published: std::sync::atomic::AtomicU64,
    /// The value of `published` the last sync covered; held while a sync runs.
    synced: std::sync::Mutex<u64>,
}

/// The two namespaces of a store.
#[derive(Clone, Copy)]
enum Namespace {
    Blobs,
    Trees,
}

impl LocalStore {
    /// A store rooted at `root`; nothing is created until the first write.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalStore {
            root: root.into().into(),
            group_commit: None,
        }
    }

    /// The same store, publishing without syncing each object: see [`LocalStore::sync`].
    /// Clones share the batch.
    pub fn with_group_commit(mut self) -> Self {
        self.group_commit = Some(Arc::default());
        self
    }

    /// Makes every object published so far durable (a no-op for a store that syncs each
    /// object). One `syncfs` of the store's file system covers all of them; a caller that
    /// arrives while another's sync runs waits for it, and returns at once if that sync
    /// covered its objects.
    pub fn sync(&self) -> Result<()> {
        use std::sync::atomic::Ordering;
        let Some(group) = &self.group_commit else {
            return Ok(());
        };
        let wanted = group.published.load(Ordering::SeqCst);
        let mut synced = group.synced.lock().expect("sync lock");
        if *synced >= wanted {
            return Ok(());
        }
        let covered = group.published.load(Ordering::SeqCst);
        let root = File::open(self.root()).map_err(CasError::io("open", self.root()))?;
        rustix::fs::syncfs(&root).map_err(|e| CasError::io("sync", self.root())(e.into()))?;
        *synced = covered;
        Ok(())
    }

    /// Syncs a file about to be published, unless a later [`LocalStore::sync`] will.
    fn sync_before_publish(&self, file: &File) -> io::Result<()> {
        match self.group_commit {
            Some(_) => Ok(()),
            None => file.sync_all(),
        }
    }

    /// The folder the store lives in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob with this digest is (or would be) stored.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.object_path(Namespace::Blobs, digest)
    }

    /// Where the tree manifest with this digest is (or would be) stored.
    pub fn tree_path(&self, digest: &Digest) -> PathBuf {
        self.object_path(Namespace::Trees, digest)
    }

    /// The folder of files being written.
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn object_path(&self, namespace: Namespace, digest: &Digest) -> PathBuf {
        let hex = digest.to_hex();
        let folder = match namespace {
            Namespace::Blobs => "blobs",
            Namespace::Trees => "trees",
        };
        self.root.join(folder).join(&hex[..2]).join(&hex[2..])
    }

    /// Whether a blob or a tree with this digest is stored.
    pub fn contains(&self, digest: &Digest) -> Result<bool> {
        Ok(self.kind(digest)?.is_some())
    }

    /// Whether this digest names a stored blob, a stored tree, or nothing.
    pub fn kind(&self, digest: &Digest) -> Result<Option<ObjectKind>> {
        if exists(&self.blob_path(digest))? {
            Ok(Some(ObjectKind::Blob))
        } else if exists(&self.tree_path(digest))? {
            Ok(Some(ObjectKind::Tree))
        } else {
            Ok(None)
        }
    }

    /// Stores bytes as a blob.
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<Digest> {
        let digest = Digest::of_bytes(bytes);
        if !exists(&self.blob_path(&digest))? {
            let mut temp = self.temp_file("put")?;
            temp.write_all(bytes)
                .map_err(CasError::io("write", temp.path()))?;
            self.publish(temp, Namespace::Blobs, &digest)?;
        }
        Ok(digest)
    }

    /// Stores everything a reader yields as a blob, hashing while it writes.
    pub fn put_reader(&self, mut reader: impl Read) -> Result<Digest> {
        let mut temp = self.temp_file("put")?;
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0; CHUNK];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(CasError::io("read input for", temp.path())(e)),
            };
            hasher.update_rayon(&buf[..n]);
            temp.write_all(&buf[..n])
                .map_err(CasError::io("write", temp.path()))?;
        }
        let digest = hasher.into();
        self.publish(temp, Namespace::Blobs, &digest)?;
        Ok(digest)
    }

    /// Stores a copy of a file as a blob; the file itself is left alone.
    ///
    /// The file is reflinked into `tmp/` where the file system can (a copy-on-write clone
    /// costs no data), and copied in the kernel otherwise; the digest is then computed over
    /// that private copy, so a producer still writing to the file can never get a blob stored
    /// under the wrong digest. Callers that are done with the file should prefer
    /// [`LocalStore::put_file_owned`], which moves it and copies nothing.
    pub fn put_file(&self, path: &Path) -> Result<Digest> {
        self.put_file_stamped(path).map(|stored| stored.digest)
    }

    /// As [`LocalStore::put_file`], unless `cache` knows the file: one whose size, times,
    /// inode and device are as recorded there, and whose blob is in this store, is neither
    /// read nor hashed. Otherwise it is stored as by `put_file` and recorded in `cache` (see
    /// [`StatCache`] for when it is not). The cache knows files by the path given: give
    /// absolute paths. The caller saves the cache.
    pub fn put_file_cached(&self, path: &Path, cache: &StatCache) -> Result<Digest> {
        let meta = fs::metadata(path).map_err(CasError::io("inspect", path))?;
        if !meta.is_file() {
            return Err(CasError::UnsupportedFileType { path: path.into() });
        }
        self.put_known_file(path, &FileStamp::of(&meta), cache)
    }

    /// The digest of a file whose stamp is `stamp`, from `cache` when the file is unchanged
    /// and its blob stored, else by storing it.
    fn put_known_file(&self, path: &Path, stamp: &FileStamp, cache: &StatCache) -> Result<Digest> {
        if let Some(digest) = cache.lookup(path, stamp)
            && exists(&self.blob_path(&digest))?
        {
            cache.count_unchanged();
            return Ok(digest);
        }
        let hashed_at = cache.now();
        let stored = self.put_file_stamped(path)?;
        cache.count_hashed();
        if stored.before == stored.after {
            cache.record(path, stored.before, stored.digest, hashed_at);
        } else {
            cache.forget(path);
        }
        Ok(stored.digest)
    }

    /// Stores a copy of a file as [`LocalStore::put_file`] does, and says what the file was
    /// before and after it was copied.
    fn put_file_stamped(&self, path: &Path) -> Result<StoredFile> {
        let mut source = File::open(path).map_err(CasError::io("open", path))?;
        let meta = source.metadata().map_err(CasError::io("inspect", path))?;
        if !meta.is_file() {
            return Err(CasError::UnsupportedFileType { path: path.into() });
        }
        let mut temp = self.temp_file("copy")?;
        clone_or_copy(&mut source, temp.as_file_mut()).map_err(CasError::io("copy", path))?;
        let after = source.metadata().map_err(CasError::io("inspect", path))?;
        drop(source);
        let digest = Digest::of_file(temp.path()).map_err(CasError::io("hash", temp.path()))?;
        self.publish(temp, Namespace::Blobs, &digest)?;
        Ok(StoredFile {
            digest,
            before: FileStamp::of(&meta),
            after: FileStamp::of(&after),
        })
    }

    /// Moves a file into the store as a blob; the caller gives the file up (its path is gone
    /// afterwards, whatever the outcome of the store).
    ///
    /// On the store's file system the file is renamed into `tmp/`, hashed there and renamed
    /// into place: no byte is copied. A file on another file system, or one with more than
    /// one hard link (another name could still write into the store through it), is copied as
    /// by [`LocalStore::put_file`] and then removed.
    pub fn put_file_owned(&self, path: &Path) -> Result<Digest> {
        let meta = fs::symlink_metadata(path).map_err(CasError::io("inspect", path))?;
        if meta.file_type().is_symlink() {
            return Err(CasError::Symlink { path: path.into() });
        }
        if !meta.is_file() {
            return Err(CasError::UnsupportedFileType { path: path.into() });
        }
        if meta.nlink() > 1 {
            return self.copy_then_remove(path);
        }
        // A file moved into tmp/ keeps its old modification time; refresh it so that a
        // concurrent `gc_tmp` cannot take it for a stale leftover. Best effort: failing to
        // touch a file is no reason to refuse storing it.
        if let Ok(file) = File::open(path) {
            let _ = file.set_modified(SystemTime::now());
        }
        let tmp_dir = self.ensure_tmp_dir()?;
        let moved = tempfile::Builder::new()
            .prefix("own-")
            .make_in(&tmp_dir, |temp| fs::rename(path, temp));
        let temp = match moved {
            Ok(temp) => temp.into_temp_path(),
            Err(e) if e.kind() == io::ErrorKind::CrossesDevices => {
                return self.copy_then_remove(path);
            }
            Err(e) => return Err(CasError::io("move into the store", path)(e)),
        };
        // Hashed where it lies (nothing else holds it now); stored bytes are left alone, and
        // an output that is already stored (a step that writes what another wrote) costs
        // neither a sync nor a publish.
        let digest = Digest::of_file(&temp).map_err(CasError::io("hash", &*temp))?;
        if exists(&self.blob_path(&digest))? {
            return Ok(digest);
        }
        let file = File::open(&temp).map_err(CasError::io("open", &*temp))?;
        file.set_permissions(Permissions::from_mode(STORED_MODE))
            .and_then(|()| self.sync_before_publish(&file))
            .map_err(CasError::io("sync", &*temp))?;
        drop(file);
        self.publish_path(temp, Namespace::Blobs, &digest)?;
        Ok(digest)
    }

    fn copy_then_remove(&self, path: &Path) -> Result<Digest> {
        let digest = self.put_file(path)?;
        fs::remove_file(path).map_err(CasError::io("remove", path))?;
        Ok(digest)
    }

    /// Stores a folder: every file as a blob, every folder as a tree manifest. Returns the
    /// root tree's digest. The folder itself is left alone.
    ///
    /// Symlinks, special files and names that are not UTF-8 are refused before anything is
    /// stored (see [`crate::tree`]).
    ///
    /// Files are stored several at a time (up to 16, on threads of their own); the digest is
    /// the same as storing them one by one.
    pub fn put_tree(&self, folder: &Path) -> Result<Digest> {
        self.put_scanned(&scan(folder)?, |path, _| self.put_file(path))
    }

    /// As [`LocalStore::put_tree`], with every file stored as by
    /// [`LocalStore::put_file_cached`]: only the files that changed are read, and the
    /// manifests are rebuilt from the digests of the others. The caller saves the cache.
    pub fn put_tree_cached(&self, folder: &Path, cache: &StatCache) -> Result<Digest> {
        self.put_scanned(&scan(folder)?, |path, stamp| {
            self.put_known_file(path, stamp, cache)
        })
    }

    /// Moves a folder into the store, as [`LocalStore::put_tree`] but with every file moved
    /// by [`LocalStore::put_file_owned`]; the folder is removed afterwards. If storing fails
    /// halfway, the files already moved are in the store and gone from the folder.
    pub fn put_tree_owned(&self, folder: &Path) -> Result<Digest> {
        let root = self.put_scanned(&scan(folder)?, |path, _| self.put_file_owned(path))?;
        fs::remove_dir_all(folder).map_err(CasError::io("remove", folder))?;
        Ok(root)
    }

    /// Stores every file of a scanned folder with `blob`, several at once, then its
    /// manifests, children first; returns the root's digest.
    fn put_scanned(
        &self,
        scanned: &ScannedFolder,
        blob: impl Fn(&Path, &FileStamp) -> Result<Digest> + Sync,
    ) -> Result<Digest> {
        let files = scanned.stamped_files();
        let digests = in_parallel(&files, |(path, stamp)| blob(path, stamp))?;
        let by_path: HashMap<&Path, Digest> =
            files.iter().map(|(path, _)| *path).zip(digests).collect();
        let mut trees = Vec::new();
        let root = scanned.build(&mut |path| Ok(by_path[path]), &mut trees)?;
        for tree in &trees {
            self.put_manifest(tree)?;
        }
        Ok(root)
    }

    /// Stores one tree manifest as it is (its entries are not checked for presence).
    pub fn put_manifest(&self, tree: &Tree) -> Result<Digest> {
        let bytes = tree.encode();
        let digest = Digest::of_manifest(&bytes);
        if !exists(&self.tree_path(&digest))? {
            let mut temp = self.temp_file("tree")?;
            temp.write_all(&bytes)
                .map_err(CasError::io("write", temp.path()))?;
            self.publish(temp, Namespace::Trees, &digest)?;
        }
        Ok(digest)
    }

    /// Opens a blob for reading; the reader fails at the end if the content is corrupt.
    pub fn open_verified(&self, digest: &Digest) -> Result<VerifiedReader<File>> {
        let path = self.blob_path(digest);
        let file = self.open_object(&path, digest, ObjectKind::Blob)?;
        Ok(VerifiedReader::new(
            file,
            *digest,
            path.display().to_string(),
        ))
    }

    /// Reads a whole blob, checking its digest.
    pub fn read_verified(&self, digest: &Digest) -> Result<Vec<u8>> {
        let path = self.blob_path(digest);
        let mut out = Vec::new();
        self.open_verified(digest)?
            .read_to_end(&mut out)
            .map_err(|e| unwrap_io(e, "read", &path))?;
        Ok(out)
    }

    /// Reads and decodes a tree manifest, checking its digest.
    pub fn get_tree(&self, digest: &Digest) -> Result<Tree> {
        let path = self.tree_path(digest);
        let mut bytes = Vec::new();
        self.open_object(&path, digest, ObjectKind::Tree)?
            .read_to_end(&mut bytes)
            .map_err(CasError::io("read", &path))?;
        let actual = Digest::of_manifest(&bytes);
        if actual != *digest {
            return Err(CasError::Corrupt {
                digest: *digest,
                actual,
                location: path.display().to_string(),
            });
        }
        Tree::decode(&bytes)
    }

    /// Opens a stored object, explaining a miss (absent, or the other kind).
    fn open_object(&self, path: &Path, digest: &Digest, want: ObjectKind) -> Result<File> {
        match File::open(path) {
            Ok(file) => Ok(file),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(match self.kind(digest)? {
                Some(_) if want == ObjectKind::Tree => CasError::NotATree { digest: *digest },
                Some(_) => CasError::NotABlob { digest: *digest },
                None => CasError::NotFound { digest: *digest },
            }),
            Err(e) => Err(CasError::io("open", path)(e)),
        }
    }

    /// Writes a stored blob or tree to `dest`, which must not exist yet, and returns which
    /// it was.
    ///
    /// Files are reflinked where the file system can and copied otherwise, never hard-linked,
    /// so writing through them cannot reach the store; every file is verified against its
    /// digest after the copy, and made read-only (`0444`, or `0555` for executables). Folders
    /// get `0755`. The result is assembled beside `dest` and renamed into place, so `dest`
    /// is either complete or absent.
    pub fn materialize(&self, digest: &Digest, dest: &Path) -> Result<ObjectKind> {
        if exists(dest)? {
            return Err(CasError::DestinationExists { path: dest.into() });
        }
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let kind = self
            .kind(digest)?
            .ok_or(CasError::NotFound { digest: *digest })?;
        match kind {
            ObjectKind::Blob => {
                let mut temp = tempfile::Builder::new()
                    .prefix(".kiln-")
                    .tempfile_in(parent)
                    .map_err(CasError::io("create a file in", parent))?;
                self.copy_blob(digest, &mut temp, EntryKind::File)?;
                match temp.into_temp_path().persist_noclobber(dest) {
                    Ok(()) => {}
                    Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => {
                        return Err(CasError::DestinationExists { path: dest.into() });
                    }
                    Err(e) => return Err(CasError::io("rename into", dest)(e.error)),
                }
            }
            ObjectKind::Tree => {
                self.assemble_tree(digest, parent, dest, &|d, path, kind| {
                    self.copy_new(d, path, kind)
                })?;
            }
        }
        Ok(kind)
    }

    /// Builds tree `digest` in a new folder in `parent`, every file made by `file`, and
    /// renames it to `dest` (which must not exist): `dest` is whole or absent.
    fn assemble_tree(
        &self,
        digest: &Digest,
        parent: &Path,
        dest: &Path,
        file: &(dyn Fn(&Digest, &Path, EntryKind) -> Result<()> + Sync),
    ) -> Result<()> {
        let staging = tempfile::Builder::new()
            .prefix(".kiln-")
            .tempdir_in(parent)
            .map_err(CasError::io("create a folder in", parent))?;
        fs::set_permissions(staging.path(), Permissions::from_mode(FOLDER_MODE))
            .map_err(CasError::io("set permissions of", staging.path()))?;
        // Folders first, in order; then the files, several at once (a folder of thousands
        // of small files is mostly waiting on the disk, one file at a time).
        let mut files = Vec::new();
        self.make_folders(digest, staging.path(), &mut files)?;
        in_parallel(&files, |(digest, path, kind)| file(digest, path, *kind))?;
        rename_noclobber(staging.path(), dest)?;
        // The staging name is gone; nothing is left for the guard to clean up.
        let _ = staging.keep();
        Ok(())
    }

    /// Makes a stored blob or tree appear at `dest`, which must not exist yet, without
    /// copying data: every file is a hard link to the stored object. Returns which it was.
    ///
    /// Only for a reader that cannot write through the link — a wasm guest behind a
    /// read-only preopen, a container behind a read-only bind mount. Anyone else who can
    /// write to the linked file writes into the store, which is why
    /// [`LocalStore::materialize`] never links. The objects are not hashed again (they were
    /// when stored): staging a gigabyte costs one system call. A file that cannot be linked
    /// (another file system, too many links) is copied as `materialize` would, and so is an
    /// executable, whose mode the stored object (`0444`) lacks. A folder is assembled beside
    /// `dest` and renamed into place, so `dest` is either complete or absent.
    pub fn link_into(&self, digest: &Digest, dest: &Path) -> Result<ObjectKind> {
        if exists(dest)? {
            return Err(CasError::DestinationExists { path: dest.into() });
        }
        let kind = self
            .kind(digest)?
            .ok_or(CasError::NotFound { digest: *digest })?;
        match kind {
            ObjectKind::Blob => self.link_or_copy(digest, dest, EntryKind::File)?,
            ObjectKind::Tree => {
                let parent = match dest.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p,
                    _ => Path::new("."),
                };
                self.assemble_tree(digest, parent, dest, &|d, path, kind| {
                    self.link_or_copy(d, path, kind)
                })?;
            }
        }
        Ok(kind)
    }

    /// Links blob `digest` at `dest` (which must not exist), or copies and verifies it where a
    /// link cannot be made or would have the wrong mode.
    fn link_or_copy(&self, digest: &Digest, dest: &Path, kind: EntryKind) -> Result<()> {
        let blob = self.blob_path(digest);
        if kind == EntryKind::File {
            match fs::hard_link(&blob, dest) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    return Err(CasError::DestinationExists { path: dest.into() });
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound && !exists(&blob)? => {
                    return Err(CasError::NotFound { digest: *digest });
                }
                // Another file system, too many links, a file system without hard links:
                // copy instead.
                Err(_) => {}
            }
        }
        self.copy_new(digest, dest, kind)
    }

    /// Copies blob `digest` into a new file `dest` (see [`LocalStore::copy_blob`]).
    fn copy_new(&self, digest: &Digest, dest: &Path, kind: EntryKind) -> Result<()> {
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(dest)
            .map_err(CasError::io("create", dest))?;
        let mut out = OpenFile {
            file,
            path: dest.to_owned(),
        };
        self.copy_blob(digest, &mut out, kind)
    }

    /// Makes the folders of tree `digest` in the existing, empty folder `dir` (`0755`), and
    /// lists its files with where they go.
    fn make_folders(
        &self,
        digest: &Digest,
        dir: &Path,
        files: &mut Vec<(Digest, PathBuf, EntryKind)>,
    ) -> Result<()> {
        let tree = self.get_tree(digest)?;
        for entry in tree.entries() {
            let path = dir.join(entry.name.as_str());
            match entry.kind {
                EntryKind::Folder => {
                    fs::create_dir(&path).map_err(CasError::io("create folder", &path))?;
                    fs::set_permissions(&path, Permissions::from_mode(FOLDER_MODE))
                        .map_err(CasError::io("set permissions of", &path))?;
                    self.make_folders(&entry.digest, &path, files)?;
                }
                kind => files.push((entry.digest, path, kind)),
            }
        }
        Ok(())
    }

    /// Copies blob `digest` into an empty file, verifies the copy and makes it read-only.
    fn copy_blob(&self, digest: &Digest, out: &mut impl FileAt, kind: EntryKind) -> Result<()> {
        let blob = self.blob_path(digest);
        let mut source = self.open_object(&blob, digest, ObjectKind::Blob)?;
        let dest = out.path().to_owned();
        clone_or_copy(&mut source, out.file()).map_err(CasError::io("copy into", &dest))?;
        // Hash the copy, not the blob: what the step reads is what must match.
        let actual = Digest::of_file(&dest).map_err(CasError::io("hash", &dest))?;
        if actual != *digest {
            return Err(CasError::Corrupt {
                digest: *digest,
                actual,
                location: blob.display().to_string(),
            });
        }
        out.file()
            .set_permissions(Permissions::from_mode(kind.file_mode()))
            .map_err(CasError::io("set permissions of", &dest))
    }

    /// Removes leftovers of interrupted writes: entries of `tmp/` not modified for
    /// `older_than`. Returns how many were removed.
    ///
    /// A write in progress in another process keeps touching its file, so an age of a few
    /// minutes is safe while other writers run; `Duration::ZERO` is for when none do.
    pub fn gc_tmp(&self, older_than: Duration) -> Result<usize> {
        let tmp = self.tmp_dir();
        let entries = match fs::read_dir(&tmp) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(CasError::io("read folder", &tmp)(e)),
        };
        let now = SystemTime::now();
        let mut removed = 0;
        for entry in entries {
            let entry = entry.map_err(CasError::io("read folder", &tmp))?;
            let path = entry.path();
            let meta = match fs::symlink_metadata(&path) {
                Ok(meta) => meta,
                // Published or removed by its writer in the meantime.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(CasError::io("inspect", &path)(e)),
            };
            let modified = meta.modified().map_err(CasError::io("inspect", &path))?;
            let age = now.duration_since(modified).unwrap_or(Duration::ZERO);
            if age < older_than {
                continue;
            }
            let result = if meta.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            match result {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(CasError::io("remove", &path)(e)),
            }
        }
        Ok(removed)
    }

    fn ensure_tmp_dir(&self) -> Result<PathBuf> {
        let tmp = self.tmp_dir();
        fs::create_dir_all(&tmp).map_err(CasError::io("create folder", &tmp))?;
        Ok(tmp)
    }

    fn temp_file(&self, prefix: &str) -> Result<NamedTempFile> {
        let tmp = self.ensure_tmp_dir()?;
        tempfile::Builder::new()
            .prefix(&format!("{prefix}-"))
            .tempfile_in(&tmp)
            .map_err(CasError::io("create a file in", &tmp))
    }

    /// Makes a fully written temporary file durable and read-only, then publishes it; when
    /// the object is stored already, the file is discarded unsynced (the stored one was
    /// synced when it was published).
    fn publish(&self, temp: NamedTempFile, namespace: Namespace, digest: &Digest) -> Result<()> {
        if exists(&self.object_path(namespace, digest))? {
            return Ok(());
        }
        let file = temp.as_file();
        file.set_permissions(Permissions::from_mode(STORED_MODE))
            .and_then(|()| self.sync_before_publish(file))
            .map_err(CasError::io("sync", temp.path()))?;
        self.publish_path(temp.into_temp_path(), namespace, digest)
    }

    /// Renames a durable temporary file to the object's name unless that name exists (an
    /// existing object is kept, the temporary file discarded), then syncs the folder so the
    /// new name survives a power cut.
    fn publish_path(&self, temp: TempPath, namespace: Namespace, digest: &Digest) -> Result<()> {
        let dest = self.object_path(namespace, digest);
        let shard = dest.parent().expect("objects live in a shard folder");
        fs::create_dir_all(shard).map_err(CasError::io("create folder", shard))?;
        match temp.persist_noclobber(&dest) {
            Ok(()) => {}
            Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
            Err(e) => return Err(CasError::io("publish", &dest)(e.error)),
        }
        if let Some(group) = &self.group_commit {
            group
                .published
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            return Ok(());
        }
        File::open(shard)
            .and_then(|dir| dir.sync_all())
            .map_err(CasError::io("sync", shard))
    }
}

/// A file stored by [`LocalStore::put_file_stamped`]: its digest, and what the file was
/// before and after it was copied.
struct StoredFile {
    digest: Digest,
    before: FileStamp,
    after: FileStamp,
}

/// The most files stored at once by one call. Storing a small file is mostly waiting on the
/// disk (a copy, an fsync, a rename, an fsync of its folder), so more workers than cores
/// keep the disk busy; hashing a big one spreads over all cores by itself.
const MAX_FILE_WORKERS: usize = 16;

/// `work` on every item, several items at once on scoped threads (twice the cores, at least
/// 4, at most [`MAX_FILE_WORKERS`]), results in the items' order; stops early at an error and
/// returns one.
pub(crate) fn in_parallel<T: Sync, R: Send>(
    items: &[T],
    work: impl Fn(&T) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = (cores * 2).clamp(4, MAX_FILE_WORKERS).min(items.len());
    if workers <= 1 {
        return items.iter().map(work).collect();
    }
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error = Mutex::new(None);
    let done: Vec<Vec<(usize, R)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    while !failed.load(Ordering::Relaxed) {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(item) = items.get(i) else { break };
                        match work(item) {
                            Ok(result) => done.push((i, result)),
                            Err(e) => {
                                failed.store(true, Ordering::Relaxed);
                                first_error
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .get_or_insert(e);
                            }
                        }
                    }
                    done
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    });
    if let Some(e) = first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    let mut all: Vec<(usize, R)> = done.into_iter().flatten().collect();
    all.sort_unstable_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, r)| r).collect())
}

/// A file being written, with its path (for errors and for hashing).
trait FileAt {
    fn file(&mut self) -> &mut File;
    fn path(&self) -> &Path;
}

impl FileAt for NamedTempFile {
    fn file(&mut self) -> &mut File {
        self.as_file_mut()
    }
    fn path(&self) -> &Path {
        NamedTempFile::path(self)
    }
}

/// A plain open file and its path.
struct OpenFile {
    file: File,
    path: PathBuf,
}

impl FileAt for OpenFile {
    fn file(&mut self) -> &mut File {
        &mut self.file
    }
    fn path(&self) -> &Path {
        &self.path
    }
}

/// Fills the empty file `dest` with the content of `source`: a copy-on-write clone where the
/// file system offers one, a kernel-side copy (`copy_file_range`) otherwise.
fn clone_or_copy(source: &mut File, dest: &mut File) -> io::Result<()> {
    if reflink_copy::reflink_file(source, dest).is_ok() {
        return Ok(());
    }
    io::copy(source, dest)?;
    Ok(())
}

/// Whether anything is at `path` (a dangling link counts), without following links.
fn exists(path: &Path) -> Result<bool> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(CasError::io("inspect", path)(e)),
    }
}

/// Renames `from` to `to` unless `to` exists (folders included, which `rename(2)` would
/// otherwise replace when empty).
pub(crate) fn rename_noclobber(from: &Path, to: &Path) -> Result<()> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    use rustix::io::Errno;
    match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        Err(Errno::EXIST) => Err(CasError::DestinationExists { path: to.into() }),
        // The file system or kernel lacks RENAME_NOREPLACE: check, then rename.
        Err(Errno::INVAL | Errno::NOSYS) => {
            if exists(to)? {
                return Err(CasError::DestinationExists { path: to.into() });
            }
            fs::rename(from, to).map_err(CasError::io("rename into", to))
        }
        Err(e) => Err(CasError::io("rename into", to)(e.into())),
    }
}
