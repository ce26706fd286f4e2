//! The pipeline document as the user writes it.

use std::fmt;
use std::ops::Deref;

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::located::Located;
use crate::names::{ArtifactName, ParamName, PipelineName, SecretName, StepName};
use crate::quantity::{Amount, Cpu, HumanDuration, Memory, Templated};
use crate::value::{ParamType, Value};

/// The only `apiVersion` this kiln reads.
pub const API_VERSION: &str = "kiln/v1";

/// A pipeline: typed params and the steps of a DAG.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "kiln pipeline")]
pub struct Pipeline {
    /// The format version: `kiln/v1`.
    #[serde(rename = "apiVersion")]
    pub api_version: Located<ApiVersion>,
    /// The pipeline's name.
    pub name: Located<PipelineName>,
    /// What the pipeline does, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Typed params with defaults; `kiln run -p NAME=VALUE` overrides them.
    #[serde(default)]
    pub params: IndexMap<Located<ParamName>, Located<ParamDecl>>,
    /// The steps, by name, in the order written.
    pub steps: IndexMap<Located<StepName>, Located<Step>>,
    /// Named limits that steps share (`concurrency: {gpu-quota: 2}`): at most this many of
    /// the steps naming one run at once.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub concurrency: IndexMap<Located<StepName>, Located<u32>>,
    /// A sub-pipeline's inputs, by name: the including step binds each (`inputs: {data:
    /// prep.data}`), and this file's steps read it as `inputs.NAME`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<Located<ArtifactName>>,
    /// A sub-pipeline's outputs: name → `STEP.OUTPUT` of one of its steps. A step of the
    /// including pipeline reads output `NAME` of the including step `SUB` as `SUB.NAME`.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub outputs: IndexMap<Located<ArtifactName>, Located<InputRef>>,
    /// A wall-clock limit for the whole run, such as `2h`: when it passes, running steps are
    /// stopped, the rest are skipped, exit handlers still run, and the run fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Located<HumanDuration>>,
    /// Step fields every step of this file gets unless it sets the field itself (a field the
    /// step sets replaces the default whole): `image`, `resources`, `retries`, `timeout`,
    /// `cache`, `limits`. A default that does not fit a step's kind (`image` on a wasm step)
    /// is not applied to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defaults: Option<Located<StepDefaults>>,
    /// Outputs copied to a bucket once the run's steps are done, each
    /// `{from: STEP.OUTPUT, to: s3://BUCKET/KEY}`; a `to` ending in `/` is a prefix that a
    /// folder's files go under. Exporting changes no step's cache key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exports: Vec<Located<Export>>,
}

/// One output copied to a bucket after the run: an entry of `exports:`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Export {
    /// The output: `STEP.OUTPUT`.
    #[schemars(regex(pattern = r"^[^.\s]+\.[^.\s]+$"))]
    pub from: Located<String>,
    /// Where it goes: `s3://BUCKET/KEY`, `gs://BUCKET/KEY` or `az://CONTAINER/KEY`, with
    /// `{{params.NAME}}` filled in; ending in `/`, a prefix (a folder's files go under it, a
    /// file goes under it by its file name).
    #[schemars(regex(pattern = r"^(s3|gs|az)://[^/\s]+/"))]
    pub to: Located<String>,
}

/// The URL schemes an export may write to (the external-input schemes object_store can
/// write; plain HTTP(S) servers take no uploads).
pub const EXPORT_SCHEMES: &[(&str, &str)] = &[
    ("s3", "s3://BUCKET/KEY"),
    ("gs", "gs://BUCKET/KEY"),
    ("az", "az://CONTAINER/KEY"),
];

/// Step fields given once for every step: `defaults:` at the top of a pipeline.
#[derive(Debug, Clone, Default, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StepDefaults {
    /// The image of every container step that names none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<Located<String>>,
    /// The resources of every container step that sets no `resources`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Located<Resources>>,
    /// The retries of every step that sets no `retries`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Located<Retries>>,
    /// The per-attempt timeout of every step that sets no `timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Located<Templated<HumanDuration>>>,
    /// The caching of every step that sets no `cache`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<Located<CacheSpec>>,
    /// The limits of every wasm step that sets no `limits`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Located<WasmLimits>>,
}

/// The fields `defaults:` may set.
pub const DEFAULT_FIELDS: &[&str] = &[
    "image",
    "resources",
    "retries",
    "timeout",
    "cache",
    "limits",
];

/// Step fields that belong to one step and cannot be defaults.
pub(crate) const STEP_ONLY_FIELDS: &[&str] = &[
    "description",
    "wasm",
    "container",
    "pipeline",
    "args",
    "env",
    "stdin",
    "stdout",
    "secrets",
    "inputs",
    "outputs",
    "metrics",
    "with",
    "after",
    "parallelism",
    "concurrency",
    "run",
    "for_each",
    "nested",
    "when",
    "command",
];

impl<'de> Deserialize<'de> for StepDefaults {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DefaultsVisitor;

        impl<'de> Visitor<'de> for DefaultsVisitor {
            type Value = StepDefaults;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of step fields, such as `{image: python:3.12, retries: 2}`")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StepDefaults, A::Error> {
                let mut d = StepDefaults::default();
                while let Some(key) = map.next_key::<String>()? {
                    let twice = || de::Error::custom(format!("`{key}` is set twice in `defaults`"));
                    match key.as_str() {
                        "image" if d.image.is_none() => d.image = Some(map.next_value()?),
                        "resources" if d.resources.is_none() => {
                            d.resources = Some(map.next_value()?)
                        }
                        "retries" if d.retries.is_none() => d.retries = Some(map.next_value()?),
                        "timeout" if d.timeout.is_none() => d.timeout = Some(map.next_value()?),
                        "cache" if d.cache.is_none() => d.cache = Some(map.next_value()?),
                        "limits" if d.limits.is_none() => d.limits = Some(map.next_value()?),
                        k if DEFAULT_FIELDS.contains(&k) => return Err(twice()),
                        k => return Err(de::Error::unknown_field(k, DEFAULT_FIELDS)),
                    }
                }
                Ok(d)
            }
        }

        deserializer.deserialize_map(DefaultsVisitor)
    }
}

