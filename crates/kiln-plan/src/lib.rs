//! From a parsed pipeline to a [`Plan`]: every reference resolved, fan-out expanded, params
//! type-checked, cycles found, and the steps in a stable topological order.
//!
//! The planner runs every check and reports all problems at once, sorted by where they are in
//! the file, each naming the step and the bad value. For each planned step it records the
//! canonical material its cache key will be built from (see [`CacheKeyMaterial`]).
//!
//! It runs nothing and reads nothing but the existence of workspace paths: component digests
//! and input digests are pinned by the engine when a run starts.

mod compile;
pub mod declared;
pub mod dynamic;
mod graph;
pub mod values;
pub mod when;

use std::collections::BTreeMap;
use std::path::PathBuf;

pub use kiln_spec::StepId;
use kiln_spec::{Diagnostic, SourceFile, Value};
use serde::{Deserialize, Serialize};

pub use compile::compile;

/// The version of the plan's JSON form and of the cache-key material layout.
pub const PLAN_VERSION: u32 = 1;

/// What the planner needs besides the pipeline.
#[derive(Debug, Clone, Default)]
pub struct PlanOptions {
    /// The folder that workspace paths are relative to (the pipeline file's folder).
    pub base_dir: PathBuf,
    /// Param overrides as given on the command line: `(name, text)`.
    pub overrides: Vec<(String, String)>,
}

/// The result of planning: a plan when there are no errors, and every diagnostic found.
#[derive(Debug)]
pub struct Compiled {
    /// The plan, present only if no diagnostic is an error.
    pub plan: Option<Plan>,
    /// Errors and warnings, sorted by position in the file.
    pub diagnostics: Vec<Diagnostic>,
}

/// A validated, expanded pipeline, ready for the engine.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// [`PLAN_VERSION`].
    pub plan_version: u32,
    /// The pipeline's name.
    pub pipeline: String,
    /// Every param with its value for this plan (defaults and overrides applied).
    pub params: BTreeMap<String, Value>,
    /// The steps (fan-out instances expanded) in a stable topological order.
    pub steps: Vec<PlannedStep>,
    /// Named limits steps share ([`Policy::concurrency`]): the most running at once.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub concurrency: BTreeMap<String, u32>,
    /// The whole run's wall-clock limit in milliseconds (the pipeline's `timeout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Outputs copied to a bucket once the steps are done (`exports:`), in the order written.
    /// No step's cache key sees them: exporting changes nothing a step computes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exports: Vec<PlannedExport>,
}

/// One output copied to a bucket after the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedExport {
    /// The output as the pipeline names it: `STEP.OUTPUT`.
    pub from: String,
    /// The planned step that writes it (inside a sub-pipeline, its inlined step).
    pub step: StepId,
    /// That step's output.
    pub output: String,
    /// Where it goes, templates filled in: `s3://BUCKET/KEY`; ending in `/`, a prefix.
    pub to: String,
}

impl Plan {
    /// The planned step with this id.
    pub fn step(&self, id: &str) -> Option<&PlannedStep> {
        self.steps.iter().find(|s| s.id == id)
    }
}

