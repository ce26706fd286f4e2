//! The seam between the engine and whatever runs a step.
//!
//! The engine hands an executor a [`StepTask`]: one attempt of one step, its inputs, its
//! component and its outputs named by digest and name, never by host path. It is
//! serialisable: the same value can travel to a runner on another machine or an agent in a
//! Pod. Whoever runs the step stages it where it runs ([`crate::staging`]: materialise the
//! inputs from the store, run, publish the outputs) and says how it ended in an
//! [`ExecOutcome`] that carries the output digests. A local executor implements
//! [`Executor::run_staged`] and lets the default [`Executor::run`] do the staging in process.

use std::collections::BTreeMap;
use std::path::PathBuf;

use async_trait::async_trait;
use kiln_cas::Digest;
use kiln_plan::PlannedStep;
use kiln_record::FailureKind;
use serde::{Deserialize, Serialize};

use crate::staging::{StagingArea, publish, stage};

/// One attempt of one step, by digest: what the engine hands an executor (and, serialised,
/// what it would send a remote runner).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepTask {
    /// The run this attempt belongs to.
    pub run_id: String,
    /// The planned step (kind, params, templates, policy).
    pub step: PlannedStep,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// The step's cache key: what a deterministic executor seeds its random sources from, so
    /// that the same inputs give the same bytes.
    pub cache_key: Digest,
    /// Input name → the artifact's digest (a blob or a tree).
    pub inputs: BTreeMap<String, Digest>,
    /// The outputs the step must write, by name.
    pub outputs: Vec<String>,
    /// The component of a wasm step, pinned before the run.
    pub component: Option<Digest>,
    /// Facts an earlier attempt recorded that a deterministic executor must reproduce (the
    /// `details` of the recorded attempt: where the clocks started, the fuel budget...).
    /// Empty in a run; set by replay.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub recorded: BTreeMap<String, serde_json::Value>,
}

/// A task staged on the machine that runs it: every input materialised read-only, a folder
/// for every output, the component as a file. Made by [`crate::staging::stage`].
#[derive(Debug, Clone)]
pub struct StagedTask {
    /// The run this attempt belongs to.
    pub run_id: String,
    /// The planned step (kind, params, templates, policy).
    pub step: PlannedStep,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// The step's cache key (`blake3:<hex>`).
    pub cache_key: String,
    /// A scratch folder for this attempt; the executor may use it as the working directory.
    pub workdir: PathBuf,
    /// Input name → materialised file or folder (read-only).
    pub inputs: BTreeMap<String, PathBuf>,
    /// Output name → where the step must write it (a file or a folder; the parent exists).
    pub outputs: BTreeMap<String, PathBuf>,
    /// The component file of a wasm step.
    pub component: Option<PathBuf>,
    /// Where the step's stdout and stderr go.
    pub log: PathBuf,
    /// See [`StepTask::recorded`].
    pub recorded: BTreeMap<String, serde_json::Value>,
}

/// How an attempt ended, from the step's point of view.
#[derive(Debug, Clone, PartialEq)]
pub enum ExecOutcome {
    /// The step succeeded.
    Succeeded {
        /// Output digests by name, once published ([`Executor::run`]); empty from
        /// [`Executor::run_staged`], whose outputs are the files the task named.
        outputs: BTreeMap<String, Digest>,
        /// Numbers the step reported (accuracy, loss...), if any.
        metrics: BTreeMap<String, f64>,
        /// Extra facts for the run record (fuel used, seed...), if any.
        details: BTreeMap<String, serde_json::Value>,
    },
    /// The step ran and failed: a non-zero exit, a trap, a limit.
    Failed {
        /// What went wrong, for people.
        message: String,
        /// The exit code, when there is one.
        exit_code: Option<i32>,
        /// A stable kind, for tests and tools.
        kind: FailureKind,
        /// Whether another attempt could end otherwise. The executor decides: a wasm step's
        /// failures repeat exactly; a container's exit may be a flaky network.
        retryable: bool,
        /// Facts for the run record (fuel used, seed...), also when it failed.
        details: BTreeMap<String, serde_json::Value>,
    },
}

