//! The `podman` and `docker` backends: a container step's image, run by a local engine.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kiln_engine::{ExecOutcome, Executor, ExecutorError, FailureKind, StagedTask, fill_paths};
use kiln_plan::{ContainerPlan, PlannedStep, StepKind};
use tokio::process::Command;

use crate::child::{ContainerRemoval, Ended, quote_tail, run_logged, shell_line, signal_name};
use crate::process::DEFAULT_LOG_CAP;
use crate::{ContainerError, Secrets};

/// Where inputs appear in the container: `/kiln/inputs/<name>`, read-only.
pub const INPUTS_DIR: &str = "/kiln/inputs";
/// Where the outputs folder appears in the container: `{{outputs.x}}` is `/kiln/outputs/x`.
pub const OUTPUTS_DIR: &str = "/kiln/outputs";
/// The working directory in the container (the task's scratch folder).
pub const WORK_DIR: &str = "/kiln/work";
/// Where a container finds the files of its file secrets (`as: file`), read-only.
pub const SECRETS_DIR: &str = "/kiln/secrets";

/// How long `version` or `image exists` may take before the engine counts as not answering.
const PROBE_LIMIT: Duration = Duration::from_secs(15);

/// A local container engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContainerEngine {
    /// `podman`, always with `--runtime runc` (Debian's default crun fails in the sandboxes
    /// kiln is developed in, and runc works everywhere podman does).
    Podman,
    /// `docker`: needs a running Docker daemon, not just the client.
    Docker,
}

impl ContainerEngine {
    /// The client program: `podman` or `docker`.
    pub fn program(self) -> &'static str {
        match self {
            ContainerEngine::Podman => "podman",
            ContainerEngine::Docker => "docker",
        }
    }

    /// The client and its global options, before a subcommand.
    fn base(self) -> Vec<String> {
        match self {
            ContainerEngine::Podman => vec!["podman".into(), "--runtime".into(), "runc".into()],
            ContainerEngine::Docker => vec!["docker".into()],
        }
    }

    /// The command line that force-removes a container, killing it at once.
    fn remove_line(self, name: &str) -> Vec<String> {
        let mut argv = self.base();
        argv.extend(["rm".into(), "-f".into()]);
        if self == ContainerEngine::Podman {
            // Without `-t 0` podman waits 10 s for a SIGTERM the step may ignore.
            argv.extend(["-t".into(), "0".into()]);
        }
        argv.push(name.to_owned());
        argv
    }
}

/// Runs container steps in their images with podman or docker.
///
/// Each attempt is one `run --rm` (see [`command_line`]): no network, inputs bind-mounted
/// read-only at `/kiln/inputs/<name>`, the outputs folder read-write at `/kiln/outputs`, the
/// scratch folder at `/kiln/work` (the working directory), the declared env plus
/// `KILN_RUN_ID`, `KILN_STEP` and `KILN_ATTEMPT`, and the step's cpu and memory as limits.
/// Images are never pulled: [`Executor::preflight`] checks that each one is present locally.
///
/// The container is named `kiln-<run>-<step>-<attempt>`; when the future is dropped (a
/// timeout, Ctrl-C) it is force-removed, so the step really stops.
#[derive(Debug)]
pub struct EngineExecutor {
    engine: ContainerEngine,
    log_cap: u64,
    secrets: Arc<Secrets>,
}

