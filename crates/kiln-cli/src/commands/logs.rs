//! `kiln logs`: a step's output in a run.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;

use super::state::StateArgs;

/// Print what a step wrote to stdout and stderr in a run.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The run id, a unique prefix of it, or `latest`
    #[arg(value_name = "RUN")]
    run: String,
    /// The step id (`train[0]` for a fan-out instance)
    #[arg(value_name = "STEP")]
    step: String,
    #[command(flatten)]
    state: StateArgs,
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let state = args.state.existing()?;
    let run_id = state.resolve_run(&args.run).map_err(anyhow::Error::msg)?;
    let path = state.log_path(&run_id, &args.step);
    if !path.exists() {
        let logs = state.run_dir(&run_id).join("logs");
        let mut have: Vec<String> = std::fs::read_dir(&logs)
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| {
                        e.file_name()
                            .to_str()?
                            .strip_suffix(".log")
                            .map(|id| id.replace('~', "/"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        have.sort();
        anyhow::bail!(
            "run {run_id} has no log for step `{}` (a cached or skipped step has none); logs: {}",
            args.step,
            if have.is_empty() {
                "none".to_owned()
            } else {
                have.join(", ")
            }
        );
    }
    let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    std::io::stdout().write_all(&bytes)?;
    Ok(ExitCode::SUCCESS)
}
