//! `kiln show`: one run, step by step.

use std::process::ExitCode;
use std::time::Duration;

use kiln_engine::{AttemptStatus, RecordEvent, RunView, read_record};

use super::state::{StateArgs, human_duration, short_digest, table};
use crate::Output;

/// Show one run: each step's status, time, attempts, cache use and output digests, and what
/// each of the pipeline's `exports:` did (uploaded, unchanged, failed, not exported).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The run id, a unique prefix of it, or `latest`
    #[arg(value_name = "RUN")]
    run: String,
    /// Print the folded record as JSON on stdout
    #[arg(short, long, value_enum, default_value_t)]
    output: Output,
    #[command(flatten)]
    state: StateArgs,
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let state = args.state.existing()?;
    let run_id = state.resolve_run(&args.run).map_err(anyhow::Error::msg)?;
    let events = read_record(&state.record_path(&run_id))?;
    let mut view = RunView::from_events(&events);
    super::state::in_plan_order(&state, &run_id, &mut view);
    print_view(&run_id, &view, args.output)?;
    Ok(ExitCode::SUCCESS)
}

/// A run as `kiln show` prints it, from its record folded into `view` (steps in plan order).
pub fn print_view(run_id: &str, view: &RunView, output: Output) -> anyhow::Result<()> {
    if output == Output::Json {
        let steps: Vec<_> = view
            .steps
            .iter()
            .map(|(id, s)| serde_json::json!({"step": id, "label": view.label(id), "attempts": s.attempts, "skipped": s.skipped, "last": s.last}))
            .collect();
        let (pipeline, params) = super::state::run_params(view);
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "run_id": run_id, "pipeline": pipeline, "status": super::state::run_status(view),
                "params": params, "started": view.started, "finished": view.finished, "steps": steps,
                "exports": view.exports,
            }))?
        );
        return Ok(());
    }
    if let Some(RecordEvent::RunStarted {
        pipeline,
        pipeline_file,
        params,
        ..
    }) = &view.started
    {
        println!("run       {run_id}");
        println!("pipeline  {pipeline} ({pipeline_file})");
        let params: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("params    {}", params.join(" "));
    }
    match &view.finished {
        Some(RecordEvent::RunFinished {
            status,
            duration_ms,
            ..
        }) => println!(
            "status    {status} in {}",
            human_duration(Duration::from_millis(*duration_ms))
        ),
        _ => {
            println!("status    unfinished (the run is going on, or kiln stopped before it ended)")
        }
    }
    println!();
    let rows: Vec<Vec<String>> = view
        .steps
        .iter()
        .map(|(id, s)| {
            let skipped = s
                .skipped
                .as_ref()
                .filter(|reason| s.last.is_none() || reason.starts_with("cancelled"));
            let metrics = s
                .last
                .as_ref()
                .map(|r| super::state::metrics_text(&r.metrics))
                .unwrap_or_default();
            let (status, time, outputs, note) = match (&s.last, skipped) {
                (_, Some(reason)) => (
                    "skipped".to_owned(),
                    "-".to_owned(),
                    String::new(),
                    reason.clone(),
                ),
                (Some(r), None) => (
                    match r.status {
                        AttemptStatus::Succeeded => "succeeded",
                        AttemptStatus::Cached => "cached",
                        AttemptStatus::Failed => "failed",
                    }
                    .to_owned(),
                    human_duration(Duration::from_millis(r.duration_ms)),
                    r.outputs
                        .iter()
                        .map(|(k, v)| format!("{k}={}", short_digest(&v.to_string())))
                        .collect::<Vec<_>>()
                        .join(" "),
                    match (&r.message, &r.reused_from) {
                        (Some(m), _) => m.lines().next().unwrap_or("").to_owned(),
                        (None, Some(from)) => format!("from run {from}"),
                        _ => String::new(),
                    },
                ),
                (None, None) => (
                    "running".to_owned(),
                    "-".to_owned(),
                    String::new(),
                    String::new(),
                ),
            };
            vec![
                view.label(id).to_owned(),
                status,
                s.attempts.to_string(),
                time,
                outputs,
                metrics,
                note,
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "STEP", "STATUS", "ATTEMPTS", "TIME", "OUTPUTS", "METRICS", "NOTE"
            ],
            &rows
        )
    );
    if !view.exports.is_empty() {
        let rows: Vec<Vec<String>> = view
            .exports
            .iter()
            .map(|e| {
                vec![
                    e.from.clone(),
                    e.url.clone(),
                    e.status.to_string(),
                    e.size.map(super::run::human_bytes).unwrap_or_default(),
                    e.digest
                        .map(|d| short_digest(&d.to_string()).to_owned())
                        .unwrap_or_default(),
                    match (&e.message, e.objects, e.uploaded) {
                        (Some(m), _, _) => m.lines().next().unwrap_or("").to_owned(),
                        (None, Some(n), Some(up)) if n > 1 => {
                            format!("{n} objects, {up} uploaded")
                        }
                        _ => String::new(),
                    },
                ]
            })
            .collect();
        println!();
        print!(
            "{}",
            table(&["EXPORT", "TO", "STATUS", "SIZE", "DIGEST", "NOTE"], &rows)
        );
    }
    Ok(())
}
