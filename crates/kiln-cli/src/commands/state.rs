//! Where the state folder is, for every command that reads or writes runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kiln_engine::{RecordEvent, RunView, StateDir, read_record};

/// `--state DIR` and `KILN_HOME`, shared by the commands that use runs.
#[derive(Debug, Clone, clap::Args)]
pub struct StateArgs {
    /// The state folder (store, cache, runs) [default: `.kiln` next to the pipeline for
    /// `run`, `.kiln` in the current folder otherwise]
    #[arg(long, value_name = "DIR", env = "KILN_HOME", global = true)]
    pub state: Option<PathBuf>,
}

impl StateArgs {
    /// The state folder of a run of `pipeline`.
    pub fn for_pipeline(&self, pipeline: &Path) -> StateDir {
        match &self.state {
            Some(dir) => StateDir::new(dir),
            None => StateDir::new(
                pipeline
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new("."))
                    .join(".kiln"),
            ),
        }
    }

    /// The state folder for commands that read runs.
    pub fn existing(&self) -> anyhow::Result<StateDir> {
        let dir = self.state.clone().unwrap_or_else(|| PathBuf::from(".kiln"));
        if !dir.is_dir() {
            anyhow::bail!(
                "no state folder at {}: pass `--state DIR` (the `.kiln` folder next to the pipeline) or set KILN_HOME",
                dir.display()
            );
        }
        Ok(StateDir::new(dir))
    }
}

/// `12ms`, `1.3s`, `2m 5s`.
pub fn human_duration(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        let s = d.as_secs();
        format!("{}m {}s", s / 60, s % 60)
    }
}

/// The first 12 hex digits of a digest, enough to tell artifacts apart in a table.
pub fn short_digest(digest: &str) -> &str {
    let hex = digest.strip_prefix("blake3:").unwrap_or(digest);
    &hex[..hex.len().min(12)]
}

/// Prints rows as left-aligned columns.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out.push_str(&line(row.clone()));
    }
    out
}

/// Metrics as `name=value` pairs, values rounded to 6 decimals.
pub fn metrics_text(metrics: &std::collections::BTreeMap<String, f64>) -> String {
    metrics
        .iter()
        .map(|(k, v)| format!("{k}={}", metric_text(*v)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One metric value for people: rounded to 6 decimals (the record keeps every bit).
pub fn metric_text(value: f64) -> String {
    ((value * 1e6).round() / 1e6).to_string()
}

/// A run's record folded into a view; a record that cannot be read is an empty view, so one
/// broken run does not hide the others from a listing.
pub fn read_view(state: &StateDir, run_id: &str) -> RunView {
    let mut view = match read_record(&state.record_path(run_id)) {
        Ok(events) => RunView::from_events(&events),
        Err(_) => RunView::default(),
    };
    in_plan_order(state, run_id, &mut view);
    view
}

/// Puts a view's steps in the order of the run's plan: the record has them in the order
/// they started, which parallel steps make differ from run to run.
pub fn in_plan_order(state: &StateDir, run_id: &str, view: &mut RunView) {
    let plan = std::fs::read(state.run_dir(run_id).join("plan.json"))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok());
    if let Some(plan) = plan {
        in_order_of(&plan, view);
    }
}

/// [`in_plan_order`] with the plan (as JSON) at hand.
pub fn in_order_of(plan: &serde_json::Value, view: &mut RunView) {
    let Some(steps) = plan["steps"].as_array() else {
        return;
    };
    let order: Vec<&str> = steps.iter().filter_map(|s| s["id"].as_str()).collect();
    // An instance of a fan-out over a list a step wrote (`count[3]`) is not in the plan: it
    // goes where its fan-out step is, by index.
    let key = |id: &str| {
        if let Some(at) = order.iter().position(|o| *o == id) {
            return (at, 0);
        }
        let instance = id
            .strip_suffix(']')
            .and_then(|rest| rest.rsplit_once('['))
            .and_then(|(base, k)| Some((order.iter().position(|o| *o == base)?, k.parse().ok()?)));
        instance.map_or((usize::MAX, 0), |(at, k): (usize, usize)| (at, k + 1))
    };
    // Stable: steps the plan does not name stay in record order, after the others.
    view.steps.sort_by_key(|(id, _)| key(id));
}

/// How a run ended as `kiln runs` prints it: `succeeded`, `failed`, `cancelled`, or
/// `unfinished` (still going, or kiln stopped before the end).
pub fn run_status(view: &RunView) -> String {
    match &view.finished {
        Some(RecordEvent::RunFinished { status, .. }) => status.to_string(),
        _ => "unfinished".to_owned(),
    }
}

/// The pipeline name and params a run started with (`?` and none for a record without its
/// first line).
pub fn run_params(view: &RunView) -> (&str, Option<&BTreeMap<String, kiln_spec::Value>>) {
    match &view.started {
        Some(RecordEvent::RunStarted {
            pipeline, params, ..
        }) => (pipeline, Some(params)),
        _ => ("?", None),
    }
}
