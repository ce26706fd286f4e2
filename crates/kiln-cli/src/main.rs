//! The `kiln` binary: the one place where the crates are wired together.

mod commands;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// kiln runs machine-learning pipelines described in YAML: small steps as sandboxed
/// WebAssembly, training as containers, one DAG for both.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, propagate_version = true)]
#[command(
    after_help = "Try `kiln run examples/digits/pipeline.yaml` from the repository root.\n\
    The format is described in docs/pipeline-format.md."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check pipeline files and report every problem at once
    Validate(commands::validate::Args),
    /// Draw a pipeline's DAG as Graphviz dot or Mermaid
    Graph(commands::graph::Args),
    /// Print the JSON Schema of the pipeline format, for editors
    Schema(commands::schema::Args),
    /// Build the wasm components of steps given by source, when stale
    Build(commands::build::Args),
    /// Run a pipeline on this machine
    Run(commands::run::Args),
    /// List the runs in the state folder
    Runs(commands::runs::Args),
    /// Show one run step by step
    Show(commands::show::Args),
    /// Print a step's log from a run
    Logs(commands::logs::Args),
    /// Say why a step ran instead of coming from the cache
    Explain(commands::explain::Args),
    /// Copy artifacts out of the store
    Artifact(commands::artifact::Args),
    /// Run a recorded run's wasm steps again and compare their outputs with the record
    Replay(commands::replay::Args),
    /// Write a run to one file that `kiln replay` can replay anywhere
    Export(commands::export::Args),
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Output {
    /// For people.
    #[default]
    Text,
    /// For tools and editors.
    Json,
}

/// Whether to colour what goes to stderr.
pub fn stderr_color() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// Splits a `-p NAME=VALUE` argument.
pub fn parse_param(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(format!("`{s}` is not NAME=VALUE")),
    }
}

/// The executor for wasm steps: one wasmtime engine, precompiled components kept in the
/// state folder, an instance pool sized to the run's parallelism.
pub fn wasm_executor(
    state: &kiln_engine::StateDir,
    jobs: usize,
) -> anyhow::Result<Option<std::sync::Arc<dyn kiln_engine::Executor>>> {
    wasm_executor_at(&state.root().join("wasm-cache"), jobs)
}

/// The executor for wasm steps, with its precompiled components kept in `cache_dir`.
pub fn wasm_executor_at(
    cache_dir: &std::path::Path,
    jobs: usize,
) -> anyhow::Result<Option<std::sync::Arc<dyn kiln_engine::Executor>>> {
    let mut options = kiln_wasm::RuntimeOptions::new();
    options
        .concurrency(jobs.max(1))
        .on_compile(kiln_wasm::CompileListener::new(|notice| match notice {
            // Compiling a large component (a Python one is tens of MiB) takes a while, once
            // per machine: say so rather than look stuck.
            kiln_wasm::CompileNotice::Started { path, bytes } if *bytes >= 1 << 20 => eprintln!(
                "compiling {} ({:.1} MiB) for this machine; this happens once",
                path.display(),
                *bytes as f64 / (1024.0 * 1024.0)
            ),
            kiln_wasm::CompileNotice::Finished { path, took } => {
                eprintln!("compiled {} in {:.1}s", path.display(), took.as_secs_f64())
            }
            _ => {}
        }));
    let runtime = kiln_wasm::WasmRuntime::with_options(cache_dir, &options)
        .map_err(|e| anyhow::anyhow!("cannot start the wasm runtime: {e}"))?;
    Ok(Some(std::sync::Arc::new(kiln_wasm::WasmExecutor::new(
        runtime,
    ))))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Validate(args) => commands::validate::run(args),
        Command::Graph(args) => commands::graph::run(args),
        Command::Schema(args) => commands::schema::run(args),
        Command::Build(args) => commands::build::run(args),
        Command::Run(args) => commands::run::run(args),
        Command::Runs(args) => commands::runs::run(args),
        Command::Show(args) => commands::show::run(args),
        Command::Logs(args) => commands::logs::run(args),
        Command::Explain(args) => commands::explain::run(args),
        Command::Artifact(args) => commands::artifact::run(args),
        Command::Replay(args) => commands::replay::run(args),
        Command::Export(args) => commands::export::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
