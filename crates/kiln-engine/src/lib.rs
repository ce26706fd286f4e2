//! kiln's DAG engine: it runs a [`kiln_plan::Plan`] — independent steps in parallel, each as
//! soon as its inputs exist — with content-addressed caching, retries with exponential
//! backoff, per-step timeouts, failure propagation, cancellation, and an append-only run
//! record written as the run goes.
//!
//! It is given a pinned plan (every component and workspace input already a digest: see
//! `kiln-build`) and hands each attempt to an [`Executor`] as a [`StepTask`], by digest; the
//! executor stages it where it runs ([`staging`]: inputs materialised, outputs published only
//! after the step succeeded, so a failed or cancelled step leaves nothing half-written) and
//! reports output digests. It holds a dyn [`kiln_cas::BlobStore`] and a dyn
//! [`MetadataStore`], starts any number of runs at once ([`Engine::start`]), and never names
//! a backend, a file format or a shell: wasmtime, processes, container engines and
//! Kubernetes live in other crates.

mod cache;
mod engine;
mod executor;
pub mod exports;
pub mod metrics;
mod replay;
pub mod staging;

use std::path::Path;

pub use cache::{
    DETERMINISM_VERSION, ItemChange, KEY_VERSION, KeyChange, KeyParts, canonical_json, diff_keys,
    list_changes,
};
pub use engine::{
    Clock, Engine, EngineConfig, Event, Executors, RunEvent, RunHandle, RunInput, RunSummary,
    SkipReason, StepStatus, StepSummary, SystemClock,
};
pub use executor::{ExecOutcome, Executor, ExecutorError, StagedTask, StepTask, fill_paths};
pub use exports::{ExportDone, ExportProgress, ExportTask, Exporter};
pub use replay::{
    MetricReplay, OutputReplay, ReplayError, ReplayOptions, ReplayProgress, ReplayReport,
    StepReplay, Verdict, plan_as_run, replay_run,
};
pub use staging::{ScratchPool, StagingArea};
// The metadata types the engine's API speaks in.
pub use kiln_record::{
    AttemptStatus, CacheEntry, CacheIndex, ExportRecord, ExportStatus, FailureKind, FileMetadata,
    MetadataStore, RecordError, RecordEvent, RecordWriter, RunStatus, RunView, StateDir,
    StepRecord, StepView, new_run_id, now_ms, read_record,
};

/// What can stop the engine itself (a step failing is not an error: it is an outcome).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The run cannot start: every problem found before anything ran.
    #[error("the run cannot start:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Preflight(Vec<String>),
    /// The state folder could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: String,
        /// What the system said.
        source: std::io::Error,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] kiln_cas::CasError),
    /// The run record could not be written or read.
    #[error("run record: {0}")]
    Record(#[from] RecordError),
    /// kiln's own bug: a task it started failed.
    #[error("internal error: {0}")]
    Internal(String),
}

impl EngineError {
    /// An I/O error on a path.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        EngineError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}
