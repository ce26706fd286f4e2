//! `kiln runs`: the runs in a state folder, with the params and metrics asked for as columns.

use std::process::ExitCode;
use std::time::Duration;

use kiln_engine::{AttemptStatus, RecordEvent, RunView};

use super::state::{
    StateArgs, human_duration, metric_text, read_view, run_params, run_status, table,
};

/// List the runs in the state folder, oldest first.
///
/// `--params` and `--metrics` add a column per name. A metric reported by one step is one
/// column named after the metric; a metric that several steps report (the instances of a
/// fan-out, typically) is one column per step, `train[lr=0.1].accuracy`; `STEP.METRIC` asks
/// for one step's metric by id or label. `-` marks a value a run does not have.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Params to show as columns (comma-separated)
    #[arg(long, value_name = "NAME,...", value_delimiter = ',')]
    params: Vec<String>,
    /// Metrics to show as columns: `NAME` or `STEP.NAME` (comma-separated)
    #[arg(long, value_name = "NAME,...", value_delimiter = ',')]
    metrics: Vec<String>,
    /// Only runs of this pipeline (its `name`)
    #[arg(long, value_name = "NAME")]
    pipeline: Option<String>,
    /// Only runs that ended so (comma-separated)
    #[arg(long, value_enum, value_name = "STATUS,...", value_delimiter = ',')]
    status: Vec<StatusFilter>,
    /// Only the newest N runs (after the other filters)
    #[arg(long, value_name = "N")]
    last: Option<usize>,
    /// `text` for people; `json` with every param and metric whatever the columns; `csv`
    #[arg(short, long, value_enum, default_value_t)]
    output: Format,
    #[command(flatten)]
    state: StateArgs,
}

/// How `kiln runs` prints the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
enum Format {
    /// A table for people.
    #[default]
    Text,
    /// Every run with all its params and metrics.
    Json,
    /// The table's columns as CSV, for spreadsheets and plotting; absent values are empty.
    Csv,
}

/// How a run ended, for `--status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum StatusFilter {
    Succeeded,
    Failed,
    Cancelled,
    /// Still going, or kiln stopped before the run ended.
    Unfinished,
}

impl StatusFilter {
    fn as_str(self) -> &'static str {
        match self {
            StatusFilter::Succeeded => "succeeded",
            StatusFilter::Failed => "failed",
            StatusFilter::Cancelled => "cancelled",
            StatusFilter::Unfinished => "unfinished",
        }
    }
}

/// One run of the listing.
struct Listed {
    id: String,
    view: RunView,
}

