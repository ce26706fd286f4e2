//! The stat cache: what each file was (size, times, inode, device) when its digest was last
//! computed, so that storing an unchanged file again reads and hashes nothing, as git's index
//! and DVC's state database do.
//!
//! A file is taken as unchanged when its size, modification time, change time (both in
//! nanoseconds), inode and device are exactly as recorded. Content cannot change without
//! the change time moving on, and nobody can set that one back; but the times of a file
//! system have a granularity (the kernel's clock tick, whole seconds on some file systems),
//! so a file written twice within one tick can show the same times for different content.
//! Hence git's "racy git" rule, applied when an entry is recorded: a file whose modification
//! or change time is not older than the moment it was hashed by more than the window
//! ([`RACY_WINDOW`]) is not recorded at all (it is hashed again next time, and recorded
//! then). An entry is also only used when the store still holds its blob: the callers in
//! [`crate::LocalStore`] check.
//!
//! The cache is one file, written whole to a temporary file and renamed over the old one,
//! so a reader sees the old or the new, never half. A file that cannot be read, is
//! corrupt (a checksum covers it), or was written by another version is ignored: the cache
//! starts empty and is written anew, and nothing fails because of it. Entries of files that
//! are gone are dropped when the cache is written.
//!
//! ## Encoding (version 1)
//!
//! ```text
//! "kiln-stat\0"  version: u8 = 1  count: u32 BE
//! count × ( path length: u32 BE  path: bytes
//!           size: u64 BE  mtime ns: i64 BE  ctime ns: i64 BE  inode: u64 BE  device: u64 BE
//!           digest: 32 bytes )
//! checksum: 32 bytes, blake3 of everything before it
//! ```

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{self, Metadata};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::Digest;

/// Magic bytes that open every stat cache file.
const MAGIC: &[u8; 10] = b"kiln-stat\0";
/// The encoding version written by this crate.
const VERSION: u8 = 1;
/// Bytes of one entry besides its path.
const FIXED: usize = 4 + 8 * 5 + 32;

/// How much older than the moment it is hashed a file's times must be for the file to be
/// recorded: more than the coarsest timestamp granularity of common file systems (FAT's
/// two seconds; ext4, XFS and btrfs keep nanoseconds but move them on at each clock tick).
pub const RACY_WINDOW: Duration = Duration::from_secs(2);

/// What a file is, as far as the stat cache can tell without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileStamp {
    /// Size in bytes.
    pub size: u64,
    /// Last modification, in nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// Last change of the inode (content, mode, links...), in nanoseconds since the epoch.
    pub ctime_ns: i64,
    /// Inode number.
    pub inode: u64,
    /// Device the inode is on.
    pub device: u64,
}

impl FileStamp {
    /// The stamp of a file's metadata.
    pub fn of(meta: &Metadata) -> Self {
        FileStamp {
            size: meta.len(),
            mtime_ns: nanos(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: nanos(meta.ctime(), meta.ctime_nsec()),
            inode: meta.ino(),
            device: meta.dev(),
        }
    }

    /// Whether a file with this stamp, hashed at `hashed_at`, may be recorded: its times are
    /// older than that moment by more than `window`.
    fn settled(&self, hashed_at: SystemTime, window: Duration) -> bool {
        let limit = since_epoch(hashed_at).saturating_sub(duration_ns(window));
        self.mtime_ns < limit && self.ctime_ns < limit
    }
}

/// Nanoseconds since the epoch, saturating (far past and far future times stay ordered).
fn nanos(secs: i64, nsec: i64) -> i64 {
    secs.saturating_mul(1_000_000_000).saturating_add(nsec)
}

fn since_epoch(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => duration_ns(after),
        Err(before) => -duration_ns(before.duration()),
    }
}

fn duration_ns(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// One recorded file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    stamp: FileStamp,
    digest: Digest,
}

/// How many files a stat cache saved from being read, and how many were read and hashed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatCounts {
    /// Files found unchanged, with their blob in the store: not read.
    pub unchanged: u64,
    /// Files read and hashed (new, changed, too recent to trust, or their blob missing).
    pub hashed: u64,
}

