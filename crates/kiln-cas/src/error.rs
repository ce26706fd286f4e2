//! The crate's one error type.

use std::io;
use std::path::PathBuf;

use crate::Digest;

/// Everything that can go wrong while storing, reading or materialising content.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CasError {
    /// A string is not a digest of the form `blake3:<64 lowercase hex>`.
    #[error("invalid digest `{input}`: {reason}")]
    InvalidDigest {
        /// The text that was given.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A file system operation failed.
    #[error("cannot {action} `{path}`: {source}")]
    Io {
        /// What kiln was doing, as a verb phrase (`open`, `create folder`, ...).
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },

    /// Stored content does not hash to the digest it is stored under.
    #[error("{digest} is corrupt at `{location}`: its content hashes to {actual}")]
    Corrupt {
        /// The digest the content is stored under.
        digest: Digest,
        /// The digest of the bytes actually read.
        actual: Digest,
        /// Where it was read from (a path or an object-store location).
        location: String,
    },

    /// Neither a blob nor a tree with this digest is in the store.
    #[error("{digest} is not in the store")]
    NotFound {
        /// The digest that was asked for.
        digest: Digest,
    },

    /// A blob was asked for, but the digest names a tree.
    #[error("{digest} is a tree, not a blob")]
    NotABlob {
        /// The digest that was asked for.
        digest: Digest,
    },

    /// A tree was asked for, but the digest names a blob.
    #[error("{digest} is a blob, not a tree")]
    NotATree {
        /// The digest that was asked for.
        digest: Digest,
    },

    /// A tree manifest is not in the canonical encoding.
    #[error("malformed tree manifest{}: {reason}", .digest.map(|d| format!(" {d}")).unwrap_or_default())]
    MalformedTree {
        /// The manifest's digest, when known.
        digest: Option<Digest>,
        /// What is wrong with it.
        reason: String,
    },

    /// A name cannot be a tree entry.
    #[error("invalid entry name `{name}`: {reason}")]
    InvalidName {
        /// The name, lossily decoded.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// Symbolic links are refused (see [`crate::tree`] for why).
    #[error(
        "refusing symlink `{path}`: artifacts hold only files and folders (replace the link with a copy of what it points to)"
    )]
    Symlink {
        /// The link.
        path: PathBuf,
    },

    /// Sockets, fifos and device nodes cannot be stored.
    #[error("refusing `{path}`: only files, executable files and folders can be stored")]
    UnsupportedFileType {
        /// The offending path.
        path: PathBuf,
    },

    /// A materialisation target is already there; kiln never writes over it.
    #[error("cannot materialize into `{path}`: it already exists")]
    DestinationExists {
        /// The target path.
        path: PathBuf,
    },

    /// A file changed while it was being stored.
    #[error("`{path}` changed while it was being stored (hashed {before}, then read {after})")]
    ChangedWhileStoring {
        /// The file.
        path: PathBuf,
        /// Its digest when first hashed.
        before: Digest,
        /// The digest of what was then uploaded.
        after: Digest,
    },

    /// An object-store request failed.
    #[error("object store request for `{location}` failed: {source}")]
    ObjectStore {
        /// The object location.
        location: String,
        /// The underlying error.
        source: object_store::Error,
    },
}

impl CasError {
    /// Wraps an I/O error with what was being done and where.
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| CasError::Io {
            action,
            path,
            source,
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = CasError> = std::result::Result<T, E>;
