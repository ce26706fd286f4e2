//! The `process` backend: a container step's command, run directly on the host.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use kiln_engine::{ExecOutcome, Executor, ExecutorError, FailureKind, StagedTask, fill_paths};
use kiln_plan::{PlannedStep, StepKind};
use tokio::process::Command;

use crate::child::{Ended, quote_tail, run_logged, shell_line, signal_name};
use crate::{ContainerError, Secrets};

/// The default cap on one step log: 64 MiB.
pub const DEFAULT_LOG_CAP: u64 = 64 * 1024 * 1024;

/// Runs a container step's `command` and `args` as a process on the host.
///
/// **The step's image is not used**: the command must exist on the host (`python3` and
/// whatever it imports). Every step log says so in its first line, and the executor warns once.
/// `resources` (cpu, memory, gpu) are not enforced either; the step runs as the current user.
///
/// `{{inputs.X}}` and `{{outputs.X}}` become the host paths of the task's inputs and outputs.
/// The working directory is the task's `workdir`, and the environment is cleared except for:
/// - `PATH` from the host, so that a bare `python3` or `sh` is found as it would be in a
///   shell (there is no image to provide one);
/// - `HOME` = the working directory, so tools that write caches under `~` stay in the scratch
///   folder;
/// - `LANG=C.UTF-8`;
/// - the step's declared `env` (paths filled in; it may override the three above);
/// - the step's `secrets`: a value, or the host path of a private file holding it (see
///   [`crate::secrets`]); their values are redacted from the log;
/// - `KILN_RUN_ID`, `KILN_STEP` and `KILN_ATTEMPT` (always kiln's values).
///
/// The child runs in its own process group. When it exits, whatever it left running in the
/// group is killed; when the future is dropped (a timeout, Ctrl-C) the whole group is killed.
#[derive(Debug)]
pub struct ProcessExecutor {
    log_cap: u64,
    warned: AtomicBool,
    secrets: Arc<Secrets>,
}

impl ProcessExecutor {
    /// An executor with the default log cap ([`DEFAULT_LOG_CAP`]).
    pub fn new() -> Self {
        ProcessExecutor {
            log_cap: DEFAULT_LOG_CAP,
            warned: AtomicBool::new(false),
            secrets: Arc::new(Secrets::from_env()),
        }
    }

    /// Resolves step secrets from `secrets` instead of `KILN_SECRET_<NAME>` variables.
    pub fn with_secrets(mut self, secrets: Arc<Secrets>) -> Self {
        self.secrets = secrets;
        self
    }

    /// Caps each step's log at `bytes` of output; the rest is dropped with a note.
    pub fn with_log_cap(mut self, bytes: u64) -> Self {
        self.log_cap = bytes;
        self
    }
}

impl Default for ProcessExecutor {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Executor for ProcessExecutor {
    fn name(&self) -> &str {
        "process"
    }

    /// Every container step needs a command, and a bare command name must be on `PATH`.
    /// (A command given as a path is resolved in the working directory, which does not exist
    /// yet, so it is not checked.)
    async fn preflight(&self, steps: &[&PlannedStep]) -> Result<(), Vec<String>> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut problems = Vec::new();
        // One PATH lookup per program, not per step: a fan-out of thousands runs one program.
        let mut found: std::collections::HashMap<&str, bool> = std::collections::HashMap::new();
        for step in steps {
            let StepKind::Container(plan) = &step.kind else {
                continue;
            };
            let Some(program) = plan.command.first() else {
                problems.push(format!(
                    "step `{}`: the process backend needs a `command`, because it runs on the host and cannot use the entrypoint of image `{}`; add `command:` or use `--containers podman`",
                    step.id, plan.image
                ));
                continue;
            };
            let bare = !program.contains('/') && !program.contains("{{");
            if bare
                && !*found
                    .entry(program.as_str())
                    .or_insert_with(|| find_on_path(program, &path).is_some())
            {
                problems.push(format!(
                    "step `{}`: command `{program}` is not on PATH; the process backend runs commands on the host (image `{}` is not used)",
                    step.id, plan.image
                ));
            }
        }
        problems.extend(self.secrets.check(steps));
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// The process backend never uses the image: it pins only itself, so a step first run
    /// here and then by an engine runs again.
    async fn key_pins(
        &self,
        _step: &PlannedStep,
    ) -> Result<std::collections::BTreeMap<String, String>, ExecutorError> {
        Ok(std::collections::BTreeMap::from([(
            "backend".to_owned(),
            "process".to_owned(),
        )]))
    }

