//! `kiln report`: one self-contained HTML page of a run — its DAG coloured by status, its
//! metrics table, and a plot of chosen metrics across fan-out items or across runs.
//!
//! This module gathers what the page shows from the state folder; [`page`] draws it. The page
//! loads nothing (no scripts, fonts or styles from elsewhere), so it opens from a file, mailed
//! or archived, without a server.

mod page;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use kiln_engine::{AttemptStatus, RecordEvent, RunView, StateDir, read_record};
use kiln_plan::{InputSource, Plan};

use super::state::{StateArgs, human_duration, run_params, run_status};

/// How many runs of the pipeline `--across runs` plots at most (the newest).
const RUNS_PLOTTED: usize = 20;

/// Write one self-contained HTML page of a run: its DAG coloured by status and cache, a table
/// of its metrics, and a plot of chosen metrics across its fan-out items or across the
/// pipeline's runs. The page needs no server and loads nothing from elsewhere.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The run id, a unique prefix of it, or `latest`
    #[arg(value_name = "RUN")]
    run: String,
    /// Where to write the page; `-` for stdout [default: `kiln-report-<short id>.html`]
    #[arg(short, long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// The metrics to plot, comma-separated [default: every metric that appears]
    #[arg(long, value_name = "NAMES", value_delimiter = ',')]
    metrics: Vec<String>,
    /// What the plot's x axis is [default: `items` when the run's fan-out instances report
    /// metrics, else `runs`]
    #[arg(long, value_enum)]
    across: Option<Across>,
    #[command(flatten)]
    state: StateArgs,
}

/// What the plot's points are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Across {
    /// The run's fan-out instances, one point each.
    Items,
    /// The same pipeline's runs in the state folder, oldest first (the last 20).
    Runs,
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let state = args.state.existing()?;
    let run_id = state.resolve_run(&args.run).map_err(anyhow::Error::msg)?;
    let report = Report::gather(&state, &run_id, &args.metrics, args.across)?;
    let html = page::render(&report);
    match &args.out {
        Some(path) if path.as_os_str() == "-" => {
            std::io::stdout().lock().write_all(html.as_bytes())?;
        }
        out => {
            let path = out.clone().unwrap_or_else(|| {
                PathBuf::from(format!("kiln-report-{}.html", short_run_id(&run_id)))
            });
            write_atomically(&path, html.as_bytes())?;
            eprintln!("{}", path.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes `bytes` to `path` through a temporary file in the same folder, so a reader never
/// sees half a page and an old page stays whole when writing fails.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut file = tempfile::Builder::new()
        .prefix(".kiln-report-")
        .suffix(".tmp")
        // The page is for reading: the mode a new file gets (less the umask), not the 0600 of
        // a temporary file.
        .permissions(std::fs::Permissions::from_mode(0o666))
        .tempfile_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.as_file().sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// The part of a run id the page and the default file name use: its first 12 hex digits, the
/// creation time to the millisecond (run ids are UUIDv7), which tells runs apart in practice.
pub fn short_run_id(id: &str) -> &str {
    id.get(..13).unwrap_or(id)
}

/// Everything the page shows, gathered from the state folder.
#[derive(Debug)]
pub struct Report {
    /// The run's full id.
    pub run_id: String,
    /// The pipeline's name.
    pub pipeline: String,
    /// How the run ended (`succeeded`, `failed`, `cancelled`, `unfinished`).
    pub status: String,
    /// The run's wall time, when it finished.
    pub duration: Option<Duration>,
    /// The run's params as text, sorted by name.
    pub params: Vec<(String, String)>,
    /// The steps and their dependencies.
    pub dag: Dag,
    /// Every metric a step of the run reported: (step label, metrics), in plan order.
    pub metrics: Vec<(String, BTreeMap<String, f64>)>,
    /// The plot of the chosen metrics.
    pub plot: Plot,
}

/// The run's steps (fan-out instances apart) and the edges between them.
#[derive(Debug)]
pub struct Dag {
    /// One node per planned step, in plan order.
    pub nodes: Vec<DagNode>,
    /// `(from, to)` node indices: `to` reads an output of `from` or runs after it.
    pub edges: BTreeSet<(usize, usize)>,
    /// Why there are no edges, where the run's plan could not be read.
    pub no_plan: Option<String>,
}

/// One step of the run.
#[derive(Debug)]
pub struct DagNode {
    /// The planned step id (`train[0]`).
    pub id: String,
    /// How people read it (`train[lr=0.1]`).
    pub label: String,
    /// How it ended in this run.
    pub status: NodeStatus,
    /// One line for the tooltip: time, cache source, failure or skip reason.
    pub detail: String,
    /// Whether it is a fan-out instance.
    pub fan_out: bool,
}

/// How a step ended, as the page colours it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeStatus {
    /// Ran and succeeded.
    Succeeded,
    /// Served from the cache.
    Cached,
    /// Ran and failed.
    Failed,
    /// Did not run: its condition was false, an upstream step failed, or the run was
    /// cancelled.
    Skipped,
    /// Planned, but the record says nothing of it (the run stopped, or is still going).
    NotRun,
}

impl NodeStatus {
    /// The status as the page's CSS classes and `data-status` name it.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Succeeded => "succeeded",
            NodeStatus::Cached => "cached",
            NodeStatus::Failed => "failed",
            NodeStatus::Skipped => "skipped",
            NodeStatus::NotRun => "not-run",
        }
    }
}

