//! `kiln explain`: why a step ran instead of coming from the cache, named by its root cause —
//! the pipeline param that changed and where it lands in the step, the upstream step that
//! produced a new output, the workspace file, component, backend or image that changed.
//!
//! It reads the two runs' records and plans; it does not read the pipeline file again (the
//! file may have changed since), so a param is matched to the key parts by its values.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::ExitCode;

use kiln_engine::{
    AttemptStatus, KeyChange, KeyParts, RunView, StateDir, StepRecord, diff_keys, list_changes,
};
use kiln_plan::{InputSource, Plan};
use kiln_spec::Value as ParamValue;

use super::state::{StateArgs, read_view, run_params, short_digest};

/// Say why a step ran (or was cached) in a run: what changed in its cache key since the last
/// earlier run with that step, named by its cause — a param (and where it lands), an upstream
/// step's new output, a workspace file, the component, the image.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The run id, a unique prefix of it, or `latest`
    #[arg(value_name = "RUN")]
    run: String,
    /// The step: an id (`train[0]`), a label (`train[lr=0.1]`), or the name of a fan-out
    /// step for all its instances (`train`)
    #[arg(value_name = "STEP")]
    step: String,
    #[command(flatten)]
    state: StateArgs,
}

/// Upstream steps followed to their own causes, at most this deep.
const MAX_DEPTH: usize = 16;

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let state = args.state.existing()?;
    let run_id = state.resolve_run(&args.run).map_err(anyhow::Error::msg)?;
    if !state.record_path(&run_id).is_file() {
        anyhow::bail!("run {run_id} has no record");
    }
    let after = Side::read(&state, &run_id);
    let ids = after.select(&args.step)?;
    let mut earlier = Earlier::new(&state, &run_id)?;
    let mut out = String::new();
    for id in &ids {
        explain_step(&mut out, &state, &after, id, &mut earlier)?;
    }
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}

/// One run as `explain` reads it: its record folded in plan order, and its plan where the
/// run kept one.
struct Side {
    id: String,
    view: RunView,
    plan: Option<Plan>,
}

impl Side {
    fn read(state: &StateDir, id: &str) -> Self {
        let plan = std::fs::read(state.run_dir(id).join("plan.json"))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok());
        Self {
            id: id.to_owned(),
            view: read_view(state, id),
            plan,
        }
    }

    /// The last finished attempt of step `id`.
    fn record(&self, id: &str) -> Option<&StepRecord> {
        self.view.step(id)?.last.as_ref()
    }

    /// The name of the step that planned step `id` is an instance of (`train` for
    /// `train[0]`).
    fn step_name<'a>(&'a self, id: &'a str) -> &'a str {
        self.plan
            .as_ref()
            .and_then(|p| p.step(id))
            .map_or_else(|| id.split('[').next().unwrap_or(id), |s| s.step.as_str())
    }

    /// The planned ids that `query` names: one id or label, or every instance of a step.
    fn select(&self, query: &str) -> anyhow::Result<Vec<String>> {
        if let Some(id) = self.view.resolve_step(query) {
            return Ok(vec![id.to_owned()]);
        }
        let instances: Vec<String> = self
            .view
            .steps
            .iter()
            .map(|(id, _)| id)
            .filter(|id| self.step_name(id) == query)
            .cloned()
            .collect();
        if !instances.is_empty() {
            return Ok(instances);
        }
        let mut names: Vec<&str> = Vec::new();
        for (id, _) in &self.view.steps {
            for name in [self.step_name(id), id.as_str(), self.view.label(id)] {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        let hint = kiln_spec::suggest::did_you_mean(query, names.iter().copied());
        let steps: Vec<String> = self
            .view
            .steps
            .iter()
            .map(|(id, _)| match self.view.label(id) {
                label if label == id => id.clone(),
                label => format!("{label} ({id})"),
            })
            .collect();
        if steps.is_empty() {
            anyhow::bail!("run {} has no step `{query}`: it has no steps", self.id);
        }
        anyhow::bail!(
            "run {} has no step `{query}`{hint}\n  its steps: {}",
            self.id,
            steps.join(", ")
        )
    }
}

/// The runs before a run, newest first, read when first needed.
struct Earlier<'a> {
    state: &'a StateDir,
    ids: Vec<String>,
    read: Vec<Side>,
}

