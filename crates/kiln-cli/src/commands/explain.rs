//! `kiln explain`: why a step ran instead of coming from the cache.

use std::process::ExitCode;

use kiln_engine::{AttemptStatus, KeyParts, RunView, diff_keys, read_record};

use super::state::StateArgs;

/// Say why a step ran (or was cached) in a run: what changed in its cache key since the last
/// earlier run with that step — a param, an input's bytes, the component, the image.
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
    let view = RunView::from_events(&read_record(&state.record_path(&run_id))?);
    let Some(record) = view.step(&args.step).and_then(|s| s.last.clone()) else {
        if let Some(reason) = view.step(&args.step).and_then(|s| s.skipped.clone()) {
            println!("step `{}` did not run in {run_id}: {reason}", args.step);
            return Ok(ExitCode::SUCCESS);
        }
        anyhow::bail!("run {run_id} has no step `{}`", args.step);
    };
    let after: KeyParts = serde_json::from_value(record.key.clone())?;
    if record.status == AttemptStatus::Cached {
        println!(
            "step `{}` was served from the cache: key {} matches run {}",
            args.step,
            record.cache_key,
            record.reused_from.as_deref().unwrap_or("?")
        );
        return Ok(ExitCode::SUCCESS);
    }
    // The most recent earlier run in which this step has a key.
    let earlier = state
        .run_ids()?
        .into_iter()
        .filter(|id| id.as_str() < run_id.as_str())
        .rev()
        .find_map(|id| {
            let events = read_record(&state.record_path(&id)).ok()?;
            let last = RunView::from_events(&events)
                .step(&args.step)?
                .last
                .clone()?;
            Some((id, last))
        });
    let Some((before_id, before)) = earlier else {
        println!(
            "step `{}` ran in {run_id} because no earlier run in {} has it: nothing to reuse",
            args.step,
            state.root().display()
        );
        return Ok(ExitCode::SUCCESS);
    };
    let before_key: KeyParts = serde_json::from_value(before.key.clone())?;
    let changes = diff_keys(&before_key, &after);
    if changes.is_empty() {
        println!(
            "step `{}` has the same key as in {before_id} ({}); it ran because {}",
            args.step,
            record.cache_key,
            if before.status == AttemptStatus::Failed {
                "it failed there, and failures are not cached".to_owned()
            } else {
                "caching was off (`--no-cache` or `cache: false`) or the cached outputs were gone from the store".to_owned()
            }
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("step `{}` ran in {run_id}; since {before_id}:", args.step);
    for change in changes {
        println!("  {}: {} -> {}", change.what, change.before, change.after);
    }
    Ok(ExitCode::SUCCESS)
}