/// A plot of metrics: categories on the x axis, one series per metric.
#[derive(Debug)]
pub struct Plot {
    /// What the x axis is.
    pub across: Across,
    /// The x axis's categories, in order: item labels or short run ids.
    pub xs: Vec<String>,
    /// The series, in name order.
    pub series: Vec<Series>,
    /// Why the plot is empty or what it leaves out, for people.
    pub note: Option<String>,
}

/// One plotted metric.
#[derive(Debug)]
pub struct Series {
    /// The metric's name (prefixed with the step's label across runs where several steps
    /// report the same metric).
    pub name: String,
    /// `(index into Plot::xs, value)`, in x order.
    pub points: Vec<(usize, f64)>,
}

impl Report {
    /// Reads run `run_id` (and, across runs, the pipeline's other runs) from `state`.
    pub fn gather(
        state: &StateDir,
        run_id: &str,
        chosen: &[String],
        across: Option<Across>,
    ) -> anyhow::Result<Self> {
        let view = RunView::from_events(&read_record(&state.record_path(run_id))?);
        let plan = read_plan(state, run_id);
        let dag = Dag::of(&view, plan.as_ref());
        let (pipeline, params) = run_params(&view);
        let params = params
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect();
        let duration = match &view.finished {
            Some(RecordEvent::RunFinished { duration_ms, .. }) => {
                Some(Duration::from_millis(*duration_ms))
            }
            _ => None,
        };
        let metrics: Vec<(String, BTreeMap<String, f64>)> = dag
            .nodes
            .iter()
            .filter_map(|node| {
                let record = view.step(&node.id)?.last.as_ref()?;
                (!record.metrics.is_empty()).then(|| (node.label.clone(), record.metrics.clone()))
            })
            .collect();
        let item_metrics: Vec<&(String, BTreeMap<String, f64>)> = dag
            .nodes
            .iter()
            .filter(|n| n.fan_out)
            .filter_map(|n| metrics.iter().find(|(label, _)| *label == n.label))
            .collect();
        let across = across.unwrap_or(if item_metrics.is_empty() {
            Across::Runs
        } else {
            Across::Items
        });
        let plot = match across {
            Across::Items => Plot::across_items(&item_metrics, chosen)?,
            Across::Runs => Plot::across_runs(state, run_id, pipeline, chosen)?,
        };
        Ok(Self {
            run_id: run_id.to_owned(),
            pipeline: pipeline.to_owned(),
            status: run_status(&view),
            duration,
            params,
            dag,
            metrics,
            plot,
        })
    }

    /// The run's wall time for people, or `unfinished`.
    pub fn duration_text(&self) -> String {
        self.duration
            .map_or_else(|| "unfinished".to_owned(), human_duration)
    }
}