/// The `apiVersion` field; only `kiln/v1` exists so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ApiVersion(String);

impl<'de> Deserialize<'de> for ApiVersion {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        if s == API_VERSION {
            Ok(ApiVersion(s))
        } else {
            Err(de::Error::custom(format!(
                "unsupported apiVersion `{s}`: this kiln reads `{API_VERSION}`"
            )))
        }
    }
}

impl JsonSchema for ApiVersion {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ApiVersion".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"const": API_VERSION, "description": "The format version."})
    }
}

/// A declared param.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ParamDecl {
    /// `string`, `int`, `float`, `bool` or `list[...]` of one of these.
    #[serde(rename = "type")]
    pub ty: Located<ParamType>,
    /// The value used when the run does not set one; without it the param is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Located<Value>>,
    /// What the param means, for people.
    pub description: String,
}

/// One node of the DAG: a wasm component or a container, with its inputs and outputs.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// What the step does, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A WebAssembly component: `path/to/step.wasm`, `name@1.0.0`, `blake3:<hex>`, or a source folder to build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wasm: Option<Located<WasmRef>>,
    /// A container: image, command, args, env, resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Located<ContainerSpec>>,
    /// A sub-pipeline: another pipeline file, relative to this one, inlined at plan time.
    /// `with:` sets its params, `inputs:` binds its declared inputs, and its declared outputs
    /// are read as `THIS_STEP.OUTPUT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<Located<String>>,
    /// A command wasm step's arguments, after the program name, instead of kiln's
    /// `--in`/`--out`/`--param` convention: any `wasm32-wasip2` program, unchanged.
    /// `{{inputs.NAME}}` and `{{outputs.NAME}}` become guest paths; `{{params.NAME}}` and
    /// `{{item}}` their values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Located<Vec<Located<String>>>>,
    /// A wasm step's environment: these variables only, never the host's; values may use
    /// the same templates as `args`.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub env: IndexMap<Located<EnvName>, Located<String>>,
    /// A command wasm step's standard input: `inputs.NAME`, a file input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<Located<String>>,
    /// Where a command wasm step's standard output goes: `outputs.NAME` (stderr stays the
    /// log).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<Located<String>>,
    /// Secrets a container step reads, by environment variable: `{WANDB_API_KEY: wandb}` puts
    /// secret `wandb`'s value in `WANDB_API_KEY`; `{HF_TOKEN_FILE: {name: hf, as: file}}`
    /// puts it in a file and that file's path in the variable. Values come from
    /// `KILN_SECRET_<NAME>` or a `--secrets` file when the step runs, and never reach the
    /// plan, the records, the cache key or a bundle; logs show them redacted.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub secrets: IndexMap<Located<EnvName>, Located<SecretUse>>,
    /// Named inputs: `STEP.OUTPUT`, `params.NAME`, or a workspace path such as `./data/train.csv`.
    #[serde(default)]
    pub inputs: IndexMap<Located<ArtifactName>, Located<InputRef>>,
    /// The artifacts the step writes: a list of names, or a map from name to the file name
    /// the step writes it as (`model: model.npz`, for tools that add an extension).
    #[serde(default)]
    pub outputs: Outputs,
    /// An output holding the step's metrics: a flat JSON object of finite numbers, such as
    /// `{"accuracy": 0.93}`. For container and command wasm steps; step-world components
    /// return their metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Located<ArtifactName>>,
    /// Params passed to the step; values may use `{{params.NAME}}` and `{{item}}`.
    #[serde(default)]
    pub with: IndexMap<Located<ParamName>, Located<Value>>,
    /// Steps that must finish first although no data flows from them.
    #[serde(default)]
    pub after: Vec<Located<AfterRef>>,
    /// A fan-out step's most instances running at once (default: as many as `-j` allows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<Located<u32>>,
    /// A named limit, declared under the top-level `concurrency:`, that this step shares
    /// with the others naming it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<Located<StepName>>,
    /// When the step runs: `on-success` (the default: once everything it reads succeeded),
    /// `always` (an exit handler: after every other step, whatever happened) or `on-failure`
    /// (the same, only when some step failed). Such a step may read `run.status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<Located<RunWhen>>,
    /// Fan-out: one instance per item of a list or of a list param (`{{params.NAME}}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_each: Option<Located<ForEach>>,
    /// A nested fan-out, with `for_each` over a list a step writes: the field of each item
    /// that holds its inner list (`nested: seeds`). One instance per element of every item's
    /// inner list, whose item is the outer one with that field set to the element.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nested: Option<Located<String>>,
    /// A CEL condition over `params`, `steps.STEP.OUTPUT` (small JSON outputs) and `item`; the step is skipped when false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<Located<String>>,
    /// How many times to retry a failed attempt (default 0): a number, or a policy
    /// (`{limit: 3, backoff: 10s, factor: 2, max_backoff: 5m, on: [exit, timeout]}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Located<Retries>>,
    /// Wall-clock limit per attempt, such as `30s` or `2h`, or a template such as
    /// `"{{params.budget}}"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Located<Templated<HumanDuration>>>,
    /// `false` runs the step every time instead of reusing a cached result; or a map:
    /// `{max_age: 7d}` reuses a result only while it is younger than that, `{key: "..."}`
    /// adds a text of the pipeline's own (templated from params and `{{item}}`) to the key,
    /// `{enabled: false}` is `false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<Located<CacheSpec>>,
    /// Limits of a wasm step: memory and fuel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Located<WasmLimits>>,
}

