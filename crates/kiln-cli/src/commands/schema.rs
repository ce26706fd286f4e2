//! `kiln schema`: the JSON Schema of the pipeline format.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

/// Print the JSON Schema of pipeline files, generated from kiln's own types.
///
/// Editors that use yaml-language-server (VS Code's YAML extension, Neovim, Helix) complete
/// and check a pipeline once its first line is:
///
///   # yaml-language-server: $schema=PATH/TO/pipeline.schema.json
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Write the schema to this file instead of stdout (`-` is stdout)
    #[arg(short, long, value_name = "PATH")]
    output: Option<PathBuf>,
}

/// The schema as pretty JSON, ending with a newline.
pub fn schema_json() -> String {
    let schema = schemars::schema_for!(kiln_spec::Pipeline);
    let mut text = serde_json::to_string_pretty(&schema).expect("a schema always serialises");
    text.push('\n');
    text
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let text = schema_json();
    match args.output.filter(|path| path.as_os_str() != "-") {
        Some(path) => std::fs::write(&path, text)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}
