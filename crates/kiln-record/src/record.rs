//! The run record: an append-only JSON-lines file written as the run goes.
//!
//! Every line is one [`RecordEvent`]. A run that crashed leaves a readable prefix; readers
//! ignore a torn last line.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use kiln_cas::Digest;
pub use kiln_spec::StepId;
use serde::{Deserialize, Serialize};

use crate::error::RecordError;

/// One line of a run record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum RecordEvent {
    /// The run began.
    RunStarted {
        /// Run id.
        run_id: String,
        /// Pipeline name.
        pipeline: String,
        /// Digest of the pipeline file's bytes.
        pipeline_digest: String,
        /// Digest of the params' canonical JSON.
        params_digest: String,
        /// The params of this run.
        params: BTreeMap<String, kiln_spec::Value>,
        /// How people read fan-out instances (`train[0]` → `train[lr=0.1]`); ids without
        /// a label read as themselves.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        labels: BTreeMap<StepId, String>,
        /// The pipeline file, as given.
        pipeline_file: String,
        /// kiln's version.
        kiln_version: String,
        /// The runtime's determinism version (part of every cache key).
        determinism_version: u32,
        /// Unix time in milliseconds.
        at_ms: u64,
    },
    /// An attempt of a step began.
    StepStarted {
        /// Planned step id.
        step: StepId,
        /// Attempt, from 1.
        attempt: u32,
        /// Unix time in milliseconds.
        at_ms: u64,
    },
    /// A step attempt ended, or a step was served from the cache.
    StepFinished(Box<StepRecord>),
    /// A step did not run.
    StepSkipped {
        /// Planned step id.
        step: StepId,
        /// Why.
        reason: String,
    },
    /// A step fanning out over a list a step wrote got its instances when the list existed:
    /// one per item, in list order, `STEP[0]`, `STEP[1]`... A replay makes the same ones.
    StepExpanded {
        /// The fan-out step (as planned, without an index).
        step: StepId,
        /// The digest of the output holding the list.
        list: String,
        /// The items, in order.
        items: Vec<serde_json::Value>,
        /// How people read the instances (`work[a.csv]`), where they have labels.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        labels: BTreeMap<StepId, String>,
    },
    /// The small outputs of other steps a step's templates read (`{{steps.prep.rows}}`), as
    /// they were when it was ready, by template. A replay fills the same.
    StepValues {
        /// The step.
        step: StepId,
        /// Template (`steps.prep.rows`) → the value it read.
        values: BTreeMap<String, serde_json::Value>,
    },
    /// After the steps, one output of `exports:` copied to a bucket, found there already,
    /// failed, or not exported because its step did not succeed.
    Exported(Box<ExportRecord>),
    /// The run ended.
    RunFinished {
        /// `succeeded`, `failed` or `cancelled`.
        status: RunStatus,
        /// Unix time in milliseconds.
        at_ms: u64,
        /// Wall time of the whole run.
        duration_ms: u64,
    },
}

/// What the record keeps of one finished step attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Planned step id.
    pub step: StepId,
    /// Attempt, from 1 (0 for a cache hit).
    pub attempt: u32,
    /// `succeeded`, `cached` or `failed`.
    pub status: AttemptStatus,
    /// The cache key (`blake3:<hex>`).
    pub cache_key: Digest,
    /// Everything the key was computed from, to explain a miss later.
    pub key: serde_json::Value,
    /// The executor that ran it (`wasm`, `process`, `podman`...).
    pub executor: String,
    /// Input digests by name.
    pub inputs: BTreeMap<String, Digest>,
    /// Output digests by name (empty when failed).
    pub outputs: BTreeMap<String, Digest>,
    /// Wall time of the attempt.
    pub duration_ms: u64,
    /// For failures: what went wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// For failures: a stable kind (`exit`, `timeout`, `out-of-fuel`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_kind: Option<FailureKind>,
    /// For failures: the exit code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Metrics the step reported.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, f64>,
    /// Executor facts: fuel used, seed, clock start...
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub details: BTreeMap<String, serde_json::Value>,
    /// For a cache hit: the run whose outputs were reused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reused_from: Option<String>,
    /// Why a cached result with the same key was not reused, when one was there:
    /// `cached result is 8d old, older than max_age 7d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_miss: Option<String>,
}