    async fn run_staged(&self, task: &StagedTask) -> Result<ExecOutcome, ExecutorError> {
        let plan = crate::container_plan(&task.step)?;
        let inputs = host_paths(&task.inputs);
        let outputs = host_paths(&task.outputs);
        let argv: Vec<String> = plan
            .command
            .iter()
            .chain(&plan.args)
            .map(|word| fill_paths(word, &inputs, &outputs))
            .collect();
        if plan.command.is_empty() {
            return Err(ExecutorError::new(format!(
                "step `{}` has no `command`; the process backend cannot use the entrypoint of image `{}`",
                task.step.id, plan.image
            )));
        }
        let workdir = std::path::absolute(&task.workdir)
            .map_err(|source| ContainerError::io(&task.workdir, source))?;
        tokio::fs::create_dir_all(&workdir)
            .await
            .map_err(|source| ContainerError::io(&workdir, source))?;

        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                image = %plan.image,
                "process backend: container steps run their commands on the host; their images are not used"
            );
        }
        let header = format!(
            "process backend: running `{}` on the host; image `{}` is not used\n",
            shell_line(&argv),
            plan.image
        );

        let mut command = Command::new(&argv[0]);
        command.args(&argv[1..]).current_dir(&workdir).env_clear();
        if let Some(path) = std::env::var_os("PATH") {
            command.env("PATH", path);
        }
        command.env("HOME", &workdir).env("LANG", "C.UTF-8");
        for (name, value) in &plan.env {
            command.env(name, fill_paths(value, &inputs, &outputs));
        }
        let secrets = self.secrets.hand_over_for(&task.step, plan)?;
        for (name, value) in &secrets.env {
            command.env(name, value.expose());
        }
        for (name, (_, path)) in &secrets.files {
            command.env(name, path);
        }
        command
            .env("KILN_RUN_ID", &task.run_id)
            .env("KILN_STEP", task.step.id.as_str())
            .env("KILN_ATTEMPT", task.attempt.to_string());

        let program = &argv[0];
        let ended = run_logged(
            command,
            program,
            &task.log,
            &header,
            self.log_cap,
            None,
            secrets.redactor(),
        )
        .await?;
        // The secret files go now, not when the outcome has been recorded.
        drop(secrets);
        Ok(match ended {
            Ended::NotStarted(error) => ExecOutcome::failure(
                FailureKind::Spawn,
                format!("could not start `{program}`: {error}"),
                None,
            ),
            Ended::Exited { status, tail } => match (status.code(), status.signal()) {
                (Some(0), _) => ExecOutcome::success(),
                (Some(code), _) => ExecOutcome::failure(
                    FailureKind::Exit,
                    format!("`{program}` exited with code {code}{}", quote_tail(&tail)),
                    Some(code),
                ),
                (None, signal) => ExecOutcome::failure(
                    FailureKind::Signal,
                    format!(
                        "`{program}` was killed by {}{}",
                        signal_name(signal.unwrap_or(0)),
                        quote_tail(&tail)
                    ),
                    None,
                ),
            },
        })
    }
}

fn host_paths(paths: &BTreeMap<String, PathBuf>) -> BTreeMap<String, String> {
    paths
        .iter()
        .map(|(name, path)| (name.clone(), path.display().to_string()))
        .collect()
}

/// Where a bare command name resolves on `path` (a `PATH` value), as a shell would find it.
pub(crate) fn find_on_path(name: &str, path: &OsStr) -> Option<PathBuf> {
    std::env::split_paths(path)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(name))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_commands_on_path() {
        let path = OsStr::new("/nonexistent:/bin:/usr/bin");
        assert!(find_on_path("sh", path).is_some());
        assert!(find_on_path("kiln-no-such-command", path).is_none());
        assert!(find_on_path("sh", OsStr::new("")).is_none());
    }
}
