//! Tree manifests: how a folder is stored.
//!
//! A folder becomes a [`Tree`]: its entries sorted by name (byte order), each an
//! [`EntryKind`] and the digest of the entry's content (a blob for files, another tree for
//! folders). Only what a step can rely on on any host is recorded: the name, whether a file
//! is executable, and the content. Times, owners and the other permission bits are dropped,
//! so the same folder has the same digest everywhere.
//!
//! Symbolic links are refused rather than stored. A stored link would be materialised as a
//! link into a later step's inputs, where it could point outside what that step was given
//! (`/etc`, `~/.ssh`, another run's scratch folder), and an absolute or escaping target means
//! something different on every host, so neither promise (sandboxing, host-independent
//! digests) would survive. A producer that needs a link's content copies it instead. The
//! manifest is versioned, so a later version can add links confined to their tree.
//!
//! ## Encoding (version 1)
//!
//! ```text
//! "kiln-tree\0"  version: u8 = 1  count: u32 BE
//! count × ( kind: u8 ('f' file, 'x' executable, 'd' folder)
//!           name length: u32 BE  name: UTF-8 bytes  digest: 32 bytes )
//! ```
//!
//! Entries are strictly ascending by name, so every tree has exactly one encoding; decoding
//! refuses anything else. The tree's digest is blake3 in derive-key mode over these bytes.

use std::fmt;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::stat_cache::FileStamp;
use crate::{CasError, Digest, Result};

/// Magic bytes that open every manifest.
const MAGIC: &[u8; 10] = b"kiln-tree\0";
/// The encoding version written by this crate.
const VERSION: u8 = 1;
/// Longest entry name accepted, in bytes (Linux's `NAME_MAX`, so any tree can be materialised).
const MAX_NAME: usize = 255;

/// The name of one tree entry: non-empty UTF-8 of at most 255 bytes, without `/` or NUL, and
/// neither `.` nor `..`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EntryName(String);

impl EntryName {
    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for EntryName {
    type Error = CasError;

    fn try_from(name: String) -> Result<Self> {
        let reason = if name.is_empty() {
            Some("a name cannot be empty")
        } else if name == "." || name == ".." {
            Some("`.` and `..` cannot be entries")
        } else if name.contains('/') {
            Some("a name cannot contain `/`")
        } else if name.contains('\0') {
            Some("a name cannot contain NUL")
        } else if name.len() > MAX_NAME {
            Some("a name can be at most 255 bytes long")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(CasError::InvalidName { name, reason }),
            None => Ok(EntryName(name)),
        }
    }
}

impl TryFrom<&str> for EntryName {
    type Error = CasError;

    fn try_from(name: &str) -> Result<Self> {
        name.to_owned().try_into()
    }
}

impl From<EntryName> for String {
    fn from(name: EntryName) -> Self {
        name.0
    }
}

impl fmt::Display for EntryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for EntryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// What a tree entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// A regular file; its digest names a blob.
    File,
    /// A regular file with an execute bit set; its digest names a blob.
    Executable,
    /// A folder; its digest names another tree.
    Folder,
}

impl EntryKind {
    /// The byte that encodes this kind.
    fn code(self) -> u8 {
        match self {
            EntryKind::File => b'f',
            EntryKind::Executable => b'x',
            EntryKind::Folder => b'd',
        }
    }

    /// The kind of a code byte, if it is one.
    fn from_code(code: u8) -> Option<Self> {
        match code {
            b'f' => Some(EntryKind::File),
            b'x' => Some(EntryKind::Executable),
            b'd' => Some(EntryKind::Folder),
            _ => None,
        }
    }

    /// The permission bits a materialised file of this kind gets (read-only).
    pub(crate) fn file_mode(self) -> u32 {
        match self {
            EntryKind::Executable => 0o555,
            _ => 0o444,
        }
    }
}

/// One named entry of a tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TreeEntry {
    /// The entry's name inside its folder.
    pub name: EntryName,
    /// What the entry is.
    pub kind: EntryKind,
    /// The digest of its content: a blob for files, a tree for folders.
    pub digest: Digest,
}