/// A metric column: `metric` as reported by the step people call `step`.
struct MetricColumn {
    header: String,
    step: String,
    metric: String,
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let state = args.state.existing()?;
    let mut runs: Vec<Listed> = state
        .run_ids()?
        .into_iter()
        .map(|id| {
            let view = read_view(&state, &id);
            Listed { id, view }
        })
        .filter(|run| {
            args.pipeline
                .as_deref()
                .is_none_or(|want| run_params(&run.view).0 == want)
        })
        .filter(|run| {
            let status = run_status(&run.view);
            args.status.is_empty() || args.status.iter().any(|s| s.as_str() == status)
        })
        .collect();
    if let Some(n) = args.last {
        runs.drain(..runs.len().saturating_sub(n));
    }
    let columns = metric_columns(&runs, &args.metrics);
    for name in &args.params {
        if !runs.iter().any(|run| {
            run_params(&run.view)
                .1
                .is_some_and(|p| p.contains_key(name))
        }) {
            eprintln!("warning: no run listed has a param `{name}`");
        }
    }
    match args.output {
        Format::Json => {
            let json: Vec<_> = runs.iter().map(run_json).collect();
            println!("{}", serde_json::to_string_pretty(&json)?);
        }
        Format::Text if runs.is_empty() => eprintln!("no runs in {}", state.root().display()),
        Format::Text => {
            let mut header = vec!["RUN", "PIPELINE", "STATUS", "TIME", "STEPS"];
            header.extend(args.params.iter().map(String::as_str));
            header.extend(columns.iter().map(|c| c.header.as_str()));
            let rows: Vec<Vec<String>> =
                runs.iter()
                    .map(|run| {
                        let counts = StepCounts::of(&run.view);
                        let mut row = vec![
                            run.id.clone(),
                            run_params(&run.view).0.to_owned(),
                            run_status(&run.view),
                            duration_ms(&run.view)
                                .map_or("-".into(), |ms| human_duration(Duration::from_millis(ms))),
                            format!(
                                "{} ({} ran, {} cached, {} failed)",
                                counts.total, counts.succeeded, counts.cached, counts.failed
                            ),
                        ];
                        row.extend(args.params.iter().map(|name| {
                            param(&run.view, name).map_or("-".into(), |v| v.to_string())
                        }));
                        row.extend(columns.iter().map(|c| {
                            metric_value(&run.view, &c.step, &c.metric)
                                .map_or("-".into(), metric_text)
                        }));
                        row
                    })
                    .collect();
            print!("{}", table(&header, &rows));
        }
        Format::Csv => {
            let mut out = csv::Writer::from_writer(std::io::stdout().lock());
            let mut header = [
                "run_id",
                "pipeline",
                "status",
                "duration_ms",
                "steps",
                "succeeded",
                "cached",
                "failed",
            ]
            .map(str::to_owned)
            .to_vec();
            header.extend(args.params.iter().cloned());
            header.extend(columns.iter().map(|c| c.header.clone()));
            out.write_record(&header)?;
            for run in &runs {
                let counts = StepCounts::of(&run.view);
                let mut row = vec![
                    run.id.clone(),
                    run_params(&run.view).0.to_owned(),
                    run_status(&run.view),
                    duration_ms(&run.view).map_or(String::new(), |ms| ms.to_string()),
                    counts.total.to_string(),
                    counts.succeeded.to_string(),
                    counts.cached.to_string(),
                    counts.failed.to_string(),
                ];
                row.extend(args.params.iter().map(|name| {
                    param(&run.view, name).map_or(String::new(), |v| v.to_template_string())
                }));
                // Every digit: a spreadsheet rounds for itself.
                row.extend(columns.iter().map(|c| {
                    metric_value(&run.view, &c.step, &c.metric)
                        .map_or(String::new(), |v| v.to_string())
                }));
                out.write_record(&row)?;
            }
            out.flush()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The columns that `--metrics` asks for, over the runs listed (so every row has the same).
fn metric_columns(runs: &[Listed], names: &[String]) -> Vec<MetricColumn> {
    let mut columns = Vec::new();
    for name in names {
        // The steps that report `name`, by label, in the order they first appear.
        let mut steps: Vec<&str> = Vec::new();
        for run in runs {
            for (id, step) in &run.view.steps {
                let reports = step
                    .last
                    .as_ref()
                    .is_some_and(|r| r.metrics.contains_key(name));
                let label = run.view.label(id);
                if reports && !steps.contains(&label) {
                    steps.push(label);
                }
            }
        }
        match steps.as_slice() {
            [one] => columns.push(MetricColumn {
                header: name.clone(),
                step: (*one).to_owned(),
                metric: name.clone(),
            }),
            [] => {
                // `STEP.METRIC`: a label may hold dots (`train[lr=0.1]`), a metric name is
                // taken to be what follows the last one.
                let (step, metric) = name.rsplit_once('.').unwrap_or(("", name));
                if !runs
                    .iter()
                    .any(|run| metric_value(&run.view, step, metric).is_some())
                {
                    eprintln!("warning: no run listed has a metric `{name}`");
                }
                columns.push(MetricColumn {
                    header: name.clone(),
                    step: step.to_owned(),
                    metric: metric.to_owned(),
                });
            }
            many => columns.extend(many.iter().map(|step| MetricColumn {
                header: format!("{step}.{name}"),
                step: (*step).to_owned(),
                metric: name.clone(),
            })),
        }
    }
    columns
}

/// The value of `metric` reported by the step called `step` (an id or a label) in a run.
fn metric_value(view: &RunView, step: &str, metric: &str) -> Option<f64> {
    let id = view.resolve_step(step)?;
    view.step(id)?.last.as_ref()?.metrics.get(metric).copied()
}

/// A param of a run.
fn param<'a>(view: &'a RunView, name: &str) -> Option<&'a kiln_spec::Value> {
    run_params(view).1?.get(name)
}

fn duration_ms(view: &RunView) -> Option<u64> {
    match &view.finished {
        Some(RecordEvent::RunFinished { duration_ms, .. }) => Some(*duration_ms),
        _ => None,
    }
}

/// How a run's steps ended.
struct StepCounts {
    total: usize,
    succeeded: usize,
    cached: usize,
    failed: usize,
}

impl StepCounts {
    fn of(view: &RunView) -> Self {
        let count = |want: AttemptStatus| {
            view.steps
                .iter()
                .filter(|(_, s)| s.last.as_ref().is_some_and(|r| r.status == want))
                .count()
        };
        Self {
            total: view.steps.len(),
            succeeded: count(AttemptStatus::Succeeded),
            cached: count(AttemptStatus::Cached),
            failed: count(AttemptStatus::Failed),
        }
    }
}

/// One run as `kiln runs -o json` gives it: all its params, and all its metrics by step label.
fn run_json(run: &Listed) -> serde_json::Value {
    let view = &run.view;
    let counts = StepCounts::of(view);
    let (pipeline, params) = run_params(view);
    let metrics: serde_json::Map<String, serde_json::Value> = view
        .steps
        .iter()
        .filter_map(|(id, s)| {
            let record = s.last.as_ref().filter(|r| !r.metrics.is_empty())?;
            Some((view.label(id).to_owned(), serde_json::json!(record.metrics)))
        })
        .collect();
    let started_at_ms = match &view.started {
        Some(RecordEvent::RunStarted { at_ms, .. }) => Some(*at_ms),
        _ => None,
    };
    serde_json::json!({
        "run_id": run.id,
        "pipeline": pipeline,
        "status": run_status(view),
        "started_at_ms": started_at_ms,
        "duration_ms": duration_ms(view),
        "steps": counts.total,
        "succeeded": counts.succeeded,
        "cached": counts.cached,
        "failed": counts.failed,
        "params": params,
        "metrics": metrics,
    })
}
