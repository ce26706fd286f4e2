//! Local backends for container steps: [`ProcessExecutor`] runs a step's command directly on
//! the host (what a laptop without a container engine can do), and [`EngineExecutor`] runs the
//! step's image with `podman` or `docker`, inputs mounted read-only and nothing else reachable.
//! Both implement [`kiln_engine::Executor`]: a step's log goes to the task's log file, a
//! non-zero exit is an [`ExecOutcome`](kiln_engine::ExecOutcome) that quotes the end of the
//! log, and dropping the future kills everything the step started.
//!
//! It deliberately does not talk to Kubernetes (that is `kiln-kube`), never pulls images (no
//! registry is assumed: pull or build them first), does not touch the store (the engine
//! materialises inputs and publishes outputs), and does not sandbox the process backend: that
//! backend runs the command as the current user with a cleared environment, and is only as
//! isolated as the host is.

mod child;
mod engine;
mod process;
pub mod secrets;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use kiln_engine::{Executor, ExecutorError};

pub use child::cleanups_done;
pub use engine::{
    ContainerEngine, EngineExecutor, EngineProbe, INPUTS_DIR, OUTPUTS_DIR, SECRETS_DIR, WORK_DIR,
    command_line, container_name, detect, probe,
};
pub use process::{DEFAULT_LOG_CAP, ProcessExecutor};
pub use secrets::Secrets;

/// Everything that can stop this crate from running a step (a step failing is an outcome).
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// `--containers` named no known backend.
    #[error("unknown container backend `{0}` (expected `process`, `podman` or `docker`)")]
    UnknownBackend(String),
    /// The engine's client is not installed.
    #[error(
        "`{engine}` is not installed (not found on PATH); install it (in kiln's repository: scripts/setup-containers.sh) or use `--containers process`"
    )]
    EngineMissing {
        /// `podman` or `docker`.
        engine: &'static str,
    },
    /// The client is installed but no engine answers.
    #[error("`{engine}` is installed but not usable: {reason}")]
    EngineUnusable {
        /// `podman` or `docker`.
        engine: &'static str,
        /// What the client said, or why it did not answer.
        reason: String,
    },
    /// The executor was handed a wasm step.
    #[error("step `{step}` is not a container step")]
    NotAContainerStep {
        /// The planned step id.
        step: String,
    },
    /// A host path cannot be written into a `--mount` option.
    #[error(
        "path `{path}` contains a comma or a double quote, which a container engine's `--mount` cannot express"
    )]
    UnmountablePath {
        /// The offending path.
        path: String,
    },
    /// A program could not be started.
    #[error("could not start `{program}`: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// What the system said.
        source: std::io::Error,
    },
    /// A file or folder (the step log, the working directory) could not be used.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: String,
        /// What the system said.
        source: std::io::Error,
    },
}

impl From<ContainerError> for ExecutorError {
    fn from(error: ContainerError) -> Self {
        ExecutorError::new(error.to_string())
    }
}

/// The container part of a planned step, or the error for a wasm step.
pub(crate) fn container_plan(
    step: &kiln_plan::PlannedStep,
) -> Result<&kiln_plan::ContainerPlan, ContainerError> {
    match &step.kind {
        kiln_plan::StepKind::Container(plan) => Ok(plan),
        kiln_plan::StepKind::Wasm { .. } => Err(ContainerError::NotAContainerStep {
            step: step.id.to_string(),
        }),
    }
}

impl ContainerError {
    /// An I/O error on a file or folder.
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        ContainerError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// Which local backend runs container steps: the `--containers` flag of the CLI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// Run the command on the host; the image is not used.
    Process,
    /// Run the image with podman.
    Podman,
    /// Run the image with docker.
    Docker,
}

impl Backend {
    /// The default: [`Backend::Process`].
    ///
    /// A user on a laptop without a container engine must be able to `kiln run` a pipeline,
    /// so the default needs nothing but the step's own command; running the image is an
    /// explicit choice (`--containers podman|docker`), never a guess from what happens to be
    /// installed, so the same pipeline behaves the same on every machine.
    pub fn auto() -> Backend {
        Backend::Process
    }

    /// The flag value and executor name: `process`, `podman` or `docker`.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Process => "process",
            Backend::Podman => "podman",
            Backend::Docker => "docker",
        }
    }

    /// An executor for this backend, ready for the engine's `Executors::container`, with
    /// secrets from `KILN_SECRET_<NAME>` variables.
    pub fn executor(self) -> Arc<dyn Executor> {
        self.executor_with(Arc::new(Secrets::from_env()))
    }

    /// An executor for this backend that resolves step secrets from `secrets`.
    pub fn executor_with(self, secrets: Arc<Secrets>) -> Arc<dyn Executor> {
        match self {
            Backend::Process => Arc::new(ProcessExecutor::new().with_secrets(secrets)),
            Backend::Podman => {
                Arc::new(EngineExecutor::new(ContainerEngine::Podman).with_secrets(secrets))
            }
            Backend::Docker => {
                Arc::new(EngineExecutor::new(ContainerEngine::Docker).with_secrets(secrets))
            }
        }
    }
}

impl Default for Backend {
    fn default() -> Self {
        Backend::auto()
    }
}

impl FromStr for Backend {
    type Err = ContainerError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "process" => Ok(Backend::Process),
            "podman" => Ok(Backend::Podman),
            "docker" => Ok(Backend::Docker),
            other => Err(ContainerError::UnknownBackend(other.to_owned())),
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_flag() {
        for backend in [Backend::Process, Backend::Podman, Backend::Docker] {
            assert_eq!(backend.as_str().parse::<Backend>().unwrap(), backend);
            assert_eq!(backend.executor().name(), backend.as_str());
        }
        assert_eq!(
            "kubernetes".parse::<Backend>().unwrap_err().to_string(),
            "unknown container backend `kubernetes` (expected `process`, `podman` or `docker`)"
        );
    }

    #[test]
    fn defaults_to_the_process_backend() {
        assert_eq!(Backend::auto(), Backend::Process);
        assert_eq!(Backend::default(), Backend::Process);
    }
}