/// A step's outputs, in the order written, each with the file name the step writes it as
/// when that is not the output's own name.
#[derive(Debug, Clone, Default)]
pub struct Outputs {
    names: Vec<Located<ArtifactName>>,
    files: IndexMap<String, Located<OutputFile>>,
}

impl Outputs {
    /// The file name output `name` is written as, when the pipeline names one.
    pub fn file(&self, name: &str) -> Option<&Located<OutputFile>> {
        self.files.get(name)
    }

    /// The outputs that name their file, in the order written.
    pub fn files(&self) -> impl Iterator<Item = (&str, &Located<OutputFile>)> {
        self.files.iter().map(|(k, v)| (k.as_str(), v))
    }
}

impl Deref for Outputs {
    type Target = [Located<ArtifactName>];

    fn deref(&self) -> &Self::Target {
        &self.names
    }
}

impl<'a> IntoIterator for &'a Outputs {
    type Item = &'a Located<ArtifactName>;
    type IntoIter = std::slice::Iter<'a, Located<ArtifactName>>;

    fn into_iter(self) -> Self::IntoIter {
        self.names.iter()
    }
}

impl From<Vec<Located<ArtifactName>>> for Outputs {
    fn from(names: Vec<Located<ArtifactName>>) -> Self {
        Self {
            names,
            files: IndexMap::new(),
        }
    }
}

impl<'de> Deserialize<'de> for Outputs {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OutputsVisitor;

        impl<'de> Visitor<'de> for OutputsVisitor {
            type Value = Outputs;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of output names, or a map from output name to file name")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Outputs, A::Error> {
                let mut names = Vec::new();
                while let Some(name) = seq.next_element::<Located<ArtifactName>>()? {
                    names.push(name);
                }
                Ok(names.into())
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Outputs, A::Error> {
                let mut outputs = Outputs::default();
                while let Some(name) = map.next_key::<Located<ArtifactName>>()? {
                    let file = map.next_value::<Located<OutputFile>>()?;
                    if outputs.names.iter().any(|n| n.value == name.value) {
                        return Err(de::Error::custom(format!(
                            "output `{name}` is listed twice"
                        )));
                    }
                    outputs.files.insert(name.to_string(), file);
                    outputs.names.push(name);
                }
                Ok(outputs)
            }
        }

        deserializer.deserialize_any(OutputsVisitor)
    }
}

impl Serialize for Outputs {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        if self.files.is_empty() {
            return self.names.serialize(serializer);
        }
        let mut map = serializer.serialize_map(Some(self.names.len()))?;
        for name in &self.names {
            let file = self.files.get(name.as_str()).map(|f| f.0.as_str());
            map.serialize_entry(name.as_str(), &file.unwrap_or(name.as_str()))?;
        }
        map.end()
    }
}

impl JsonSchema for Outputs {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Outputs".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let name = generator.subschema_for::<ArtifactName>();
        let file = generator.subschema_for::<OutputFile>();
        schemars::json_schema!({
            "description": "Output names, or a map from output name to the file name the step writes it as.",
            "anyOf": [
                {"type": "array", "items": name},
                {"type": "object", "additionalProperties": file,
                 "propertyNames": {"pattern": "^[a-z][a-z0-9_-]*$"}}
            ]
        })
    }
}

/// How a step uses the cache: `cache: false`, or `{max_age: 7d, key: "...", enabled: true}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum CacheSpec {
    /// `true` (the default) or `false`.
    Enabled(bool),
    /// A policy.
    Policy(CachePolicy),
}

/// A step's cache policy, written as a map.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CachePolicy {
    /// `false` runs the step every time (default `true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<Located<bool>>,
    /// The oldest cached result that is reused, such as `7d` or `12h`, or a template such as
    /// `"{{params.max_age}}"`: an older one is run again and replaced. A result cached by a
    /// kiln that did not note when it was made counts as too old.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<Located<Templated<HumanDuration>>>,
    /// A text of the pipeline's own that becomes part of the cache key, such as
    /// `"{{params.dataset_version}}"` (params and `{{item}}` filled in): a new value is a
    /// miss.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<Located<String>>,
}

impl CacheSpec {
    /// Whether a cached result may be reused at all.
    pub fn enabled(&self) -> bool {
        match self {
            CacheSpec::Enabled(b) => *b,
            CacheSpec::Policy(p) => p.enabled.as_ref().is_none_or(|e| e.value),
        }
    }

    /// The policy, when written as a map.
    pub fn policy(&self) -> Option<&CachePolicy> {
        match self {
            CacheSpec::Enabled(_) => None,
            CacheSpec::Policy(p) => Some(p),
        }
    }
}

impl<'de> Deserialize<'de> for CacheSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CacheVisitor;

        impl<'de> Visitor<'de> for CacheVisitor {
            type Value = CacheSpec;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("`true`, `false`, or a map such as `{max_age: 7d}`")
            }

            fn visit_bool<E: de::Error>(self, v: bool) -> Result<CacheSpec, E> {
                Ok(CacheSpec::Enabled(v))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<CacheSpec, E> {
                let yaml11 = ["yes", "no", "on", "off", "y", "n"]
                    .iter()
                    .any(|b| b.eq_ignore_ascii_case(v));
                Err(E::custom(if yaml11 {
                    format!(
                        "expected `true`, `false` or a map such as `{{max_age: 7d}}`, found `{v}` (kiln reads YAML 1.2: `yes`, `no`, `on` and `off` are strings, not booleans)"
                    )
                } else {
                    format!(
                        "expected `true`, `false` or a map such as `{{max_age: 7d}}`, found `{v}`"
                    )
                }))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<CacheSpec, A::Error> {
                CachePolicy::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(CacheSpec::Policy)
            }
        }

        deserializer.deserialize_any(CacheVisitor)
    }
}