/// The run's plan, or why it cannot be had.
fn read_plan(state: &StateDir, run_id: &str) -> Result<Plan, String> {
    let path = state.run_dir(run_id).join("plan.json");
    let bytes = std::fs::read(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => "the state folder keeps no plan for this run".to_owned(),
        _ => format!("cannot read {}: {e}", path.display()),
    })?;
    let plan = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{} is not a plan this kiln reads: {e}", path.display()))?;
    // With the instances the run gave fan-outs over lists steps wrote.
    let events = read_record(&state.record_path(run_id)).unwrap_or_default();
    kiln_engine::plan_as_run(plan, &events)
}

impl Dag {
    /// The plan's steps with their edges, or, without a plan, the record's steps alone.
    fn of(view: &RunView, plan: Result<&Plan, &String>) -> Self {
        let Ok(plan) = plan else {
            let nodes = view
                .steps
                .iter()
                .map(|(id, _)| node(view, id, is_instance_id(id)))
                .collect();
            return Self {
                nodes,
                edges: BTreeSet::new(),
                no_plan: plan.err().cloned(),
            };
        };
        let mut nodes: Vec<DagNode> = plan
            .steps
            .iter()
            .map(|s| node(view, &s.id, s.instance.is_some()))
            .collect();
        // Steps the record has but the plan does not (a record from another kiln) still show.
        for (id, _) in &view.steps {
            if plan.step(id).is_none() {
                nodes.push(node(view, id, is_instance_id(id)));
            }
        }
        let index = |id: &str| nodes.iter().position(|n| n.id == id);
        let mut edges = BTreeSet::new();
        for step in &plan.steps {
            let Some(to) = index(&step.id) else { continue };
            let mut from_ids: Vec<&str> = step.depends_on.iter().map(|d| d.as_str()).collect();
            for source in step.inputs.values() {
                match source {
                    InputSource::Step { step, .. } => from_ids.push(step),
                    InputSource::Collect { instances, .. } => {
                        from_ids.extend(instances.iter().map(|i| i.as_str()))
                    }
                    InputSource::Workspace { .. }
                    | InputSource::External { .. }
                    | InputSource::Param { .. }
                    | InputSource::RunStatus => {}
                }
            }
            edges.extend(
                from_ids
                    .into_iter()
                    .filter_map(index)
                    .filter(|from| *from != to)
                    .map(|from| (from, to)),
            );
        }
        Self {
            nodes,
            edges,
            no_plan: None,
        }
    }