impl EngineExecutor {
    /// An executor for `engine`, with the default log cap.
    pub fn new(engine: ContainerEngine) -> Self {
        EngineExecutor {
            engine,
            log_cap: DEFAULT_LOG_CAP,
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

    /// The engine this executor drives.
    pub fn engine(&self) -> ContainerEngine {
        self.engine
    }
}

#[async_trait]
impl Executor for EngineExecutor {
    fn name(&self) -> &str {
        self.engine.program()
    }

    /// Every input is bind-mounted read-only, and so is the working directory's `in/`
    /// (see [`command_line`]).
    fn reads_inputs_read_only(&self) -> bool {
        true
    }

    /// The engine answers, and every image the steps use is present locally.
    async fn preflight(&self, steps: &[&PlannedStep]) -> Result<(), Vec<String>> {
        let mut images: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for step in steps {
            if let StepKind::Container(plan) = &step.kind {
                images.entry(&plan.image).or_default().push(&step.id);
            }
        }
        if images.is_empty() {
            return Ok(());
        }
        if let Err(error) = probe(self.engine).await {
            return Err(vec![error.to_string()]);
        }
        let mut problems = self.secrets.check(steps);
        for (image, users) in images {
            let users = users
                .iter()
                .map(|id| format!("`{id}`"))
                .collect::<Vec<_>>()
                .join(", ");
            match image_present(self.engine, image).await {
                Ok(true) => {}
                Ok(false) => problems.push(format!(
                    "image `{image}` is not present locally; pull or build it first (used by step {users})"
                )),
                Err(reason) => problems.push(format!(
                    "could not check whether image `{image}` is present (used by step {users}): {reason}"
                )),
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// The engine and the id the step's image reference resolves to now: a tag moved to
    /// other content is another key, the same image under another tag the same one.
    async fn key_pins(
        &self,
        step: &PlannedStep,
    ) -> Result<BTreeMap<String, String>, ExecutorError> {
        let plan = crate::container_plan(step)?;
        let id = image_id(self.engine, &plan.image).await.ok_or_else(|| {
            ExecutorError::new(format!(
                "cannot resolve image `{}` to an id with `{} image inspect`; is it still present?",
                plan.image,
                self.engine.program()
            ))
        })?;
        Ok(BTreeMap::from([
            ("backend".to_owned(), self.engine.program().to_owned()),
            ("image_id".to_owned(), id),
        ]))
    }

    async fn run_staged(&self, task: &StagedTask) -> Result<ExecOutcome, ExecutorError> {
        let plan = crate::container_plan(&task.step)?;
        let secrets = self.secrets.hand_over_for(&task.step, plan)?;
        let files = secrets
            .files
            .iter()
            .map(|(var, (_, path))| (var.clone(), path.clone()))
            .collect();
        let argv = command_line(self.engine, task, &files)?;
        // Bind-mount sources must exist.
        let workdir = absolute(&task.workdir)?;
        tokio::fs::create_dir_all(&workdir)
            .await
            .map_err(|source| ContainerError::io(&workdir, source))?;
        for output in task.outputs.values() {
            if let Some(parent) = absolute(output)?.parent() {
                tokio::fs::create_dir_all(parent)
                    .await
                    .map_err(|source| ContainerError::io(parent, source))?;
            }
        }

        let name = container_name(task);
        let header = format!("{} backend: {}\n", self.engine.program(), shell_line(&argv));
        let mut command = Command::new(&argv[0]);
        command.args(&argv[1..]);
        for (var, value) in &secrets.env {
            command.env(var, value.expose());
        }
        let removal = ContainerRemoval {
            command: self.engine.remove_line(&name),
        };
        let program = self.engine.program();
        let ended = run_logged(
            command,
            program,
            &task.log,
            &header,
            self.log_cap,
            Some(removal),
            secrets.redactor(),
        )
        .await?;
        drop(secrets);
        let what = match plan.command.first() {
            Some(program) => format!("`{program}` in image `{}`", plan.image),
            None => format!("the entrypoint of image `{}`", plan.image),
        };
        match ended {
            Ended::NotStarted(source) if source.kind() == std::io::ErrorKind::NotFound => {
                Err(ContainerError::EngineMissing { engine: program }.into())
            }
            Ended::NotStarted(source) => Err(ContainerError::Spawn {
                program: program.to_owned(),
                source,
            }
            .into()),
            Ended::Exited { status, tail } => Ok(match (status.code(), status.signal()) {
                (Some(0), _) => {
                    // The record keeps which image the tag named when the step ran.
                    let mut details = BTreeMap::new();
                    details.insert("image".to_owned(), plan.image.clone().into());
                    if let Some(id) = image_id(self.engine, &plan.image).await {
                        details.insert("image_id".to_owned(), id.into());
                    }
                    ExecOutcome::success().with_details(details)
                }
                // Docker and podman both exit 125 when they fail themselves.
                (Some(125), _) => ExecOutcome::failure(
                    FailureKind::Engine,
                    format!(
                        "`{program} run` failed before {what} could start (exit 125){}",
                        quote_tail(&tail)
                    ),
                    Some(125),
                ),
                (Some(code), _) => {
                    let hint = if code == 137 {
                        " (137 = killed by SIGKILL, often for exceeding the memory limit)"
                    } else {
                        ""
                    };
                    ExecOutcome::failure(
                        FailureKind::Exit,
                        format!("{what} exited with code {code}{hint}{}", quote_tail(&tail)),
                        Some(code),
                    )
                }
                (None, signal) => ExecOutcome::failure(
                    FailureKind::Signal,
                    format!(
                        "the `{program}` client running {what} was killed by {}{}",
                        signal_name(signal.unwrap_or(0)),
                        quote_tail(&tail)
                    ),
                    None,
                ),
            }),
        }
    }
}

fn absolute(path: &Path) -> Result<PathBuf, ContainerError> {
    std::path::absolute(path).map_err(|source| ContainerError::io(path, source))
}

/// The container's name: `kiln-<run>-<step>-<attempt>`, with every character an engine does
/// not accept in a name (`[`, `]`, `/`...) turned into `-`, and runs of `-` collapsed.
pub fn container_name(task: &StagedTask) -> String {
    let raw = format!("kiln-{}-{}-{}", task.run_id, task.step.id, task.attempt);
    let mut name = String::with_capacity(raw.len());
    for c in raw.chars() {
        if c.is_ascii_alphanumeric() || c == '_' || c == '.' {
            name.push(c);
        } else if !name.ends_with('-') {
            name.push('-');
        }
    }
    name.trim_end_matches('-').to_owned()
}

/// A `--mount` value binding `source` at `target`.
fn bind(source: &Path, target: &str, read_only: bool) -> Result<String, ContainerError> {
    let source = absolute(source)?.display().to_string();
    if source.contains(',') || source.contains('"') {
        return Err(ContainerError::UnmountablePath { path: source });
    }
    let mut mount = format!("type=bind,src={source},dst={target}");
    if read_only {
        mount.push_str(",ro=true");
    }
    Ok(mount)
}

/// `1500` millicores as `--cpus` wants it: `1.5`.
fn cpus(millis: u64) -> String {
    let (whole, frac) = (millis / 1000, millis % 1000);
    if frac == 0 {
        whole.to_string()
    } else {
        format!("{whole}.{}", format!("{frac:03}").trim_end_matches('0'))
    }
}

/// The full command line that runs one attempt of a container step with `engine`.
///
/// For podman (docker is the same without `--runtime runc`, and with `--gpus N` for GPUs):
///
/// ```text
/// podman --runtime runc run --rm --pull never --network none
///   --ulimit nofile=1024:1024 --ulimit nproc=1000:1000 --name kiln-<run>-<step>-<attempt>
///   --mount type=bind,src=<input>,dst=/kiln/inputs/<name>,ro=true      (per input)
///   --mount type=bind,src=<outputs folder>,dst=/kiln/outputs
///   --mount type=bind,src=<workdir>,dst=/kiln/work -w /kiln/work
///   --mount type=bind,src=<workdir>/in,dst=/kiln/work/in,ro=true   (inputs staged there)
///   --env K=V... --env KILN_RUN_ID=.. --env KILN_STEP=.. --env KILN_ATTEMPT=..
///   --env SECRET_VAR...                          (per secret, value from the client's env)
///   --mount type=bind,src=<file>,dst=/kiln/secrets/<name>,ro=true --env VAR=/kiln/secrets/<name>
///                                                (per file secret, `secret_files` by variable)
///   [--cpus 1.5] [--memory <bytes>]                              (limits)
///   [--cpu-shares <request × 1024>] [--memory-reservation <bytes>] (requests)
///   [--device nvidia.com/gpu=all]
///   [--entrypoint <command[0]>] <image> <command[1..]> <args>
/// ```
///
/// The explicit ulimits are needed because the engine's defaults cannot be applied inside
/// unprivileged sandboxes (runc fails with "error setting rlimit"). A `command` replaces the
/// image's entrypoint and `args` its default command, as in Kubernetes; with no `command`
/// the image's entrypoint runs with `args`. The outputs folder is the folder of the first
/// output; an output that lives elsewhere gets its own folder mounted at
/// `/kiln/extra-outputs/<name>`. GPUs use CDI for podman (`nvidia.com/gpu=all`: every GPU,
/// CDI names no count) and `--gpus N` for docker; neither is exercised on machines without a
/// GPU.
pub fn command_line(
    engine: ContainerEngine,
    task: &StagedTask,
    secret_files: &BTreeMap<String, PathBuf>,
) -> Result<Vec<String>, ContainerError> {
    let plan: &ContainerPlan = crate::container_plan(&task.step)?;
    let mut argv = engine.base();
    argv.extend(
        [
            "run",
            "--rm",
            "--pull",
            "never",
            "--network",
            "none",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1000:1000",
            "--name",
        ]
        .map(String::from),
    );
    argv.push(container_name(task));

    let mut inputs = BTreeMap::new();
    for (name, path) in &task.inputs {
        let target = format!("{INPUTS_DIR}/{name}");
        argv.extend(["--mount".into(), bind(path, &target, true)?]);
        inputs.insert(name.clone(), target);
    }

    let mut outputs = BTreeMap::new();
    let outputs_dir = task.outputs.values().next().and_then(|p| p.parent());
    if let Some(dir) = outputs_dir {
        argv.extend(["--mount".into(), bind(dir, OUTPUTS_DIR, false)?]);
    }
    for (name, path) in &task.outputs {
        let file = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| name.clone());
        let target = if path.parent() == outputs_dir {
            format!("{OUTPUTS_DIR}/{file}")
        } else {
            let dir = format!("/kiln/extra-outputs/{name}");
            let parent = path.parent().unwrap_or(Path::new("/"));
            argv.extend(["--mount".into(), bind(parent, &dir, false)?]);
            format!("{dir}/{file}")
        };
        outputs.insert(name.clone(), target);
    }

    argv.extend([
        "--mount".into(),
        bind(&task.workdir, WORK_DIR, false)?,
        "-w".into(),
        WORK_DIR.into(),
    ]);
    // The inputs are the stored objects themselves (linked, not copied): the working
    // directory's `in/`, where they are, is read-only too, or writing through it would
    // write into the store.
    let staged_inputs = task.workdir.join("in");
    if task.inputs.values().any(|p| p.starts_with(&staged_inputs)) {
        argv.extend([
            "--mount".into(),
            bind(&staged_inputs, &format!("{WORK_DIR}/in"), true)?,
        ]);
    }
    let fill = |text: &String| fill_paths(text, &inputs, &outputs);
    for (name, value) in &plan.env {
        argv.extend(["--env".into(), format!("{name}={}", fill(value))]);
    }
    for (name, value) in [
        ("KILN_RUN_ID", task.run_id.clone()),
        ("KILN_STEP", task.step.id.to_string()),
        ("KILN_ATTEMPT", task.attempt.to_string()),
    ] {
        argv.extend(["--env".into(), format!("{name}={value}")]);
    }
    // A secret's value never appears on the command line (where `ps` and the log's header
    // would show it): `--env NAME` alone makes the engine copy it from the client's
    // environment, which the executor sets.
    for (var, secret) in &plan.secrets {
        if secret.file {
            let target = format!("{SECRETS_DIR}/{}", secret.name);
            let source = secret_files.get(var).ok_or_else(|| ContainerError::Io {
                path: format!("the file of secret `{}`", secret.name),
                source: std::io::Error::other("not handed over"),
            })?;
            argv.extend(["--mount".into(), bind(source, &target, true)?]);
            argv.extend(["--env".into(), format!("{var}={target}")]);
        } else {
            argv.extend(["--env".into(), var.clone()]);
        }
    }

    if let Some(millis) = plan.cpu_millis {
        argv.extend(["--cpus".into(), cpus(millis)]);
    }
    if let Some(bytes) = plan.memory_bytes {
        argv.extend(["--memory".into(), bytes.to_string()]);
    }
    // Requests: a relative CPU weight (as Kubernetes turns a request into cgroup shares) and a
    // soft memory reservation.
    if let Some(millis) = plan.cpu_request_millis {
        argv.extend([
            "--cpu-shares".into(),
            (millis * 1024 / 1000).max(2).to_string(),
        ]);
    }
    if let Some(bytes) = plan.memory_request_bytes {
        argv.extend(["--memory-reservation".into(), bytes.to_string()]);
    }
    if plan.gpu > 0 {
        match engine {
            ContainerEngine::Podman => {
                argv.extend(["--device".into(), "nvidia.com/gpu=all".into()]);
            }
            ContainerEngine::Docker => argv.extend(["--gpus".into(), plan.gpu.to_string()]),
        }
    }

    if let Some((entrypoint, rest)) = plan.command.split_first() {
        argv.extend(["--entrypoint".into(), fill(entrypoint)]);
        argv.push(plan.image.clone());
        argv.extend(rest.iter().map(fill));
    } else {
        argv.push(plan.image.clone());
    }
    argv.extend(plan.args.iter().map(fill));
    Ok(argv)
}

/// What [`detect`] found about one engine.
#[derive(Debug)]
pub struct EngineProbe {
    /// The engine.
    pub engine: ContainerEngine,
    /// Its version when usable, or why it is not.
    pub result: Result<String, ContainerError>,
}

impl EngineProbe {
    /// Whether steps can run with this engine.
    pub fn usable(&self) -> bool {
        self.result.is_ok()
    }
}

/// Which engines are usable here: podman, then docker.
pub async fn detect() -> Vec<EngineProbe> {
    let mut found = Vec::new();
    for engine in [ContainerEngine::Podman, ContainerEngine::Docker] {
        found.push(EngineProbe {
            engine,
            result: probe(engine).await,
        });
    }
    found
}

/// Whether `engine` can run containers: its client is installed and `version` gets an answer
/// from the engine (for docker, from the daemon: `docker --version` alone proves nothing).
/// Returns the engine's version.
pub async fn probe(engine: ContainerEngine) -> Result<String, ContainerError> {
    let program = engine.program();
    let format = match engine {
        ContainerEngine::Podman => "{{.Client.Version}}",
        ContainerEngine::Docker => "{{.Server.Version}}",
    };
    let mut argv = engine.base();
    argv.extend(["version".into(), "--format".into(), format.into()]);
    let unusable = |reason: String| ContainerError::EngineUnusable {
        engine: program,
        reason,
    };
    match quiet(&argv).await {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            Err(ContainerError::EngineMissing { engine: program })
        }
        Err(error) if error.kind() == std::io::ErrorKind::TimedOut => Err(unusable(format!(
            "`{program} version` got no answer within {} s",
            PROBE_LIMIT.as_secs()
        ))),
        Err(error) => Err(unusable(format!(
            "could not run `{program} version`: {error}"
        ))),
        Ok(output) if output.status.success() => {
            Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
        }
        Ok(output) => Err(unusable(last_line(&output))),
    }
}

/// Whether `image` is in the engine's local store.
async fn image_present(engine: ContainerEngine, image: &str) -> Result<bool, String> {
    let mut argv = engine.base();
    match engine {
        ContainerEngine::Podman => argv.extend(["image".into(), "exists".into()]),
        ContainerEngine::Docker => {
            argv.extend(["image", "inspect", "--format", "{{.Id}}"].map(String::from));
        }
    }
    argv.push(image.to_owned());
    let output = quiet(&argv).await.map_err(|e| e.to_string())?;
    match (engine, output.status.code()) {
        (_, Some(0)) => Ok(true),
        (ContainerEngine::Podman, Some(1)) => Ok(false),
        (ContainerEngine::Docker, Some(1))
            if String::from_utf8_lossy(&output.stderr).contains("No such image") =>
        {
            Ok(false)
        }
        _ => Err(last_line(&output)),
    }
}

/// The id (`sha256:<hex>`) of the local image a reference names, if the engine says.
async fn image_id(engine: ContainerEngine, image: &str) -> Option<String> {
    let mut argv = engine.base();
    argv.extend(["image", "inspect", "--format", "{{.Id}}", image].map(String::from));
    let output = quiet(&argv).await.ok()?;
    if !output.status.success() {
        return None;
    }
    let id = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    match id.strip_prefix("sha256:") {
        Some(hex) if !hex.is_empty() => Some(id),
        // podman prints the bare hex digits.
        None if !id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Some(format!("sha256:{id}"))
        }
        _ => None,
    }
}

/// Runs a short engine command and collects its output, within [`PROBE_LIMIT`].
async fn quiet(argv: &[String]) -> std::io::Result<std::process::Output> {
    let mut command = Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .stdin(Stdio::null())
        .kill_on_drop(true);
    match tokio::time::timeout(PROBE_LIMIT, command.output()).await {
        Ok(output) => output,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// The last non-empty line a failed command printed (stderr first), without `Error: `.
fn last_line(output: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stderr
        .lines()
        .chain(stdout.lines())
        .rfind(|l| !l.trim().is_empty())
        .map(|l| l.trim().trim_start_matches("Error: ").to_owned());
    match (line, output.status.code()) {
        (Some(line), _) => line,
        (None, Some(code)) => format!("it exited with code {code} and printed nothing"),
        (None, None) => "it was killed by a signal".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_cpus() {
        assert_eq!(cpus(1500), "1.5");
        assert_eq!(cpus(250), "0.25");
        assert_eq!(cpus(2000), "2");
        assert_eq!(cpus(1), "0.001");
    }
}