/// The file name an output is written as: one plain name, such as `model.npz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct OutputFile(#[schemars(regex(pattern = r"^[^/\\]+$"))] pub String);

impl<'de> Deserialize<'de> for OutputFile {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        if s.is_empty() || s == "." || s == ".." || s.contains(['/', '\\', '\0']) {
            Err(de::Error::custom(format!(
                "invalid output file name `{s}`: write one file name such as `model.npz`, without folders"
            )))
        } else {
            Ok(OutputFile(s))
        }
    }
}

/// Sandbox limits of a wasm step.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WasmLimits {
    /// Most linear memory the component may use, such as `256Mi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Located<Memory>>,
    /// Fuel: the deterministic CPU budget (roughly one unit per wasm instruction).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<Located<u64>>,
}

/// When a step runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RunWhen {
    /// Once everything it depends on succeeded (or came from the cache).
    #[default]
    OnSuccess,
    /// After every other step has finished, whatever happened: cleanup, notification.
    Always,
    /// After every other step has finished, when at least one of them failed.
    OnFailure,
}

impl RunWhen {
    /// Whether the step runs after the others, whatever they did (an exit handler).
    pub fn is_finally(self) -> bool {
        !matches!(self, RunWhen::OnSuccess)
    }
}

/// A step's retries: `retries: 3`, or a whole policy.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum Retries {
    /// Up to this many extra attempts, with the run's default backoff.
    Count(u32),
    /// A policy of its own.
    Policy(RetryPolicy),
}

impl Retries {
    /// The most extra attempts.
    pub fn limit(&self) -> u32 {
        match self {
            Retries::Count(n) => *n,
            Retries::Policy(p) => p.limit,
        }
    }
}

impl<'de> Deserialize<'de> for Retries {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RetriesVisitor;

        impl<'de> Visitor<'de> for RetriesVisitor {
            type Value = Retries;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number of retries, or a map such as `{limit: 3, backoff: 10s}`")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Retries, E> {
                u32::try_from(v)
                    .map(Retries::Count)
                    .map_err(|_| E::custom(format!("{v} retries is too many")))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Retries, E> {
                if v < 0 {
                    return Err(E::custom(format!(
                        "expected a whole number, 0 or more, found `{v}`"
                    )));
                }
                self.visit_u64(v as u64)
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Retries, E> {
                Err(E::custom(format!(
                    "expected a whole number, 0 or more, or a retry policy, found `{v}`"
                )))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Retries, E> {
                Err(E::custom(format!(
                    "expected a whole number, 0 or more, found `{v}`"
                )))
            }

            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Retries, E> {
                Err(E::custom(format!(
                    "expected a whole number, 0 or more, found `{v}`"
                )))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Retries, A::Error> {
                RetryPolicy::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(Retries::Policy)
            }
        }

        deserializer.deserialize_any(RetriesVisitor)
    }
}

/// How a failed step is retried.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// The most extra attempts.
    pub limit: u32,
    /// The wait before the first retry, such as `10s` (default: the run's, 1s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Located<HumanDuration>>,
    /// What each next wait is multiplied by (default 2; 1 waits the same every time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub factor: Option<Located<f64>>,
    /// The longest wait, such as `5m` (default: the run's, 1m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_backoff: Option<Located<HumanDuration>>,
    /// Which failures are retried, by kind: `exit`, `signal`, `timeout`, `oom`, `engine`,
    /// `spawn`... (default: every failure that may pass on a second try).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on: Vec<Located<String>>,
}

/// A step another runs after: `train`, or `{step: train, on: failure}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum AfterRef {
    /// Once that step succeeded.
    Name(StepName),
    /// Once that step ended the way `on` says.
    When {
        /// The step.
        step: StepName,
        /// `success` (the default), `failure` (it failed or was cancelled: the step runs only
        /// then) or `any` (however it ended).
        on: AfterOn,
    },
}

/// How the step named in `after` must have ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum AfterOn {
    /// It succeeded (or came from the cache).
    #[default]
    Success,
    /// It failed or was cancelled.
    Failure,
    /// However it ended.
    Any,
}

impl AfterRef {
    /// How the step must have ended.
    pub fn on(&self) -> AfterOn {
        match self {
            AfterRef::Name(_) => AfterOn::Success,
            AfterRef::When { on, .. } => *on,
        }
    }
}

impl std::ops::Deref for AfterRef {
    type Target = StepName;

    fn deref(&self) -> &StepName {
        match self {
            AfterRef::Name(step) | AfterRef::When { step, .. } => step,
        }
    }
}

impl From<StepName> for AfterRef {
    fn from(step: StepName) -> Self {
        AfterRef::Name(step)
    }
}

impl fmt::Display for AfterRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&**self, f)
    }
}

impl<'de> Deserialize<'de> for AfterRef {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AfterVisitor;

        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct When {
            step: StepName,
            #[serde(default)]
            on: AfterOn,
        }

        impl<'de> Visitor<'de> for AfterVisitor {
            type Value = AfterRef;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a step name, or a map such as `{step: train, on: failure}`")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<AfterRef, E> {
                StepName::new(v).map(AfterRef::Name).map_err(E::custom)
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<AfterRef, A::Error> {
                let when = When::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(AfterRef::When {
                    step: when.step,
                    on: when.on,
                })
            }
        }

