//! The checks and the expansion from spec to plan.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use kiln_spec::template::{self, Segment, TemplateRef};
use kiln_spec::{
    Diagnostic, ForEach, InputRef, Located, ParamType, Pipeline, SourceFile, Span, Step, Value,
    WasmRef,
};

use crate::graph::StepGraph;
use crate::when;
use crate::{
    CacheKeyMaterial, CommandLine, Compiled, ComponentSource, ContainerKey, ContainerPlan,
    DETERMINISTIC_KINDS, DynamicList, FanOutInstance, InputSource, OutputValue, PLAN_VERSION, Plan,
    PlanOptions, PlannedExport, PlannedStep, Policy, RETRYABLE_KINDS, RetryPlan, SecretRef, StepId,
    StepKind, ValueSource, WhenScope,
};
use kiln_spec::suggest::did_you_mean;

/// The most retries a step may ask for.
const MAX_RETRIES: u32 = 100;

/// The most instances one fan-out step may expand to.
/// The most instances a fan-out step may have, whether its list is written in the pipeline or
/// by a step at run time.
pub const MAX_FAN_OUT: usize = 100_000;

/// Plans a parsed pipeline: every check runs, and all diagnostics come back sorted.
///
/// The work runs on one thread with a large stack: CEL's parser and deep step graphs
/// recurse more than a default thread allows.
pub fn compile(pipeline: &Pipeline, options: &PlanOptions) -> Compiled {
    when::on_big_stack(|| compile_here(pipeline, options, &Scope::default()).0)
}

/// [`compile`] for a pipeline read from `path`, so that an include cycle back to it is seen
/// one include earlier.
pub(crate) fn compile_file(pipeline: &Pipeline, options: &PlanOptions, path: &Path) -> Compiled {
    let scope = Scope {
        chain: vec![path.canonicalize().unwrap_or_else(|_| path.to_path_buf())],
        ..Scope::default()
    };
    when::on_big_stack(|| compile_here(pipeline, options, &scope).0)
}

/// Where a compile sits in a tree of sub-pipelines: the root pipeline, or a file a
/// `pipeline:` step includes.
#[derive(Default)]
struct Scope {
    /// The files from the root to this one, to refuse an include cycle.
    chain: Vec<PathBuf>,
    /// What the ids of this file's steps start with: `train-small/` (empty at the root).
    namespace: String,
    /// This file's folder, relative to the root pipeline's folder (empty at the root):
    /// workspace paths in the plan are relative to the root.
    prefix: String,
    /// The params as the including step sets them (checked there); `None` at the root.
    values: Option<BTreeMap<String, Value>>,
    /// The including step's bindings of this file's `inputs`: what each reads and the ids it
    /// depends on. `None` while only checking.
    bindings: Option<BTreeMap<String, (InputSource, BTreeSet<StepId>)>>,
}

impl Scope {
    fn is_sub(&self) -> bool {
        self.values.is_some()
    }

    /// A workspace path of this file, relative to the root pipeline's folder.
    fn rebase(&self, path: String) -> String {
        match (self.prefix.as_str(), path.as_str()) {
            ("", _) => path,
            (prefix, ".") => prefix.to_owned(),
            (prefix, _) => format!("{prefix}/{path}"),
        }
    }
}

/// One instance of a sub-pipeline step, planned.
struct Inlined {
    /// The ids of its steps.
    ids: Vec<StepId>,
    /// Its steps (taken when they join the plan).
    steps: Vec<PlannedStep>,
    /// Where each of its declared outputs comes from.
    outputs: BTreeMap<String, InputSource>,
    /// Its named limits, under its namespace.
    concurrency: BTreeMap<String, u32>,
}

/// A sub-pipeline file a `pipeline:` step includes, read and parsed.
struct Sub {
    /// Its text, named by its path relative to the including file's folder.
    file: Arc<SourceFile>,
    /// Its path on disk, for cycle checks.
    path: PathBuf,
    /// Its folder relative to the including file's folder (`.` for the same folder).
    dir: String,
    pipeline: Pipeline,
}

/// What a compile hands back: the result, and, for a sub-pipeline, where each declared
/// output comes from.
type ScopedCompile = (Compiled, BTreeMap<String, InputSource>);

fn compile_here(pipeline: &Pipeline, options: &PlanOptions, scope: &Scope) -> ScopedCompile {
    let defaulted = with_defaults(pipeline);
    let pipeline = defaulted.as_ref().unwrap_or(pipeline);
    let mut cx = Checker {
        pipeline,
        options,
        scope,
        subs: (0..pipeline.steps.len()).map(|_| None).collect(),
        sub_cache: HashMap::new(),
        diagnostics: Vec::new(),
        index: pipeline
            .steps
            .keys()
            .enumerate()
            .map(|(i, k)| (k.as_str(), i))
            .collect(),
        graph: StepGraph::new(pipeline.steps.len()),
        fan_out: vec![None; pipeline.steps.len()],
        dynamic: vec![None; pipeline.steps.len()],
        in_dynamic: false,
        consumed: BTreeSet::new(),
        consumers: vec![0; pipeline.steps.len()],
        when_refs: vec![None; pipeline.steps.len()],
        step_hints: HashMap::new(),
    };
    let params = cx.resolve_params();
    cx.check_declarations();
    cx.load_subs();
    for (i, (name, step)) in pipeline.steps.iter().enumerate() {
        cx.check_step(i, name, step, &params);
    }
    cx.check_exports(&params);
    cx.check_cycles();
    cx.warn_unused();
    cx.check_limits();
    let mut diagnostics = std::mem::take(&mut cx.diagnostics);
    // This file's own diagnostics first, by position; then each included file's.
    diagnostics.sort_by(|a, b| {
        let key = |d: &Diagnostic| {
            (
                d.origin.as_ref().map(|o| o.file.name.clone()),
                d.span.map_or(0, |s| s.offset),
            )
        };
        key(a)
            .cmp(&key(b))
            .then(a.severity.cmp(&b.severity))
            .then(a.message.cmp(&b.message))
    });
    diagnostics.dedup();
    if diagnostics.iter().any(Diagnostic::is_error) || scope.is_sub() && scope.bindings.is_none() {
        return (
            Compiled {
                plan: None,
                diagnostics,
            },
            BTreeMap::new(),
        );
    }
    let (plan, outputs) = cx.expand(params);
    (
        Compiled {
            plan: Some(plan),
            diagnostics,
        },
        outputs,
    )
}

/// The pipeline with its `defaults:` written into every step that does not set the field
/// itself (`None` when it has no defaults). A defaulted value keeps the span of `defaults:`,
/// so that whatever is wrong with it is shown there. Steps that include a sub-pipeline get
/// none (its own file has its own `defaults`), and a default that does not fit a step's
/// kind is left out: `image` and `resources` go to container steps, `limits` to wasm steps.
fn with_defaults(pipeline: &Pipeline) -> Option<Pipeline> {
    let defaults = &pipeline.defaults.as_ref()?.value;
    let mut pipeline = pipeline.clone();
    for step in pipeline.steps.values_mut() {
        let step = &mut step.value;
        if step.pipeline.is_some() {
            continue;
        }
        if let Some(container) = &mut step.container {
            if container.value.image.is_none() {
                container.value.image.clone_from(&defaults.image);
            }
            if container.value.resources.is_none() {
                container.value.resources.clone_from(&defaults.resources);
            }
        }
        if step.wasm.is_some() && step.limits.is_none() {
            step.limits.clone_from(&defaults.limits);
        }
        if step.retries.is_none() {
            step.retries.clone_from(&defaults.retries);
        }
        if step.timeout.is_none() {
            step.timeout.clone_from(&defaults.timeout);
        }
        if step.cache.is_none() {
            step.cache.clone_from(&defaults.cache);
        }
    }
    Some(pipeline)
}

struct Checker<'a> {
    pipeline: &'a Pipeline,
    options: &'a PlanOptions,
    scope: &'a Scope,
    /// The sub-pipeline each `pipeline:` step includes, once read without errors.
    subs: Vec<Option<Arc<Sub>>>,
    /// Sub-pipeline files read so far, by path: a file included twice is read once.
    sub_cache: HashMap<PathBuf, Option<Arc<Sub>>>,
    diagnostics: Vec<Diagnostic>,
    index: HashMap<&'a str, usize>,
    graph: StepGraph,
    /// The resolved fan-out list of each step that has one.
    fan_out: Vec<Option<Vec<Value>>>,
    /// The list each step fanning out over a step's output reads: `(producer, output)`.
    dynamic: Vec<Option<(usize, String)>>,
    /// Whether the step being checked fans out over a list a step writes at run time.
    in_dynamic: bool,
    /// `(step index, output)` pairs that some step reads.
    consumed: BTreeSet<(usize, String)>,
    /// What each step's `when` refers to, analysed once.
    when_refs: Vec<Option<when::WhenRefs>>,
    /// "Did you mean" for unknown step names, computed once per wrong name: a pipeline with
    /// thousands of references to one misspelt step must not compare each with every step.
    step_hints: HashMap<String, String>,
    /// How many references point at each step.
    consumers: Vec<usize>,
}

/// Where a template string sits, which decides what it may refer to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum TemplateSite {
    /// `with:` values: params and item.
    With,
    /// Container command, args and env: params, item, inputs, outputs.
    Container,
    /// The image: params and item only.
    Image,
    /// `cache.key`: params and item only.
    CacheKey,
}

impl<'a> Checker<'a> {
    fn error(&mut self, code: &'static str, message: String, span: Span) -> &mut Diagnostic {
        self.diagnostics
            .push(Diagnostic::error(code, message).at(span));
        self.diagnostics.last_mut().expect("just pushed")
    }

    fn warn(&mut self, code: &'static str, message: String, span: Span) -> &mut Diagnostic {
        self.diagnostics
            .push(Diagnostic::warning(code, message).at(span));
        self.diagnostics.last_mut().expect("just pushed")
    }

    fn step_hint(&mut self, wrong: &str) -> String {
        if let Some(hint) = self.step_hints.get(wrong) {
            return hint.clone();
        }
        let hint = did_you_mean(wrong, self.pipeline.steps.keys().map(|k| k.as_str()));
        self.step_hints.insert(wrong.to_owned(), hint.clone());
        hint
    }

    fn param_names(&self) -> impl Iterator<Item = &'a str> + use<'a> {
        self.pipeline.params.keys().map(|k| k.as_str())
    }

    fn step_names(&self) -> impl Iterator<Item = &'a str> + use<'a> {
        self.pipeline.steps.keys().map(|k| k.as_str())
    }

    fn resolve_params(&mut self) -> BTreeMap<String, Value> {
        let mut values = BTreeMap::new();
        let mut overrides: BTreeMap<&str, &str> = BTreeMap::new();
        for (name, text) in &self.options.overrides {
            if overrides.insert(name, text).is_some() {
                self.diagnostics.push(Diagnostic::error(
                    "kiln::plan::duplicate-override",
                    format!("param `{name}` is set twice on the command line"),
                ));
            }
            if !self.pipeline.params.contains_key(name.as_str()) {
                let hint = did_you_mean(name, self.param_names());
                let known: Vec<&str> = self.param_names().collect();
                self.diagnostics.push(
                    Diagnostic::error(
                        "kiln::plan::unknown-override",
                        format!("`-p {name}=...` sets an unknown param{hint}"),
                    )
                    .help(if known.is_empty() {
                        "this pipeline declares no params".to_owned()
                    } else {
                        format!("declared params: {}", known.join(", "))
                    }),
                );
            }
        }
        for (name, decl) in &self.pipeline.params {
            let ty: ParamType = decl.ty.value;
            if let Some(default) = &decl.default
                && let Err(e) = ty.check(&default.value)
            {
                self.error(
                    "kiln::plan::type-mismatch",
                    format!("default of param `{name}` does not match its type: {e}"),
                    default.span,
                )
                .help = Some(format!(
                    "write a default that is {}, or change the `type`",
                    with_article(ty)
                ));
            }
            let value = if let Some(values) = &self.scope.values {
                // A sub-pipeline's params come from the including step, which checked them
                // (and reported a missing one where it can be set).
                match values.get(name.as_str()) {
                    Some(v) => Some(v.clone()),
                    None => decl.default.as_ref().and_then(|d| ty.check(&d.value).ok()),
                }
            } else if let Some(text) = overrides.get(name.as_str()) {
                match ty.parse_text(text) {
                    Ok(v) => Some(v),
                    Err(e) => {
                        self.diagnostics.push(
                            Diagnostic::error(
                                "kiln::plan::bad-override",
                                format!("`-p {name}={text}`: {e}"),
                            )
                            .help(format!(
                                "`{name}` is {}: write it like `-p {name}={}`",
                                with_article(ty),
                                example_of(ty)
                            )),
                        );
                        None
                    }
                }
            } else if let Some(default) = &decl.default {
                ty.check(&default.value).ok()
            } else {
                self.error(
                    "kiln::plan::missing-param",
                    format!("param `{name}` has no default and was not set"),
                    name.span,
                )
                .help = Some(format!(
                    "set it with `-p {name}=VALUE` or give it a `default`"
                ));
                None
            };
            if let Some(v) = value {
                values.insert(name.to_string(), v);
            }
        }
        values
    }