/// The clock a stat cache reads when a file is hashed.
type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// Digests of files by absolute path, with the stamp each file had when it was hashed; see
/// the [module documentation](self) for when an entry is trusted.
///
/// Shared by reference between the threads that store a folder's files.
pub struct StatCache {
    /// Where it is kept; `None` keeps it in memory only.
    file: Option<PathBuf>,
    window: Duration,
    clock: Clock,
    /// Why the file was not used, when it was there but unusable.
    discarded: Option<String>,
    state: Mutex<State>,
    unchanged: AtomicU64,
    hashed: AtomicU64,
}

#[derive(Default)]
struct State {
    entries: HashMap<PathBuf, Entry>,
    /// What this process recorded (`Some`) or found stale (`None`), to write back.
    changes: HashMap<PathBuf, Option<Entry>>,
    /// Paths looked up by this process: known to exist, so never pruned.
    seen: HashSet<PathBuf>,
}

impl std::fmt::Debug for StatCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatCache")
            .field("file", &self.file)
            .field("window", &self.window)
            .field("counts", &self.counts())
            .finish_non_exhaustive()
    }
}

impl StatCache {
    /// The cache kept in `file`, as it is there now. A missing file is an empty cache; so is
    /// an unreadable, corrupt or old-format one, which [`StatCache::discarded`] then explains
    /// and [`StatCache::save`] replaces.
    pub fn open(file: impl Into<PathBuf>) -> Self {
        let file = file.into();
        let (entries, discarded) = match load(&file) {
            Ok(entries) => (entries, None),
            Err(reason) => (HashMap::new(), Some(reason)),
        };
        let mut cache = StatCache::in_memory();
        cache.file = Some(file);
        cache.discarded = discarded;
        cache.lock().entries = entries;
        cache
    }

    /// An empty cache that is never written anywhere.
    pub fn in_memory() -> Self {
        StatCache {
            file: None,
            window: RACY_WINDOW,
            clock: Arc::new(SystemTime::now),
            discarded: None,
            state: Mutex::new(State::default()),
            unchanged: AtomicU64::new(0),
            hashed: AtomicU64::new(0),
        }
    }

    /// Reads the time of hashing from `clock` instead of the system's (for tests).
    pub fn set_clock(
        &mut self,
        clock: impl Fn() -> SystemTime + Send + Sync + 'static,
    ) -> &mut Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Changes the racy window ([`RACY_WINDOW`] by default).
    pub fn set_window(&mut self, window: Duration) -> &mut Self {
        self.window = window;
        self
    }

    /// Why the cache file was ignored, when it was there but could not be used.
    pub fn discarded(&self) -> Option<&str> {
        self.discarded.as_deref()
    }

    /// Files found unchanged and files hashed so far, through this cache.
    pub fn counts(&self) -> StatCounts {
        StatCounts {
            unchanged: self.unchanged.load(Ordering::Relaxed),
            hashed: self.hashed.load(Ordering::Relaxed),
        }
    }

    /// The digest recorded for the file at `path` if its stamp is exactly `stamp` (the
    /// caller still checks that the store holds the blob).
    pub fn lookup(&self, path: &Path, stamp: &FileStamp) -> Option<Digest> {
        let mut state = self.lock();
        if !state.seen.contains(path) {
            state.seen.insert(path.to_owned());
        }
        state
            .entries
            .get(path)
            .filter(|entry| entry.stamp == *stamp)
            .map(|entry| entry.digest)
    }

    /// The moment to pass to [`StatCache::record`]: read before the file is first looked at.
    pub fn now(&self) -> SystemTime {
        (self.clock)()
    }

    /// Records that the file at `path`, with `stamp` before and after it was read, hashes to
    /// `digest`; `hashed_at` is [`StatCache::now`] from before it was read. A file that
    /// changed while it was read, or whose times are too recent to trust, is forgotten
    /// instead, so that it is hashed again next time.
    pub fn record(&self, path: &Path, stamp: FileStamp, digest: Digest, hashed_at: SystemTime) {
        if stamp.settled(hashed_at, self.window) {
            self.set(path, Some(Entry { stamp, digest }));
        } else {
            self.forget(path);
        }
    }