        deserializer.deserialize_any(AfterVisitor)
    }
}

/// How a step reads one secret: `wandb`, or `{name: wandb, as: file}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum SecretUse {
    /// The secret's value in the variable.
    Name(SecretName),
    /// The secret, handed over as the form says.
    Form {
        /// The secret's name.
        name: Located<SecretName>,
        /// `env` (the value in the variable, the default) or `file` (the path of a file
        /// holding the value, readable by the step only, removed when it ends).
        #[serde(default, rename = "as")]
        form: SecretAs,
    },
}

impl SecretUse {
    /// The secret's name.
    pub fn name(&self) -> &SecretName {
        match self {
            SecretUse::Name(name) => name,
            SecretUse::Form { name, .. } => name,
        }
    }

    /// How the step gets it.
    pub fn form(&self) -> SecretAs {
        match self {
            SecretUse::Name(_) => SecretAs::Env,
            SecretUse::Form { form, .. } => *form,
        }
    }
}

/// How a secret reaches a step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SecretAs {
    /// The value itself, in the environment variable.
    #[default]
    Env,
    /// A file holding the value; the variable holds the file's path.
    File,
}

impl<'de> Deserialize<'de> for SecretUse {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SecretVisitor;

        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Form {
            name: Located<SecretName>,
            #[serde(default, rename = "as")]
            form: SecretAs,
        }

        impl<'de> Visitor<'de> for SecretVisitor {
            type Value = SecretUse;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a secret name, or a map such as `{name: hf, as: file}`")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<SecretUse, E> {
                SecretName::new(v).map(SecretUse::Name).map_err(E::custom)
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<SecretUse, A::Error> {
                let form = Form::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(SecretUse::Form {
                    name: form.name,
                    form: form.form,
                })
            }
        }

        deserializer.deserialize_any(SecretVisitor)
    }
}

/// A container step.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContainerSpec {
    /// The image, such as `python:3.12-slim` (default: the pipeline's `defaults.image`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<Located<String>>,
    /// The program and its first arguments; the image's entrypoint when empty.
    #[serde(default)]
    pub command: Vec<Located<String>>,
    /// Arguments; templates such as `{{inputs.data}}` are replaced with paths.
    #[serde(default)]
    pub args: Vec<Located<String>>,
    /// Environment variables; values may use templates.
    #[serde(default)]
    pub env: IndexMap<Located<EnvName>, Located<String>>,
    /// What the step needs: `cpu`, `memory`, `gpu`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Located<Resources>>,
}

/// What a container step needs to run.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// CPU cores: `2`, `0.5` or `500m`; or `{request: 1, limit: 4}`; values may be templates
    /// such as `"{{params.cpus}}"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Located<Amount<Cpu>>>,
    /// Memory: `16Gi`, `512Mi`, `1G`; or `{request: 2Gi, limit: 8Gi}`; values may be templates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Located<Amount<Memory>>>,
    /// GPUs: a number, or `{count: 1, kind: a100}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<Located<GpuRequest>>,
}

/// GPUs a step needs: how many, and optionally which kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum GpuRequest {
    /// This many GPUs of any kind.
    Count(u32),
    /// A count and a kind.
    Kind {
        /// How many (default 1).
        #[serde(default = "one")]
        count: u32,
        /// The accelerator kind, such as `a100` or `nvidia-l4`: a cluster profile maps it to
        /// its nodes; a local run does not check it.
        kind: Located<String>,
    },
}

fn one() -> u32 {
    1
}

impl GpuRequest {
    /// How many GPUs.
    pub fn count(&self) -> u32 {
        match self {
            GpuRequest::Count(n) | GpuRequest::Kind { count: n, .. } => *n,
        }
    }

    /// The kind asked for, if any.
    pub fn kind(&self) -> Option<&str> {
        match self {
            GpuRequest::Count(_) => None,
            GpuRequest::Kind { kind, .. } => Some(kind.as_str()),
        }
    }
}

impl<'de> Deserialize<'de> for GpuRequest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct GpuVisitor;

        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Kind {
            #[serde(default = "one")]
            count: u32,
            kind: Located<String>,
        }

        impl<'de> Visitor<'de> for GpuVisitor {
            type Value = GpuRequest;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number of GPUs, or a map such as `{count: 1, kind: a100}`")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<GpuRequest, E> {
                u32::try_from(v)
                    .map(GpuRequest::Count)
                    .map_err(|_| E::custom(format!("{v} GPUs is too many")))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<GpuRequest, E> {
                if v < 0 {
                    return Err(E::custom(format!(
                        "expected a number of GPUs, 0 or more, found `{v}`"
                    )));
                }
                self.visit_u64(v as u64)
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<GpuRequest, E> {
                Err(E::custom(format!(
                    "expected a number of GPUs or `{{count: 1, kind: {v}}}`, found `{v}`"
                )))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<GpuRequest, A::Error> {
                let k = Kind::deserialize(de::value::MapAccessDeserializer::new(map))?;
                let ok = k
                    .kind
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphanumeric())
                    && k.kind
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
                if !ok {
                    return Err(de::Error::custom(format!(
                        "invalid GPU kind `{}`: use lowercase letters, digits, `-`, `_` and `.`, such as `a100` or `nvidia-l4`",
                        k.kind.as_str()
                    )));
                }
                Ok(GpuRequest::Kind {
                    count: k.count,
                    kind: k.kind,
                })
            }
        }

        deserializer.deserialize_any(GpuVisitor)
    }
}