    fn check_step(
        &mut self,
        i: usize,
        name: &'a Located<kiln_spec::StepName>,
        step: &'a Located<Step>,
        params: &BTreeMap<String, Value>,
    ) {
        let before = self.diagnostics.len();
        let fan_out = self.check_for_each(i, name, step, params);
        let in_fan_out = step.for_each.is_some();
        self.fan_out[i] = fan_out;
        self.in_dynamic = self.dynamic[i].is_some();
        if self.diagnostics.len() == before {
            self.check_nested(i, name, step);
        }

        if let Some(path) = &step.pipeline {
            self.check_include(i, name, step, path, params);
        }
        match (&step.wasm, &step.container) {
            (None, None) if step.pipeline.is_some() => {}
            (None, None) => {
                self.error(
                    "kiln::plan::step-kind",
                    format!("step `{name}` has neither `wasm`, `container` nor `pipeline`"),
                    name.span,
                )
                .help = Some(
                    "give the step exactly one of `wasm: <component>`, `container: {image: ...}` or `pipeline: ./FILE.yaml`"
                        .into(),
                );
            }
            (Some(_), Some(container)) => {
                let d = self.error(
                    "kiln::plan::step-kind",
                    format!("step `{name}` has both `wasm` and `container`"),
                    container.span,
                );
                d.label = Some("the `container` starts here".into());
                d.help = Some(
                    "a step runs one thing: keep one of them, or split it into two steps".into(),
                );
            }
            (Some(wasm), None) => self.check_component(name, wasm),
            (None, Some(_)) => {}
        }
        self.check_secrets(name, step);
        self.check_quantities(i, name, step, params);
        if step.container.is_some()
            && let Some(limits) = &step.limits
        {
            let d = self.error(
                "kiln::plan::limits-on-container",
                format!("step `{name}` is a container step; `limits` applies to wasm steps only"),
                limits.span,
            );
            d.label = Some("these limits".into());
            d.help = Some("use `container.resources` (`cpu`, `memory`, `gpu`) instead".into());
        }
        self.check_command_line(name, step, in_fan_out, params);
        self.check_concurrency(name, step);
        if let Some(retries) = &step.retries
            && retries.limit() > MAX_RETRIES
        {
            self.error(
                "kiln::plan::too-many-retries",
                format!(
                    "step `{name}` asks for {} retries; the most is {MAX_RETRIES}",
                    retries.limit()
                ),
                retries.span,
            );
        }
        if let Some(retries) = &step.retries
            && let kiln_spec::Retries::Policy(policy) = &retries.value
        {
            self.check_retry_policy(name, policy);
        }

        let mut seen_outputs = BTreeSet::new();
        for output in &step.outputs {
            if !seen_outputs.insert(output.as_str()) {
                self.error(
                    "kiln::plan::duplicate-output",
                    format!("step `{name}` declares output `{output}` twice"),
                    output.span,
                );
            }
        }

        let mut seen_files = BTreeMap::new();
        let mut named = BTreeSet::new();
        for output in &step.outputs {
            if !named.insert(output.as_str()) {
                continue; // a duplicate name, reported above
            }
            let file = step.outputs.file(output.as_str());
            let file_name = file.map_or(output.as_str(), |f| f.0.as_str());
            if let Some(other) = seen_files.insert(file_name.to_owned(), output.to_string()) {
                self.error(
                    "kiln::plan::duplicate-output-file",
                    format!(
                        "step `{name}` writes outputs `{other}` and `{output}` to the same file `{file_name}`"
                    ),
                    file.map_or(output.span, |f| f.span),
                );
            }
        }
        if let Some(metrics) = &step.metrics
            && !step.outputs.iter().any(|o| o.as_str() == metrics.as_str())
        {
            let hint = did_you_mean(metrics.as_str(), step.outputs.iter().map(|o| o.as_str()));
            self.error(
                "kiln::plan::unknown-metrics-output",
                format!("step `{name}` reads its metrics from `{metrics}`, which is not one of its outputs{hint}"),
                metrics.span,
            )
            .help = Some(format!(
                "add `{metrics}` to the step's `outputs` and write a JSON object of numbers to it, such as `{{\"accuracy\": 0.93}}`"
            ));
        }

        for (input_name, input) in &step.inputs {
            self.check_input(i, name, input_name, input, params);
        }

        let mut seen_after = BTreeSet::new();
        for after in &step.after {
            if !seen_after.insert(after.as_str()) {
                self.warn(
                    "kiln::plan::duplicate-after",
                    format!("step `{name}` lists `{after}` twice in `after`"),
                    after.span,
                );
            }
            match self.index.get(after.as_str()) {
                Some(&j) => {
                    self.graph.add_edge(j, i);
                    self.consumers[j] += 1;
                    let reads = step.inputs.values().any(|input| {
                        matches!(&input.value, InputRef::StepOutput { step, .. } if step.as_str() == after.as_str())
                    });
                    if after.on() != kiln_spec::AfterOn::Success && step.pipeline.is_some() {
                        self.error(
                            "kiln::plan::after-on",
                            format!("step `{name}` includes a sub-pipeline; it runs after `{after}` succeeded, so `on:` is not for it"),
                            after.span,
                        )
                        .help = Some("put the step that runs on failure in this file, and have it run after the sub-pipeline's steps".into());
                    } else if after.on() != kiln_spec::AfterOn::Success && reads {
                        self.error(
                            "kiln::plan::after-on",
                            format!("step `{name}` runs after `{after}` {}, but reads its output, which a failed step does not write", match after.on() {
                                kiln_spec::AfterOn::Failure => "fails (`on: failure`)",
                                _ => "whatever it did (`on: any`)",
                            }),
                            after.span,
                        )
                        .help = Some(format!("read what `{after}` wrote in a step that runs after it succeeded, or drop `on:`"));
                    }
                }
                None => {
                    let hint = self.step_hint(after.as_str());
                    self.error(
                        "kiln::plan::unknown-step",
                        format!("step `{name}` runs after `{after}`, which is not a step{hint}"),
                        after.span,
                    );
                }
            }
        }

        for (key, value) in &step.with {
            self.check_value_templates(name, key.as_str(), value, in_fan_out, params);
        }

        if let Some(container) = &step.container {
            let inputs: BTreeSet<&str> = step.inputs.keys().map(|k| k.as_str()).collect();
            let outputs: BTreeSet<&str> = step.outputs.iter().map(|k| k.as_str()).collect();
            if let Some(image) = &container.image {
                self.check_template(
                    name,
                    image,
                    TemplateSite::Image,
                    in_fan_out,
                    params,
                    (&inputs, &outputs),
                );
            }
            for part in container.command.iter().chain(&container.args) {
                self.check_template(
                    name,
                    part,
                    TemplateSite::Container,
                    in_fan_out,
                    params,
                    (&inputs, &outputs),
                );
            }
            for value in container.env.values() {
                self.check_template(
                    name,
                    value,
                    TemplateSite::Container,
                    in_fan_out,
                    params,
                    (&inputs, &outputs),
                );
            }
            match &container.image {
                Some(image) if image.trim().is_empty() => {
                    self.error(
                        "kiln::plan::empty-image",
                        format!("step `{name}` has an empty `image`"),
                        image.span,
                    );
                }
                Some(_) => {}
                None => {
                    self.error(
                        "kiln::plan::no-image",
                        format!("step `{name}` has no `image`"),
                        container.span,
                    )
                    .help = Some(
                        "give it `image: ...` under `container`, or give every container step one with `defaults: {image: ...}`".into(),
                    );
                }
            }
        }
        if let Some(key) = step
            .cache
            .as_ref()
            .and_then(|c| c.policy())
            .and_then(|p| p.key.as_ref())
        {
            let empty = BTreeSet::new();
            self.check_template(
                name,
                key,
                TemplateSite::CacheKey,
                in_fan_out,
                params,
                (&empty, &empty),
            );
        }

        if let Some(condition) = &step.when {
            self.check_when(i, name, condition, in_fan_out, params);
        }
    }