    /// Forgets what is recorded for `path`.
    pub fn forget(&self, path: &Path) {
        self.set(path, None);
    }

    fn set(&self, path: &Path, entry: Option<Entry>) {
        let mut state = self.lock();
        let current = state.entries.get(path).copied();
        if current == entry {
            return;
        }
        match entry {
            Some(entry) => state.entries.insert(path.to_owned(), entry),
            None => state.entries.remove(path),
        };
        state.changes.insert(path.to_owned(), entry);
    }

    pub(crate) fn count_unchanged(&self) {
        self.unchanged.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_hashed(&self) {
        self.hashed.fetch_add(1, Ordering::Relaxed);
    }

    /// Writes the cache back to its file, if anything changed: what is in the file now (another
    /// kiln may have written it meanwhile) with this process's changes on top, less the
    /// entries of files that are gone. Atomic: a temporary file renamed over the old one.
    pub fn save(&self) -> io::Result<()> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let mut state = self.lock();
        if state.changes.is_empty() && self.discarded.is_none() {
            return Ok(());
        }
        let mut entries = load(file).unwrap_or_default();
        for (path, change) in &state.changes {
            match change {
                Some(entry) => entries.insert(path.clone(), *entry),
                None => entries.remove(path),
            };
        }
        entries.retain(|path, _| {
            state.changes.contains_key(path)
                || state.seen.contains(path)
                || fs::symlink_metadata(path).is_ok()
        });
        let bytes = encode(&entries);
        let folder = match file.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        fs::create_dir_all(folder)?;
        let mut temp = tempfile::Builder::new()
            .prefix(".stat-cache-")
            .tempfile_in(folder)?;
        temp.write_all(&bytes)?;
        temp.persist(file).map_err(|e| e.error)?;
        state.changes.clear();
        state.entries = entries;
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere leaves the maps whole (every change is one insert or remove).
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Reads a cache file; a missing file is empty, anything unusable an error saying why.
fn load(file: &Path) -> Result<HashMap<PathBuf, Entry>, String> {
    match fs::read(file) {
        Ok(bytes) => decode(&bytes),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(HashMap::new()),
        Err(e) => Err(format!("cannot read {}: {e}", file.display())),
    }
}

fn encode(entries: &HashMap<PathBuf, Entry>) -> Vec<u8> {
    let size: usize = entries.keys().map(|p| FIXED + p.as_os_str().len()).sum();
    let mut out = Vec::with_capacity(MAGIC.len() + 5 + size + 32);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    let count = u32::try_from(entries.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&count.to_be_bytes());
    // Sorted, so that the same entries always make the same file.
    let mut sorted: Vec<_> = entries.iter().take(count as usize).collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    for (path, entry) in sorted {
        let path = path.as_os_str().as_bytes();
        out.extend_from_slice(&u32::try_from(path.len()).unwrap_or(0).to_be_bytes());
        out.extend_from_slice(path);
        let s = &entry.stamp;
        out.extend_from_slice(&s.size.to_be_bytes());
        out.extend_from_slice(&s.mtime_ns.to_be_bytes());
        out.extend_from_slice(&s.ctime_ns.to_be_bytes());
        out.extend_from_slice(&s.inode.to_be_bytes());
        out.extend_from_slice(&s.device.to_be_bytes());
        out.extend_from_slice(entry.digest.as_bytes());
    }
    let checksum = blake3::hash(&out);
    out.extend_from_slice(checksum.as_bytes());
    out
}

fn decode(bytes: &[u8]) -> Result<HashMap<PathBuf, Entry>, String> {
    if !bytes.starts_with(MAGIC) {
        return Err("it is not a kiln stat cache".into());
    }
    match bytes.get(MAGIC.len()) {
        Some(&VERSION) => {}
        Some(v) => {
            return Err(format!(
                "it is version {v}; this kiln writes version {VERSION}"
            ));
        }
        None => return Err("it is too short".into()),
    }
    if bytes.len() < MAGIC.len() + 5 + 32 {
        return Err("it is too short".into());
    }
    let (body, checksum) = bytes.split_at(bytes.len() - 32);
    if blake3::hash(body).as_bytes() != checksum {
        return Err("its checksum does not match (a torn or damaged file)".into());
    }
    let mut input = &body[MAGIC.len() + 1..];
    let mut take = |n: usize| -> Result<&[u8], String> {
        let (head, rest) = input
            .split_at_checked(n)
            .ok_or_else(|| "it ends inside an entry".to_owned())?;
        input = rest;
        Ok(head)
    };
    let u64_of = |b: &[u8]| u64::from_be_bytes(b.try_into().expect("8 bytes"));
    let count = u32::from_be_bytes(take(4)?.try_into().expect("4 bytes"));
    let mut entries = HashMap::with_capacity((count as usize).min(body.len() / FIXED));
    for _ in 0..count {
        let len = u32::from_be_bytes(take(4)?.try_into().expect("4 bytes")) as usize;
        let path = PathBuf::from(OsStr::from_bytes(take(len)?));
        let stamp = FileStamp {
            size: u64_of(take(8)?),
            mtime_ns: u64_of(take(8)?) as i64,
            ctime_ns: u64_of(take(8)?) as i64,
            inode: u64_of(take(8)?),
            device: u64_of(take(8)?),
        };
        let digest = Digest::from_bytes(take(32)?.try_into().expect("32 bytes"));
        entries.insert(path, Entry { stamp, digest });
    }
    if !input.is_empty() {
        return Err("bytes follow the last entry".into());
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(t: i64) -> FileStamp {
        FileStamp {
            size: 3,
            mtime_ns: t,
            ctime_ns: t + 1,
            inode: 7,
            device: 9,
        }
    }

    #[test]
    fn encoding_round_trips() {
        let mut entries = HashMap::new();
        for (i, name) in ["/a", "/b/c", "/é"].into_iter().enumerate() {
            entries.insert(
                PathBuf::from(name),
                Entry {
                    stamp: stamp(-5 + i as i64),
                    digest: Digest::of_bytes(name.as_bytes()),
                },
            );
        }
        let bytes = encode(&entries);
        assert_eq!(decode(&bytes).unwrap(), entries);
        assert_eq!(encode(&decode(&bytes).unwrap()), bytes);
    }

    #[test]
    fn damaged_or_foreign_files_are_refused_with_the_reason() {
        let mut entries = HashMap::new();
        entries.insert(
            PathBuf::from("/a"),
            Entry {
                stamp: stamp(1),
                digest: Digest::of_bytes(b"a"),
            },
        );
        let good = encode(&entries);
        let mut flipped = good.clone();
        flipped[20] ^= 1;
        let mut version = good.clone();
        version[MAGIC.len()] = 2;
        for (bytes, reason) in [
            (&good[..good.len() - 1], "checksum"),
            (&flipped[..], "checksum"),
            (&version[..], "version 2"),
            (&b"{\"json\": true}"[..], "not a kiln stat cache"),
            (&good[..MAGIC.len() + 3], "too short"),
        ] {
            let err = decode(bytes).unwrap_err();
            assert!(err.contains(reason), "{err}");
        }
    }

    #[test]
    fn only_settled_files_are_recorded() {
        let cache = StatCache::in_memory();
        let at = |ns: i64| UNIX_EPOCH + Duration::from_nanos(ns as u64);
        let window = duration_ns(RACY_WINDOW);
        let digest = Digest::of_bytes(b"x");
        // Changed less than the window before it was hashed: not recorded.
        cache.record(Path::new("/f"), stamp(10), digest, at(10 + window));
        assert_eq!(cache.lookup(Path::new("/f"), &stamp(10)), None);
        // Older than that: recorded, and found for that exact stamp only.
        cache.record(Path::new("/f"), stamp(10), digest, at(12 + window));
        assert_eq!(cache.lookup(Path::new("/f"), &stamp(10)), Some(digest));
        assert_eq!(cache.lookup(Path::new("/f"), &stamp(11)), None);
        // Hashed again too soon after a change: the old entry goes too.
        cache.record(Path::new("/f"), stamp(20), digest, at(20));
        assert_eq!(cache.lookup(Path::new("/f"), &stamp(10)), None);
    }
}