/// The name of an environment variable.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct EnvName(#[schemars(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]*$"))] pub String);

impl<'de> Deserialize<'de> for EnvName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        let ok = s
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if ok {
            Ok(EnvName(s))
        } else {
            Err(de::Error::custom(format!(
                "invalid environment variable name `{s}`: use letters, digits and `_`, not starting with a digit"
            )))
        }
    }
}

/// Where a wasm step's component comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum WasmRef {
    /// A `.wasm` file, relative to the pipeline file.
    Path(String),
    /// A component in the registry: `name@version`.
    Registry {
        /// The component's name.
        name: String,
        /// Its version.
        version: String,
    },
    /// A component by content: `blake3:<64 hex digits>`.
    Digest(String),
    /// A source folder and the command that builds it.
    Build(BuildSpec),
}

/// How to build a wasm step from source, like Spin's `build`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BuildSpec {
    /// The source folder, relative to the pipeline file; the command runs there.
    pub source: Located<String>,
    /// The build command, run by the shell in the source folder.
    pub command: Located<String>,
    /// The `.wasm` file the command writes, relative to the source folder.
    pub artifact: Located<String>,
    /// Files or folders outside the source folder that the build also reads (a shared
    /// crate, a WIT folder), relative to the source folder: a change to them makes the
    /// build stale too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub watch: Vec<Located<String>>,
    /// The name and version `kiln push pipeline.yaml` publishes the built component under in
    /// a kiln server's registry (`validate@1.2.0`). Runs ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<Located<String>>,
}

impl fmt::Display for WasmRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WasmRef::Path(p) => f.write_str(p),
            WasmRef::Registry { name, version } => write!(f, "{name}@{version}"),
            WasmRef::Digest(d) => f.write_str(d),
            WasmRef::Build(b) => write!(f, "{} (built by `{}`)", b.source, b.command),
        }
    }
}

impl std::str::FromStr for WasmRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some((first, rest)) = s.trim().split_once(char::is_whitespace) {
            let next = rest.split([':', ' ']).next().unwrap_or(rest);
            return Err(format!(
                "component reference `{s}` has a space in it: if `{next}` is a field of the step, \
                 indent its line exactly like `wasm`; otherwise write just `{first}`"
            ));
        }
        if let Some(hex) = s.strip_prefix("blake3:") {
            if hex.len() == 64
                && hex
                    .chars()
                    .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
            {
                return Ok(WasmRef::Digest(s.to_owned()));
            }
            return Err(format!(
                "invalid component digest `{s}`: expected `blake3:` and 64 lowercase hex digits"
            ));
        }
        if s.ends_with(".wasm") {
            if s.starts_with('/') {
                return Err(format!(
                    "component path `{s}` is absolute: write it relative to the pipeline file"
                ));
            }
            return Ok(WasmRef::Path(s.to_owned()));
        }
        if let Some((name, version)) = s.split_once('@') {
            check_component_name(name).map_err(|_| {
                format!("invalid component name `{name}` in `{s}`: use lowercase letters, digits, `_` and `-`")
            })?;
            if check_component_version(version).is_err() && check_component_tag(version).is_err() {
                return Err(format!(
                    "invalid component version `{version}` in `{s}`: use a version such as `1.2.0` or a tag such as `stable`"
                ));
            }
            return Ok(WasmRef::Registry {
                name: name.to_owned(),
                version: version.to_owned(),
            });
        }
        Err(format!(
            "`{s}` is not a component reference: write a path ending in `.wasm`, `name@version`, \
             `blake3:<hex>`, or a mapping with `source`, `command` and `artifact`"
        ))
    }
}

/// Checks a registry component's name: lowercase letters, digits, `_` and `-`, as step names.
pub fn check_component_name(name: &str) -> Result<(), String> {
    crate::names::StepName::new(name).map(drop).map_err(|_| {
        format!("invalid component name `{name}`: use lowercase letters, digits, `_` and `-`")
    })
}

/// Checks a component version: it starts with a digit and holds letters, digits, `.`, `-` and
/// `+` (`1.2.0`, `2.0.0-rc.1`, `1.0.0+build.5`). Versions never move.
pub fn check_component_version(version: &str) -> Result<(), String> {
    let ok = version.len() <= 64
        && version.chars().next().is_some_and(|c| c.is_ascii_digit())
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid component version `{version}`: use a version such as `1.2.0`"
        ))
    }
}

/// Checks a component tag: it starts with a lowercase letter and holds lowercase letters,
/// digits, `.`, `_` and `-` (`latest`, `stable`). Tags move; a run pins the version a tag
/// names when it is submitted.
pub fn check_component_tag(tag: &str) -> Result<(), String> {
    let ok = tag.len() <= 64
        && tag.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && tag
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid component tag `{tag}`: use lowercase letters, digits, `.`, `_` and `-`, starting with a letter"
        ))
    }
}

impl<'de> Deserialize<'de> for WasmRef {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct WasmRefVisitor;

        impl<'de> Visitor<'de> for WasmRefVisitor {
            type Value = WasmRef;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a component reference (`step.wasm`, `name@1.0.0`, `blake3:<hex>`) or a build mapping")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<WasmRef, E> {
                v.parse().map_err(E::custom)
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<WasmRef, A::Error> {
                BuildSpec::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(WasmRef::Build)
            }
        }

        deserializer.deserialize_any(WasmRefVisitor)
    }
}