impl ExecOutcome {
    /// A success with nothing to add.
    pub fn success() -> Self {
        ExecOutcome::Succeeded {
            outputs: BTreeMap::new(),
            metrics: BTreeMap::new(),
            details: BTreeMap::new(),
        }
    }

    /// A failure with a message and a kind, worth retrying unless the executor says otherwise
    /// ([`ExecOutcome::deterministic`]).
    pub fn failure(kind: FailureKind, message: impl Into<String>, exit_code: Option<i32>) -> Self {
        ExecOutcome::Failed {
            message: message.into(),
            exit_code,
            kind,
            retryable: true,
            details: BTreeMap::new(),
        }
    }

    /// The same outcome, marked as one a retry would only repeat (if it is a failure).
    pub fn deterministic(mut self) -> Self {
        if let ExecOutcome::Failed { retryable, .. } = &mut self {
            *retryable = false;
        }
        self
    }

    /// The same outcome with these facts for the record.
    pub fn with_details(mut self, facts: BTreeMap<String, serde_json::Value>) -> Self {
        match &mut self {
            ExecOutcome::Succeeded { details, .. } | ExecOutcome::Failed { details, .. } => {
                *details = facts
            }
        }
        self
    }
}

/// An executor could not run the step at all (kiln's problem, not the step's). Never
/// retried.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ExecutorError {
    /// What went wrong, for people.
    pub message: String,
    /// [`FailureKind::Executor`] in general, [`FailureKind::Component`] when the step's
    /// component cannot be read, compiled or linked.
    pub kind: FailureKind,
}

impl ExecutorError {
    /// An error with a message.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            kind: FailureKind::Executor,
        }
    }

    /// The step's component cannot be read, compiled or linked.
    pub fn component(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            kind: FailureKind::Component,
        }
    }
}

/// Runs steps of one kind. The engine never looks behind this trait.
///
/// Dropping the future returned by [`Executor::run`] must stop the step (kill its process,
/// interrupt its instance): that is how timeouts and cancellation reach it.
#[async_trait]
pub trait Executor: Send + Sync {
    /// A short name for messages and the run record (`process`, `podman`, `wasm`).
    fn name(&self) -> &str;

    /// Checks, before a run starts, that this executor can run these steps (an engine is
    /// installed, a command exists). Every problem at once, one line each.
    async fn preflight(&self, steps: &[&PlannedStep]) -> Result<(), Vec<String>> {
        let _ = steps;
        Ok(())
    }

    /// What this executor adds to a step's cache key, besides the step itself: what it
    /// depends on that the plan does not say. A container backend names itself (`backend`:
    /// the process backend never runs the image, an engine does) and an engine the id its
    /// image reference resolves to now (`image_id`), so that a moved tag is a miss and the
    /// same image under another tag a hit. Empty by default (a deterministic wasm runtime's
    /// result depends on nothing but the component and the inputs).
    async fn key_pins(
        &self,
        step: &PlannedStep,
    ) -> Result<BTreeMap<String, String>, ExecutorError> {
        let _ = step;
        Ok(BTreeMap::new())
    }

    /// Whether the steps this executor runs on this machine cannot write to their inputs: a
    /// wasm guest reads them through a read-only preopen, a container engine through
    /// read-only bind mounts. Their inputs are then the stored objects themselves, linked
    /// into the scratch folder rather than copied ([`kiln_cas::BlobStore::link_into`]).
    /// `false` by default: a process on the host could write through a link into the store,
    /// so it gets copies.
    fn reads_inputs_read_only(&self) -> bool {
        false
    }