impl<'a> Earlier<'a> {
    fn new(state: &'a StateDir, run_id: &str) -> anyhow::Result<Self> {
        let mut ids: Vec<String> = state
            .run_ids()?
            .into_iter()
            .filter(|id| id.as_str() < run_id)
            .collect();
        ids.reverse();
        Ok(Self {
            state,
            ids,
            read: Vec::new(),
        })
    }

    /// The most recent earlier run in which step `id` finished an attempt.
    fn with_step(&mut self, id: &str) -> Option<&Side> {
        let mut found = None;
        for n in 0..self.ids.len() {
            if n == self.read.len() {
                self.read.push(Side::read(self.state, &self.ids[n]));
            }
            if self.read[n].record(id).is_some() {
                found = Some(n);
                break;
            }
        }
        found.map(|n| &self.read[n])
    }
}

fn explain_step(
    out: &mut String,
    state: &StateDir,
    after: &Side,
    id: &str,
    earlier: &mut Earlier,
) -> anyhow::Result<()> {
    let label = after.view.label(id);
    let run_id = &after.id;
    let step = after.view.step(id);
    let Some(record) = step.and_then(|s| s.last.as_ref()) else {
        match step.and_then(|s| s.skipped.as_deref()) {
            Some(reason) => writeln!(out, "step `{label}` did not run in {run_id}: {reason}")?,
            None => writeln!(out, "step `{label}` did not finish in {run_id}")?,
        }
        return Ok(());
    };
    if record.status == AttemptStatus::Cached {
        writeln!(
            out,
            "step `{label}` was served from the cache: key {} matches run {}",
            record.cache_key,
            record.reused_from.as_deref().unwrap_or("?")
        )?;
        return Ok(());
    }
    if let Some(reason) = &record.cache_miss {
        writeln!(
            out,
            "step `{label}` ran in {run_id} although its key {} was cached: {reason}",
            record.cache_key
        )?;
        return Ok(());
    }
    let Some(before) = earlier.with_step(id) else {
        writeln!(
            out,
            "step `{label}` ran in {run_id} because no earlier run in {} has it: nothing to reuse",
            state.root().display()
        )?;
        return Ok(());
    };
    let causes = causes(after, before, id, 0)?;
    if causes.is_empty() {
        let failed = before
            .record(id)
            .is_some_and(|r| r.status == AttemptStatus::Failed);
        writeln!(
            out,
            "step `{label}` has the same key as in {} ({}); it ran because {}",
            before.id,
            record.cache_key,
            if failed {
                "it failed there, and failures are not cached"
            } else {
                "caching was off (`--no-cache` or `cache: false`) or the cached outputs were gone from the store"
            }
        )?;
        return Ok(());
    }
    writeln!(out, "step `{label}` ran in {run_id}; since {}:", before.id)?;
    for cause in &causes.0 {
        writeln!(out, "  {cause}")?;
        if let Cause::Upstream { roots, .. } = cause {
            for root in roots {
                writeln!(out, "    root cause: {root}")?;
            }
        }
    }
    Ok(())
}

/// A param whose value differs between the two runs.
struct ParamChange {
    name: String,
    before: Option<ParamValue>,
    after: Option<ParamValue>,
}

/// Why a step's key differs, as people read it.
#[derive(Debug, Clone, PartialEq)]
enum Cause {
    /// A pipeline param changed, and lands in these parts of the key.
    Param {
        name: String,
        before: String,
        after: String,
        places: Vec<String>,
    },
    /// An upstream step produced a new output that the step reads; `roots` are the causes
    /// of that step's own change, followed up the graph.
    Upstream {
        label: String,
        output: String,
        roots: Vec<Cause>,
    },
    /// Anything else: one changed item, the component, a pin, a workspace file.
    Other(String),
}

