//! kiln's DAG engine: it runs a [`kiln_plan::Plan`] — independent steps in parallel, each as
//! soon as its inputs exist — with content-addressed caching, retries with exponential
//! backoff, per-step timeouts, failure propagation, cancellation, and an append-only run
//! record written as the run goes.
//!
//! The engine calls [`Executor`]s through a trait and never names a backend: wasmtime,
//! processes, container engines and Kubernetes live in other crates. It owns the state folder
//! (store, cache index, records, scratch), materialises every input before a step runs and
//! publishes outputs to the store only after the step succeeded, so a failed or cancelled
//! step leaves nothing half-written behind.

mod cache;
mod engine;
mod executor;
mod replay;
pub mod staging;

use std::path::Path;

pub use cache::{DETERMINISM_VERSION, KEY_VERSION, KeyChange, KeyParts, canonical_json, diff_keys};
pub use engine::{
    Clock, Engine, EngineConfig, Event, Executors, RunEvent, RunHandle, RunInput, RunSummary,
    SkipReason, StepStatus, StepSummary, SystemClock,
};
pub use executor::{ExecOutcome, Executor, ExecutorError, StagedTask, StepTask, fill_paths};
pub use replay::{
    MetricReplay, OutputReplay, ReplayError, ReplayOptions, ReplayProgress, ReplayReport,
    StepReplay, Verdict, replay_run,
};
pub use staging::StagingArea;
// The metadata types the engine's API speaks in.
pub use kiln_record::{
    AttemptStatus, CacheEntry, CacheIndex, FailureKind, FileMetadata, MetadataStore, RecordError,
    RecordEvent, RecordWriter, RunStatus, RunView, StateDir, StepRecord, StepView, new_run_id,
    now_ms, read_record,
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