impl JsonSchema for WasmRef {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "WasmRef".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let build = generator.subschema_for::<BuildSpec>();
        schemars::json_schema!({
            "description": "A component: a `.wasm` path, `name@version` or `name@tag` from a kiln server's registry, `blake3:<hex>`, or a source folder with its build command.",
            "anyOf": [
                {"type": "string", "pattern": "(\\.wasm$)|(^[a-z][a-z0-9_-]*@([0-9][0-9A-Za-z.+-]*|[a-z][a-z0-9._-]*)$)|(^blake3:[0-9a-f]{64}$)"},
                build
            ]
        })
    }
}

/// What a step input reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub enum InputRef {
    /// Another step's output: `STEP.OUTPUT`.
    StepOutput {
        /// The producing step.
        step: String,
        /// Its output.
        output: String,
    },
    /// A pipeline param, passed as a small file: `params.NAME`.
    Param(String),
    /// A file or folder in the workspace, relative to the pipeline file.
    Path(String),
    /// The run so far, as JSON (`run.status`): for `run: always` and `run: on-failure` steps.
    RunStatus,
    /// One object outside the workspace, fetched when the run is pinned and kept by content:
    /// `s3://bucket/key`, `gs://bucket/key`, `az://container/key`, `https://host/path` (or
    /// `http://`).
    External(String),
    /// An input of the sub-pipeline this file is, bound by the step including it:
    /// `inputs.NAME`.
    Input(String),
}

/// The URL schemes an external input may use, with what each names.
pub const EXTERNAL_SCHEMES: &[(&str, &str)] = &[
    ("s3", "s3://BUCKET/KEY"),
    ("gs", "gs://BUCKET/KEY"),
    ("az", "az://CONTAINER/KEY"),
    ("https", "https://HOST/PATH"),
    ("http", "http://HOST/PATH"),
];

/// Checks an external input's URL: a known scheme, a bucket (or host), and one object.
fn external(t: &str) -> Result<InputRef, String> {
    let (scheme, rest) = t.split_once("://").expect("called on `SCHEME://...`");
    let supported = || {
        EXTERNAL_SCHEMES
            .iter()
            .map(|(_, form)| format!("`{form}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !EXTERNAL_SCHEMES.iter().any(|(s, _)| *s == scheme) {
        return Err(format!(
            "kiln cannot fetch `{scheme}://` inputs; it reads {}, and workspace paths such as `./data/x.csv`",
            supported()
        ));
    }
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    let what = if scheme.starts_with("http") {
        "host"
    } else {
        "bucket"
    };
    if bucket.is_empty() {
        return Err(format!(
            "input `{t}` names no {what}: write `{}`",
            form_of(scheme)
        ));
    }
    if key.is_empty() || key.ends_with('/') {
        return Err(format!(
            "input `{t}` names no object: write `{}`; a whole prefix (a folder) cannot be an input yet, so name one object (an archive, a manifest)",
            form_of(scheme)
        ));
    }
    if t.chars().any(char::is_whitespace) {
        return Err(format!("input `{t}` contains a space; write it as `%20`"));
    }
    Ok(InputRef::External(t.to_owned()))
}

/// Checks where an export goes, templates filled in: `s3://`, `gs://` or `az://`, a bucket,
/// and a key (or a prefix ending in `/`) without empty, `.` or `..` segments.
pub fn check_export_url(url: &str) -> Result<(), String> {
    let forms = || {
        EXPORT_SCHEMES
            .iter()
            .map(|(_, form)| format!("`{form}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!(
            "export to `{url}`: not a URL; write {} (a prefix ends in `/`)",
            forms()
        ));
    };
    if scheme == "http" || scheme == "https" {
        return Err(format!(
            "kiln cannot export to `{scheme}://` URLs: an HTTP server has no upload API that kiln (object_store) can write to; write to {} instead",
            forms()
        ));
    }
    if !EXPORT_SCHEMES.iter().any(|(s, _)| *s == scheme) {
        return Err(format!(
            "kiln cannot export to `{scheme}://` URLs; it writes {}",
            forms()
        ));
    }
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    let form = EXPORT_SCHEMES
        .iter()
        .find(|(s, _)| *s == scheme)
        .map_or("", |(_, form)| form);
    if bucket.is_empty() {
        return Err(format!("export to `{url}` names no bucket: write `{form}`"));
    }
    if key.is_empty() && !rest.ends_with('/') {
        return Err(format!(
            "export to `{url}` names no object: write `{form}`, or `{scheme}://{bucket}/` for the top of the bucket"
        ));
    }
    if url.chars().any(char::is_whitespace) {
        return Err(format!(
            "export to `{url}` contains a space; write it as `%20`"
        ));
    }
    if url.contains(['?', '#']) {
        return Err(format!(
            "export to `{url}` has a `?` or `#`; an object key is a path, without a query or fragment"
        ));
    }
    let segments: Vec<&str> = key.split('/').collect();
    let last = segments.len() - 1;
    for (i, segment) in segments.iter().enumerate() {
        match *segment {
            "" if i == last => {}
            "" if !key.is_empty() => {
                return Err(format!(
                    "export to `{url}` has an empty path segment (`//`)"
                ));
            }
            "." | ".." => {
                return Err(format!(
                    "export to `{url}` has a `{segment}` segment; write the key as it is stored"
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

fn form_of(scheme: &str) -> &'static str {
    EXTERNAL_SCHEMES
        .iter()
        .find(|(s, _)| *s == scheme)
        .map_or("", |(_, form)| form)
}

impl fmt::Display for InputRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InputRef::StepOutput { step, output } => write!(f, "{step}.{output}"),
            InputRef::Param(name) => write!(f, "params.{name}"),
            InputRef::Path(path) => f.write_str(path),
            InputRef::RunStatus => f.write_str("run.status"),
            InputRef::External(url) => f.write_str(url),
            InputRef::Input(name) => write!(f, "inputs.{name}"),
        }
    }
}

impl From<InputRef> for String {
    fn from(r: InputRef) -> String {
        r.to_string()
    }
}

impl std::str::FromStr for InputRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if let Some((scheme, _)) = t.split_once("://")
            && !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        {
            return external(t);
        }
        if t.starts_with('/') {
            return Err(format!(
                "input path `{t}` is absolute: write it relative to the pipeline file, like `./data/x.csv`"
            ));
        }
        if t.starts_with("./") || t.starts_with("../") || t.contains('/') {
            return Ok(InputRef::Path(t.to_owned()));
        }
        if let Some(name) = t.strip_prefix("params.") {
            return Ok(InputRef::Param(name.to_owned()));
        }
        if t == "run.status" {
            return Ok(InputRef::RunStatus);
        }
        if let Some(name) = t.strip_prefix("inputs.")
            && !name.is_empty()
            && !name.contains('.')
        {
            return Ok(InputRef::Input(name.to_owned()));
        }
        if let Some((step, output)) = t.split_once('.')
            && !step.is_empty()
            && !output.is_empty()
            && !output.contains('.')
        {
            return Ok(InputRef::StepOutput {
                step: step.to_owned(),
                output: output.to_owned(),
            });
        }
        Err(format!(
            "`{t}` is not an input reference: write `STEP.OUTPUT`, `params.NAME`, or a path such as `./{t}`"
        ))
    }
}

impl<'de> Deserialize<'de> for InputRef {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(de::Error::custom)
    }
}

impl JsonSchema for InputRef {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "InputRef".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "`STEP.OUTPUT`, `params.NAME`, `inputs.NAME` (in a sub-pipeline), `run.status`, a workspace path such as `./data/train.csv`, or one external object: `s3://BUCKET/KEY`, `gs://BUCKET/KEY`, `az://CONTAINER/KEY`, `https://HOST/PATH`."
        })
    }
}