impl Cause {
    /// Root causes first, then upstream steps, then the rest.
    fn rank(&self) -> u8 {
        match self {
            Cause::Param { .. } => 0,
            Cause::Upstream { .. } => 1,
            Cause::Other(_) => 2,
        }
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cause::Param {
                name,
                before,
                after,
                places,
            } => {
                let places: Vec<String> = places.iter().map(|p| format!("`{p}`")).collect();
                write!(
                    f,
                    "param `{name}` {before} → {after} (in {})",
                    places.join(", ")
                )
            }
            Cause::Upstream { label, output, .. } => {
                write!(f, "because `{label}` produced a new `{output}`")
            }
            Cause::Other(text) => f.write_str(text),
        }
    }
}

/// The causes of one step's change: one entry per param (with every place it lands), per
/// upstream output and per other change.
#[derive(Debug, Default)]
struct Causes(Vec<Cause>);

impl Causes {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn push(&mut self, cause: Cause) {
        if let Cause::Param { name, places, .. } = &cause
            && let Some(Cause::Param { places: known, .. }) = self
                .0
                .iter_mut()
                .find(|c| matches!(c, Cause::Param { name: n, .. } if n == name))
        {
            for place in places {
                if !known.contains(place) {
                    known.push(place.clone());
                }
            }
            return;
        }
        if !self.0.contains(&cause) {
            self.0.push(cause);
        }
    }

    fn param(&mut self, param: &ParamChange, place: &str) {
        let value =
            |v: &Option<ParamValue>| v.as_ref().map_or("none".to_owned(), |v| v.to_string());
        self.push(Cause::Param {
            name: param.name.clone(),
            before: value(&param.before),
            after: value(&param.after),
            places: vec![place.to_owned()],
        });
    }

    fn sorted(mut self) -> Self {
        self.0.sort_by_key(Cause::rank);
        self
    }

    /// The causes that are not upstream steps, those of upstream steps included.
    fn leaves(&self) -> Vec<Cause> {
        let mut leaves = Causes::default();
        for cause in &self.0 {
            match cause {
                Cause::Upstream { roots, .. } => roots.iter().for_each(|r| leaves.push(r.clone())),
                other => leaves.push(other.clone()),
            }
        }
        leaves.sorted().0
    }
}

/// Why step `id` has another key in `after` than in `before`.
fn causes(after: &Side, before: &Side, id: &str, depth: usize) -> anyhow::Result<Causes> {
    let (Some(rec_a), Some(rec_b)) = (after.record(id), before.record(id)) else {
        return Ok(Causes::default());
    };
    let key_a: KeyParts = serde_json::from_value(rec_a.key.clone()).map_err(|e| {
        anyhow::anyhow!("the key of `{id}` in run {} cannot be read: {e}", after.id)
    })?;
    let key_b: KeyParts = serde_json::from_value(rec_b.key.clone()).map_err(|e| {
        anyhow::anyhow!("the key of `{id}` in run {} cannot be read: {e}", before.id)
    })?;
    let params = changed_params(before, after);
    let mut causes = Causes::default();
    for change in diff_keys(&key_b, &key_a) {
        if let Some(input) = change
            .what
            .strip_prefix("input `")
            .and_then(|s| s.strip_suffix('`'))
        {
            input_causes(
                &mut causes,
                after,
                before,
                id,
                input,
                &change,
                &params,
                depth,
            );
        } else {
            material_causes(&mut causes, &change, &params);
        }
    }
    Ok(causes.sorted())
}