    /// Each node's depth: 0 for a step that needs nothing, else one more than the deepest
    /// step it needs.
    pub fn depths(&self) -> Vec<usize> {
        let mut depth = vec![0; self.nodes.len()];
        // The plan is topologically ordered, but a relaxation to a fixed point does not rely
        // on it; it stops after as many rounds as there are nodes, should a record lie.
        for _ in 0..self.nodes.len() {
            let mut changed = false;
            for &(from, to) in &self.edges {
                if depth[to] < depth[from] + 1 {
                    depth[to] = depth[from] + 1;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        depth
    }
}

/// A fan-out instance's label split into its step's name and its item: `train[lr=0.1]` →
/// (`train`, `lr=0.1`). A label without brackets is all name, its item empty.
fn split_label(label: &str) -> (&str, &str) {
    label
        .strip_suffix(']')
        .and_then(|rest| rest.split_once('['))
        .unwrap_or((label, ""))
}

/// `name[3]`: an instance id, for records without a plan.
fn is_instance_id(id: &str) -> bool {
    id.strip_suffix(']')
        .and_then(|rest| rest.rsplit_once('['))
        .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// What the record says of step `id`.
fn node(view: &RunView, id: &str, fan_out: bool) -> DagNode {
    let step = view.step(id);
    let last = step.and_then(|s| s.last.as_ref());
    // As `kiln show` reads it: a step that ran and was then skipped on a retry's cancel
    // counts as skipped; one that ran and reports a skip for another reason counts as run.
    let skipped = step
        .and_then(|s| s.skipped.as_ref())
        .filter(|reason| last.is_none() || reason.starts_with("cancelled"));
    let (status, detail) = match (last, skipped) {
        (_, Some(reason)) => (NodeStatus::Skipped, format!("skipped: {reason}")),
        (Some(r), None) => {
            let time = human_duration(Duration::from_millis(r.duration_ms));
            match r.status {
                AttemptStatus::Succeeded => (NodeStatus::Succeeded, format!("ran in {time}")),
                AttemptStatus::Cached => (
                    NodeStatus::Cached,
                    format!(
                        "cached, from run {}",
                        r.reused_from.as_deref().map_or("?", short_run_id)
                    ),
                ),
                AttemptStatus::Failed => (
                    NodeStatus::Failed,
                    format!(
                        "failed after {time}: {}",
                        r.message
                            .as_deref()
                            .and_then(|m| m.lines().next())
                            .unwrap_or("no message")
                    ),
                ),
            }
        }
        (None, None) => (NodeStatus::NotRun, "not run".to_owned()),
    };
    DagNode {
        id: id.to_owned(),
        label: view.label(id).to_owned(),
        status,
        detail,
        fan_out,
    }
}

/// The chosen metrics among those that `available` has: all of them when none was chosen; an
/// error naming the ones that are not there.
fn chosen_metrics(
    chosen: &[String],
    available: &BTreeSet<String>,
    where_: &str,
) -> anyhow::Result<BTreeSet<String>> {
    if chosen.is_empty() {
        return Ok(available.clone());
    }
    let missing: Vec<&str> = chosen
        .iter()
        .filter(|m| !available.contains(*m))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        let known: Vec<&str> = available.iter().map(String::as_str).collect();
        anyhow::bail!(
            "no metric {} in {where_}; {}",
            missing
                .iter()
                .map(|m| format!("`{m}`"))
                .collect::<Vec<_>>()
                .join(", "),
            if known.is_empty() {
                "none is reported there".to_owned()
            } else {
                format!("there are: {}", known.join(", "))
            }
        );
    }
    Ok(chosen.iter().cloned().collect())
}

impl Plot {
    /// One point per fan-out item and metric: the x axis is the items (`lr=0.1`), so the
    /// instances of several fanned-out steps (`train[lr=0.1]`, `evaluate[lr=0.1]`) line up.
    /// A metric that several steps report is plotted once per step (`train.loss`).
    fn across_items(
        items: &[&(String, BTreeMap<String, f64>)],
        chosen: &[String],
    ) -> anyhow::Result<Self> {
        let available = items.iter().flat_map(|(_, m)| m.keys().cloned()).collect();
        let names = chosen_metrics(chosen, &available, "the run's fan-out instances")?;
        let mut xs: Vec<String> = Vec::new();
        // (step, metric) → (item index, value)
        let mut values: BTreeMap<(&str, &str), Vec<(usize, f64)>> = BTreeMap::new();
        for (label, metrics) in items {
            let (step, item) = split_label(label);
            let x = match xs.iter().position(|x| x == item) {
                Some(x) => x,
                None => {
                    xs.push(item.to_owned());
                    xs.len() - 1
                }
            };
            for (metric, value) in metrics.iter().filter(|(m, _)| names.contains(*m)) {
                values.entry((step, metric)).or_default().push((x, *value));
            }
        }
        let reporters = |metric: &str| values.keys().filter(|(_, m)| *m == metric).count();
        let mut series: Vec<Series> = values
            .iter()
            .map(|((step, metric), points)| {
                let mut points = points.clone();
                points.sort_by_key(|(x, _)| *x);
                Series {
                    name: if reporters(metric) > 1 {
                        format!("{step}.{metric}")
                    } else {
                        (*metric).to_owned()
                    },
                    points,
                }
            })
            .collect();
        series.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Self {
            across: Across::Items,
            note: xs
                .is_empty()
                .then(|| "no fan-out instance of this run reports metrics".to_owned()),
            xs,
            series,
        })
    }

    /// One point per run of the pipeline (up to this one, the last [`RUNS_PLOTTED`]) and
    /// metric of a step.
    fn across_runs(
        state: &StateDir,
        run_id: &str,
        pipeline: &str,
        chosen: &[String],
    ) -> anyhow::Result<Self> {
        let mut runs: Vec<(String, RunView)> = Vec::new();
        for id in state.run_ids()? {
            if id.as_str() > run_id {
                break;
            }
            let Ok(events) = read_record(&state.record_path(&id)) else {
                continue;
            };
            let view = RunView::from_events(&events);
            if run_params(&view).0 == pipeline {
                runs.push((id, view));
            }
        }
        let skipped = runs.len().saturating_sub(RUNS_PLOTTED);
        let runs = &runs[skipped..];
        // (step label, metric) → value per run index. A fan-out instance's label names its
        // item, so the same item lines up across runs even when the list changed.
        let mut values: BTreeMap<(String, String), Vec<(usize, f64)>> = BTreeMap::new();
        for (x, (_, view)) in runs.iter().enumerate() {
            for (id, step) in &view.steps {
                let Some(record) = step.last.as_ref() else {
                    continue;
                };
                for (metric, value) in &record.metrics {
                    values
                        .entry((view.label(id).to_owned(), metric.clone()))
                        .or_default()
                        .push((x, *value));
                }
            }
        }
        let available = values.keys().map(|(_, m)| m.clone()).collect();
        let names = chosen_metrics(chosen, &available, &format!("the runs of `{pipeline}`"))?;
        let reporters = |metric: &str| values.keys().filter(|(_, m)| m == metric).count();
        let mut series: Vec<Series> = values
            .iter()
            .filter(|((_, metric), _)| names.contains(metric))
            .map(|((label, metric), points)| Series {
                name: if reporters(metric) > 1 {
                    format!("{label}.{metric}")
                } else {
                    metric.clone()
                },
                points: points.clone(),
            })
            .collect();
        series.sort_by(|a, b| a.name.cmp(&b.name));
        let note = if series.is_empty() {
            Some(format!("no run of `{pipeline}` reports metrics"))
        } else if skipped > 0 {
            Some(format!(
                "the last {RUNS_PLOTTED} runs of `{pipeline}`; {skipped} earlier are left out"
            ))
        } else {
            None
        };
        Ok(Self {
            across: Across::Runs,
            xs: runs
                .iter()
                .map(|(id, _)| short_run_id(id).to_owned())
                .collect(),
            series,
            note,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_are_told_from_names() {
        assert!(is_instance_id("train[0]"));
        assert!(is_instance_id("a[b][12]"));
        assert!(!is_instance_id("train"));
        assert!(!is_instance_id("train[]"));
        assert!(!is_instance_id("train[lr=0.1]"));
    }

    #[test]
    fn labels_split_into_step_and_item() {
        assert_eq!(split_label("train[lr=0.1]"), ("train", "lr=0.1"));
        assert_eq!(split_label("train[2]"), ("train", "2"));
        assert_eq!(split_label("eval[m=a[1]]"), ("eval", "m=a[1]"));
        assert_eq!(split_label("pick"), ("pick", ""));
    }

    #[test]
    fn depths_follow_the_longest_path() {
        let node = |id: &str| DagNode {
            id: id.into(),
            label: id.into(),
            status: NodeStatus::Succeeded,
            detail: String::new(),
            fan_out: false,
        };
        let dag = Dag {
            nodes: ["a", "b", "c", "d"].into_iter().map(node).collect(),
            edges: [(0, 1), (1, 2), (0, 2), (3, 2)].into_iter().collect(),
            no_plan: None,
        };
        assert_eq!(dag.depths(), [0, 1, 2, 0]);
    }

    #[test]
    fn unknown_metrics_are_named_with_the_known_ones() {
        let available: BTreeSet<String> = ["accuracy", "loss"].map(String::from).into();
        let err = chosen_metrics(&["acc".into()], &available, "here").unwrap_err();
        assert_eq!(
            err.to_string(),
            "no metric `acc` in here; there are: accuracy, loss"
        );
        assert_eq!(chosen_metrics(&[], &available, "here").unwrap(), available);
    }
}