/// The list a fan-out step iterates over.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ForEach {
    /// A literal list.
    Items(Vec<Value>),
    /// A template naming a list param: `{{params.learning_rates}}`.
    Template(String),
}

impl<'de> Deserialize<'de> for ForEach {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ForEachVisitor;

        impl<'de> Visitor<'de> for ForEachVisitor {
            type Value = ForEach;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list, or a list param such as `{{params.learning_rates}}`")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<ForEach, E> {
                Ok(ForEach::Template(v.to_owned()))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ForEach, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Value>()? {
                    items.push(item);
                }
                Ok(ForEach::Items(items))
            }
        }

        deserializer.deserialize_any(ForEachVisitor)
    }
}

impl JsonSchema for ForEach {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ForEach".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let value = generator.subschema_for::<Value>();
        schemars::json_schema!({
            "description": "A list, or a list param such as `{{params.learning_rates}}`.",
            "anyOf": [
                {"type": "array", "items": value},
                {"type": "string", "pattern": "^\\s*\\{\\{\\s*params\\.[a-z_][a-z0-9_]*\\s*\\}\\}\\s*$"}
            ]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wasm_refs() {
        assert_eq!(
            "steps/a.wasm".parse(),
            Ok(WasmRef::Path("steps/a.wasm".into()))
        );
        assert_eq!(
            "prep@1.2.0".parse(),
            Ok(WasmRef::Registry {
                name: "prep".into(),
                version: "1.2.0".into()
            })
        );
        assert!(
            format!("blake3:{}", "a".repeat(64))
                .parse::<WasmRef>()
                .is_ok()
        );
        assert!("blake3:abc".parse::<WasmRef>().is_err());
        assert!("prep".parse::<WasmRef>().is_err());
        // A tag: pinned to the version it names when the run is submitted.
        assert_eq!(
            "prep@latest".parse(),
            Ok(WasmRef::Registry {
                name: "prep".into(),
                version: "latest".into()
            })
        );
        assert!("prep@Latest".parse::<WasmRef>().is_err());
        assert!("prep@".parse::<WasmRef>().is_err());
        assert!("Prep@1.0.0".parse::<WasmRef>().is_err());
    }

    #[test]
    fn export_urls() {
        for ok in [
            "s3://models/digits/v1/model.bin",
            "gs://reports/plots/",
            "az://models/small/",
            "s3://models/",
        ] {
            assert_eq!(check_export_url(ok), Ok(()), "{ok}");
        }
        for (bad, says) in [
            (
                "https://example.com/model.bin",
                "cannot export to `https://`",
            ),
            ("http://example.com/model.bin", "no upload API"),
            ("ftp://host/model.bin", "cannot export to `ftp://`"),
            ("models/model.bin", "not a URL"),
            ("s3://models", "names no object"),
            ("s3:///model.bin", "names no bucket"),
            ("s3://models/a//b", "empty path segment"),
            ("s3://models/../b", "`..` segment"),
            ("s3://models/a b", "contains a space"),
            ("s3://models/a?x=1", "without a query"),
        ] {
            let err = check_export_url(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn input_refs() {
        assert_eq!(
            "prep.train".parse(),
            Ok(InputRef::StepOutput {
                step: "prep".into(),
                output: "train".into()
            })
        );
        assert_eq!(
            "./train.py".parse(),
            Ok(InputRef::Path("./train.py".into()))
        );
        assert_eq!(
            "data/x.csv".parse(),
            Ok(InputRef::Path("data/x.csv".into()))
        );
        assert_eq!("params.lr".parse(), Ok(InputRef::Param("lr".into())));
        assert_eq!("inputs.data".parse(), Ok(InputRef::Input("data".into())));
        assert!("/etc/passwd".parse::<InputRef>().is_err());
        assert!("train".parse::<InputRef>().is_err());
    }
}