/// A folder's manifest: its entries, sorted by name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<TreeEntry>", into = "Vec<TreeEntry>")]
pub struct Tree {
    entries: Vec<TreeEntry>,
}

impl Tree {
    /// A tree of these entries, sorted by name; two entries with one name are an error.
    pub fn new(mut entries: Vec<TreeEntry>) -> Result<Self> {
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        if let Some(pair) = entries.windows(2).find(|pair| pair[0].name == pair[1].name) {
            return Err(CasError::MalformedTree {
                digest: None,
                reason: format!("two entries are named `{}`", pair[0].name),
            });
        }
        Ok(Tree { entries })
    }

    /// The entries, sorted by name.
    pub fn entries(&self) -> &[TreeEntry] {
        &self.entries
    }

    /// The entry with this name, if there is one.
    pub fn get(&self, name: &str) -> Option<&TreeEntry> {
        self.entries
            .binary_search_by(|entry| entry.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.entries[i])
    }

    /// The canonical (version 1) encoding.
    pub fn encode(&self) -> Vec<u8> {
        let size: usize = self.entries.iter().map(|e| 37 + e.name.0.len()).sum();
        let mut out = Vec::with_capacity(MAGIC.len() + 5 + size);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&len_u32(self.entries.len()).to_be_bytes());
        for entry in &self.entries {
            out.push(entry.kind.code());
            out.extend_from_slice(&len_u32(entry.name.0.len()).to_be_bytes());
            out.extend_from_slice(entry.name.0.as_bytes());
            out.extend_from_slice(entry.digest.as_bytes());
        }
        out
    }

    /// Decodes a manifest, refusing anything but the canonical encoding.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let mut input = Input { bytes };
        let malformed = |reason: String| CasError::MalformedTree {
            digest: Some(Digest::of_manifest(bytes)),
            reason,
        };
        if input.take(MAGIC.len()) != Some(MAGIC) {
            return Err(malformed("it does not start with `kiln-tree`".into()));
        }
        match input.take(1) {
            Some([VERSION]) => {}
            Some([v]) => return Err(malformed(format!("unknown version {v}"))),
            _ => return Err(malformed("it ends early".into())),
        }
        let count = input
            .u32()
            .ok_or_else(|| malformed("it ends early".into()))?;
        // Each entry takes at least 38 bytes: never allocate more than the input can hold.
        let mut entries = Vec::with_capacity((count as usize).min(bytes.len() / 38));
        for i in 0..count {
            let ends_early = || malformed(format!("it ends inside entry {i}"));
            let code = input.take(1).ok_or_else(ends_early)?[0];
            let kind = EntryKind::from_code(code)
                .ok_or_else(|| malformed(format!("entry {i} has unknown kind {code:#04x}")))?;
            let len = input.u32().ok_or_else(ends_early)? as usize;
            let name = input.take(len).ok_or_else(ends_early)?;
            let name = String::from_utf8(name.to_vec())
                .map_err(|_| malformed(format!("entry {i} has a name that is not UTF-8")))?;
            let name = EntryName::try_from(name).map_err(|e| malformed(e.to_string()))?;
            let digest = input.take(32).ok_or_else(ends_early)?;
            let digest = Digest::from_bytes(digest.try_into().expect("took 32 bytes"));
            if let Some(prev) = entries.last().map(|e: &TreeEntry| &e.name)
                && prev >= &name
            {
                return Err(malformed(format!(
                    "entry `{name}` is not after `{prev}` (entries must be sorted and unique)"
                )));
            }
            entries.push(TreeEntry { name, kind, digest });
        }
        if !input.bytes.is_empty() {
            return Err(malformed(format!(
                "{} bytes follow the last entry",
                input.bytes.len()
            )));
        }
        Ok(Tree { entries })
    }

    /// The tree's digest: blake3 in derive-key mode over [`Tree::encode`].
    pub fn digest(&self) -> Digest {
        Digest::of_manifest(&self.encode())
    }
}

impl TryFrom<Vec<TreeEntry>> for Tree {
    type Error = CasError;

    fn try_from(entries: Vec<TreeEntry>) -> Result<Self> {
        Tree::new(entries)
    }
}