/// One schedulable unit: a step, or one instance of a fan-out step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlannedStep {
    /// Unique id: the step's name, or `name[i]` for fan-out instance `i`; a step inlined
    /// from a sub-pipeline has the including step's id before it: `train-small/fit`.
    pub id: StepId,
    /// The step's name as written.
    pub step: String,
    /// Which fan-out instance this is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<FanOutInstance>,
    /// What runs.
    pub kind: StepKind,
    /// Inputs by name and where each comes from.
    pub inputs: BTreeMap<String, InputSource>,
    /// Names of the outputs the step writes.
    pub outputs: Vec<String>,
    /// Output name → the file name the step writes it as, where that is not the name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub output_files: BTreeMap<String, String>,
    /// The output that holds the step's metrics (a flat JSON object of finite numbers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
    /// Params for the step after templating (`{{params.*}}` and `{{item}}` replaced).
    pub params: BTreeMap<String, Value>,
    /// Ids of the planned steps that must finish first.
    pub depends_on: Vec<StepId>,
    /// A CEL condition checked when the step is ready; the step is skipped when false.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    /// What `when` reads when it was written in a sub-pipeline: that file's params, and its
    /// steps by the names it gives them. `None`: the plan's params and steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when_scope: Option<WhenScope>,
    /// Retries, timeout, caching.
    pub policy: Policy,
    /// What the cache key is built from, apart from the digests pinned at run time.
    pub cache_key: CacheKeyMaterial,
    /// For a step fanning out over a list a step writes: that output. The step is a template
    /// (its `{{item}}` references left in place) that the engine expands into instances
    /// when the list exists ([`dynamic`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_each: Option<DynamicList>,
    /// Small outputs of other steps its templates read (`{{steps.prep.rows}}`), filled in by
    /// the engine when the step is ready ([`values`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<OutputValue>,
    /// Steps it waits for that may be skipped without skipping it: it reads them only
    /// through a template with a fallback (`{{steps.a.x ?? steps.b.x ?? 0}}`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub optional: Vec<StepId>,
    /// Steps it runs after however they end (`after: {step: x, on: any}`), or only when they
    /// fail (`on: failure`); the others in `depends_on` must succeed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub after_on: BTreeMap<StepId, kiln_spec::AfterOn>,
}

/// A template reading other steps' small outputs, as the engine fills it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputValue {
    /// The template between `{{ }}`, normalised (`steps.fast.score ?? steps.slow.score ?? 0`):
    /// every place it is written gets the value.
    pub template: String,
    /// The outputs to read, in order: the first whose step ran gives the value.
    pub from: Vec<ValueSource>,
    /// The value when none of them ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<serde_json::Value>,
}

/// One output a template reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValueSource {
    /// The planned step writing it.
    pub step: StepId,
    /// The output.
    pub output: String,
}

/// The output a step fanning out at run time reads its list from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DynamicList {
    /// The planned step that writes it.
    pub step: StepId,
    /// The output, a JSON list.
    pub output: String,
    /// For a nested fan-out, the field of each item holding its inner list: one instance per
    /// inner element ([`dynamic::flatten`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nested: Option<String>,
}

/// The scope a sub-pipeline's `when` is evaluated in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WhenScope {
    /// The prefix of the ids of the sub-pipeline's steps, such as `train-small/`:
    /// `steps.fit.report` reads step `train-small/fit`.
    pub namespace: String,
    /// The sub-pipeline's params, as the including step set them.
    pub params: BTreeMap<String, Value>,
}

/// The item a fan-out instance works on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FanOutInstance {
    /// Position in the list, from 0.
    pub index: usize,
    /// The item itself.
    pub item: Value,
    /// How people read the instance: `train[lr=0.1]` (the `with` key, env variable or
    /// `--flag` fed `{{item}}`), `train[0.1]`, or the id where the item is too long or
    /// not unique.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

impl PlannedStep {
    /// How people read this step: its label for a fan-out instance, else its id.
    pub fn label(&self) -> &str {
        self.instance
            .as_ref()
            .and_then(|i| i.label.as_deref())
            .unwrap_or(self.id.as_str())
    }

    /// The file name output `name` is written as.
    pub fn output_file<'a>(&'a self, name: &'a str) -> &'a str {
        self.output_files.get(name).map_or(name, String::as_str)
    }
}

/// A wasm component or a container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// A WebAssembly component run in the shared runner.
    Wasm {
        /// Where the component comes from.
        component: ComponentSource,
        /// Memory limit in bytes, if set.
        #[serde(skip_serializing_if = "Option::is_none")]
        memory_bytes: Option<u64>,
        /// Fuel budget, if set.
        #[serde(skip_serializing_if = "Option::is_none")]
        fuel: Option<u64>,
        /// How a command component is called, when the pipeline says (`args`, `env`,
        /// `stdin`, `stdout`); the default is kiln's `--in`/`--out`/`--param` convention.
        #[serde(default, skip_serializing_if = "CommandLine::is_default")]
        command: CommandLine,
    },
    /// A container (or a local process standing in for one).
    Container(ContainerPlan),
}