/// What the record keeps of one export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportRecord {
    /// The output as the pipeline names it: `STEP.OUTPUT`.
    pub from: String,
    /// The planned step that wrote it.
    pub step: StepId,
    /// Its output.
    pub output: String,
    /// Where it went: the object's URL, or the prefix a folder's files went under.
    pub url: String,
    /// How it went.
    pub status: ExportStatus,
    /// The output's digest (a blob, or a folder's tree), when the step wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
    /// Bytes exported (every file of a folder), when it was exported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Objects written or found holding these bytes already (1 for a file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objects: Option<u64>,
    /// Of those, the objects uploaded; the others held these bytes already.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uploaded: Option<u64>,
    /// Why it failed or was not exported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Unix time in milliseconds, when it ended.
    pub at_ms: u64,
}

/// How an export went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExportStatus {
    /// Uploaded (for a folder: at least one of its files).
    Uploaded,
    /// Every object already held these bytes: nothing was uploaded.
    Unchanged,
    /// The upload failed: the run fails.
    Failed,
    /// Its step failed, was skipped or cancelled, so there was nothing to export.
    NotExported,
}

impl ExportStatus {
    /// The status as the record writes it: `uploaded`, `unchanged`, `failed`, `not-exported`.
    pub fn as_str(self) -> &'static str {
        match self {
            ExportStatus::Uploaded => "uploaded",
            ExportStatus::Unchanged => "unchanged",
            ExportStatus::Failed => "failed",
            ExportStatus::NotExported => "not-exported",
        }
    }
}

impl std::fmt::Display for ExportStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an attempt failed: a stable kind, for tests, tools and the record. Written as
/// kebab-case text (`out-of-fuel`); a kind this kiln does not know reads back as `unknown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureKind {
    /// The step exited with a non-zero code.
    Exit,
    /// The step, or the engine client running it, was killed by a signal.
    Signal,
    /// The step ran past its `timeout`.
    Timeout,
    /// A wasm step used all of its fuel.
    OutOfFuel,
    /// A wasm step asked for more memory than its limit.
    Memory,
    /// A wasm step overflowed its stack.
    StackOverflow,
    /// The step wrote past its log limit.
    LogLimit,
    /// The step wrote past its output limit.
    OutputLimit,
    /// A wasm step trapped.
    Trap,
    /// The step did something its sandbox refuses (a link among its outputs...).
    Sandbox,
    /// A step-world component returned an error.
    StepError,
    /// The container engine failed before the step could start.
    Engine,
    /// The step's command could not be started.
    Spawn,
    /// The step succeeded but did not write a declared output.
    MissingOutput,
    /// The step's metrics output is not a flat JSON object of finite numbers.
    Metrics,
    /// An input could not be resolved or materialised.
    Input,
    /// An output could not be stored.
    Output,
    /// The step's `when` condition could not be evaluated.
    Condition,
    /// The step's component cannot be read, compiled or linked.
    Component,
    /// The executor could not run the step at all.
    Executor,
    /// kiln itself failed (a bug).
    Internal,
    /// A kind this kiln does not know (from a newer record).
    #[serde(other)]
    Unknown,
}

impl FailureKind {
    /// The kind as it is written: `exit`, `out-of-fuel`...
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Exit => "exit",
            FailureKind::Signal => "signal",
            FailureKind::Timeout => "timeout",
            FailureKind::OutOfFuel => "out-of-fuel",
            FailureKind::Memory => "memory",
            FailureKind::StackOverflow => "stack-overflow",
            FailureKind::LogLimit => "log-limit",
            FailureKind::OutputLimit => "output-limit",
            FailureKind::Trap => "trap",
            FailureKind::Sandbox => "sandbox",
            FailureKind::StepError => "step-error",
            FailureKind::Engine => "engine",
            FailureKind::Spawn => "spawn",
            FailureKind::MissingOutput => "missing-output",
            FailureKind::Metrics => "metrics",
            FailureKind::Input => "input",
            FailureKind::Output => "output",
            FailureKind::Condition => "condition",
            FailureKind::Component => "component",
            FailureKind::Executor => "executor",
            FailureKind::Internal => "internal",
            FailureKind::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for FailureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for FailureKind {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for FailureKind {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// How a step attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptStatus {
    /// Ran and succeeded.
    Succeeded,
    /// Served from the cache.
    Cached,
    /// Ran and failed.
    Failed,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Every step succeeded, was cached or was skipped by its condition.
    Succeeded,
    /// Some step failed.
    Failed,
    /// Stopped by the user.
    Cancelled,
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        })
    }
}

