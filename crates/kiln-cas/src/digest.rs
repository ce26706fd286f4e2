//! Blake3 digests and the ways of computing them.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::CasError;

/// The prefix of a digest's text form.
const PREFIX: &str = "blake3:";

/// Key-derivation context of tree manifests. Hashing manifests in blake3's derive-key mode
/// keeps tree digests apart from blob digests: a file whose bytes happen to equal a
/// manifest never gets the manifest's digest, so it can never be mistaken for a folder.
pub(crate) const TREE_CONTEXT: &str = "kiln 2026-11 tree manifest v1";

/// Size of the buffers used when streaming.
pub(crate) const CHUNK: usize = 1 << 20;

/// The most a hash of a file or a reader holds in memory at once: big enough that blake3
/// spreads each buffer over all cores (it splits work into 1 KiB chunks and gains little
/// from rayon below a few hundred KiB per call), small enough that hashing a 100 GiB file
/// costs no more memory than hashing a 10 MiB one.
pub(crate) const HASH_BUFFER: usize = 4 << 20;

/// Below this many bytes per call, blake3 on one thread beats handing work to rayon.
const RAYON_MIN: usize = 256 * 1024;

/// Hashes everything `reader` yields through a buffer of `buffer` bytes.
fn hash_through(mut reader: impl Read, buffer: usize) -> io::Result<Digest> {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0; buffer];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return Ok(hasher.into()),
            Ok(n) if n >= RAYON_MIN => {
                hasher.update_rayon(&buf[..n]);
            }
            Ok(n) => {
                hasher.update(&buf[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// A blake3 digest (32 bytes), written `blake3:<64 lowercase hex>`.
///
/// A blob's digest is the plain blake3 hash of its bytes (what `b3sum` prints); a tree's
/// digest is the derive-key hash of its manifest (see [`crate::Tree`]).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest([u8; 32]);

impl Digest {
    /// The digest made of these 32 bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Digest(bytes)
    }

    /// The 32 raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 64 lowercase hex digits, without the `blake3:` prefix.
    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }

    /// The blob digest of some bytes (multi-threaded above a few hundred KiB).
    pub fn of_bytes(bytes: &[u8]) -> Self {
        let mut hasher = blake3::Hasher::new();
        if bytes.len() >= RAYON_MIN {
            hasher.update_rayon(bytes);
        } else {
            hasher.update(bytes);
        }
        hasher.into()
    }

    /// The blob digest of everything a reader yields, read through one buffer of a few MiB.
    pub fn of_reader(reader: impl Read) -> io::Result<Self> {
        hash_through(reader, HASH_BUFFER)
    }

    /// The blob digest of a file's content, read through one buffer of a few MiB (smaller
    /// for a smaller file) and hashed on all cores.
    ///
    /// The file is read, not memory-mapped: a mapping would count the whole file into the
    /// process's resident memory while it is hashed (1 GiB for a 1 GiB file), where a buffer
    /// keeps it at a few MiB whatever the size; the page cache serves both alike.
    pub fn of_file(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        // One byte more than the file, so that a file read whole is seen to end in one read.
        let buffer =
            usize::try_from(len.saturating_add(1)).map_or(HASH_BUFFER, |n| n.min(HASH_BUFFER));
        hash_through(file, buffer.max(1))
    }

    /// The tree digest of an encoded manifest.
    pub(crate) fn of_manifest(bytes: &[u8]) -> Self {
        blake3::Hasher::new_derive_key(TREE_CONTEXT)
            .update(bytes)
            .finalize()
            .into()
    }
}

impl From<blake3::Hash> for Digest {
    fn from(hash: blake3::Hash) -> Self {
        Digest(*hash.as_bytes())
    }
}

impl From<blake3::Hasher> for Digest {
    fn from(hasher: blake3::Hasher) -> Self {
        hasher.finalize().into()
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}", blake3::Hash::from_bytes(self.0).to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Digest {
    type Err = CasError;

    fn from_str(s: &str) -> Result<Self, CasError> {
        let invalid = |reason| CasError::InvalidDigest {
            input: s.to_owned(),
            reason,
        };
        let hex = s
            .strip_prefix(PREFIX)
            .ok_or_else(|| invalid("expected the prefix `blake3:`"))?;
        if hex.len() != 64 {
            return Err(invalid("expected 64 hex digits after `blake3:`"));
        }
        let mut bytes = [0; 32];
        for (byte, pair) in bytes.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
            let nibble = |c: u8| match c {
                b'0'..=b'9' => Ok(c - b'0'),
                b'a'..=b'f' => Ok(c - b'a' + 10),
                _ => Err(invalid("expected only lowercase hex digits `0-9a-f`")),
            };
            *byte = (nibble(pair[0])? << 4) | nibble(pair[1])?;
        }
        Ok(Digest(bytes))
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_round_trips() {
        let digest = Digest::of_bytes(b"hello");
        let text = digest.to_string();
        assert_eq!(
            text,
            "blake3:ea8f163db38682925e4491c5e58d4bb3506ef8c14eb78a86e908c5624a67200f"
        );
        assert_eq!(text.parse::<Digest>().unwrap(), digest);
    }

    #[test]
    fn bad_text_is_refused_with_the_reason() {
        let upper = format!("blake3:{}", "A".repeat(64));
        for (input, reason) in [
            ("sha256:00", "prefix"),
            ("blake3:abc", "64 hex digits"),
            (upper.as_str(), "lowercase"),
        ] {
            let err = input.parse::<Digest>().unwrap_err().to_string();
            assert!(err.contains(reason), "{err}");
            assert!(err.contains(input), "{err}");
        }
    }

    #[test]
    fn serde_uses_the_text_form() {
        let digest = Digest::of_bytes(b"x");
        let json = serde_json::to_string(&digest).unwrap();
        assert_eq!(json, format!("\"{digest}\""));
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), digest);
        assert!(serde_json::from_str::<Digest>("\"blake3:zz\"").is_err());
    }

    #[test]
    fn all_ways_of_hashing_agree() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let digest = Digest::of_bytes(&data);
        assert_eq!(digest, Digest::from(blake3::hash(&data)));
        assert_eq!(Digest::of_reader(&data[..]).unwrap(), digest);
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), &data).unwrap();
        assert_eq!(Digest::of_file(file.path()).unwrap(), digest);
    }

    #[test]
    fn manifests_hash_apart_from_blobs() {
        assert_ne!(Digest::of_manifest(b"abc"), Digest::of_bytes(b"abc"));
    }
}
