//! `kiln validate`: parse and plan pipeline files, report every problem.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::Output;

/// Check pipeline files: syntax, references, types, cycles, templates and paths.
///
/// Exits 0 when every file is valid (warnings allowed), 1 when any file has errors.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Pipeline files to check
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Set a param for the check, as `kiln run` would: NAME=VALUE (repeatable)
    #[arg(short = 'p', long = "param", value_name = "NAME=VALUE", value_parser = crate::parse_param)]
    params: Vec<(String, String)>,
    /// Print diagnostics as JSON on stdout instead of text on stderr
    #[arg(long, value_enum, default_value_t)]
    output: Output,
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut any_error = false;
    let mut reports = Vec::new();
    for file in &args.files {
        let (source, compiled) = kiln_plan::plan_file(file, &args.params)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let errors = compiled.diagnostics.iter().filter(|d| d.is_error()).count();
        let warnings = compiled.diagnostics.len() - errors;
        any_error |= errors > 0;
        match args.output {
            Output::Text => {
                eprint!(
                    "{}",
                    source.render(&compiled.diagnostics, crate::stderr_color())
                );
                match &compiled.plan {
                    Some(plan) => eprintln!(
                        "{}: valid: {} steps ({} planned){}",
                        file.display(),
                        plan_step_names(plan),
                        plan.steps.len(),
                        plural_warnings(warnings)
                    ),
                    None => eprintln!(
                        "{}: {errors} error{}{}",
                        file.display(),
                        if errors == 1 { "" } else { "s" },
                        plural_warnings(warnings)
                    ),
                }
            }
            Output::Json => reports.push(serde_json::json!({
                "file": file.display().to_string(),
                "valid": compiled.plan.is_some(),
                "errors": errors,
                "warnings": warnings,
                "diagnostics": source.to_json(&compiled.diagnostics),
            })),
        }
    }
    if args.output == Output::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "files": reports }))?
        );
    }
    Ok(if any_error {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn plan_step_names(plan: &kiln_plan::Plan) -> usize {
    let mut names: Vec<&str> = plan.steps.iter().map(|s| s.step.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    names.len()
}

fn plural_warnings(n: usize) -> String {
    match n {
        0 => String::new(),
        1 => ", 1 warning".to_owned(),
        n => format!(", {n} warnings"),
    }
}
