//! The seam between the engine and whatever runs a step.

use std::collections::BTreeMap;
use std::path::PathBuf;

use async_trait::async_trait;
use kiln_plan::PlannedStep;

/// Everything an executor needs to run one attempt of one step.
///
/// The engine has already materialised every input (read-only) and created the folder each
/// output must be written into; the executor runs the step and says how it ended. It never
/// touches the store.
#[derive(Debug, Clone)]
pub struct StepTask {
    /// The run this attempt belongs to.
    pub run_id: String,
    /// The planned step (kind, params, templates, policy).
    pub step: PlannedStep,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// The step's cache key (`blake3:<hex>`): what a deterministic executor seeds its random
    /// sources from, so that the same inputs give the same bytes.
    pub cache_key: String,
    /// A scratch folder for this attempt; the executor may use it as the working directory.
    pub workdir: PathBuf,
    /// Input name → materialised file or folder (read-only).
    pub inputs: BTreeMap<String, PathBuf>,
    /// Output name → where the step must write it (a file or a folder; the parent exists).
    pub outputs: BTreeMap<String, PathBuf>,
    /// The component file of a wasm step, already built and resolved by the engine.
    pub component: Option<PathBuf>,
    /// Where the step's stdout and stderr go.
    pub log: PathBuf,
    /// Facts an earlier attempt recorded that a deterministic executor must reproduce (the
    /// `details` of the recorded attempt: where the clocks started, the fuel budget...).
    /// Empty in a run; set by replay.
    pub recorded: BTreeMap<String, serde_json::Value>,
}

/// How an attempt ended, from the step's point of view.
#[derive(Debug, Clone, PartialEq)]
pub enum ExecOutcome {
    /// The step succeeded; outputs are where the task said.
    Succeeded {
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
        /// A stable kind such as `exit`, `out-of-fuel`, `memory`, for tests and tools.
        kind: String,
    },
}

impl ExecOutcome {
    /// A success with nothing to add.
    pub fn success() -> Self {
        ExecOutcome::Succeeded {
            metrics: BTreeMap::new(),
            details: BTreeMap::new(),
        }
    }

    /// A failure with a message and a kind.
    pub fn failure(kind: &str, message: impl Into<String>, exit_code: Option<i32>) -> Self {
        ExecOutcome::Failed {
            message: message.into(),
            exit_code,
            kind: kind.to_owned(),
        }
    }
}

/// An executor could not run the step at all (kiln's problem, not the step's).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ExecutorError {
    /// What went wrong, for people.
    pub message: String,
    /// A stable kind: `executor` in general, `component` when the step's component cannot be
    /// read, compiled or linked.
    pub kind: &'static str,
}

impl ExecutorError {
    /// An error with a message.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            kind: "executor",
        }
    }

    /// The step's component cannot be read, compiled or linked.
    pub fn component(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            kind: "component",
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

    /// Runs one attempt.
    async fn run(&self, task: &StepTask) -> Result<ExecOutcome, ExecutorError>;
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
}