    /// Resources and the timeout: templates name known params (and `item` only in a
    /// fan-out), and every value they give, for every fan-out item, is a valid quantity; a
    /// request is at most its limit.
    fn check_quantities(
        &mut self,
        i: usize,
        name: &Located<kiln_spec::StepName>,
        step: &Located<Step>,
        params: &BTreeMap<String, Value>,
    ) {
        let items: Vec<Option<Value>> = match &self.fan_out[i] {
            Some(items) => items.iter().cloned().map(Some).collect(),
            None => vec![None],
        };
        let in_fan_out = step.for_each.is_some();
        let resources = step.container.as_ref().and_then(|c| c.resources.as_ref());
        if let Some(cpu) = resources.and_then(|r| r.cpu.as_ref()) {
            self.check_amount(name, "cpu", cpu, &items, in_fan_out, params, |c| c.millis);
        }
        if let Some(memory) = resources.and_then(|r| r.memory.as_ref()) {
            self.check_amount(name, "memory", memory, &items, in_fan_out, params, |m| {
                m.bytes
            });
        }
        if let Some(timeout) = &step.timeout {
            self.check_templated(
                name,
                "timeout",
                timeout,
                timeout.span,
                &items,
                in_fan_out,
                params,
            );
        }
        let policy = step.cache.as_ref().and_then(|c| c.policy());
        if let Some(max_age) = policy.and_then(|p| p.max_age.as_ref()) {
            self.check_templated(
                name,
                "cache.max_age",
                max_age,
                max_age.span,
                &items,
                in_fan_out,
                params,
            );
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn check_amount<Q: Clone + std::str::FromStr<Err = String> + std::fmt::Display>(
        &mut self,
        name: &Located<kiln_spec::StepName>,
        field: &str,
        amount: &Located<kiln_spec::Amount<Q>>,
        items: &[Option<Value>],
        in_fan_out: bool,
        params: &BTreeMap<String, Value>,
        size: impl Fn(&Q) -> u64,
    ) {
        match &amount.value {
            kiln_spec::Amount::One(one) => {
                self.check_templated(name, field, one, amount.span, items, in_fan_out, params);
            }
            kiln_spec::Amount::Range { request, limit } => {
                let mut ok = true;
                for (which, part) in [("request", request), ("limit", limit)] {
                    if let Some(part) = part {
                        ok &= self.check_templated(
                            name,
                            &format!("{field}.{which}"),
                            part,
                            part.span,
                            items,
                            in_fan_out,
                            params,
                        );
                    }
                }
                let (Some(request), Some(limit), true) = (request, limit, ok) else {
                    return;
                };
                for item in items {
                    let fill = |t: &str| substitute(t, params, item.as_ref());
                    let (Ok(r), Ok(l)) = (request.resolve(fill), limit.resolve(fill)) else {
                        continue;
                    };
                    if size(&r) > size(&l) {
                        let d = self.error(
                            "kiln::plan::request-above-limit",
                            format!("step `{name}` requests {field} {r}, more than its limit {l}"),
                            request.span,
                        );
                        d.help = Some(
                            "a request is what the step is guaranteed and a limit the most it may use: the request must not exceed the limit"
                                .into(),
                        );
                        break;
                    }
                }
            }
        }
    }

    /// Checks one templated quantity; whether it is good for every item.
    #[allow(clippy::too_many_arguments)]
    fn check_templated<Q: Clone + std::str::FromStr<Err = String>>(
        &mut self,
        name: &Located<kiln_spec::StepName>,
        field: &str,
        value: &kiln_spec::Templated<Q>,
        span: Span,
        items: &[Option<Value>],
        in_fan_out: bool,
        params: &BTreeMap<String, Value>,
    ) -> bool {
        let kiln_spec::Templated::Template(text) = value else {
            return true;
        };
        let segments = match template::parse(text) {
            Ok(segments) => segments,
            Err(e) => {
                self.error(
                    "kiln::plan::bad-template",
                    format!(
                        "step `{name}`: `{field}` is not a valid template: {}",
                        e.message
                    ),
                    span,
                );
                return false;
            }
        };
        let mut ok = true;
        for segment in &segments {
            let Segment::Ref { target, .. } = segment else {
                continue;
            };
            match target {
                TemplateRef::Param(p) if params.contains_key(p) => {}
                TemplateRef::Param(p) => {
                    let hint = did_you_mean(p, self.param_names());
                    self.error(
                        "kiln::plan::unknown-param",
                        format!(
                            "step `{name}`: `{field}` uses param `{p}`, which is not declared{hint}"
                        ),
                        span,
                    );
                    ok = false;
                }
                TemplateRef::Item | TemplateRef::ItemField(_) if self.in_dynamic => {
                    self.error(
                        "kiln::plan::dynamic-fan-out",
                        format!(
                            "step `{name}`: `{field}` comes from the item, but the items are written by a step at run time; resources and timeouts are fixed when the run is planned"
                        ),
                        span,
                    )
                    .help = Some("use a param (`{{params.NAME}}`) or a fixed value".into());
                    ok = false;
                }
                TemplateRef::Item if in_fan_out => {}
                other => {
                    self.error(
                        "kiln::plan::bad-template",
                        format!(
                            "step `{name}`: `{field}` can use `{{{{params.NAME}}}}`{}, not `{{{{{other}}}}}`",
                            if in_fan_out { " and `{{item}}`" } else { "" }
                        ),
                        span,
                    );
                    ok = false;
                }
            }
        }
        if !ok {
            return false;
        }
        for item in items {
            if let Err(e) = value.resolve(|t| substitute(t, params, item.as_ref())) {
                let of_item = match item {
                    Some(item) => format!(" (item `{}`)", item.to_template_string()),
                    None => String::new(),
                };
                self.error(
                    "kiln::plan::bad-quantity",
                    format!("step `{name}`: `{field}`{of_item}: {e}"),
                    span,
                );
                return false;
            }
        }
        true
    }

    /// `secrets` belong to container steps, and a variable is either a secret or plain `env`.
    fn check_secrets(&mut self, name: &Located<kiln_spec::StepName>, step: &Located<Step>) {
        let Some((first, _)) = step.secrets.first() else {
            return;
        };
        let Some(container) = &step.container else {
            let d = self.error(
                "kiln::plan::secrets-on-wasm",
                format!("step `{name}` is a wasm step; `secrets` reach container steps only"),
                first.span,
            );
            d.label = Some("secrets start here".into());
            d.help = Some(
                "a wasm step's result is cached and replayed from its inputs alone, and a secret is not one; read the secret in a container step"
                    .into(),
            );
            return;
        };
        for var in step.secrets.keys() {
            let var_name = &var.0;
            if container.env.contains_key(var) {
                let d = self.error(
                    "kiln::plan::secret-env-clash",
                    format!(
                        "step `{name}` sets `{var_name}` both in `container.env` and in `secrets`"
                    ),
                    var.span,
                );
                d.label = Some("the secret".into());
                d.help = Some(format!(
                    "remove `{var_name}` from `container.env`, or read the secret in another variable"
                ));
            }
            if var_name.starts_with("KILN_") {
                self.error(
                    "kiln::plan::reserved-env",
                    format!("step `{name}` puts a secret in `{var_name}`; variables starting with `KILN_` are kiln's"),
                    var.span,
                );
            }
        }
    }

    /// The top-level `concurrency` limits: more than 0, and used by some step.
    fn check_limits(&mut self) {
        for (group, limit) in &self.pipeline.concurrency {
            if limit.value == 0 {
                self.error(
                    "kiln::plan::concurrency-zero",
                    format!("limit `{group}` is 0, so none of its steps could run"),
                    limit.span,
                )
                .help = Some("give at least 1".into());
            }
            let used = self.pipeline.steps.values().any(|s| {
                s.concurrency
                    .as_ref()
                    .is_some_and(|c| c.as_str() == group.as_str())
            });
            if !used {
                self.warn(
                    "kiln::plan::unused-concurrency",
                    format!("limit `{group}` is declared, but no step counts against it"),
                    group.span,
                )
                .help = Some(format!(
                    "add `concurrency: {group}` to the steps it should limit"
                ));
            }
        }
    }

    /// `parallelism` is for fan-out steps and more than 0; `concurrency` names a declared
    /// limit.
    fn check_concurrency(&mut self, name: &Located<kiln_spec::StepName>, step: &Located<Step>) {
        if let Some(parallelism) = &step.parallelism {
            if parallelism.value == 0 {
                self.error(
                    "kiln::plan::parallelism",
                    format!(
                        "step `{name}` has `parallelism: 0`, so none of its instances could run"
                    ),
                    parallelism.span,
                )
                .help = Some("give at least 1 (1 runs the instances one after another)".into());
            } else if step.for_each.is_none() {
                self.warn(
                    "kiln::plan::parallelism",
                    format!(
                        "step `{name}` has `parallelism` but no `for_each`: it runs once anyway"
                    ),
                    parallelism.span,
                )
                .help =
                    Some("`parallelism` limits how many instances of a fan-out run at once".into());
            }
        }
        if let Some(group) = &step.concurrency
            && !self
                .pipeline
                .concurrency
                .keys()
                .any(|k| k.as_str() == group.as_str())
        {
            let declared = self.pipeline.concurrency.keys().map(|k| k.as_str());
            let hint = did_you_mean(group.as_str(), declared);
            self.error(
                "kiln::plan::unknown-concurrency",
                format!(
                    "step `{name}` counts against `{group}`, which is not a declared limit{hint}"
                ),
                group.span,
            )
            .help = Some(format!(
                "declare it at the top of the file: `concurrency: {{{group}: 2}}` (the most of \
                 its steps running at once)"
            ));
        }
    }

    /// A retry policy's numbers make sense and `on` names failure kinds that a retry can
    /// get past.
    fn check_retry_policy(
        &mut self,
        name: &Located<kiln_spec::StepName>,
        policy: &kiln_spec::RetryPolicy,
    ) {
        if let Some(factor) = &policy.factor
            && !(factor.is_finite() && (1.0..=100.0).contains(&factor.value))
        {
            self.error(
                "kiln::plan::retry-factor",
                format!(
                    "step `{name}` has a retry `factor` of {}; it must be from 1 to 100",
                    factor.value
                ),
                factor.span,
            )
            .help = Some("1 waits the same every time, 2 doubles each wait".into());
        }
        if let (Some(first), Some(most)) = (&policy.backoff, &policy.max_backoff)
            && most.value < first.value
        {
            self.error(
                "kiln::plan::retry-backoff",
                format!(
                    "step `{name}` waits {} before its first retry, more than its \
                     `max_backoff` of {}",
                    first.value, most.value
                ),
                most.span,
            )
            .label = Some("shorter than `backoff`".into());
        }
        for kind in &policy.on {
            let k = kind.trim();
            if RETRYABLE_KINDS.contains(&k) {
                continue;
            }
            let (message, help) = if DETERMINISTIC_KINDS.contains(&k) {
                (
                    format!(
                        "step `{name}` retries on `{k}`, which is never retried: the same \
                         component and inputs fail the same way every time"
                    ),
                    "remove it; a retry cannot get past it".to_owned(),
                )
            } else {
                (
                    format!(
                        "step `{name}` retries on `{k}`, which is not a kind of failure{}",
                        did_you_mean(k, RETRYABLE_KINDS.iter().copied())
                    ),
                    format!("one of: {}", RETRYABLE_KINDS.join(", ")),
                )
            };
            self.error("kiln::plan::retry-on", message, kind.span).help = Some(help);
        }
    }

    /// A wasm step's own command line: `args` and `env` templates as for a container,
    /// `stdin: inputs.NAME` and `stdout: outputs.NAME` naming what the step declares. On a
    /// container step they are refused: its `args` and `env` go under `container:`.
    fn check_command_line(
        &mut self,
        name: &Located<kiln_spec::StepName>,
        step: &Located<Step>,
        in_fan_out: bool,
        params: &BTreeMap<String, Value>,
    ) {
        if step.container.is_some() {
            let misplaced = [
                step.args.as_ref().map(|a| ("args", a.span)),
                step.env.keys().next().map(|k| ("env", k.span)),
                step.stdin.as_ref().map(|s| ("stdin", s.span)),
                step.stdout.as_ref().map(|s| ("stdout", s.span)),
            ];
            for (field, span) in misplaced.into_iter().flatten() {
                let help = match field {
                    "args" | "env" => format!("move it under `container:` (`container.{field}`)"),
                    _ => "a container step reads its inputs and writes its outputs as files \
                          (`{{inputs.NAME}}`, `{{outputs.NAME}}` in `container.args`)"
                        .to_owned(),
                };
                self.error(
                    "kiln::plan::command-line-on-container",
                    format!(
                        "step `{name}` is a container step; `{field}` here applies to wasm steps only"
                    ),
                    span,
                )
                .help = Some(help);
            }
            return;
        }
        if let (Some(_), Some((key, _))) = (&step.args, step.with.first()) {
            self.warn(
                "kiln::plan::with-and-args",
                format!(
                    "step `{name}` has its own `args`: the program gets exactly those, so its \
                     `with:` values do not reach it"
                ),
                key.span,
            )
            .help = Some(
                "put the value in `args` (a pipeline param as `{{params.NAME}}`), or remove \
                 `with:`"
                    .into(),
            );
        }
        let inputs: BTreeSet<&str> = step.inputs.keys().map(|k| k.as_str()).collect();
        let outputs: BTreeSet<&str> = step.outputs.iter().map(|k| k.as_str()).collect();
        let args = step.args.iter().flat_map(|a| a.value.iter());
        for text in args.chain(step.env.values()) {
            self.check_template(
                name,
                text,
                TemplateSite::Container,
                in_fan_out,
                params,
                (&inputs, &outputs),
            );
        }
        for (field, scope, stream, declared) in [
            ("stdin", "inputs", &step.stdin, &inputs),
            ("stdout", "outputs", &step.stdout, &outputs),
        ] {
            let Some(stream) = stream else { continue };
            let kind = &scope[..scope.len() - 1];
            let wanted = stream
                .trim()
                .strip_prefix(scope)
                .and_then(|rest| rest.strip_prefix('.'));
            match wanted {
                Some(artifact) if declared.contains(artifact) => {}
                Some(artifact) => {
                    let hint = did_you_mean(artifact, declared.iter().copied());
                    self.error(
                        if kind == "input" {
                            "kiln::plan::unknown-input"
                        } else {
                            "kiln::plan::unknown-output"
                        },
                        format!("step `{name}` sends `{field}` to {scope}.{artifact}, but it has no {kind} `{artifact}`{hint}"),
                        stream.span,
                    )
                    .help = Some(format!("declare it under `{scope}:`"));
                }
                None => {
                    let example = declared.iter().next().copied().unwrap_or("NAME");
                    self.error(
                        "kiln::plan::bad-stream",
                        format!("step `{name}` has `{field}: {}`; expected `{scope}.NAME`, one of the step's {scope}", stream.value),
                        stream.span,
                    )
                    .help = Some(format!("write `{field}: {scope}.{example}`"));
                }
            }
        }
    }

    /// `for_each: "{{steps.STEP.OUTPUT}}"`: a list one step writes, expanded when it exists.
    fn check_dynamic_for_each(
        &mut self,
        i: usize,
        name: &Located<kiln_spec::StepName>,
        step: &Located<Step>,
        producer: &str,
        output: &str,
        span: Span,
    ) {
        let what = format!("step `{name}` fans out over `steps.{producer}.{output}`");
        let Some(&j) = self.index.get(producer) else {
            let hint = self.step_hint(producer);
            self.error(
                "kiln::plan::unknown-step",
                format!("{what}, but there is no step `{producer}`{hint}"),
                span,
            );
            return;
        };
        if j == i {
            self.error(
                "kiln::plan::cycle",
                format!("{what}: a step cannot fan out over its own output"),
                span,
            );
            return;
        }
        let producing = &self.pipeline.steps[j];
        if producing.pipeline.is_some() {
            self.error(
                "kiln::plan::dynamic-fan-out",
                format!("{what}, but `{producer}` is a sub-pipeline; fan out over an output of one of its steps is not supported yet"),
                span,
            )
            .help = Some(format!("give `{producer}`'s sub-pipeline an output written by a plain step, and read the list in a step of this file"));
            return;
        }
        if !producing.outputs.iter().any(|o| o.as_str() == output) {
            let hint = did_you_mean(output, producing.outputs.iter().map(|o| o.as_str()));
            self.error(
                "kiln::plan::unknown-output",
                format!("{what}, but `{producer}` has no output `{output}`{hint}"),
                span,
            )
            .help = Some(format!(
                "`{producer}` must declare the output and write a JSON list to it"
            ));
            return;
        }
        if producing.for_each.is_some() {
            self.error(
                "kiln::plan::dynamic-fan-out",
                format!("{what}, but `{producer}` is itself a fan-out step: fanning out over every instance's list is not supported yet"),
                span,
            )
            .help = Some("collect the lists in one step that writes a single JSON list, and fan out over that step's output".into());
            return;
        }
        if run_when(producing).is_finally() && !run_when(step).is_finally() {
            self.error(
                "kiln::plan::reads-finally",
                format!("{what}, but `{producer}` runs after every other step (`run: always` or `on-failure`)"),
                span,
            );
            return;
        }
        if step.pipeline.is_some() {
            self.error(
                "kiln::plan::dynamic-fan-out",
                format!("step `{name}` includes a sub-pipeline for each item of a list written at run time; a sub-pipeline can fan out over a list written in the pipeline or a param, not yet over a step's output"),
                span,
            );
            return;
        }
        self.graph.add_edge(j, i);
        self.consumers[j] += 1;
        self.consumed.insert((j, output.to_owned()));
        self.dynamic[i] = Some((j, output.to_owned()));
    }

    /// `nested: FIELD` needs a fan-out over a list a step writes, and a field name.
    fn check_nested(&mut self, i: usize, name: &Located<kiln_spec::StepName>, step: &Step) {
        let Some(field) = &step.nested else {
            return;
        };
        let ok_name = !field.is_empty()
            && field
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !ok_name {
            self.error(
                "kiln::plan::nested",
                format!(
                    "step `{name}` has `nested: {}`, which is not a field name",
                    field.value
                ),
                field.span,
            )
            .help = Some(
                "name the field of each item that holds its inner list: `nested: seeds`".into(),
            );
        } else if self.dynamic[i].is_none() && step.for_each.is_some() {
            self.error(
                "kiln::plan::nested",
                format!("step `{name}` has `nested: {}`, but its `for_each` is not a list a step writes", field.value),
                field.span,
            )
            .help = Some(format!("a nested fan-out takes each item's `{}` from a list written at run time: `for_each: \"{{{{steps.STEP.OUTPUT}}}}\"`; for a list written here, list the combinations", field.value));
        } else if step.for_each.is_none() {
            self.error(
                "kiln::plan::nested",
                format!("step `{name}` has `nested: {}` but no `for_each`", field.value),
                field.span,
            )
            .help = Some("add `for_each: \"{{steps.STEP.OUTPUT}}\"` over a list of objects, each with the inner list".into());
        }
    }

    fn check_for_each(
        &mut self,
        i: usize,
        name: &Located<kiln_spec::StepName>,
        step: &Located<Step>,
        params: &BTreeMap<String, Value>,
    ) -> Option<Vec<Value>> {
        let for_each = step.for_each.as_ref()?;
        let items = match &for_each.value {
            ForEach::Items(items) => items.clone(),
            ForEach::Template(text) => match template::whole_ref(text) {
                Some(TemplateRef::Param(param)) => match self.pipeline.params.get(param.as_str()) {
                    None => {
                        let hint = did_you_mean(&param, self.param_names());
                        self.error(
                            "kiln::plan::unknown-param",
                            format!("step `{name}` fans out over `params.{param}`, which is not a param{hint}"),
                            for_each.span,
                        );
                        return None;
                    }
                    Some(decl) if !decl.ty.is_list() => {
                        self.error(
                            "kiln::plan::fan-out-not-list",
                            format!(
                                "step `{name}` fans out over `params.{param}`, which is {}, not a list",
                                with_article(decl.ty.value)
                            ),
                            for_each.span,
                        )
                        .help = Some(format!(
                            "declare `{param}` with a list type such as `list[{}]`",
                            decl.ty.value
                        ));
                        return None;
                    }
                    Some(_) => match params.get(param.as_str()) {
                        Some(Value::List(items)) => items.clone(),
                        _ => return None,
                    },
                },
                Some(TemplateRef::StepOutput {
                    step: producer,
                    output,
                }) => {
                    self.check_dynamic_for_each(i, name, step, &producer, &output, for_each.span);
                    return None;
                }
                _ => {
                    self.error(
                        "kiln::plan::fan-out-not-list",
                        format!("step `{name}` has `for_each: {text}`, which is not a list"),
                        for_each.span,
                    )
                    .help = Some("write a list (`[0.1, 0.01]`), name a list param (`\"{{params.learning_rates}}\"`) or a step's output holding a JSON list (`\"{{steps.list_shards.shards}}\"`)".into());
                    return None;
                }
            },
        };
        if items.is_empty() {
            self.warn(
                "kiln::plan::empty-fan-out",
                format!("step `{name}` fans out over an empty list and will not run"),
                for_each.span,
            );
        }
        if items.len() > MAX_FAN_OUT {
            self.error(
                "kiln::plan::fan-out-too-large",
                format!(
                    "step `{name}` fans out to {} instances; the most is {MAX_FAN_OUT}",
                    items.len()
                ),
                for_each.span,
            );
            return None;
        }
        let nested: Vec<String> = items
            .iter()
            .enumerate()
            .filter(|(_, item)| matches!(item, Value::List(_)))
            .map(|(k, _)| k.to_string())
            .collect();
        if !nested.is_empty() {
            let which = match nested.as_slice() {
                [one] => format!("item {one} is a list"),
                [first @ .., last] => format!("items {} and {last} are lists", first.join(", ")),
                [] => unreachable!("not empty"),
            };
            self.error(
                "kiln::plan::fan-out-item",
                format!("step `{name}` fans out over lists: {which}; items must be single values"),
                for_each.span,
            )
            .help = Some(
                "fan out over one list of values, and pass what does not vary in `with`".into(),
            );
        }
        Some(items)
    }

    fn check_component(&mut self, name: &Located<kiln_spec::StepName>, wasm: &Located<WasmRef>) {
        match &wasm.value {
            WasmRef::Path(path) => {
                if let Some(rel) = self.workspace_path(name, path, wasm.span)
                    && !self.options.base_dir.join(&rel).is_file()
                {
                    let hint = self.near_path(path, &rel, |p| p.is_file());
                    self.error(
                        "kiln::plan::missing-component",
                        format!("step `{name}` uses component `{path}`, which does not exist{hint}"),
                        wasm.span,
                    )
                    .help = Some("build it first, or write `wasm: {source: FOLDER, command: BUILD COMMAND, artifact: FILE.wasm}` so kiln builds it".into());
                }
            }
            WasmRef::Build(build) => {
                let source = &build.source;
                if let Some(rel) = self.workspace_path(name, source, source.span)
                    && !self.options.base_dir.join(&rel).is_dir()
                {
                    let hint = self.near_path(source, &rel, |p| p.is_dir());
                    self.error(
                        "kiln::plan::missing-source",
                        format!(
                            "step `{name}` builds from `{}`, which is not a folder{hint}",
                            source.value
                        ),
                        source.span,
                    )
                    .help = Some("`source` is the folder the build command runs in, relative to the pipeline file".into());
                }
                let artifact = &build.artifact;
                if !artifact.ends_with(".wasm") {
                    self.error(
                        "kiln::plan::bad-artifact",
                        format!(
                            "step `{name}` names build artifact `{}`; it must be a `.wasm` file",
                            artifact.value
                        ),
                        artifact.span,
                    )
                    .help = Some("name the component file the build writes, like `target/wasm32-wasip2/release/step.wasm`".into());
                } else if Path::new(artifact.as_str()).is_absolute() {
                    self.error(
                        "kiln::plan::bad-artifact",
                        format!(
                            "step `{name}` names build artifact `{}`, an absolute path",
                            artifact.value
                        ),
                        artifact.span,
                    )
                    .help = Some("write the artifact relative to the `source` folder".into());
                }
                if build.command.trim().is_empty() {
                    self.error(
                        "kiln::plan::empty-build-command",
                        format!("step `{name}` has an empty build `command`"),
                        build.command.span,
                    )
                    .help = Some("write the shell command that builds the component, like `cargo build --release --target wasm32-wasip2`".into());
                }
                if let Some(publish) = &build.publish {
                    let checked = publish
                        .split_once('@')
                        .ok_or_else(|| "it is not NAME@VERSION".to_owned())
                        .and_then(|(component, version)| {
                            kiln_spec::check_component_name(component)?;
                            kiln_spec::check_component_version(version)
                        });
                    if let Err(why) = checked {
                        self.error(
                            "kiln::plan::bad-publish",
                            format!(
                                "step `{name}` publishes as `{}`: {why}",
                                publish.value
                            ),
                            publish.span,
                        )
                        .help = Some("write the registry name and a version, like `validate@1.2.0` (versions never change; tags are given to `kiln push --tag`)".into());
                    }
                }
            }
            WasmRef::Registry { .. } | WasmRef::Digest(_) => {}
        }
    }

    /// ` (did you mean `...`?)` with a file beside a missing one whose name is close.
    fn near_path(&self, written: &str, rel: &str, fits: impl Fn(&Path) -> bool) -> String {
        let rel = Path::new(rel);
        let (Some(parent), Some(wanted)) = (rel.parent(), rel.file_name().and_then(|f| f.to_str()))
        else {
            return String::new();
        };
        let folder = self.options.base_dir.join(parent);
        let Ok(entries) = std::fs::read_dir(&folder) else {
            return String::new();
        };
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .filter(|e| fits(&e.path()))
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        let Some(found) = kiln_spec::suggest::closest(wanted, names.iter().map(String::as_str))
        else {
            return String::new();
        };
        let trimmed = written.trim_end_matches('/');
        let prefix = trimmed.rfind('/').map_or("", |i| &trimmed[..=i]);
        format!(" (did you mean `{prefix}{found}`?)")
    }

    /// Normalises a workspace path; `None` (with an error) when it leaves the pipeline folder.
    fn workspace_path(
        &mut self,
        step: &Located<kiln_spec::StepName>,
        path: &str,
        span: Span,
    ) -> Option<String> {
        match normalise(path) {
            Some(rel) => Some(rel),
            None => {
                self.error(
                    "kiln::plan::path-escapes",
                    format!("step `{step}` reads `{path}`, which is outside the pipeline's folder"),
                    span,
                )
                .help = Some("steps read only files under the folder of the pipeline file: move or copy the file there".into());
                None
            }
        }
    }

    fn check_input(
        &mut self,
        i: usize,
        name: &Located<kiln_spec::StepName>,
        input_name: &Located<kiln_spec::ArtifactName>,
        input: &Located<InputRef>,
        _params: &BTreeMap<String, Value>,
    ) {
        match &input.value {
            InputRef::StepOutput { step, output } => {
                let Some(&j) = self.index.get(step.as_str()) else {
                    let hint = self.step_hint(step);
                    let d = self.error(
                        "kiln::plan::unknown-step",
                        format!("step `{name}` reads `{step}.{output}`, but there is no step `{step}`{hint}"),
                        input.span,
                    );
                    if hint.is_empty() {
                        d.help = Some(format!("to read a file, write a path: `./{step}.{output}`"));
                    }
                    return;
                };
                let producer = &self.pipeline.steps[j];
                if producer.pipeline.is_some() {
                    self.check_sub_output(i, name, j, step, output, input.span);
                    return;
                }
                if !producer.outputs.iter().any(|o| o.as_str() == output) {
                    let hint = did_you_mean(output, producer.outputs.iter().map(|o| o.as_str()));
                    let mut outputs: Vec<&str> = Vec::new();
                    for o in &producer.outputs {
                        if !outputs.contains(&o.as_str()) {
                            outputs.push(o.as_str());
                        }
                    }
                    let d = self.error(
                        "kiln::plan::unknown-output",
                        format!("step `{name}` reads `{step}.{output}`, but `{step}` has no output `{output}`{hint}"),
                        input.span,
                    );
                    d.help = Some(if outputs.is_empty() {
                        format!(
                            "`{step}` declares no outputs; add `outputs: [{output}]` to it, or write `./{step}.{output}` to read a file"
                        )
                    } else {
                        format!("`{step}` declares: {}", outputs.join(", "))
                    });
                    return;
                }
                let producer = &self.pipeline.steps[j];
                if run_when(producer).is_finally()
                    && !run_when(&self.pipeline.steps[i]).is_finally()
                {
                    self.error(
                        "kiln::plan::reads-finally",
                        format!("step `{name}` reads `{step}.{output}`, but `{step}` runs after every other step (`run: always` or `on-failure`)"),
                        input.span,
                    )
                    .help = Some(format!("give `{name}` a `run:` of its own, or read something `{step}` reads instead"));
                    return;
                }
                self.graph.add_edge(j, i);
                self.consumers[j] += 1;
                self.consumed.insert((j, output.clone()));
            }
            InputRef::Input(declared) => {
                if !self
                    .pipeline
                    .inputs
                    .iter()
                    .any(|n| n.as_str() == declared.as_str())
                {
                    let hint =
                        did_you_mean(declared, self.pipeline.inputs.iter().map(|n| n.as_str()));
                    self.error(
                        "kiln::plan::unknown-input",
                        format!("step `{name}` reads `inputs.{declared}`, but the pipeline declares no input `{declared}`{hint}"),
                        input.span,
                    )
                    .help = Some(if self.pipeline.inputs.is_empty() {
                        format!("a sub-pipeline declares what it reads at its top level: `inputs: [{declared}]`")
                    } else {
                        format!(
                            "declared inputs: {}",
                            self.pipeline.inputs.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(", ")
                        )
                    });
                }
            }
            InputRef::RunStatus => {
                let step = &self.pipeline.steps[i];
                if !run_when(step).is_finally() {
                    self.error(
                        "kiln::plan::run-status",
                        format!("step `{name}` reads `run.status`, but it runs only when what it reads succeeded"),
                        input.span,
                    )
                    .help = Some("give the step `run: always` or `run: on-failure`: it then runs after every other step and can read how they ended".into());
                }
            }
            InputRef::Param(param) => {
                if !self.pipeline.params.contains_key(param.as_str()) {
                    let hint = did_you_mean(param, self.param_names());
                    self.error(
                        "kiln::plan::unknown-param",
                        format!("input `{input_name}` of step `{name}` reads `params.{param}`, which is not a param{hint}"),
                        input.span,
                    );
                }
            }
            InputRef::Path(path) => {
                if let Some(rel) = self.workspace_path(name, path, input.span)
                    && !self.options.base_dir.join(&rel).exists()
                {
                    let hint = self.near_path(path, &rel, |p| p.exists());
                    self.error(
                        "kiln::plan::missing-file",
                        format!("input `{input_name}` of step `{name}` reads `{path}`, which does not exist{hint}"),
                        input.span,
                    )
                    .help = Some("paths are relative to the folder of the pipeline file".into());
                }
            }
            // Fetched when the run is pinned: whether it exists is not known before.
            InputRef::External(_) => {}
        }
    }

    fn check_value_templates(
        &mut self,
        name: &Located<kiln_spec::StepName>,
        key: &str,
        value: &Located<Value>,
        in_fan_out: bool,
        params: &BTreeMap<String, Value>,
    ) {
        let mut strings = Vec::new();
        collect_strings(&value.value, &mut strings);
        let empty = BTreeSet::new();
        for s in strings {
            let located = Located::new(s.clone(), value.span);
            self.check_template_in(
                name,
                &located,
                TemplateSite::With,
                in_fan_out,
                params,
                (&empty, &empty),
                Some(key),
            );
        }
    }

    fn check_template(
        &mut self,
        name: &Located<kiln_spec::StepName>,
        text: &Located<String>,
        site: TemplateSite,
        in_fan_out: bool,
        params: &BTreeMap<String, Value>,
        artifacts: (&BTreeSet<&str>, &BTreeSet<&str>),
    ) {
        self.check_template_in(name, text, site, in_fan_out, params, artifacts, None);
    }

    #[allow(clippy::too_many_arguments)]
    fn check_template_in(
        &mut self,
        name: &Located<kiln_spec::StepName>,
        text: &Located<String>,
        site: TemplateSite,
        in_fan_out: bool,
        _params: &BTreeMap<String, Value>,
        (inputs, outputs): (&BTreeSet<&str>, &BTreeSet<&str>),
        with_key: Option<&str>,
    ) {
        // Every reference that cannot be parsed is reported, and the others are still checked.
        let (segments, errors) = template::parse_all(text);
        let first = self.diagnostics.len();
        // Where in the string the template is that each diagnostic is about.
        let mut offsets = Vec::new();
        for e in errors {
            self.error(
                "kiln::plan::bad-template",
                format!("step `{name}`: {}", e.message),
                text.span,
            );
            offsets.push(e.offset);
        }
        let place = match (site, with_key) {
            (TemplateSite::With, Some(key)) => format!("`with.{key}`"),
            (TemplateSite::Image, _) => "the image".to_owned(),
            (TemplateSite::CacheKey, _) => "`cache.key`".to_owned(),
            _ => "a container field".to_owned(),
        };
        for segment in segments {
            let Segment::Ref { target, offset } = segment else {
                continue;
            };
            match &target {
                TemplateRef::Param(p) => {
                    if !self.pipeline.params.contains_key(p.as_str()) {
                        let hint = did_you_mean(p, self.param_names());
                        self.error(
                            "kiln::plan::unknown-param",
                            format!("step `{name}` uses `{{{{params.{p}}}}}`, but there is no param `{p}`{hint}"),
                            text.span,
                        );
                    }
                }
                TemplateRef::Item => {
                    if !in_fan_out {
                        self.error(
                            "kiln::plan::item-outside-fan-out",
                            format!("step `{name}` uses `{{{{item}}}}` but has no `for_each`"),
                            text.span,
                        )
                        .help = Some("`{{item}}` is the current item of a fan-out step: add `for_each` or remove it".into());
                    }
                }
                TemplateRef::ItemField(field) => {
                    if !in_fan_out {
                        self.error(
                            "kiln::plan::item-outside-fan-out",
                            format!(
                                "step `{name}` uses `{{{{item.{field}}}}}` but has no `for_each`"
                            ),
                            text.span,
                        );
                    } else if !self.in_dynamic {
                        self.error(
                            "kiln::plan::item-field",
                            format!("step `{name}` uses `{{{{item.{field}}}}}`, but its items are single values"),
                            text.span,
                        )
                        .help = Some("`{{item.NAME}}` reads a field of an object in a list a step writes (`for_each: \"{{steps.STEP.OUTPUT}}\"`); here write `{{item}}`".into());
                    }
                }
                TemplateRef::StepOutput { .. } | TemplateRef::FirstOf { .. } => {
                    if matches!(site, TemplateSite::Image | TemplateSite::CacheKey) {
                        self.error(
                            "kiln::plan::step-template",
                            format!("step `{name}` uses `{{{{{target}}}}}` in {place}; a step's output can be read in `args`, `env`, `command`, `with` and `for_each`"),
                            text.span,
                        )
                        .help = Some("these are fixed when the run is planned: use a param (`{{params.NAME}}`)".into());
                    } else {
                        for (step, output) in target.step_outputs() {
                            if !self.check_value_ref(name, step, output, text.span) {
                                break;
                            }
                        }
                    }
                }
                TemplateRef::Input(n) | TemplateRef::Output(n) => {
                    let is_input = matches!(target, TemplateRef::Input(_));
                    let scope = if is_input { "inputs" } else { "outputs" };
                    let declared = if is_input { inputs } else { outputs };
                    if site != TemplateSite::Container {
                        self.error(
                            "kiln::plan::path-template",
                            format!("step `{name}` uses `{{{{{scope}.{n}}}}}` in {place}; paths can only be templated into container `command`, `args` and `env`, and a wasm step's `args` and `env`"),
                            text.span,
                        );
                    } else if !declared.contains(n.as_str()) {
                        let hint = did_you_mean(n, declared.iter().copied());
                        let kind = if is_input { "input" } else { "output" };
                        self.error(
                            if is_input { "kiln::plan::unknown-input" } else { "kiln::plan::unknown-output" },
                            format!("step `{name}` uses `{{{{{scope}.{n}}}}}`, but it has no {kind} `{n}`{hint}"),
                            text.span,
                        )
                        .help = Some(format!("declare it under `{scope}:`"));
                    }
                }
            }
            // A reference makes at most one diagnostic.
            offsets.resize(self.diagnostics.len() - first, offset);
        }
        // One string with several bad templates: point at each, so that each is told apart.
        if offsets.len() > 1 {
            for (d, offset) in self.diagnostics[first..].iter_mut().zip(offsets) {
                d.span = Some(template_span(text, offset));
            }
        }
    }

    /// A template reading `{{steps.STEP.OUTPUT}}` into step `name`: the step exists, writes
    /// that output once (not per fan-out item), and runs before `name`. Whether it does.
    fn check_value_ref(
        &mut self,
        name: &Located<kiln_spec::StepName>,
        step: &str,
        output: &str,
        span: Span,
    ) -> bool {
        let i = self.index[name.as_str()];
        let Some(&j) = self.index.get(step) else {
            let hint = self.step_hint(step);
            self.error(
                "kiln::plan::unknown-step",
                format!("step `{name}` uses `{{{{steps.{step}.{output}}}}}`, but there is no step `{step}`{hint}"),
                span,
            );
            return false;
        };
        if i == j {
            self.error(
                "kiln::plan::self-value",
                format!("step `{name}` uses `{{{{steps.{step}.{output}}}}}`, its own output: it is not written before the step runs"),
                span,
            )
            .help = Some(format!("to use the file, write `{{{{outputs.{output}}}}}`"));
            return false;
        }
        let producer = &self.pipeline.steps[j];
        if producer.for_each.is_some() {
            self.error(
                "kiln::plan::fan-out-value",
                format!("step `{name}` uses `{{{{steps.{step}.{output}}}}}`, but `{step}` fans out: it writes one `{output}` per item, not one value"),
                span,
            )
            .help = Some(format!("read them all as an input (a folder with one entry per item): `inputs: {{{output}: {step}.{output}}}`"));
            return false;
        }
        if producer.pipeline.is_some() {
            let collected = self.subs[j].as_ref().is_some_and(|sub| {
                match sub.pipeline.outputs.get(output).map(|t| &t.value) {
                    Some(InputRef::StepOutput { step, .. }) => sub
                        .pipeline
                        .steps
                        .get(step.as_str())
                        .is_some_and(|s| s.for_each.is_some() || s.pipeline.is_some()),
                    _ => false,
                }
            });
            if collected {
                self.error(
                    "kiln::plan::fan-out-value",
                    format!("step `{name}` uses `{{{{steps.{step}.{output}}}}}`, but sub-pipeline `{step}` collects `{output}` from several steps: it is a folder, not one value"),
                    span,
                )
                .help = Some(format!("read it as an input: `inputs: {{{output}: {step}.{output}}}`"));
                return false;
            }
            let before = self.diagnostics.len();
            self.check_sub_output(i, name, j, step, output, span);
            return self.diagnostics.len() == before;
        }
        if !producer.outputs.iter().any(|o| o.as_str() == output) {
            let hint = did_you_mean(output, producer.outputs.iter().map(|o| o.as_str()));
            let declared: Vec<&str> = producer.outputs.iter().map(|o| o.as_str()).collect();
            self.error(
                "kiln::plan::unknown-output",
                format!("step `{name}` uses `{{{{steps.{step}.{output}}}}}`, but `{step}` has no output `{output}`{hint}"),
                span,
            )
            .help = Some(if declared.is_empty() {
                format!("`{step}` declares no outputs; add `outputs: [{output}]` to it")
            } else {
                format!("`{step}` declares: {}", declared.join(", "))
            });
            return false;
        }
        if run_when(producer).is_finally() && !run_when(&self.pipeline.steps[i]).is_finally() {
            self.error(
                "kiln::plan::reads-finally",
                format!("step `{name}` uses `{{{{steps.{step}.{output}}}}}`, but `{step}` runs after every other step (`run: always` or `on-failure`)"),
                span,
            );
            return false;
        }
        self.graph.add_edge(j, i);
        self.consumers[j] += 1;
        self.consumed.insert((j, output.to_owned()));
        true
    }

    fn check_when(
        &mut self,
        i: usize,
        name: &Located<kiln_spec::StepName>,
        condition: &Located<String>,
        in_fan_out: bool,
        params: &BTreeMap<String, Value>,
    ) {
        let refs = match when::analyze(condition) {
            Ok(x) => {
                self.when_refs[i] = Some(x.clone());
                x
            }
            Err(e) => {
                let span = match e.offset {
                    Some(offset) => inner_span(condition, offset),
                    None => condition.span,
                };
                let d = self.error(
                    "kiln::plan::bad-when",
                    format!(
                        "step `{name}`'s `when` is not a valid CEL expression: {}",
                        e.message
                    ),
                    span,
                );
                if span != condition.span {
                    d.label = Some("here".into());
                }
                d.help = Some(
                    "a condition reads like `params.epochs > 3 && steps.validate.report.ok`".into(),
                );
                return;
            }
        };
        let mut ok = true;
        for root in &refs.unknown_roots {
            ok = false;
            let hint = if self.pipeline.params.contains_key(root.as_str()) {
                format!(" (did you mean `params.{root}`?)")
            } else if self.index.contains_key(root.as_str()) {
                format!(" (did you mean `steps.{root}.OUTPUT`?)")
            } else {
                did_you_mean(root, ["params", "steps", "item"])
            };
            self.error(
                "kiln::plan::bad-when",
                format!("step `{name}`'s `when` reads `{root}`, which a condition cannot read{hint}"),
                condition.span,
            )
            .help = Some("a condition reads `params.NAME`, `steps.STEP.OUTPUT` (a small JSON output), and `item` in a step with `for_each`".into());
        }
        if refs.bare_params {
            ok = false;
            self.error(
                "kiln::plan::bad-when",
                format!("step `{name}`'s `when` uses `params` without a name"),
                condition.span,
            )
            .help = Some("write `params.NAME`".into());
        }
        for step in &refs.steps_without_output {
            ok = false;
            let (code, message, help) = match step
                .as_deref()
                .map(|s| (s, self.index.get(s).copied()))
            {
                None => (
                    "kiln::plan::bad-when",
                    format!("step `{name}`'s `when` uses `steps` without a step and an output"),
                    "write `steps.STEP.OUTPUT`, like `steps.validate.report.ok`".to_owned(),
                ),
                Some((s, Some(j))) => {
                    let outputs: Vec<&str> = self.pipeline.steps[j]
                        .outputs
                        .iter()
                        .map(|o| o.as_str())
                        .collect();
                    let help = match outputs.as_slice() {
                        [] => format!(
                            "`{s}` declares no outputs: add one and read `steps.{s}.OUTPUT`"
                        ),
                        [one] => format!("write `steps.{s}.{one}`"),
                        many => format!(
                            "write `steps.{s}.OUTPUT`; `{s}` declares: {}",
                            many.join(", ")
                        ),
                    };
                    (
                        "kiln::plan::bad-when",
                        format!(
                            "step `{name}`'s `when` reads `steps.{s}` without naming an output"
                        ),
                        help,
                    )
                }
                Some((s, None)) => {
                    let hint = self.step_hint(s);
                    // `steps.flip-coin.result` reads as `steps.flip - coin.result`.
                    let dashed = self
                        .step_names()
                        .find(|n| n.strip_prefix(s).is_some_and(|rest| rest.starts_with('-')));
                    let help = match dashed {
                        Some(full) => format!(
                            "in a condition `-` is a subtraction: write `steps[\"{full}\"].OUTPUT` for step `{full}`"
                        ),
                        None => "write `steps.STEP.OUTPUT`".to_owned(),
                    };
                    (
                        "kiln::plan::unknown-step",
                        format!(
                            "step `{name}`'s `when` reads `steps.{s}`, but there is no step `{s}`{hint}"
                        ),
                        help,
                    )
                }
            };
            self.error(code, message, condition.span).help = Some(help);
        }
        for p in &refs.params {
            if !self.pipeline.params.contains_key(p.as_str()) {
                ok = false;
                let hint = did_you_mean(p, self.param_names());
                self.error(
                    "kiln::plan::unknown-param",
                    format!(
                        "step `{name}`'s `when` reads `params.{p}`, which is not a param{hint}"
                    ),
                    condition.span,
                );
            }
        }
        for (s, o) in &refs.steps {
            let Some(&j) = self.index.get(s.as_str()) else {
                ok = false;
                let hint = self.step_hint(s);
                self.error(
                    "kiln::plan::unknown-step",
                    format!("step `{name}`'s `when` reads `steps.{s}.{o}`, but there is no step `{s}`{hint}"),
                    condition.span,
                );
                continue;
            };
            let producer = &self.pipeline.steps[j];
            if producer.pipeline.is_some() {
                ok = false;
                self.error(
                    "kiln::plan::when-reads-sub-pipeline",
                    format!(
                        "step `{name}`'s `when` reads `steps.{s}.{o}`, but `{s}` is a sub-pipeline"
                    ),
                    condition.span,
                )
                .help = Some(format!(
                    "a condition reads the outputs of plain steps; in the sub-pipeline, give the step that writes `{o}` the condition instead"
                ));
                continue;
            }
            if !producer.outputs.iter().any(|x| x.as_str() == o) {
                ok = false;
                let hint = did_you_mean(o, producer.outputs.iter().map(|x| x.as_str()));
                self.error(
                    "kiln::plan::unknown-output",
                    format!("step `{name}`'s `when` reads `steps.{s}.{o}`, but `{s}` has no output `{o}`{hint}"),
                    condition.span,
                );
                continue;
            }
            self.graph.add_edge(j, i);
            self.consumers[j] += 1;
            self.consumed.insert((j, o.clone()));
        }
        if refs.uses_item && !in_fan_out {
            ok = false;
            self.error(
                "kiln::plan::item-outside-fan-out",
                format!("step `{name}`'s `when` uses `item` but the step has no `for_each`"),
                condition.span,
            )
            .help = Some(
                "`item` is the current item of a fan-out step: add `for_each` or remove it".into(),
            );
        }
        // A param without a value (a required one not set) was reported where it is set.
        let valued = refs.params.iter().all(|p| params.contains_key(p.as_str()));
        if ok && valued && refs.steps.is_empty() && !refs.uses_item {
            match when::evaluate_static(condition, params) {
                Ok(Some(false)) => {
                    self.warn(
                        "kiln::plan::unreachable",
                        format!("step `{name}` never runs with these params: its `when` is false"),
                        condition.span,
                    );
                }
                Ok(_) => {}
                Err(e) => {
                    self.error(
                        "kiln::plan::bad-when",
                        format!("step `{name}`'s `when` {e}"),
                        condition.span,
                    );
                }
            }
        }
    }

    fn check_cycles(&mut self) {
        let names: Vec<&str> = self.step_names().collect();
        for cycle in self.graph.cycles() {
            let chain: Vec<&str> = cycle.iter().map(|&i| names[i]).collect();
            let first = self
                .pipeline
                .steps
                .get_index(cycle[0])
                .expect("index from graph")
                .0;
            let message = if cycle.len() == 2 {
                format!("cycle: step `{}` depends on itself", chain[0])
            } else {
                format!("cycle: {}", chain.join(" -> "))
            };
            self.error("kiln::plan::cycle", message, first.span).help =
                Some("a pipeline is a DAG: remove one of these inputs, `after` entries or `when` references".into());
        }
    }

    fn warn_unused(&mut self) {
        // With errors, the graph is missing edges, and its shape says little.
        if self.diagnostics.iter().any(Diagnostic::is_error) {
            return;
        }
        let several = self.pipeline.steps.len() > 1;
        // An exit handler waits for every other step: with one, no step stands alone.
        let any_finally = self
            .pipeline
            .steps
            .values()
            .any(|s| run_when(s).is_finally());
        for (i, (name, step)) in self.pipeline.steps.iter().enumerate() {
            if several && !any_finally && !self.graph.is_connected(i) {
                self.warn(
                    "kiln::plan::disconnected",
                    format!("step `{name}` is not connected to any other step"),
                    name.span,
                )
                .help = Some("if that is on purpose, ignore this; otherwise read one of its outputs or add `after`".into());
            }
            if self.consumers[i] == 0 || step.pipeline.is_some() {
                continue;
            }
            for output in &step.outputs {
                if !self.consumed.contains(&(i, output.to_string())) {
                    self.warn(
                        "kiln::plan::unused-output",
                        format!("output `{output}` of step `{name}` is never read"),
                        output.span,
                    );
                }
            }
        }
    }

    fn expand(&self, params: BTreeMap<String, Value>) -> (Plan, BTreeMap<String, InputSource>) {
        let order = self.graph.topological_order();
        let ns = &self.scope.namespace;
        let mut ids: Vec<Vec<StepId>> = self
            .pipeline
            .steps
            .keys()
            .enumerate()
            .map(|(i, name)| match &self.fan_out[i] {
                Some(items) => (0..items.len())
                    .map(|k| StepId::new(format!("{ns}{}", StepId::instance(name.as_str(), k))))
                    .collect(),
                None => vec![StepId::new(format!("{ns}{name}"))],
            })
            .collect();
        let mut inlined: Vec<Vec<Inlined>> = (0..ids.len()).map(|_| Vec::new()).collect();
        let mut concurrency: BTreeMap<String, u32> = self
            .pipeline
            .concurrency
            .iter()
            .map(|(k, v)| (format!("{ns}{k}"), v.value))
            .collect();
        // Sub-pipelines first, in topological order: a step reads what their steps write,
        // and an exit handler waits for all of them.
        for &i in &order {
            if self.subs[i].is_none() {
                continue;
            }
            for (k, id) in ids[i].clone().iter().enumerate() {
                let inl = self.expand_include(i, k, id, &ids, &inlined, &params);
                concurrency.extend(inl.concurrency.clone());
                inlined[i].push(inl);
            }
            ids[i] = inlined[i]
                .iter()
                .flat_map(|inl| inl.ids.iter().cloned())
                .collect();
        }
        let mut steps = Vec::with_capacity(ids.iter().map(Vec::len).sum());
        for i in order {
            let (name, step) = self.pipeline.steps.get_index(i).expect("index from graph");
            if self.subs[i].is_some() {
                for inl in &mut inlined[i] {
                    steps.append(&mut inl.steps);
                }
                continue;
            }
            let instances: Vec<Option<(usize, Value)>> = match &self.fan_out[i] {
                Some(items) => items.iter().cloned().enumerate().map(Some).collect(),
                None => vec![None],
            };
            let labels = match &self.fan_out[i] {
                Some(items) => {
                    fan_out_labels(&format!("{ns}{name}"), self.fan_out_var(step), items)
                }
                None => Vec::new(),
            };
            for instance in instances {
                let label = instance.as_ref().and_then(|(k, _)| labels.get(*k).cloned());
                let mut planned =
                    self.plan_step(i, name.as_str(), step, instance, &ids, &inlined, &params);
                if let Some(instance) = &mut planned.instance {
                    instance.label = label;
                }
                steps.push(planned);
            }
        }
        let mut outputs = BTreeMap::new();
        for (name, target) in &self.pipeline.outputs {
            let mut ignored = BTreeSet::new();
            let source =
                self.resolve_input(None, &target.value, &ids, &inlined, &params, &mut ignored);
            outputs.insert(name.to_string(), source);
        }
        let exports = self.planned_exports(&ids, &inlined, &params);
        let plan = Plan {
            plan_version: PLAN_VERSION,
            pipeline: self.pipeline.name.to_string(),
            params,
            steps,
            concurrency,
            timeout_ms: self
                .pipeline
                .timeout
                .as_ref()
                .map(|t| t.0.as_millis().min(u64::MAX as u128) as u64),
            exports,
        };
        (plan, outputs)
    }

    /// Instance `k` (id `id`) of sub-pipeline step `i`, planned: its sub-pipeline compiled
    /// with its params and inputs, each step's id under `id/`.
    fn expand_include(
        &self,
        i: usize,
        k: usize,
        id: &StepId,
        ids: &[Vec<StepId>],
        inlined: &[Vec<Inlined>],
        params: &BTreeMap<String, Value>,
    ) -> Inlined {
        let sub = self.subs[i].as_ref().expect("a sub-pipeline step");
        let (name, step) = self.pipeline.steps.get_index(i).expect("index");
        let item = self.fan_out[i].as_ref().map(|items| &items[k]);
        let instance = item.map(|_| k);
        let (values, _) = self.sub_values(name, step, sub, params, item);
        let mut bindings = BTreeMap::new();
        for (input_name, input) in &step.inputs {
            let mut deps = BTreeSet::new();
            let source = self.resolve_input(
                Some((i, instance)),
                &input.value,
                ids,
                inlined,
                params,
                &mut deps,
            );
            bindings.insert(input_name.to_string(), (source, deps));
        }
        let mut extra = BTreeSet::new();
        // `on:` is refused on an include when checked: every `after` here waits for success.
        let mut unused = BTreeMap::new();
        self.after_deps(i, instance, step, ids, inlined, &mut extra, &mut unused);
        if let Some(refs) = &self.when_refs[i] {
            for (s, o) in &refs.steps {
                let r = InputRef::StepOutput {
                    step: s.clone(),
                    output: o.clone(),
                };
                self.resolve_input(Some((i, instance)), &r, ids, inlined, params, &mut extra);
            }
        }
        let scope = self.sub_scope(sub, values, format!("{id}/"), Some(bindings));
        let options = PlanOptions {
            base_dir: self.options.base_dir.join(&sub.dir),
            overrides: Vec::new(),
        };
        let (compiled, outputs) = compile_here(&sub.pipeline, &options, &scope);
        debug_assert!(compiled.plan.is_some(), "a sub-pipeline that checked plans");
        let plan = compiled.plan.unwrap_or_else(|| Plan {
            plan_version: PLAN_VERSION,
            pipeline: String::new(),
            params: BTreeMap::new(),
            steps: Vec::new(),
            concurrency: BTreeMap::new(),
            timeout_ms: None,
            exports: Vec::new(),
        });
        let mut steps = plan.steps;
        for planned in &mut steps {
            planned.depends_on.extend(extra.iter().cloned());
            planned.depends_on.sort();
            planned.depends_on.dedup();
            if let Some(condition) = &step.when {
                planned.when = Some(condition.to_string());
                planned.when_scope = self.scope.is_sub().then(|| WhenScope {
                    namespace: self.scope.namespace.clone(),
                    params: params.clone(),
                });
            }
        }
        Inlined {
            ids: steps.iter().map(|s| s.id.clone()).collect(),
            steps,
            outputs,
            concurrency: plan.concurrency,
        }
    }

    /// Where input `input` of consumer `consumer` (a step and its instance; `None` for a
    /// sub-pipeline's declared output) comes from; the ids it waits for go to `depends_on`.
    fn resolve_input(
        &self,
        consumer: Option<(usize, Option<usize>)>,
        input: &InputRef,
        ids: &[Vec<StepId>],
        inlined: &[Vec<Inlined>],
        params: &BTreeMap<String, Value>,
        depends_on: &mut BTreeSet<StepId>,
    ) -> InputSource {
        let ns = &self.scope.namespace;
        match input {
            InputRef::StepOutput { step, output } => {
                let j = self.index[step.as_str()];
                let paired_instance = consumer
                    .filter(|(c, _)| self.paired(*c, j))
                    .and_then(|(_, k)| k);
                if self.subs[j].is_some() {
                    let of = |k: usize| inlined[j][k].outputs[output.as_str()].clone();
                    let source = match (&self.fan_out[j], paired_instance) {
                        (None, _) => of(0),
                        (Some(_), Some(k)) => of(k),
                        (Some(_), None) => {
                            let mut inner = String::new();
                            let instances = (0..inlined[j].len())
                                .filter_map(|k| match of(k) {
                                    InputSource::Step { step, output } => {
                                        inner = output;
                                        Some(step)
                                    }
                                    _ => None,
                                })
                                .collect();
                            InputSource::Collect {
                                step: format!("{ns}{step}"),
                                output: inner,
                                instances,
                            }
                        }
                    };
                    match &source {
                        InputSource::Step { step, .. } => {
                            depends_on.insert(step.clone());
                        }
                        InputSource::Collect { instances, .. } => {
                            depends_on.extend(instances.iter().cloned());
                        }
                        _ => {}
                    }
                    return source;
                }
                if self.dynamic[j].is_some() {
                    // Instances exist once the list does: the engine points this input at them.
                    depends_on.insert(ids[j][0].clone());
                    let paired = consumer
                        .is_some_and(|(c, _)| self.dynamic[c].is_some() && self.paired(c, j));
                    return if paired {
                        InputSource::Step {
                            step: ids[j][0].clone(),
                            output: output.to_owned(),
                        }
                    } else {
                        InputSource::Collect {
                            step: format!("{ns}{step}"),
                            output: output.to_owned(),
                            instances: Vec::new(),
                        }
                    };
                }
                if self.fan_out[j].is_none() {
                    depends_on.insert(ids[j][0].clone());
                    InputSource::Step {
                        step: ids[j][0].clone(),
                        output: output.to_owned(),
                    }
                } else if let Some(k) = paired_instance {
                    depends_on.insert(ids[j][k].clone());
                    InputSource::Step {
                        step: ids[j][k].clone(),
                        output: output.to_owned(),
                    }
                } else {
                    depends_on.extend(ids[j].iter().cloned());
                    InputSource::Collect {
                        step: format!("{ns}{step}"),
                        output: output.to_owned(),
                        instances: ids[j].clone(),
                    }
                }
            }
            InputRef::Param(p) => InputSource::Param {
                name: p.clone(),
                value: params[p.as_str()].clone(),
            },
            InputRef::Path(p) => InputSource::Workspace {
                path: self.scope.rebase(normalise(p).expect("checked")),
            },
            InputRef::RunStatus => InputSource::RunStatus,
            InputRef::External(url) => InputSource::External { url: url.clone() },
            InputRef::Input(name) => {
                let (source, deps) = &self
                    .scope
                    .bindings
                    .as_ref()
                    .expect("a sub-pipeline is expanded with its bindings")[name.as_str()];
                depends_on.extend(deps.iter().cloned());
                source.clone()
            }
        }
    }

    /// The ids step `i` (instance `instance`) waits for through `after`.
    #[allow(clippy::too_many_arguments)]
    fn after_deps(
        &self,
        i: usize,
        instance: Option<usize>,
        step: &Step,
        ids: &[Vec<StepId>],
        inlined: &[Vec<Inlined>],
        depends_on: &mut BTreeSet<StepId>,
        after_on: &mut BTreeMap<StepId, kiln_spec::AfterOn>,
    ) {
        for after in &step.after {
            let j = self.index[after.as_str()];
            let waited: Vec<StepId> = match instance.filter(|_| self.paired(i, j)) {
                Some(k) if self.subs[j].is_some() => inlined[j][k].ids.clone(),
                Some(k) => vec![ids[j][k].clone()],
                None => ids[j].clone(),
            };
            if after.on() != kiln_spec::AfterOn::Success {
                for id in &waited {
                    after_on.insert(id.clone(), after.on());
                }
            }
            depends_on.extend(waited);
        }
    }

    /// Whether consumer `c` pairs instance by instance with fan-out producer `p`.
    fn paired(&self, c: usize, p: usize) -> bool {
        let (Some(cf), Some(pf)) = (
            &self.pipeline.steps[c].for_each,
            &self.pipeline.steps[p].for_each,
        ) else {
            return false;
        };
        // A nested fan-out has other instances than the same list without it.
        let nested = |k: usize| {
            self.pipeline.steps[k]
                .nested
                .as_ref()
                .map(|n| n.value.as_str())
        };
        if nested(c) != nested(p) {
            return false;
        }
        match (&cf.value, &pf.value) {
            // `{{params.lr}}` and `{{ params.lr }}` name the same list.
            (ForEach::Template(a), ForEach::Template(b)) => {
                a == b || template::whole_ref(a).is_some_and(|r| Some(r) == template::whole_ref(b))
            }
            (a, b) => a == b,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn plan_step(
        &self,
        i: usize,
        name: &str,
        step: &Step,
        instance: Option<(usize, Value)>,
        ids: &[Vec<StepId>],
        inlined: &[Vec<Inlined>],
        params: &BTreeMap<String, Value>,
    ) -> PlannedStep {
        let item = instance.as_ref().map(|(_, v)| v);
        let k = instance.as_ref().map(|(k, _)| *k);
        let id = ids[i][k.unwrap_or(0)].clone();
        let mut depends_on = BTreeSet::new();
        let mut inputs = BTreeMap::new();
        for (input_name, input) in &step.inputs {
            let source = self.resolve_input(
                Some((i, k)),
                &input.value,
                ids,
                inlined,
                params,
                &mut depends_on,
            );
            inputs.insert(input_name.to_string(), source);
        }
        // An exit handler waits for every step that is not one.
        if run_when(step).is_finally() {
            for (j, other) in self.pipeline.steps.values().enumerate() {
                if !run_when(other).is_finally() {
                    depends_on.extend(ids[j].iter().cloned());
                }
            }
        }
        let mut after_on = BTreeMap::new();
        self.after_deps(i, k, step, ids, inlined, &mut depends_on, &mut after_on);
        let for_each = self.dynamic[i].as_ref().map(|(j, output)| {
            depends_on.insert(ids[*j][0].clone());
            DynamicList {
                step: ids[*j][0].clone(),
                output: output.clone(),
                nested: step.nested.as_ref().map(|n| n.value.clone()),
            }
        });
        if let Some(refs) = &self.when_refs[i] {
            for (s, o) in &refs.steps {
                let r = InputRef::StepOutput {
                    step: s.clone(),
                    output: o.clone(),
                };
                self.resolve_input(Some((i, k)), &r, ids, inlined, params, &mut depends_on);
            }
        }

        let (values, optional) =
            self.plan_values(i, k, step, ids, inlined, params, &mut depends_on);

        let with: BTreeMap<String, Value> = step
            .with
            .iter()
            .map(|(k, v)| (k.to_string(), substitute_value(&v.value, params, item)))
            .collect();
        let outputs: Vec<String> = step.outputs.iter().map(|o| o.to_string()).collect();
        let output_files: BTreeMap<String, String> = step
            .outputs
            .files()
            .filter(|(name, file)| *name != file.0)
            .map(|(name, file)| (name.to_owned(), file.0.clone()))
            .collect();
        let metrics = step.metrics.as_ref().map(|m| m.to_string());
        let command_line = {
            let text = |s: &str| substitute(s, params, item);
            let stream = |s: &Option<Located<String>>| {
                s.as_ref()
                    .and_then(|s| s.trim().split_once('.').map(|(_, name)| name.to_owned()))
            };
            CommandLine {
                args: step
                    .args
                    .as_ref()
                    .map(|args| args.iter().map(|a| text(a)).collect()),
                env: step
                    .env
                    .iter()
                    .map(|(k, v)| (k.value.0.clone(), text(v)))
                    .collect(),
                stdin: stream(&step.stdin),
                stdout: stream(&step.stdout),
            }
        };
        let (kind, container_key) = match (&step.wasm, &step.container) {
            (Some(wasm), _) => (
                StepKind::Wasm {
                    component: component_source(&wasm.value, self.scope),
                    memory_bytes: step
                        .limits
                        .as_ref()
                        .and_then(|l| l.memory.as_ref())
                        .map(|m| m.bytes),
                    fuel: step
                        .limits
                        .as_ref()
                        .and_then(|l| l.fuel.as_ref())
                        .map(|f| f.value),
                    command: command_line.clone(),
                },
                None,
            ),
            (None, Some(c)) => {
                let text = |s: &str| substitute(s, params, item);
                let resources = c.resources.as_ref();
                let fill = |t: &str| substitute(t, params, item);
                let cpu = resources
                    .and_then(|r| r.cpu.as_ref())
                    .map_or((None, None), |a| resolve_amount(a, fill));
                let memory = resources
                    .and_then(|r| r.memory.as_ref())
                    .map_or((None, None), |a| resolve_amount(a, fill));
                let plan = ContainerPlan {
                    image: c.image.as_ref().map(|i| text(i)).unwrap_or_default(),
                    command: c.command.iter().map(|s| text(s)).collect(),
                    args: c.args.iter().map(|s| text(s)).collect(),
                    env: c
                        .env
                        .iter()
                        .map(|(k, v)| (k.value.0.clone(), text(v)))
                        .collect(),
                    cpu_millis: cpu.1.map(|c| c.millis),
                    cpu_request_millis: cpu.0.map(|c| c.millis),
                    memory_bytes: memory.1.map(|m| m.bytes),
                    memory_request_bytes: memory.0.map(|m| m.bytes),
                    gpu: resources
                        .and_then(|r| r.gpu.as_ref())
                        .map_or(0, |g| g.count()),
                    gpu_kind: resources
                        .and_then(|r| r.gpu.as_ref())
                        .and_then(|g| g.kind().map(str::to_owned)),
                    secrets: step
                        .secrets
                        .iter()
                        .map(|(var, secret)| {
                            (
                                var.value.0.clone(),
                                SecretRef {
                                    name: secret.name().to_string(),
                                    file: secret.form() == kiln_spec::SecretAs::File,
                                },
                            )
                        })
                        .collect(),
                };
                let key = ContainerKey {
                    image: plan.image.clone(),
                    command: plan.command.clone(),
                    args: plan.args.clone(),
                    env: plan.env.clone(),
                    secrets: plan.secrets.clone(),
                };
                (StepKind::Container(plan), Some(key))
            }
            (None, None) => unreachable!("step kind is checked before expansion"),
        };
        let cache_policy = step.cache.as_ref().and_then(|c| c.policy());
        let cache_key = CacheKeyMaterial {
            version: PLAN_VERSION,
            kind: if container_key.is_some() {
                "container"
            } else {
                "wasm"
            }
            .to_owned(),
            container: container_key,
            params: with.clone(),
            inputs: inputs.keys().cloned().collect(),
            outputs: {
                let mut o = outputs.clone();
                o.sort();
                o
            },
            output_files: output_files.clone(),
            metrics: metrics.clone(),
            command: (step.wasm.is_some() && !command_line.is_default()).then_some(command_line),
            key: cache_policy
                .and_then(|p| p.key.as_ref())
                .map(|k| substitute(k, params, item)),
        };
        let millis = |t: &kiln_spec::Templated<kiln_spec::HumanDuration>| {
            let d = t
                .resolve(|text| substitute(text, params, item))
                .expect("checked");
            d.0.as_millis().min(u64::MAX as u128) as u64
        };
        let timeout_ms = step.timeout.as_ref().map(|t| millis(t));
        let max_age_ms = cache_policy
            .and_then(|p| p.max_age.as_ref())
            .map(|t| millis(t));
        PlannedStep {
            id,
            step: format!("{}{name}", self.scope.namespace),
            instance: instance.map(|(index, item)| FanOutInstance {
                index,
                item,
                label: None,
            }),
            kind,
            inputs,
            outputs,
            output_files,
            metrics,
            params: with,
            depends_on: depends_on.into_iter().collect(),
            when: step.when.as_ref().map(|w| w.to_string()),
            when_scope: (self.scope.is_sub() && step.when.is_some()).then(|| WhenScope {
                namespace: self.scope.namespace.clone(),
                params: params.clone(),
            }),
            policy: Policy {
                retries: step.retries.as_ref().map_or(0, |r| r.limit()),
                run: run_when(step),
                parallelism: step.parallelism.as_ref().map(|p| p.value),
                concurrency: step
                    .concurrency
                    .as_ref()
                    .map(|c| format!("{}{c}", self.scope.namespace)),
                retry: match step.retries.as_ref().map(|r| &r.value) {
                    Some(kiln_spec::Retries::Policy(p)) => RetryPlan {
                        backoff_ms: p.backoff.as_ref().map(|d| d.0.as_millis() as u64),
                        factor: p.factor.as_ref().map(|f| f.value),
                        max_backoff_ms: p.max_backoff.as_ref().map(|d| d.0.as_millis() as u64),
                        on: p.on.iter().map(|k| k.trim().to_owned()).collect(),
                    },
                    _ => RetryPlan::default(),
                },
                timeout_ms,
                cache: step.cache.as_ref().is_none_or(|c| c.enabled()),
                max_age_ms,
            },
            cache_key,
            for_each,
            values,
            optional,
            after_on,
        }
    }

    /// The small outputs step `i` (instance `k`) reads in its templates, and the steps it
    /// waits for only through a template with a fallback (`??`): a skip of those does not
    /// skip it. The others join `depends_on`.
    #[allow(clippy::too_many_arguments)]
    fn plan_values(
        &self,
        i: usize,
        k: Option<usize>,
        step: &Step,
        ids: &[Vec<StepId>],
        inlined: &[Vec<Inlined>],
        params: &BTreeMap<String, Value>,
        depends_on: &mut BTreeSet<StepId>,
    ) -> (Vec<OutputValue>, Vec<StepId>) {
        let mut texts: Vec<&String> = Vec::new();
        for v in step.with.values() {
            collect_strings(&v.value, &mut texts);
        }
        texts.extend(
            step.args
                .iter()
                .flat_map(|a| a.value.iter().map(|s| &s.value)),
        );
        texts.extend(step.env.values().map(|v| &v.value));
        if let Some(c) = &step.container {
            texts.extend(c.command.iter().chain(&c.args).map(|s| &s.value));
            texts.extend(c.env.values().map(|v| &v.value));
        }
        let mut values = BTreeMap::new();
        let mut optional = BTreeSet::new();
        for text in texts {
            let Ok(segments) = template::parse(text) else {
                continue;
            };
            for segment in segments {
                let Segment::Ref { target, .. } = segment else {
                    continue;
                };
                let read = target.step_outputs();
                let key = target.to_string();
                if read.is_empty() || values.contains_key(&key) {
                    continue;
                }
                let default = match &target {
                    TemplateRef::FirstOf {
                        default: Some(d), ..
                    } => Some(serde_json::from_str(d).expect("checked when parsed")),
                    _ => None,
                };
                let fallback = default.is_some() || read.len() > 1;
                let mut from = Vec::new();
                for (s, o) in read {
                    let r = InputRef::StepOutput {
                        step: s.to_owned(),
                        output: o.to_owned(),
                    };
                    let mut deps = BTreeSet::new();
                    if let InputSource::Step { step, output } =
                        self.resolve_input(Some((i, k)), &r, ids, inlined, params, &mut deps)
                    {
                        from.push(ValueSource { step, output });
                    }
                    if fallback {
                        optional.extend(deps);
                    } else {
                        depends_on.extend(deps);
                    }
                }
                values.insert(
                    key.clone(),
                    OutputValue {
                        template: key,
                        from,
                        default,
                    },
                );
            }
        }
        let optional: Vec<StepId> = optional
            .into_iter()
            .filter(|d| !depends_on.contains(d))
            .collect();
        depends_on.extend(optional.iter().cloned());
        (values.into_values().collect(), optional)
    }
}

/// An amount's `(request, limit)`, templates filled in (checked before): one value is the
/// limit, and the request is then the same (`None`).
fn resolve_amount<Q: Clone + std::str::FromStr<Err = String>>(
    amount: &kiln_spec::Amount<Q>,
    fill: impl Fn(&str) -> String,
) -> (Option<Q>, Option<Q>) {
    let resolve = |t: &kiln_spec::Templated<Q>| t.resolve(&fill).expect("checked");
    match amount {
        kiln_spec::Amount::One(one) => (None, Some(resolve(one))),
        kiln_spec::Amount::Range { request, limit } => (
            request.as_ref().map(|r| resolve(r)),
            limit.as_ref().map(|l| resolve(l)),
        ),
    }
}

fn component_source(wasm: &WasmRef, scope: &Scope) -> ComponentSource {
    match wasm {
        WasmRef::Path(p) => ComponentSource::Path {
            path: scope.rebase(normalise(p).unwrap_or_else(|| p.clone())),
        },
        WasmRef::Registry { name, version } => ComponentSource::Registry {
            name: name.clone(),
            version: version.clone(),
        },
        WasmRef::Digest(d) => ComponentSource::Digest { digest: d.clone() },
        WasmRef::Build(b) => ComponentSource::Build {
            source: scope.rebase(normalise(&b.source).unwrap_or_else(|| b.source.value.clone())),
            command: b.command.value.clone(),
            artifact: b.artifact.value.clone(),
            watch: b.watch.iter().map(|w| w.value.clone()).collect(),
            publish: b.publish.as_ref().map(|p| p.value.clone()),
        },
    }
}

/// "an int", "a list[float]".
pub(crate) fn with_article(ty: ParamType) -> String {
    let name = ty.to_string();
    if name.starts_with('i') {
        format!("an {name}")
    } else {
        format!("a {name}")
    }
}

/// An example value of a type, for help texts.
fn example_of(ty: ParamType) -> &'static str {
    use kiln_spec::ScalarType;
    match ty {
        ParamType::Scalar(ScalarType::String) => "text",
        ParamType::Scalar(ScalarType::Int) => "3",
        ParamType::Scalar(ScalarType::Float) => "0.5",
        ParamType::Scalar(ScalarType::Bool) => "true",
        ParamType::List(ScalarType::String) => "a,b",
        ParamType::List(ScalarType::Int) => "1,2,3",
        ParamType::List(ScalarType::Float) => "0.1,0.01",
        ParamType::List(ScalarType::Bool) => "true,false",
    }
}

/// The span of the template that starts at byte `offset` of a string value, when the value is
/// written as it is (a plain scalar, or a quoted one without escapes); otherwise the whole value.
fn template_span(value: &Located<String>, offset: usize) -> Span {
    let start = inner_span(value, offset);
    if start == value.span {
        return start;
    }
    let width = value[offset..]
        .find("}}")
        .map_or(value.len() - offset, |end| end + 2);
    Span::new(start.offset, width)
}

/// The span of byte `offset` of a string value, when the value is written as it is (a plain
/// scalar, or a quoted one without escapes); otherwise the whole value.
fn inner_span(value: &Located<String>, offset: usize) -> Span {
    let span = value.span;
    let len = value.len();
    if value.contains('\n') || offset > len {
        return span;
    }
    let width = value[offset..].chars().next().map_or(0, char::len_utf8);
    if span.len == len {
        Span::new(span.offset + offset, width)
    } else if span.len == len + 2 {
        Span::new(span.offset + 1 + offset, width)
    } else {
        span
    }
}

fn collect_strings<'v>(value: &'v Value, out: &mut Vec<&'v String>) {
    match value {
        Value::String(s) => out.push(s),
        Value::List(items) => items.iter().for_each(|v| collect_strings(v, out)),
        _ => {}
    }
}

/// Replaces `{{params.*}}` and `{{item}}`; path templates stay for the executor.
fn substitute(text: &str, params: &BTreeMap<String, Value>, item: Option<&Value>) -> String {
    let Ok(segments) = template::parse(text) else {
        return text.to_owned();
    };
    let mut out = String::new();
    for segment in segments {
        match segment {
            Segment::Text(t) => out.push_str(&t),
            Segment::Ref { target, .. } => match (&target, item) {
                (TemplateRef::Param(p), _) if params.contains_key(p) => {
                    out.push_str(&params[p].to_template_string());
                }
                (TemplateRef::Item, Some(item)) => out.push_str(&item.to_template_string()),
                _ => out.push_str(&format!("{{{{{target}}}}}")),
            },
        }
    }
    out
}

/// Like [`substitute`], but a value that is exactly one template keeps the referenced type.
fn substitute_value(
    value: &Value,
    params: &BTreeMap<String, Value>,
    item: Option<&Value>,
) -> Value {
    match value {
        Value::String(s) => match template::whole_ref(s) {
            Some(TemplateRef::Param(p)) if params.contains_key(&p) => params[&p].clone(),
            Some(TemplateRef::Item) if item.is_some() => item.cloned().expect("checked"),
            _ => Value::String(substitute(s, params, item)),
        },
        Value::List(items) => Value::List(
            items
                .iter()
                .map(|v| substitute_value(v, params, item))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// A relative path without `.` or `..`, or `None` when it climbs out of its base.
fn normalise(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for component in Path::new(path).components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::Normal(p) => parts.push(p.to_str()?),
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    if parts.is_empty() {
        Some(".".to_owned())
    } else {
        Some(parts.join("/"))
    }
}

impl Checker<'_> {
    /// What names a fan-out step's item in its labels: what the step feeds it to, or else
    /// what a step fanning out over the same list feeds it to (`evaluate[lr=0.1]` pairs with
    /// `train[lr=0.1]`).
    fn fan_out_var(&self, step: &Step) -> Option<String> {
        item_var(step).or_else(|| {
            let same = |other: &Step| match (&step.for_each, &other.for_each) {
                (Some(a), Some(b)) => match (&a.value, &b.value) {
                    (ForEach::Items(x), ForEach::Items(y)) => x == y,
                    (ForEach::Template(x), ForEach::Template(y)) => {
                        template::whole_ref(x) == template::whole_ref(y)
                    }
                    _ => false,
                },
                _ => false,
            };
            self.pipeline
                .steps
                .values()
                .filter(|other| same(other))
                .find_map(|other| item_var(other))
        })
    }
}

/// The `with` key, env variable or `--flag` a fan-out step feeds `{{item}}` to.
fn item_var(step: &Step) -> Option<String> {
    let is_item = |text: &str| matches!(template::whole_ref(text), Some(TemplateRef::Item));
    let flag = |arg: &str| {
        let flag = arg.strip_prefix("--")?;
        (!flag.is_empty()
            && flag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        .then(|| flag.to_owned())
    };
    step.with
        .iter()
        .find(|(_, v)| matches!(&v.value, Value::String(t) if is_item(t)))
        .map(|(k, _)| k.to_string())
        .or_else(|| {
            let container = step.container.as_ref()?;
            container
                .env
                .iter()
                .find(|(_, v)| is_item(v))
                .map(|(k, _)| k.value.0.clone())
                .or_else(|| {
                    container.args.iter().enumerate().find_map(|(k, arg)| {
                        if let Some((f, value)) = arg.split_once('=')
                            && is_item(value)
                        {
                            return flag(f);
                        }
                        if is_item(arg) && k > 0 {
                            return flag(&container.args[k - 1]);
                        }
                        None
                    })
                })
        })
}

/// Labels of a fan-out step's instances, such as `train[lr=0.1]`: the item, named by `var`.
/// Empty (the ids are used) when an item is too long to read in a table or two items would
/// read the same.
fn fan_out_labels(name: &str, var: Option<String>, items: &[Value]) -> Vec<String> {
    const MAX_ITEM_LEN: usize = 32;
    let mut labels = Vec::with_capacity(items.len());
    let mut seen = BTreeSet::new();
    for (k, item) in items.iter().enumerate() {
        let text = match item {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let readable = !text.is_empty()
            && text.len() <= MAX_ITEM_LEN
            && text
                .chars()
                .all(|c| c.is_alphanumeric() || "._-+:/@%".contains(c));
        // `train[1]` for the item 1 at index 0 would read as another instance's id.
        let reads_as_other_id = var.is_none() && text.parse::<usize>().is_ok_and(|n| n != k);
        if !readable || reads_as_other_id || !seen.insert(text.clone()) {
            return Vec::new();
        }
        labels.push(match &var {
            Some(var) => format!("{name}[{var}={text}]"),
            None => format!("{name}[{text}]"),
        });
    }
    labels
}

/// When `step` runs (`run:`), `on-success` when it does not say.
fn run_when(step: &Step) -> kiln_spec::RunWhen {
    step.run.as_ref().map(|r| r.value).unwrap_or_default()
}

/// Fields that a `pipeline:` step cannot have: what runs, and how, is the sub-pipeline's.
const NOT_ON_INCLUDE: &[&str] = &[
    "args",
    "env",
    "stdin",
    "stdout",
    "secrets",
    "outputs",
    "metrics",
    "parallelism",
    "concurrency",
    "run",
    "retries",
    "timeout",
    "cache",
    "limits",
];

impl<'a> Checker<'a> {
    /// A sub-pipeline's top-level `inputs` and `outputs`: outputs name steps' outputs, and a
    /// pipeline with inputs runs only as a sub-pipeline.
    fn check_declarations(&mut self) {
        if !self.scope.is_sub()
            && let Some(first) = self.pipeline.inputs.first()
        {
            self.error(
                "kiln::plan::sub-pipeline-only",
                format!(
                    "pipeline `{}` declares inputs, so it runs only as a sub-pipeline",
                    self.pipeline.name
                ),
                first.span,
            )
            .help = Some("run a pipeline that includes it with `pipeline: ./FILE.yaml` and binds its `inputs`".into());
        }
        if self.scope.is_sub()
            && let Some(timeout) = &self.pipeline.timeout
        {
            self.error(
                "kiln::plan::field-on-sub-pipeline",
                format!(
                    "pipeline `{}` is included as a sub-pipeline; its `timeout` does not apply",
                    self.pipeline.name
                ),
                timeout.span,
            )
            .help = Some("a run has one `timeout`: set it in the pipeline that is run".into());
        }
        let mut seen = BTreeSet::new();
        for input in &self.pipeline.inputs {
            if !seen.insert(input.as_str()) {
                self.error(
                    "kiln::plan::duplicate-input",
                    format!("input `{input}` is declared twice"),
                    input.span,
                );
            }
        }
        for (name, target) in &self.pipeline.outputs {
            let InputRef::StepOutput { step, output } = &target.value else {
                self.error(
                    "kiln::plan::bad-sub-output",
                    format!("output `{name}` is `{}`; a pipeline's output is `STEP.OUTPUT`, an output of one of its steps", target.value),
                    target.span,
                );
                continue;
            };
            let Some(j) = self.pipeline.steps.get_index_of(step.as_str()) else {
                let hint = did_you_mean(step, self.step_names());
                self.error(
                    "kiln::plan::unknown-step",
                    format!(
                        "output `{name}` is `{step}.{output}`, but there is no step `{step}`{hint}"
                    ),
                    target.span,
                );
                continue;
            };
            let producer = &self.pipeline.steps[j];
            if producer.pipeline.is_some() {
                // Checked with the sub-pipeline it includes, once that is read.
                self.consumers[j] += 1;
                continue;
            }
            if !producer.outputs.iter().any(|o| o.as_str() == output) {
                let hint = did_you_mean(output, producer.outputs.iter().map(|o| o.as_str()));
                self.error(
                    "kiln::plan::unknown-output",
                    format!("output `{name}` is `{step}.{output}`, but `{step}` has no output `{output}`{hint}"),
                    target.span,
                );
                continue;
            }
            self.consumers[j] += 1;
            self.consumed.insert((j, output.clone()));
        }
    }

    /// Reads every sub-pipeline the steps include, before any step is checked: a step may
    /// read the outputs of one written below it.
    fn load_subs(&mut self) {
        for (i, (name, step)) in self.pipeline.steps.iter().enumerate() {
            if let Some(path) = &step.pipeline {
                self.subs[i] = self.load_sub(name, path);
            }
        }
        // A sub-pipeline's output that is another sub-pipeline's output: check it now.
        for (name, target) in &self.pipeline.outputs {
            let InputRef::StepOutput { step, output } = &target.value else {
                continue;
            };
            let Some(j) = self.pipeline.steps.get_index_of(step.as_str()) else {
                continue;
            };
            let Some(sub) = self.subs[j].clone() else {
                continue;
            };
            if !sub.pipeline.outputs.contains_key(output.as_str()) {
                let hint = did_you_mean(output, sub.pipeline.outputs.keys().map(|k| k.as_str()));
                self.error(
                    "kiln::plan::unknown-output",
                    format!("output `{name}` is `{step}.{output}`, but sub-pipeline `{step}` has no output `{output}`{hint}"),
                    target.span,
                );
            }
        }
    }

    fn load_sub(
        &mut self,
        name: &Located<kiln_spec::StepName>,
        path: &Located<String>,
    ) -> Option<Arc<Sub>> {
        let written = path.trim();
        if Path::new(written).is_absolute() {
            self.error(
                "kiln::plan::path-escapes",
                format!("step `{name}` includes `{written}`, an absolute path"),
                path.span,
            )
            .help = Some("write it relative to this pipeline file, like `./train.yaml`".into());
            return None;
        }
        let rel = self.workspace_path(name, written, path.span)?;
        let full = self.options.base_dir.join(&rel);
        if !full.is_file() {
            let hint = self.near_path(written, &rel, |p| p.is_file());
            self.error(
                "kiln::plan::missing-pipeline",
                format!("step `{name}` includes `{written}`, which does not exist{hint}"),
                path.span,
            )
            .help = Some("the path is relative to the folder of this pipeline file".into());
            return None;
        }
        let canonical = full.canonicalize().unwrap_or_else(|_| full.clone());
        if let Some(at) = self.scope.chain.iter().position(|p| *p == canonical) {
            let mut chain: Vec<String> = self.scope.chain[at..]
                .iter()
                .map(|p| {
                    p.file_name().map_or_else(
                        || p.display().to_string(),
                        |f| f.to_string_lossy().into_owned(),
                    )
                })
                .collect();
            chain.push(chain[0].clone());
            let message = if chain.len() == 2 {
                format!("step `{name}` includes `{written}`, the file it is in")
            } else {
                format!(
                    "step `{name}` includes `{written}`, which includes this file again: include cycle {}",
                    chain.join(" -> ")
                )
            };
            self.error("kiln::plan::include-cycle", message, path.span).help = Some(
                "sub-pipelines form a tree: a file cannot include itself, directly or through others"
                    .into(),
            );
            return None;
        }
        if let Some(cached) = self.sub_cache.get(&canonical) {
            return cached.clone();
        }
        let text = match std::fs::read_to_string(&full) {
            Ok(text) if text.len() <= kiln_spec::MAX_SOURCE_BYTES => text,
            Ok(_) => {
                self.error(
                    "kiln::plan::missing-pipeline",
                    format!("step `{name}` includes `{written}`, which is larger than 16 MiB"),
                    path.span,
                );
                return None;
            }
            Err(e) => {
                self.error(
                    "kiln::plan::missing-pipeline",
                    format!("step `{name}` includes `{written}`, which cannot be read: {e}"),
                    path.span,
                );
                return None;
            }
        };
        let file = Arc::new(SourceFile::new(rel.clone(), text));
        let dir = Path::new(&rel)
            .parent()
            .map(|d| d.to_string_lossy().into_owned())
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| ".".to_owned());
        let sub = match kiln_spec::parse_all(&file.text) {
            Ok(pipeline) => Some(Arc::new(Sub {
                file: file.clone(),
                path: canonical.clone(),
                dir,
                pipeline,
            })),
            Err(diagnostics) => {
                for d in diagnostics {
                    let d = d.included(&file, path.span, name.as_str());
                    self.diagnostics.push(d);
                }
                None
            }
        };
        self.sub_cache.insert(canonical, sub.clone());
        sub
    }

    /// A `pipeline:` step: no fields of a step that runs something, `with:` setting the
    /// sub-pipeline's params with the right types, `inputs:` binding exactly its inputs; and
    /// the sub-pipeline itself checked with those params, its errors in its own file.
    fn check_include(
        &mut self,
        i: usize,
        name: &'a Located<kiln_spec::StepName>,
        step: &'a Located<Step>,
        path: &Located<String>,
        params: &BTreeMap<String, Value>,
    ) {
        if step.wasm.is_some() || step.container.is_some() {
            let other = if step.wasm.is_some() {
                "wasm"
            } else {
                "container"
            };
            self.error(
                "kiln::plan::step-kind",
                format!("step `{name}` has both `pipeline` and `{other}`"),
                path.span,
            )
            .help =
                Some("a step runs one thing: keep one of them, or split it into two steps".into());
        }
        let present = [
            ("args", step.args.as_ref().map(|a| a.span)),
            ("env", step.env.keys().next().map(|k| k.span)),
            ("stdin", step.stdin.as_ref().map(|s| s.span)),
            ("stdout", step.stdout.as_ref().map(|s| s.span)),
            ("secrets", step.secrets.keys().next().map(|k| k.span)),
            ("outputs", step.outputs.first().map(|o| o.span)),
            ("metrics", step.metrics.as_ref().map(|m| m.span)),
            ("parallelism", step.parallelism.as_ref().map(|p| p.span)),
            ("concurrency", step.concurrency.as_ref().map(|c| c.span)),
            ("run", step.run.as_ref().map(|r| r.span)),
            ("retries", step.retries.as_ref().map(|r| r.span)),
            ("timeout", step.timeout.as_ref().map(|t| t.span)),
            ("cache", step.cache.as_ref().map(|c| c.span)),
            ("limits", step.limits.as_ref().map(|l| l.span)),
        ];
        debug_assert_eq!(present.len(), NOT_ON_INCLUDE.len());
        for (field, span) in present {
            let Some(span) = span else { continue };
            let help = if field == "outputs" {
                "a sub-pipeline's outputs are declared in its file (`outputs: {NAME: STEP.OUTPUT}`) and read here as `STEP.NAME`".to_owned()
            } else {
                format!("write `{field}` on the steps of the sub-pipeline")
            };
            self.error(
                "kiln::plan::field-on-sub-pipeline",
                format!("step `{name}` includes a sub-pipeline; `{field}` does not apply to it"),
                span,
            )
            .help = Some(help);
        }
        let Some(sub) = self.subs[i].clone() else {
            return;
        };
        let decls = &sub.pipeline.params;
        for key in step.with.keys() {
            if !decls.contains_key(key.as_str()) {
                let hint = did_you_mean(key.as_str(), decls.keys().map(|k| k.as_str()));
                let known: Vec<&str> = decls.keys().map(|k| k.as_str()).collect();
                self.error(
                    "kiln::plan::unknown-param",
                    format!(
                        "step `{name}` sets `{key}`, which is not a param of `{}`{hint}",
                        path.trim()
                    ),
                    key.span,
                )
                .help = Some(if known.is_empty() {
                    "the sub-pipeline declares no params".to_owned()
                } else {
                    format!("its params: {}", known.join(", "))
                });
            }
        }
        for (param, decl) in decls {
            if decl.default.is_none() && !step.with.contains_key(param.as_str()) {
                self.error(
                    "kiln::plan::missing-param",
                    format!(
                        "step `{name}` does not set `{param}`, a param of `{}` without a default",
                        path.trim()
                    ),
                    path.span,
                )
                .help = Some(format!(
                    "set it under `with:`, like `with: {{{param}: ...}}`"
                ));
            }
        }
        let declared: Vec<&str> = sub.pipeline.inputs.iter().map(|n| n.as_str()).collect();
        for key in step.inputs.keys() {
            if !declared.contains(&key.as_str()) {
                let hint = did_you_mean(key.as_str(), declared.iter().copied());
                self.error(
                    "kiln::plan::unknown-input",
                    format!(
                        "step `{name}` binds input `{key}`, which `{}` does not declare{hint}",
                        path.trim()
                    ),
                    key.span,
                )
                .help = Some(if declared.is_empty() {
                    "the sub-pipeline declares no inputs".to_owned()
                } else {
                    format!("its inputs: {}", declared.join(", "))
                });
            }
        }
        for input in &declared {
            if !step.inputs.contains_key(*input) {
                self.error(
                    "kiln::plan::missing-input",
                    format!(
                        "step `{name}` does not bind `{input}`, an input of `{}`",
                        path.trim()
                    ),
                    path.span,
                )
                .help = Some(format!(
                    "bind it under `inputs:`, like `inputs: {{{input}: STEP.OUTPUT}}`"
                ));
            }
        }
        if let Some(condition) = &step.when {
            if let Some(inner) = sub.pipeline.steps.iter().find(|(_, s)| s.when.is_some()) {
                self.error(
                    "kiln::plan::when-on-sub-pipeline",
                    format!("step `{name}` has a `when`, and step `{}` of its sub-pipeline has one too", inner.0),
                    condition.span,
                )
                .help = Some("give the condition to the steps of the sub-pipeline instead (a param set in `with:` can carry it)".into());
            } else if when::analyze(condition).is_ok_and(|r| r.uses_item) {
                self.error(
                    "kiln::plan::when-on-sub-pipeline",
                    format!("step `{name}`'s `when` reads `item`, which a sub-pipeline's condition cannot read"),
                    condition.span,
                )
                .help = Some("pass the item in `with:` and give the steps of the sub-pipeline the condition".into());
            }
        }
        // Check the sub-pipeline once per instance (the params may differ), stopping at the
        // first instance with errors: the others would say the same again.
        let instances: Vec<Option<&Value>> = match &self.fan_out[i] {
            Some(items) => items.iter().map(Some).collect(),
            None => vec![None],
        };
        for item in instances {
            // With a wrong value, the sub-pipeline is still checked (without it): its own
            // mistakes are reported too.
            let (values, errors) = self.sub_values(name, step, &sub, params, item);
            let mut failed = !errors.is_empty();
            self.diagnostics.extend(errors);
            let scope = self.sub_scope(&sub, values, String::new(), None);
            let options = PlanOptions {
                base_dir: self.options.base_dir.join(&sub.dir),
                overrides: Vec::new(),
            };
            let (compiled, _) = compile_here(&sub.pipeline, &options, &scope);
            failed |= compiled.diagnostics.iter().any(Diagnostic::is_error);
            for d in compiled.diagnostics {
                let d = d.included(&sub.file, path.span, name.as_str());
                self.diagnostics.push(d);
            }
            if failed {
                break;
            }
        }
    }

    /// The values of a sub-pipeline's params for one instance of the including step, after
    /// templating, each of the declared type; and an error for each that is not.
    fn sub_values(
        &self,
        name: &Located<kiln_spec::StepName>,
        step: &Step,
        sub: &Sub,
        params: &BTreeMap<String, Value>,
        item: Option<&Value>,
    ) -> (BTreeMap<String, Value>, Vec<Diagnostic>) {
        let mut values = BTreeMap::new();
        let mut errors = Vec::new();
        for (key, value) in &step.with {
            let Some(decl) = sub.pipeline.params.get(key.as_str()) else {
                continue; // reported as an unknown param
            };
            let v = substitute_value(&value.value, params, item);
            match decl.ty.check(&v) {
                Ok(v) => {
                    values.insert(key.to_string(), v);
                }
                Err(e) => {
                    let ty = decl.ty.value;
                    errors.push(
                        Diagnostic::error(
                            "kiln::plan::type-mismatch",
                            format!(
                                "step `{name}` sets `{key}` to `{v}`, but it is {}: {e}",
                                with_article(ty)
                            ),
                        )
                        .at(value.span)
                        .help(format!(
                            "`{key}` is declared in `{}` as `type: {ty}`",
                            sub.file.name
                        )),
                    );
                }
            }
        }
        (values, errors)
    }

    fn sub_scope(
        &self,
        sub: &Sub,
        values: BTreeMap<String, Value>,
        namespace: String,
        bindings: Option<BTreeMap<String, (InputSource, BTreeSet<StepId>)>>,
    ) -> Scope {
        let mut chain = self.scope.chain.clone();
        chain.push(sub.path.clone());
        let prefix = match sub.dir.as_str() {
            "." => self.scope.prefix.clone(),
            dir => self.scope.rebase(dir.to_owned()),
        };
        Scope {
            chain,
            namespace,
            prefix,
            values: Some(values),
            bindings,
        }
    }

    /// Step `name` reads output `output` of sub-pipeline step `j`: it must be declared, and
    /// a fan-out's outputs that are themselves collected cannot be collected again.
    fn check_sub_output(
        &mut self,
        i: usize,
        name: &Located<kiln_spec::StepName>,
        j: usize,
        producer: &str,
        output: &str,
        span: Span,
    ) {
        let Some(sub) = self.subs[j].clone() else {
            // Not read: its own error says why.
            self.graph.add_edge(j, i);
            self.consumers[j] += 1;
            return;
        };
        let Some(target) = sub.pipeline.outputs.get(output) else {
            let hint = did_you_mean(output, sub.pipeline.outputs.keys().map(|k| k.as_str()));
            let declared: Vec<&str> = sub.pipeline.outputs.keys().map(|k| k.as_str()).collect();
            self.error(
                "kiln::plan::unknown-output",
                format!("step `{name}` reads `{producer}.{output}`, but sub-pipeline `{producer}` has no output `{output}`{hint}"),
                span,
            )
            .help = Some(if declared.is_empty() {
                format!("`{}` declares no outputs; add `outputs: {{{output}: STEP.OUTPUT}}` at its top level", sub.file.name)
            } else {
                format!("`{}` declares: {}", sub.file.name, declared.join(", "))
            });
            return;
        };
        let collected = match &target.value {
            InputRef::StepOutput { step, .. } => sub
                .pipeline
                .steps
                .get(step.as_str())
                .is_some_and(|s| s.for_each.is_some() || s.pipeline.is_some()),
            _ => false,
        };
        if collected && self.pipeline.steps[j].for_each.is_some() && !self.paired(i, j) {
            self.error(
                "kiln::plan::nested-collect",
                format!("step `{name}` reads `{producer}.{output}` of every instance of `{producer}`, but each instance's `{output}` is itself a fan-out or sub-pipeline output"),
                span,
            )
            .help = Some(format!("fan `{name}` out over the same list as `{producer}`, so that each instance reads one"));
            return;
        }
        self.graph.add_edge(j, i);
        self.consumers[j] += 1;
    }
}

impl Checker<'_> {
    /// `exports:`: each names one output of one step (not a fan-out's), and goes to a bucket
    /// URL of its own, with `{{params.NAME}}` templates only.
    fn check_exports(&mut self, params: &BTreeMap<String, Value>) {
        let exports = &self.pipeline.exports;
        if self.scope.is_sub()
            && let Some(first) = exports.first()
        {
            self.error(
                "kiln::plan::field-on-sub-pipeline",
                format!(
                    "pipeline `{}` is included as a sub-pipeline; its `exports` do not apply",
                    self.pipeline.name
                ),
                first.span,
            )
            .help = Some("export from the pipeline that is run: `from: STEP.OUTPUT`, with STEP the step that includes this file".into());
            return;
        }
        // Each URL, with the `from` of the first export that writes it.
        let mut targets: HashMap<String, String> = HashMap::new();
        for export in exports {
            self.check_export_from(&export.from);
            let to = &export.to;
            let (segments, errors) = template::parse_all(to);
            let mut ok = true;
            for e in errors {
                self.error(
                    "kiln::plan::bad-template",
                    format!("export to `{}`: {}", to.value, e.message),
                    inner_span(to, e.offset),
                );
                ok = false;
            }
            for segment in segments {
                let Segment::Ref { target, offset } = segment else {
                    continue;
                };
                let span = template_span(to, offset);
                match &target {
                    TemplateRef::Param(p) if self.pipeline.params.contains_key(p.as_str()) => {}
                    TemplateRef::Param(p) => {
                        let hint = did_you_mean(p, self.param_names());
                        self.error(
                            "kiln::plan::unknown-param",
                            format!("export to `{}` uses `{{{{params.{p}}}}}`, but there is no param `{p}`{hint}", to.value),
                            span,
                        );
                        ok = false;
                    }
                    other => {
                        self.error(
                            "kiln::plan::export-template",
                            format!("export to `{}` uses `{{{{{other}}}}}`; an export's `to` may use only `{{{{params.NAME}}}}`", to.value),
                            span,
                        );
                        ok = false;
                    }
                }
            }
            if !ok {
                continue;
            }
            let url = substitute(to, params, None);
            if let Err(message) = kiln_spec::check_export_url(&url) {
                let d = self.error("kiln::plan::bad-export-url", message, to.span);
                if url != to.value {
                    d.label = Some(format!("with its params: `{url}`"));
                }
                continue;
            }
            if let Some(first) = targets.get(&url) {
                let d = self.error(
                    "kiln::plan::duplicate-export",
                    format!("two exports write `{url}`: the export of `{first}` writes it too, and one would overwrite the other"),
                    to.span,
                );
                d.help = Some(
                    "give each export its own `to`; a prefix ending in `/` takes a whole folder"
                        .into(),
                );
                continue;
            }
            targets.insert(url, export.from.value.trim().to_owned());
        }
    }

    /// An export's `from`: `STEP.OUTPUT` of a step that is not a fan-out.
    fn check_export_from(&mut self, from: &Located<String>) {
        let text = from.value.trim();
        let Some((step, output)) = text
            .split_once('.')
            .filter(|(s, o)| !s.is_empty() && !o.is_empty() && !o.contains('.'))
        else {
            self.error(
                "kiln::plan::bad-export",
                format!("an export's `from` is `{text}`; write `STEP.OUTPUT`, an output of one of the steps"),
                from.span,
            );
            return;
        };
        let Some(&j) = self.index.get(step) else {
            let hint = self.step_hint(step);
            self.error(
                "kiln::plan::unknown-step",
                format!("export of `{text}`: there is no step `{step}`{hint}"),
                from.span,
            );
            return;
        };
        let producer = &self.pipeline.steps[j];
        let fans_out = producer.for_each.is_some();
        if producer.pipeline.is_some() {
            if let Some(sub) = self.subs[j].clone() {
                let Some(target) = sub.pipeline.outputs.get(output) else {
                    let hint =
                        did_you_mean(output, sub.pipeline.outputs.keys().map(|k| k.as_str()));
                    self.error(
                        "kiln::plan::unknown-output",
                        format!("export of `{text}`: sub-pipeline `{step}` has no output `{output}`{hint}"),
                        from.span,
                    );
                    return;
                };
                if fans_out {
                    self.export_of_fan_out(text, step, from.span);
                    return;
                }
                if let InputRef::StepOutput { step: inner, .. } = &target.value
                    && sub
                        .pipeline
                        .steps
                        .get(inner.as_str())
                        .is_some_and(|s| s.for_each.is_some())
                {
                    self.error(
                        "kiln::plan::export-fan-out",
                        format!("export of `{text}`: sub-pipeline `{step}` gives `{output}` as `{}`, and `{inner}` fans out, so it is one output per instance, not one", target.value),
                        from.span,
                    )
                    .help = Some(format!("in `{}`, collect the instances in a step and make its output `{output}`", sub.file.name));
                    return;
                }
            }
        } else if !producer.outputs.iter().any(|o| o.as_str() == output) {
            let hint = did_you_mean(output, producer.outputs.iter().map(|o| o.as_str()));
            let declared: Vec<&str> = producer.outputs.iter().map(|o| o.as_str()).collect();
            self.error(
                "kiln::plan::unknown-output",
                format!("export of `{text}`: step `{step}` has no output `{output}`{hint}"),
                from.span,
            )
            .help = Some(if declared.is_empty() {
                format!("`{step}` declares no outputs")
            } else {
                format!("`{step}` declares: {}", declared.join(", "))
            });
            return;
        } else if fans_out {
            self.export_of_fan_out(text, step, from.span);
            return;
        }
        self.consumers[j] += 1;
        self.consumed.insert((j, output.to_owned()));
    }

    fn export_of_fan_out(&mut self, text: &str, step: &str, span: Span) {
        self.error(
            "kiln::plan::export-fan-out",
            format!("export of `{text}`: `{step}` fans out, so `{text}` is one output per instance, not one"),
            span,
        )
        .help = Some(format!(
            "collect the instances in a step (`inputs: {{all: {text}}}` makes a folder with one entry per instance) and export that step's output"
        ));
    }

    /// The exports, resolved to the planned steps that write them.
    fn planned_exports(
        &self,
        ids: &[Vec<StepId>],
        inlined: &[Vec<Inlined>],
        params: &BTreeMap<String, Value>,
    ) -> Vec<PlannedExport> {
        let mut planned = Vec::new();
        for export in &self.pipeline.exports {
            let text = export.from.value.trim();
            let Some((step, output)) = text.split_once('.') else {
                continue;
            };
            let reference = InputRef::StepOutput {
                step: step.to_owned(),
                output: output.to_owned(),
            };
            let mut ignored = BTreeSet::new();
            let source = self.resolve_input(None, &reference, ids, inlined, params, &mut ignored);
            let InputSource::Step { step, output } = source else {
                debug_assert!(
                    false,
                    "an export that checked resolves to one step's output"
                );
                continue;
            };
            planned.push(PlannedExport {
                from: text.to_owned(),
                step,
                output,
                to: substitute(&export.to, params, None),
            });
        }
        planned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_paths() {
        assert_eq!(normalise("./data/x.csv").as_deref(), Some("data/x.csv"));
        assert_eq!(normalise("data/../x.csv").as_deref(), Some("x.csv"));
        assert_eq!(normalise("../x.csv"), None);
        assert_eq!(normalise("/etc/passwd"), None);
    }

    #[test]
    fn substitutes_params_and_items() {
        let mut params = BTreeMap::new();
        params.insert("epochs".to_owned(), Value::Int(5));
        assert_eq!(
            substitute(
                "--epochs={{params.epochs}} --lr {{item}} {{inputs.data}}",
                &params,
                Some(&Value::Float(0.1))
            ),
            "--epochs=5 --lr 0.1 {{inputs.data}}"
        );
        assert_eq!(
            substitute_value(&Value::String("{{ params.epochs }}".into()), &params, None),
            Value::Int(5)
        );
    }
}