/// The params whose values differ between the runs, by name.
fn changed_params(before: &Side, after: &Side) -> Vec<ParamChange> {
    let empty = BTreeMap::new();
    let pb = run_params(&before.view).1.unwrap_or(&empty);
    let pa = run_params(&after.view).1.unwrap_or(&empty);
    let mut names: Vec<&String> = pb.keys().chain(pa.keys()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter(|n| pb.get(*n) != pa.get(*n))
        .map(|n| ParamChange {
            name: n.clone(),
            before: pb.get(n).cloned(),
            after: pa.get(n).cloned(),
        })
        .collect()
}

/// A changed input: the upstream step that wrote it, the workspace file or the param it is.
#[allow(clippy::too_many_arguments)]
fn input_causes(
    causes: &mut Causes,
    after: &Side,
    before: &Side,
    id: &str,
    input: &str,
    change: &KeyChange,
    params: &[ParamChange],
    depth: usize,
) {
    let upstream = |causes: &mut Causes, step: &str, output: &str| {
        let roots = if depth < MAX_DEPTH {
            causes_or_none(after, before, step, depth + 1).leaves()
        } else {
            Vec::new()
        };
        causes.push(Cause::Upstream {
            label: after.view.label(step).to_owned(),
            output: output.to_owned(),
            roots,
        });
    };
    let digests = format!("{} → {}", short(&change.before), short(&change.after));
    let source = after
        .plan
        .as_ref()
        .and_then(|p| p.step(id))
        .and_then(|s| s.inputs.get(input));
    match source {
        Some(InputSource::Step { step, output }) => upstream(causes, step, output),
        Some(InputSource::Collect {
            step,
            output,
            instances,
        }) => {
            let digest = |side: &Side, id: &str| {
                side.record(id)
                    .and_then(|r| r.outputs.get(output))
                    .map(ToString::to_string)
            };
            let changed: Vec<&str> = instances
                .iter()
                .map(|i| i.as_str())
                .filter(|i| digest(after, i) != digest(before, i))
                .collect();
            if changed.is_empty() {
                causes.push(Cause::Other(format!(
                    "input `{input}` (the `{output}` of every `{step}`) changed: other instances of `{step}` ({digests})"
                )));
            }
            for instance in changed {
                upstream(causes, instance, output);
            }
        }
        Some(InputSource::Workspace { path }) => causes.push(Cause::Other(format!(
            "workspace `{path}` changed (input `{input}`): {digests}"
        ))),
        Some(InputSource::External { url }) => causes.push(Cause::Other(format!(
            "the object at `{url}` changed (input `{input}`): {digests}"
        ))),
        Some(InputSource::Param { name, .. }) => match params.iter().find(|p| &p.name == name) {
            Some(param) => causes.param(param, &format!("input `{input}`")),
            None => causes.push(Cause::Other(format!(
                "input `{input}` (param `{name}`): {digests}"
            ))),
        },
        Some(InputSource::RunStatus) => causes.push(Cause::Other(format!(
            "the other steps ended differently (input `{input}`, `run.status`): {digests}"
        ))),
        // No plan to say where it came from: the step of this run that wrote those bytes.
        None => {
            let writer = after.view.steps.iter().find_map(|(step, view)| {
                let rec = view.last.as_ref()?;
                let (name, _) = rec
                    .outputs
                    .iter()
                    .find(|(_, d)| d.to_string() == change.after)?;
                Some((step.clone(), name.clone()))
            });
            match writer {
                Some((step, output)) => upstream(causes, &step, &output),
                None => causes.push(Cause::Other(format!("input `{input}`: {digests}"))),
            }
        }
    }
}

/// The causes of an upstream step, or none where its key cannot be read (the step's own
/// explanation says why).
fn causes_or_none(after: &Side, before: &Side, id: &str, depth: usize) -> Causes {
    causes(after, before, id, depth).unwrap_or_default()
}

/// A change in the planner's material: each changed item of a list, or a value, named by the
/// param that explains it where one does.
fn material_causes(causes: &mut Causes, change: &KeyChange, params: &[ParamChange]) {
    use serde_json::Value;
    let place = place_of(&change.what);
    let json =
        |text: &str| serde_json::from_str::<Value>(text).unwrap_or(Value::String(text.to_owned()));
    match (json(&change.before), json(&change.after)) {
        (Value::Array(b), Value::Array(a)) => {
            for item in list_changes(&b, &a) {
                let (tb, ta) = (
                    item.before.as_ref().map(text),
                    item.after.as_ref().map(text),
                );
                if let Some(param) = explaining(params, tb.as_deref(), ta.as_deref()) {
                    causes.param(param, &place);
                    continue;
                }
                let flag = item.flag.map_or(String::new(), |f| format!(" ({f})"));
                let what = match (&item.before, &item.after) {
                    (Some(b), Some(a)) => format!("{b} → {a}"),
                    (None, Some(a)) => format!("added {a}"),
                    (Some(b), None) => format!("removed {b}"),
                    (None, None) => continue,
                };
                causes.push(Cause::Other(format!(
                    "{place}[{}]{flag}: {what}",
                    item.index
                )));
            }
        }
        (b, a) => match explaining(params, Some(&text(&b)), Some(&text(&a))) {
            Some(param) => causes.param(param, &place),
            None => causes.push(Cause::Other(format!(
                "{place}: {} → {}",
                short(&change.before),
                short(&change.after)
            ))),
        },
    }
}

/// Where in the step a part of its key is, as the pipeline file spells it: a wasm step's
/// `params.lr` is its `with.lr`.
fn place_of(what: &str) -> String {
    match what.strip_prefix("params.") {
        Some(name) => format!("with.{name}"),
        None => what.to_owned(),
    }
}

/// A JSON value as a template writes it: a string without its quotes.
fn text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The changed param whose earlier value is in `before` and whose later value is in `after`
/// (a side that is absent says nothing).
fn explaining<'p>(
    params: &'p [ParamChange],
    before: Option<&str>,
    after: Option<&str>,
) -> Option<&'p ParamChange> {
    let holds = |text: Option<&str>, value: &Option<ParamValue>| match (text, value) {
        (None, _) => true,
        (Some(text), Some(value)) => renderings(value).iter().any(|r| has_token(text, r)),
        (Some(_), None) => false,
    };
    if before.is_none() && after.is_none() {
        return None;
    }
    params
        .iter()
        .find(|p| holds(before, &p.before) && holds(after, &p.after))
}

