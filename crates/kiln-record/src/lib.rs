//! kiln's metadata: run records (an append-only list of [`RecordEvent`]s per run), cache
//! entries, the run list, and where all of it lives.
//!
//! [`MetadataStore`] is the seam the engine writes through; [`FileMetadata`] keeps everything
//! as files in a state folder (`.kiln/` on a laptop), and a server keeps the same in a
//! database behind the same trait. [`StateDir`] is the one place that knows a state folder's
//! layout. With the `bundle` feature, [`bundle`] turns a run into one portable file and back.
//!
//! It runs nothing: no scheduling, no executors, no cache keys (those are the engine's); it
//! stores what it is given and gives it back as it was written.

mod cache;
mod error;
mod meta;
mod record;
mod state;

#[cfg(feature = "bundle")]
pub mod bundle;

pub use cache::{CacheEntry, CacheIndex};
pub use error::RecordError;
pub use meta::{FileMetadata, MetadataStore};
pub use record::{
    AttemptStatus, ExportRecord, ExportStatus, FailureKind, RecordEvent, RecordWriter, RunStatus,
    RunView, StepRecord, StepView, read_record,
};
pub use state::{StateDir, new_run_id, now_ms};
