//! The `kiln` binary: the one place where the crates are wired together.

mod commands;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// kiln runs machine-learning pipelines described in YAML: small steps as sandboxed
/// WebAssembly, training as containers, one DAG for both.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, about, long_about = None, propagate_version = true)]
#[command(
    after_help = "Start with `kiln validate examples/digits/pipeline.yaml`.\n\
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Validate(args) => commands::validate::run(args),
        Command::Graph(args) => commands::graph::run(args),
        Command::Schema(args) => commands::schema::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