/// How a value can appear in a step: as a template writes it, and for a list, each item (a
/// fan-out's `{{item}}`).
fn renderings(value: &ParamValue) -> Vec<String> {
    let mut all = vec![value.to_template_string()];
    if let ParamValue::List(items) = value {
        all.extend(items.iter().map(ParamValue::to_template_string));
    }
    all.retain(|r| !r.is_empty());
    all
}

/// Whether `token` is in `text` as a whole word: `20` is in `--epochs=20`, not in `200`.
fn has_token(text: &str, token: &str) -> bool {
    let numeric = token
        .chars()
        .all(|c| c.is_ascii_digit() || "+-.eE".contains(c));
    let boundary = |c: Option<char>| {
        c.is_none_or(|c| !(c.is_alphanumeric() || c == '_' || (numeric && c == '.')))
    };
    text.match_indices(token).any(|(at, _)| {
        boundary(text[..at].chars().next_back())
            && boundary(text[at + token.len()..].chars().next())
    })
}

/// A digest as people compare them; other values as they are.
fn short(value: &str) -> &str {
    if value.starts_with("blake3:") {
        short_digest(value)
    } else {
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(name: &str, before: ParamValue, after: ParamValue) -> ParamChange {
        ParamChange {
            name: name.to_owned(),
            before: Some(before),
            after: Some(after),
        }
    }

    #[test]
    fn a_param_is_matched_by_its_values_as_whole_words() {
        let params = [change("epochs", ParamValue::Int(20), ParamValue::Int(30))];
        let name =
            |b: &str, a: &str| explaining(&params, Some(b), Some(a)).map(|p| p.name.as_str());
        assert_eq!(name("20", "30"), Some("epochs"));
        assert_eq!(name("--epochs=20", "--epochs=30"), Some("epochs"));
        assert_eq!(name("200", "300"), None);
        assert_eq!(name("20", "31"), None);
        let lrs = [change(
            "lrs",
            ParamValue::List(vec![ParamValue::Float(0.1), ParamValue::Float(0.2)]),
            ParamValue::List(vec![ParamValue::Float(0.3), ParamValue::Float(0.2)]),
        )];
        let item = explaining(&lrs, Some("0.1"), Some("0.3"));
        assert_eq!(item.map(|p| p.name.as_str()), Some("lrs"));
        assert!(explaining(&lrs, Some("0.15"), Some("0.3")).is_none());
    }

    #[test]
    fn an_unexplained_arg_is_one_item_with_its_flag() {
        let mut causes = Causes::default();
        material_causes(
            &mut causes,
            &KeyChange {
                what: "container.args".into(),
                before: r#"["--lr","0.1","--epochs","20"]"#.into(),
                after: r#"["--lr","0.1","--epochs","21"]"#.into(),
            },
            &[],
        );
        let lines: Vec<String> = causes.0.iter().map(ToString::to_string).collect();
        assert_eq!(lines, [r#"container.args[3] (--epochs): "20" → "21""#]);
    }
}