    /// Runs one attempt where this executor runs steps, and publishes its outputs: the
    /// outcome of a success carries their digests.
    ///
    /// By default the attempt is staged here, in `area` ([`crate::staging`]), run with
    /// [`Executor::run_staged`] and published to `area`'s store. An executor that runs steps
    /// elsewhere (a runner pool, a Pod) sends the task there instead, and the other side
    /// stages it with the same code.
    async fn run(&self, task: &StepTask, area: &StagingArea) -> Result<ExecOutcome, ExecutorError> {
        let staged = match stage(task, area, self.reads_inputs_read_only()).await {
            Ok(staged) => staged,
            Err(failure) => return Ok(failure),
        };
        let outcome = self.run_staged(staged.task()).await?;
        let outcome = match outcome {
            ExecOutcome::Succeeded {
                metrics, details, ..
            } => match publish(staged.task(), area.store.as_ref()).await {
                Ok(outputs) => {
                    return Ok(ExecOutcome::Succeeded {
                        outputs,
                        metrics,
                        details,
                    });
                }
                Err(failure) => failure.with_details(details),
            },
            failed => failed,
        };
        Ok(match (&area.keep_failed, outcome) {
            (
                Some(kept),
                ExecOutcome::Failed {
                    message,
                    exit_code,
                    kind,
                    retryable,
                    details,
                },
            ) => {
                let message = match staged.keep(kept) {
                    Ok(path) => format!(
                        "{message}\nscratch folder kept at {} (inputs in in/, outputs in out/)",
                        path.display()
                    ),
                    Err(e) => format!("{message}\n{e}"),
                };
                ExecOutcome::Failed {
                    message,
                    exit_code,
                    kind,
                    retryable,
                    details,
                }
            }
            (_, outcome) => outcome,
        })
    }

    /// Runs one attempt that is staged on this machine: its inputs are files, and it writes
    /// its outputs where the task says.
    async fn run_staged(&self, task: &StagedTask) -> Result<ExecOutcome, ExecutorError> {
        let _ = task;
        Err(ExecutorError::new(format!(
            "the `{}` executor does not run steps on this machine",
            self.name()
        )))
    }
}

/// Replaces `{{inputs.X}}` and `{{outputs.X}}` in a container field with the paths an
/// executor chose; other text is kept as it is.
pub fn fill_paths(
    text: &str,
    inputs: &BTreeMap<String, String>,
    outputs: &BTreeMap<String, String>,
) -> String {
    use kiln_spec::template::{Segment, TemplateRef, parse};
    let Ok(segments) = parse(text) else {
        return text.to_owned();
    };
    let mut out = String::new();
    for segment in segments {
        match segment {
            Segment::Text(t) => out.push_str(&t),
            Segment::Ref { target, .. } => match &target {
                TemplateRef::Input(n) if inputs.contains_key(n) => out.push_str(&inputs[n]),
                TemplateRef::Output(n) if outputs.contains_key(n) => out.push_str(&outputs[n]),
                other => out.push_str(&format!("{{{{{other}}}}}")),
            },
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_paths() {
        let inputs = BTreeMap::from([("data".to_owned(), "/in/data".to_owned())]);
        let outputs = BTreeMap::from([("model".to_owned(), "/out/model".to_owned())]);
        assert_eq!(
            fill_paths(
                "--data={{inputs.data}} {{ outputs.model }}",
                &inputs,
                &outputs
            ),
            "--data=/in/data /out/model"
        );
    }

    #[test]
    fn tasks_travel_as_json() {
        let pipeline = kiln_spec::parse(
            "apiVersion: kiln/v1\nname: t\nsteps:\n  a:\n    container: {image: x, command: [sh]}\n    outputs: [out]\n",
        )
        .unwrap();
        let plan = kiln_plan::compile(&pipeline, &kiln_plan::PlanOptions::default())
            .plan
            .unwrap();
        let task = StepTask {
            run_id: "r".into(),
            step: plan.steps[0].clone(),
            attempt: 2,
            cache_key: Digest::of_bytes(b"key"),
            inputs: BTreeMap::from([("data".to_owned(), Digest::of_bytes(b"data"))]),
            outputs: vec!["out".into()],
            component: None,
            recorded: BTreeMap::new(),
        };
        let text = serde_json::to_string(&task).unwrap();
        assert!(!text.contains("/tmp") && text.contains("blake3:"), "{text}");
        let back: StepTask = serde_json::from_str(&text).unwrap();
        assert_eq!(serde_json::to_string(&back).unwrap(), text);
        assert_eq!(back.cache_key, task.cache_key);
    }
}
