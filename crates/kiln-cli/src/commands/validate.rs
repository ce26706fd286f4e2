//! `kiln validate`: parse and plan pipeline files, resolve their components (building
//! source steps, with the build cache) and check each step's `with:` against the params its
//! component declares; report every problem.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::Output;

/// Check pipeline files: syntax, references, types, cycles, templates and paths, and each
/// wasm step's `with:` against the params its component declares.
///
/// Components are resolved as `kiln run` would: source steps are built (cached by the
/// digest of their sources, in the state folder), so the first check of a fresh pipeline
/// may take as long as its builds; `--no-build` checks the file alone. Exits 0 when every
/// file is valid (warnings allowed), 1 when any file has errors.
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
    /// Check the files only: do not resolve or build components, so `with:` is not checked
    /// against what they declare
    #[arg(long)]
    no_build: bool,
    #[command(flatten)]
    state: super::state::StateArgs,
    #[command(flatten)]
    server: super::remote::ServerArgs,
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut any_error = false;
    let mut reports = Vec::new();
    for file in &args.files {
        let (source, mut compiled) = kiln_plan::plan_file(file, &args.params)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let mut unresolved = Vec::new();
        if !args.no_build
            && let Some(plan) = &mut compiled.plan
        {
            match check_components(&args, file, &source, plan)? {
                Ok(()) => {}
                Err(super::declared::Problems::Located(found)) => {
                    compiled.diagnostics.extend(found);
                    compiled.plan = None;
                }
                Err(super::declared::Problems::Unreadable(problems)) => {
                    unresolved = problems;
                    compiled.plan = None;
                }
            }
        }
        compiled.diagnostics.extend(
            unresolved
                .into_iter()
                .map(|problem| kiln_spec::Diagnostic::error("kiln::pin::component", problem)),
        );
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

/// Resolves (builds) the components of `plan`'s wasm steps and checks what they declare.
fn check_components(
    args: &Args,
    file: &std::path::Path,
    source: &kiln_spec::SourceFile,
    plan: &mut kiln_plan::Plan,
) -> anyhow::Result<Result<(), super::declared::Problems>> {
    if !plan
        .steps
        .iter()
        .any(|s| matches!(s.kind, kiln_plan::StepKind::Wasm { .. }))
    {
        return Ok(Ok(()));
    }
    let state = args.state.for_pipeline(file);
    let base_dir = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| std::path::PathBuf::from("."), std::path::PathBuf::from);
    let registry = args.server.client()?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    Ok(runtime.block_on(async {
        let store = state.store();
        let shared: std::sync::Arc<dyn kiln_cas::BlobStore> = std::sync::Arc::new(state.store());
        let mut resolver = kiln_build::LocalResolver::new(&state, &base_dir, plan, shared);
        if let Some(client) = registry {
            resolver.with_registry(client);
        }
        resolver.on_build(|step, command| eprintln!("building `{step}`: {command}"));
        let components = kiln_build::pin_components(plan, &mut resolver)
            .await
            .map_err(super::declared::Problems::Unreadable)?;
        drop(resolver);
        super::declared::check(source, plan, &components, &store).await
    }))
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
