//! What can go wrong reading or writing metadata.

use std::path::Path;

/// A metadata read or write that failed.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// A file or folder of the state folder could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: String,
        /// What the system said.
        source: std::io::Error,
    },
    /// A record, plan or entry is not what kiln writes.
    #[error("{0}")]
    Invalid(String),
    /// A run with this id exists already.
    #[error("run {0} exists already")]
    RunExists(String),
    /// No run with this id.
    #[error("no run {0}")]
    NoRun(String),
}

impl RecordError {
    /// An I/O error on a path.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        RecordError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}