/// Appends events to a record file, one JSON line each, flushed as they come.
#[derive(Debug)]
pub struct RecordWriter {
    file: File,
}

impl RecordWriter {
    /// Creates the record (it must not exist).
    pub fn create(path: &Path) -> Result<Self, RecordError> {
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(path)
            .map_err(|e| RecordError::io(path, e))?;
        Ok(Self { file })
    }

    /// Opens an existing record to append to it.
    pub fn open(path: &Path) -> Result<Self, RecordError> {
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| RecordError::io(path, e))?;
        Ok(Self { file })
    }

    /// Appends one event.
    pub fn append(&mut self, event: &RecordEvent) -> Result<(), RecordError> {
        let mut line = serde_json::to_vec(event).expect("record events serialise");
        line.push(b'\n');
        // One write per line: a crash leaves whole lines and at most one torn tail.
        self.file
            .write_all(&line)
            .and_then(|()| self.file.flush())
            .map_err(|e| RecordError::Invalid(format!("cannot append to the run record: {e}")))
    }
}

/// Reads a record; a torn last line (a crash mid-write) is ignored.
pub fn read_record(path: &Path) -> Result<Vec<RecordEvent>, RecordError> {
    let file = File::open(path).map_err(|e| RecordError::io(path, e))?;
    let lines: Vec<String> = BufReader::new(file)
        .lines()
        .collect::<Result<_, _>>()
        .map_err(|e| RecordError::io(path, e))?;
    let mut events = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(event) => events.push(event),
            Err(_) if i + 1 == lines.len() => break,
            Err(e) => {
                return Err(RecordError::Invalid(format!(
                    "{}: line {} is not a record event: {e}",
                    path.display(),
                    i + 1
                )));
            }
        }
    }
    Ok(events)
}

/// What a record says about each step, folded from its events.
#[derive(Debug, Clone, Default)]
pub struct RunView {
    /// The first event, if present.
    pub started: Option<RecordEvent>,
    /// The last event, if the run finished.
    pub finished: Option<RecordEvent>,
    /// Per step id (in the order they first appear): the last finished attempt.
    pub steps: Vec<(String, StepView)>,
    /// Labels of the instances of fan-outs over lists steps wrote (`StepExpanded`).
    pub expanded_labels: BTreeMap<StepId, String>,
    /// The exports, in the order they ended.
    pub exports: Vec<ExportRecord>,
}

/// One step's state in a record.
#[derive(Debug, Clone, Default)]
pub struct StepView {
    /// Attempts started.
    pub attempts: u32,
    /// The last finished attempt.
    pub last: Option<StepRecord>,
    /// Why it was skipped, if it was.
    pub skipped: Option<String>,
}