/// How a wasm step's program is called: its arguments, environment and standard streams.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandLine {
    /// The arguments after the program name, params and item filled in, `{{inputs.X}}` and
    /// `{{outputs.X}}` left for the executor to fill with guest paths; `None` is kiln's
    /// convention (`--in NAME=PATH ... --out NAME=PATH ... --param NAME=VALUE ...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    /// Environment variables, sorted (the host's are never passed); values as for `args`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// The input read as standard input (a file); none: stdin is empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    /// The output standard output is written to; none: stdout goes to the log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
}

impl CommandLine {
    /// Whether this is kiln's convention with nothing added.
    pub fn is_default(&self) -> bool {
        self == &Self::default()
    }
}

/// Where a wasm component comes from; paths are relative to the pipeline file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ComponentSource {
    /// A `.wasm` file.
    Path {
        /// Relative to the pipeline file.
        path: String,
    },
    /// A registry name and version.
    Registry {
        /// Component name.
        name: String,
        /// Version.
        version: String,
    },
    /// A pinned digest.
    Digest {
        /// `blake3:<hex>`.
        digest: String,
    },
    /// Built from a source folder.
    Build {
        /// Source folder, relative to the pipeline file.
        source: String,
        /// Shell command run in the source folder.
        command: String,
        /// The built `.wasm`, relative to the source folder.
        artifact: String,
        /// Other files and folders the build reads, relative to the source folder.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        watch: Vec<String>,
        /// Where `kiln push` publishes the built component: `name@version`. Not part of any
        /// cache key: runs ignore it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        publish: Option<String>,
    },
}

/// A container step after templating.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerPlan {
    /// Image reference.
    pub image: String,
    /// Command; empty means the image's entrypoint.
    pub command: Vec<String>,
    /// Arguments; `{{inputs.X}}` and `{{outputs.X}}` stay for the executor to fill with paths.
    pub args: Vec<String>,
    /// Environment, sorted; values may keep `{{inputs.X}}` and `{{outputs.X}}`.
    pub env: BTreeMap<String, String>,
    /// The CPU limit in millicores (with one value, also the request).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_millis: Option<u64>,
    /// The CPU request in millicores, when it differs from the limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_request_millis: Option<u64>,
    /// The memory limit in bytes (with one value, also the request).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// The memory request in bytes, when it differs from the limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_request_bytes: Option<u64>,
    /// GPUs.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub gpu: u32,
    /// The GPU kind asked for (`a100`): for a cluster profile; a local run does not check it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_kind: Option<String>,
    /// Secrets by environment variable: names only, resolved where the step runs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, SecretRef>,
}

/// One secret a container step reads: its name and how it is handed over. The value is
/// never in a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRef {
    /// The secret's name.
    pub name: String,
    /// `true`: the variable holds the path of a file with the value; `false`: the value.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub file: bool,
}

fn is_on_success(run: &kiln_spec::RunWhen) -> bool {
    *run == kiln_spec::RunWhen::OnSuccess
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Where an input's bytes come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputSource {
    /// One output of one planned step.
    Step {
        /// Producing planned step id.
        step: StepId,
        /// Output name.
        output: String,
    },
    /// The same output of every instance of a fan-out step, as one folder with an entry per
    /// instance, named by instance index.
    Collect {
        /// Producing step name.
        step: String,
        /// Output name.
        output: String,
        /// The instances, in index order.
        instances: Vec<StepId>,
    },
    /// A file or folder in the workspace, relative to the pipeline file.
    Workspace {
        /// Normalised relative path.
        path: String,
    },
    /// A param's value, passed as a small file.
    Param {
        /// Param name.
        name: String,
        /// Its value.
        value: Value,
    },
    /// The run's outcome so far, as JSON (`run.status`), for steps that run after the others:
    /// `{"status": "succeeded"|"failed", "failed": [ids], "steps": {id: status}}`.
    RunStatus,
    /// One object outside the workspace (`s3://bucket/key`, `https://...`), fetched and kept
    /// by content when the run is pinned.
    External {
        /// The URL as the pipeline gives it.
        url: String,
    },
}