impl From<Tree> for Vec<TreeEntry> {
    fn from(tree: Tree) -> Self {
        tree.entries
    }
}

/// A length as the `u32` the encoding uses (names are short; counts are checked by `scan`).
fn len_u32(len: usize) -> u32 {
    u32::try_from(len).expect("tree sizes fit in u32")
}

/// A cursor over manifest bytes.
struct Input<'a> {
    bytes: &'a [u8],
}

impl<'a> Input<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.bytes.len() < n {
            return None;
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Some(head)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
}

/// A folder on disk, read and checked, before any of its content is stored.
#[derive(Debug)]
pub(crate) struct ScannedFolder {
    /// Entries sorted by name.
    pub(crate) entries: Vec<(EntryName, Scanned)>,
}

/// One entry of a [`ScannedFolder`].
#[derive(Debug)]
pub(crate) enum Scanned {
    /// A regular file at this path, and what it was when the folder was read.
    File {
        path: PathBuf,
        kind: EntryKind,
        stamp: FileStamp,
    },
    /// A sub-folder.
    Folder(ScannedFolder),
}

/// Reads a folder recursively, refusing symlinks, special files and names that cannot be
/// entries. The folder itself may be reached through a link; what is inside it may not.
pub(crate) fn scan(folder: &Path) -> Result<ScannedFolder> {
    let mut entries = Vec::new();
    let read = fs::read_dir(folder).map_err(CasError::io("read folder", folder))?;
    for dirent in read {
        let dirent = dirent.map_err(CasError::io("read folder", folder))?;
        let path = dirent.path();
        let name = dirent
            .file_name()
            .into_string()
            .map_err(|name| CasError::InvalidName {
                name: name.to_string_lossy().into_owned(),
                reason: "names must be UTF-8 so that tree digests are the same on every host",
            })?;
        let name = EntryName::try_from(name)?;
        let meta = fs::symlink_metadata(&path).map_err(CasError::io("inspect", &path))?;
        let file_type = meta.file_type();
        let scanned = if file_type.is_symlink() {
            return Err(CasError::Symlink { path });
        } else if file_type.is_dir() {
            Scanned::Folder(scan(&path)?)
        } else if file_type.is_file() {
            let kind = if meta.permissions().mode() & 0o111 != 0 {
                EntryKind::Executable
            } else {
                EntryKind::File
            };
            Scanned::File {
                path,
                kind,
                stamp: FileStamp::of(&meta),
            }
        } else {
            return Err(CasError::UnsupportedFileType { path });
        };
        entries.push((name, scanned));
    }
    if u32::try_from(entries.len()).is_err() {
        return Err(CasError::MalformedTree {
            digest: None,
            reason: format!("`{}` has more than 2^32 entries", folder.display()),
        });
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(ScannedFolder { entries })
}

impl ScannedFolder {
    /// Every file in the folder, depth first.
    pub(crate) fn files(&self) -> Vec<&Path> {
        self.stamped_files()
            .into_iter()
            .map(|(path, _)| path)
            .collect()
    }

    /// Every file in the folder with its stamp from the scan, depth first.
    pub(crate) fn stamped_files(&self) -> Vec<(&Path, FileStamp)> {
        let mut out = Vec::new();
        let mut stack = vec![self];
        while let Some(folder) = stack.pop() {
            for (_, entry) in &folder.entries {
                match entry {
                    Scanned::File { path, stamp, .. } => out.push((path.as_path(), *stamp)),
                    Scanned::Folder(sub) => stack.push(sub),
                }
            }
        }
        out
    }

    /// Builds the manifests bottom-up, asking `blob` for each file's digest; pushes every
    /// manifest onto `trees` children first (the order to store them in, so that a stored tree
    /// never names a missing tree) and returns the root's digest.
    pub(crate) fn build(
        &self,
        blob: &mut impl FnMut(&Path) -> Result<Digest>,
        trees: &mut Vec<Tree>,
    ) -> Result<Digest> {
        let mut entries = Vec::with_capacity(self.entries.len());
        for (name, scanned) in &self.entries {
            let (kind, digest) = match scanned {
                Scanned::File { path, kind, .. } => (*kind, blob(path)?),
                Scanned::Folder(sub) => (EntryKind::Folder, sub.build(blob, trees)?),
            };
            entries.push(TreeEntry {
                name: name.clone(),
                kind,
                digest,
            });
        }
        let tree = Tree { entries };
        let digest = tree.digest();
        trees.push(tree);
        Ok(digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, kind: EntryKind, content: &[u8]) -> TreeEntry {
        TreeEntry {
            name: name.try_into().unwrap(),
            kind,
            digest: Digest::of_bytes(content),
        }
    }

    #[test]
    fn encoding_round_trips_and_is_sorted() {
        let tree = Tree::new(vec![
            entry("b", EntryKind::Executable, b"2"),
            entry("a", EntryKind::File, b"1"),
            entry("c", EntryKind::Folder, b"3"),
        ])
        .unwrap();
        let names: Vec<_> = tree.entries().iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        let bytes = tree.encode();
        assert_eq!(Tree::decode(&bytes).unwrap(), tree);
        assert_eq!(tree.get("b").unwrap().kind, EntryKind::Executable);
        assert!(tree.get("d").is_none());
        assert_ne!(tree.digest(), Digest::of_bytes(&bytes));
    }

    #[test]
    fn names_sort_by_bytes() {
        let tree = Tree::new(vec![
            entry("a", EntryKind::File, b""),
            entry("B", EntryKind::File, b""),
            entry("é", EntryKind::File, b""),
            entry("a.txt", EntryKind::File, b""),
        ])
        .unwrap();
        let names: Vec<_> = tree.entries().iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["B", "a", "a.txt", "é"]);
    }

    #[test]
    fn duplicates_are_refused() {
        let err = Tree::new(vec![
            entry("a", EntryKind::File, b"1"),
            entry("a", EntryKind::File, b"2"),
        ])
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "malformed tree manifest: two entries are named `a`"
        );
    }

    #[test]
    fn non_canonical_encodings_are_refused() {
        let tree = Tree::new(vec![
            entry("a", EntryKind::File, b"1"),
            entry("b", EntryKind::File, b"2"),
        ])
        .unwrap();
        let good = tree.encode();

        let mut trailing = good.clone();
        trailing.push(0);
        let mut unsorted = good.clone();
        let second = 15 + 38 + 5; // header, first entry, kind and length of the second
        unsorted[15 + 5] = b'c'; // first name becomes `c`, after `b`
        let mut bad_kind = good.clone();
        bad_kind[15] = b'?';
        let mut bad_version = good.clone();
        bad_version[10] = 2;
        let mut slash = good.clone();
        slash[second] = b'/';

        for (bytes, reason) in [
            (&trailing, "1 bytes follow"),
            (&unsorted, "is not after"),
            (&bad_kind, "unknown kind 0x3f"),
            (&bad_version, "unknown version 2"),
            (&slash, "cannot contain `/`"),
            (&good[..good.len() - 1].to_vec(), "ends inside entry 1"),
            (&b"not a tree".to_vec(), "does not start with"),
        ] {
            let err = Tree::decode(bytes).unwrap_err().to_string();
            assert!(err.contains(reason), "{err}");
        }
    }

    #[test]
    fn bad_names_are_refused() {
        for name in ["", ".", "..", "a/b", "a\0b", &"x".repeat(256)] {
            assert!(EntryName::try_from(name).is_err(), "{name:?}");
        }
        assert!(EntryName::try_from("x".repeat(255)).is_ok());
    }

    #[test]
    fn json_form_is_a_sorted_list() {
        let tree = Tree::new(vec![entry("a", EntryKind::Folder, b"1")]).unwrap();
        let json = serde_json::to_string(&tree).unwrap();
        assert!(json.starts_with(r#"[{"name":"a","kind":"folder","digest":"blake3:"#));
        assert_eq!(serde_json::from_str::<Tree>(&json).unwrap(), tree);
        assert!(
            serde_json::from_str::<Tree>(r#"[{"name":"..","kind":"file","digest":"x"}]"#).is_err()
        );
    }
}