impl RunView {
    /// Folds events into a view.
    pub fn from_events(events: &[RecordEvent]) -> Self {
        let mut view = RunView::default();
        for event in events {
            match event {
                RecordEvent::RunStarted { .. } => view.started = Some(event.clone()),
                RecordEvent::RunFinished { .. } => view.finished = Some(event.clone()),
                RecordEvent::StepStarted { step, attempt, .. } => {
                    view.step_mut(step).attempts = *attempt;
                }
                RecordEvent::StepFinished(rec) => {
                    view.step_mut(&rec.step).last = Some((**rec).clone())
                }
                RecordEvent::StepSkipped { step, reason } => {
                    view.step_mut(step).skipped = Some(reason.clone());
                }
                RecordEvent::StepExpanded { labels, .. } => {
                    view.expanded_labels
                        .extend(labels.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
                RecordEvent::StepValues { .. } => {}
                RecordEvent::Exported(export) => view.exports.push((**export).clone()),
            }
        }
        view
    }

    fn step_mut(&mut self, id: &str) -> &mut StepView {
        if let Some(i) = self.steps.iter().position(|(s, _)| s == id) {
            return &mut self.steps[i].1;
        }
        self.steps.push((id.to_owned(), StepView::default()));
        &mut self.steps.last_mut().expect("just pushed").1
    }

    /// The step with this id.
    pub fn step(&self, id: &str) -> Option<&StepView> {
        self.steps.iter().find(|(s, _)| s == id).map(|(_, v)| v)
    }

    /// How people read step `id`: its label (`train[lr=0.1]`) where the run gave one, else
    /// the id itself.
    pub fn label<'a>(&'a self, id: &'a str) -> &'a str {
        if let Some(label) = self.expanded_labels.get(id) {
            return label;
        }
        match &self.started {
            Some(RecordEvent::RunStarted { labels, .. }) => {
                labels.get(id).map_or(id, String::as_str)
            }
            _ => id,
        }
    }

    /// The id of the step people call `name`: an id as it is, or a label.
    pub fn resolve_step<'a>(&'a self, name: &'a str) -> Option<&'a str> {
        if let Some((id, _)) = self.steps.iter().find(|(s, _)| s == name) {
            return Some(id);
        }
        if let Some((id, _)) = self.expanded_labels.iter().find(|(_, l)| *l == name) {
            return Some(id.as_str());
        }
        match &self.started {
            Some(RecordEvent::RunStarted { labels, .. }) => labels
                .iter()
                .find(|(_, label)| *label == name)
                .map(|(id, _)| id.as_str()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_read_back_bit_for_bit() {
        // serde_json's default float parser can be one unit in the last place off; replay
        // compares metrics exactly, so the record must give back what was written.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("record.jsonl");
        let values = [
            0.9111111111111111,
            0.1 + 0.2,
            1e-300,
            123456.789e10,
            2.0f64.sqrt(),
        ];
        let rec = StepRecord {
            step: "s".into(),
            attempt: 1,
            status: AttemptStatus::Succeeded,
            cache_key: Digest::of_bytes(b"k"),
            key: serde_json::Value::Null,
            executor: "wasm".into(),
            inputs: BTreeMap::new(),
            outputs: BTreeMap::new(),
            duration_ms: 0,
            message: None,
            failure_kind: None,
            exit_code: None,
            metrics: values
                .iter()
                .enumerate()
                .map(|(i, v)| (format!("m{i}"), *v))
                .collect(),
            details: BTreeMap::new(),
            reused_from: None,
            cache_miss: None,
        };
        RecordWriter::create(&path)
            .unwrap()
            .append(&RecordEvent::StepFinished(Box::new(rec.clone())))
            .unwrap();
        let events = read_record(&path).unwrap();
        let RecordEvent::StepFinished(back) = &events[0] else {
            panic!("not a step")
        };
        for (i, v) in values.iter().enumerate() {
            assert_eq!(back.metrics[&format!("m{i}")].to_bits(), v.to_bits(), "{v}");
        }
    }

    #[test]
    fn failure_kinds_are_written_as_text_and_unknown_ones_read_back() {
        for kind in [
            FailureKind::OutOfFuel,
            FailureKind::StackOverflow,
            FailureKind::Exit,
        ] {
            let text = serde_json::to_string(&kind).unwrap();
            assert_eq!(text, format!("\"{kind}\""));
            assert_eq!(serde_json::from_str::<FailureKind>(&text).unwrap(), kind);
        }
        assert_eq!(
            serde_json::from_str::<FailureKind>("\"gpu-melted\"").unwrap(),
            FailureKind::Unknown
        );
    }

    #[test]
    fn torn_tail_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("record.jsonl");
        let mut w = RecordWriter::create(&path).unwrap();
        w.append(&RecordEvent::StepSkipped {
            step: "a".into(),
            reason: "r".into(),
        })
        .unwrap();
        drop(w);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"event\":\"step_sta").unwrap();
        let events = read_record(&path).unwrap();
        assert_eq!(events.len(), 1);
    }
}
