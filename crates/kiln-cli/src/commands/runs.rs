//! `kiln runs`: the runs in a state folder.

use std::process::ExitCode;
use std::time::Duration;

use kiln_engine::{AttemptStatus, RecordEvent, RunView, read_record};

use super::state::{StateArgs, human_duration, table};
use crate::Output;

/// List the runs in the state folder, oldest first.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print JSON on stdout
    #[arg(long, value_enum, default_value_t)]
    output: Output,
    #[command(flatten)]
    state: StateArgs,
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let state = args.state.existing()?;
    let mut rows = Vec::new();
    let mut json = Vec::new();
    for id in state.run_ids()? {
        let view = match read_record(&state.record_path(&id)) {
            Ok(events) => RunView::from_events(&events),
            Err(_) => RunView::default(),
        };
        let pipeline = match &view.started {
            Some(RecordEvent::RunStarted { pipeline, .. }) => pipeline.clone(),
            _ => "?".into(),
        };
        let (status, duration) = match &view.finished {
            Some(RecordEvent::RunFinished {
                status,
                duration_ms,
                ..
            }) => (
                status.to_string(),
                human_duration(Duration::from_millis(*duration_ms)),
            ),
            _ => ("unfinished".into(), "-".into()),
        };
        let count = |want: AttemptStatus| {
            view.steps
                .iter()
                .filter(|(_, s)| s.last.as_ref().is_some_and(|r| r.status == want))
                .count()
        };
        let (ran, cached, failed) = (
            count(AttemptStatus::Succeeded),
            count(AttemptStatus::Cached),
            count(AttemptStatus::Failed),
        );
        json.push(serde_json::json!({
            "run_id": id, "pipeline": pipeline, "status": status,
            "steps": view.steps.len(), "succeeded": ran, "cached": cached, "failed": failed,
        }));
        rows.push(vec![
            id,
            pipeline,
            status,
            duration,
            format!(
                "{} ({ran} ran, {cached} cached, {failed} failed)",
                view.steps.len()
            ),
        ]);
    }
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&json)?),
        Output::Text if rows.is_empty() => eprintln!("no runs in {}", state.root().display()),
        Output::Text => print!(
            "{}",
            table(&["RUN", "PIPELINE", "STATUS", "TIME", "STEPS"], &rows)
        ),
    }
    Ok(ExitCode::SUCCESS)
}
