//! `kiln artifact get`: copy an artifact out of the store.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use kiln_cas::Digest;
use kiln_engine::{RunView, read_record};

use super::state::StateArgs;

/// Work with artifacts in the store.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Copy a step's output (or any artifact by digest) to a path
    ///
    /// `kiln artifact get RUN STEP OUTPUT -o PATH` or `kiln artifact get blake3:<hex> -o PATH`.
    /// The copy is verified against its digest; a folder is copied whole.
    Get {
        /// RUN STEP OUTPUT, or one digest
        #[arg(value_name = "WHAT", num_args = 1..=3, required = true)]
        what: Vec<String>,
        /// Where to write it (must not exist); `-` writes a file's bytes to stdout
        #[arg(short, long, value_name = "PATH")]
        output: PathBuf,
        #[command(flatten)]
        state: StateArgs,
    },
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let Command::Get {
        what,
        output,
        state,
    } = args.command;
    let state = state.existing()?;
    let digest: Digest = match what.as_slice() {
        [digest] => digest.parse().with_context(|| {
            format!("`{digest}` is not a digest (blake3:<hex>); or give RUN STEP OUTPUT")
        })?,
        [run, step, name] => {
            let run_id = state.resolve_run(run).map_err(anyhow::Error::msg)?;
            let view = RunView::from_events(&read_record(&state.record_path(&run_id))?);
            let record = view
                .resolve_step(step)
                .and_then(|id| view.step(id))
                .and_then(|s| s.last.as_ref())
                .with_context(|| format!("run {run_id} has no finished step `{step}`"))?;
            let digest = record.outputs.get(name).with_context(|| {
                let has: Vec<&str> = record.outputs.keys().map(String::as_str).collect();
                if has.is_empty() {
                    format!(
                        "step `{step}` of run {run_id} has no outputs: it {} \
                         (`kiln show {run_id}` says more)",
                        match record.status {
                            kiln_record::AttemptStatus::Failed => "failed",
                            _ => "wrote none",
                        }
                    )
                } else {
                    format!(
                        "step `{step}` of run {run_id} has no output `{name}`; it has: {}",
                        has.join(", ")
                    )
                }
            })?;
            *digest
        }
        _ => anyhow::bail!("give RUN STEP OUTPUT, or one digest"),
    };
    if output.as_os_str() == "-" {
        // Streamed as it is read: a blob found corrupt at the end is an error after the
        // bytes went out, and the exit status says so.
        let mut blob = state.store().open_verified(&digest).map_err(|e| match e {
            kiln_cas::CasError::NotABlob { .. } => anyhow::anyhow!(
                "{digest} is a folder; `-o -` writes one file to stdout: give a path to copy the folder to"
            ),
            other => other.into(),
        })?;
        std::io::copy(&mut blob, &mut std::io::stdout().lock())
            .with_context(|| format!("cannot write {digest} to stdout"))?;
        return Ok(ExitCode::SUCCESS);
    }
    if output.exists() {
        anyhow::bail!("{} exists; kiln does not overwrite it", output.display());
    }
    state
        .store()
        .materialize(&digest, &output)
        .with_context(|| format!("cannot copy {digest} to {}", output.display()))?;
    make_writable(&output);
    eprintln!("wrote {} ({digest})", output.display());
    Ok(ExitCode::SUCCESS)
}

/// The store's copies are read-only; a copy handed to the user is theirs to edit.
fn make_writable(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() | 0o200;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
        if meta.is_dir()
            && let Ok(entries) = std::fs::read_dir(path)
        {
            for entry in entries.flatten() {
                make_writable(&entry.path());
            }
        }
    }
}
