//! `kiln export`: one run as a portable bundle.

use std::path::PathBuf;
use std::process::ExitCode;

use indicatif::{ProgressBar, ProgressStyle};
use kiln_record::bundle::ExportProgress;

use super::state::StateArgs;

/// Write a run to one file that `kiln replay` can replay anywhere, with nothing else.
///
/// The bundle holds the run record, the plan, and every component, input and output the run
/// used, each once, compressed with zstd; its first entry is a manifest with a format
/// version. It is written to a temporary file and renamed into place when complete.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The run id, a unique prefix of it, or `latest`
    #[arg(value_name = "RUN")]
    run: String,
    /// The bundle to write (conventionally `NAME.kiln`); replaced if it exists; `-` is stdout
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
    /// zstd level, 1 (fast) to 19 (small)
    #[arg(long, value_name = "N", default_value_t = 9, value_parser = clap::value_parser!(i32).range(1..=19))]
    level: i32,
    #[command(flatten)]
    state: StateArgs,
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let state = args.state.existing()?;
    let run_id = state.resolve_run(&args.run).map_err(anyhow::Error::msg)?;
    // `-o -`: the bundle is written whole to a temporary file first (it is renamed into
    // place when complete), then copied to stdout; what is said about it goes to stderr.
    let to_stdout = args.output.as_os_str() == "-";
    if to_stdout && std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        anyhow::bail!("`-o -` writes the bundle to stdout, which is a terminal: redirect it");
    }
    let spool = to_stdout.then(tempfile::tempdir).transpose()?;
    let path = spool
        .as_ref()
        .map_or(args.output.clone(), |dir| dir.path().join("run.kiln"));
    let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} objects {msg}")
                .expect("a valid template"),
        );
        Some(bar)
    } else {
        None
    };
    let mut progress = |p: ExportProgress| {
        let ExportProgress::Object { done, total, bytes } = p;
        if let Some(bar) = &bar {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
            bar.set_message(format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0)));
        }
    };
    let result = kiln_record::bundle::export_run(
        &state,
        &state.store(),
        &run_id,
        &path,
        args.level,
        &mut progress,
    );
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    match result {
        Ok(summary) if to_stdout => {
            let mut bundle = std::fs::File::open(&summary.path)?;
            std::io::copy(&mut bundle, &mut std::io::stdout().lock())?;
            eprintln!(
                "wrote run {run_id} to stdout: {} objects, {:.1} MiB",
                summary.objects,
                summary.bundle_bytes as f64 / (1024.0 * 1024.0)
            );
            Ok(ExitCode::SUCCESS)
        }
        Ok(summary) => {
            println!(
                "wrote {}: run {run_id}, {} objects, {:.1} MiB compressed to {:.1} MiB",
                summary.path.display(),
                summary.objects,
                summary.raw_bytes as f64 / (1024.0 * 1024.0),
                summary.bundle_bytes as f64 / (1024.0 * 1024.0)
            );
            println!("  replay it: kiln replay {}", summary.path.display());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error[{}]: {e}", e.code());
            Ok(ExitCode::from(2))
        }
    }
}