/// Retries, timeout and caching of a step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    /// Extra attempts after a failure.
    pub retries: u32,
    /// When the step runs: after the steps it reads succeeded (the default), or after every
    /// other step whatever happened (`always`), or only when one failed (`on-failure`).
    #[serde(default, skip_serializing_if = "is_on_success")]
    pub run: kiln_spec::RunWhen,
    /// How the retries wait and which failures they retry, where the step says.
    #[serde(default, skip_serializing_if = "RetryPlan::is_default")]
    pub retry: RetryPlan,
    /// The most instances of this fan-out step running at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<u32>,
    /// The named limit ([`Plan::concurrency`]) this step counts against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<String>,
    /// Per-attempt wall-clock limit in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Whether a cached result may be reused.
    pub cache: bool,
    /// The oldest cached result that may be reused, in milliseconds (`cache.max_age`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_ms: Option<u64>,
}

/// A step's own retry policy; what it leaves out is the run's default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RetryPlan {
    /// The wait before the first retry, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_ms: Option<u64>,
    /// What each next wait is multiplied by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub factor: Option<f64>,
    /// The longest wait, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_backoff_ms: Option<u64>,
    /// The failure kinds retried (`exit`, `timeout`, `oom`...); empty: every failure that
    /// may pass on a second try.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on: Vec<String>,
}

impl RetryPlan {
    /// Whether the step says nothing beyond a count.
    pub fn is_default(&self) -> bool {
        self == &Self::default()
    }
}

/// The failure kinds `retries.on` may name: those a second attempt may get past. `oom` is an
/// `exit` with code 137 (how podman and docker report a kill for memory) or a `signal`.
pub const RETRYABLE_KINDS: &[&str] = &[
    "exit", "signal", "timeout", "oom", "engine", "spawn", "executor", "input", "output",
];

/// Failure kinds that are never retried: the same component and inputs fail the same way.
pub const DETERMINISTIC_KINDS: &[&str] = &[
    "out-of-fuel",
    "memory",
    "stack-overflow",
    "trap",
    "step-error",
    "log-limit",
    "output-limit",
    "sandbox",
    "missing-output",
    "metrics",
    "component",
    "condition",
];

/// The canonical, identity-free material a step's cache key is built from.
///
/// The engine completes it with the component's digest (for wasm), every input's digest by
/// input name and the runtime's determinism version, then hashes its canonical JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheKeyMaterial {
    /// [`PLAN_VERSION`]: bump it when this layout changes.
    pub version: u32,
    /// `wasm` or `container`.
    pub kind: String,
    /// For containers: image, command, args (with param templates applied) and env.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerKey>,
    /// Params after templating, sorted.
    pub params: BTreeMap<String, Value>,
    /// Input names whose digests the engine adds.
    pub inputs: Vec<String>,
    /// Output names (a different set of outputs is a different step).
    pub outputs: Vec<String>,
    /// Outputs written under a file name of their own (the step sees another path).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub output_files: BTreeMap<String, String>,
    /// The output read as the step's metrics (what the step reports changes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
    /// For wasm steps called with their own command line: args, env and streams.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<CommandLine>,
    /// The pipeline's own addition to the key (`cache.key`, templates filled in); absent when
    /// none, so that keys without one stay as they were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// The parts of a container step that change its result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerKey {
    /// Image reference (the engine adds the resolved digest where known).
    pub image: String,
    /// Command.
    pub command: Vec<String>,
    /// Arguments.
    pub args: Vec<String>,
    /// Environment.
    pub env: BTreeMap<String, String>,
    /// Which secrets the step reads and how (names, never values); absent when none, so
    /// that keys without secrets stay as they were.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, SecretRef>,
}

/// Reads, parses and plans a pipeline file; the source is returned for rendering diagnostics.
pub fn plan_file(
    path: &std::path::Path,
    overrides: &[(String, String)],
) -> Result<(SourceFile, Compiled), std::io::Error> {
    let text = std::fs::read_to_string(path)?;
    let source = SourceFile::new(path.display().to_string(), text);
    let base_dir = path
        .parent()
        .map(|p| {
            if p.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                p.to_path_buf()
            }
        })
        .unwrap_or_else(|| PathBuf::from("."));
    let compiled = match kiln_spec::parse_all(&source.text) {
        Ok(pipeline) => compile::compile_file(
            &pipeline,
            &PlanOptions {
                base_dir,
                overrides: overrides.to_vec(),
            },
            path,
        ),
        Err(diagnostics) => Compiled {
            plan: None,
            diagnostics,
        },
    };
    Ok((source, compiled))
}
