//! `kiln build`: build the wasm components of a pipeline's steps given by source.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use kiln_build::{BuildFailure, BuildProgress, BuildRecipe, BuiltComponent, ComponentBuilder};
use kiln_plan::StepKind;

use super::state::{StateArgs, human_duration, short_digest};
use crate::Output;

/// Build the wasm components of the steps given by source (`wasm: {source, command, artifact}`).
///
/// A recipe runs only when the digest of its sources, its command or its artifact path changed
/// since it last built; each distinct source folder and command runs once. Files that git
/// would ignore, `target/` folders and hidden folders other than `.cargo/` are not sources.
/// Built components are kept in the state folder, where `kiln run` finds them (it builds
/// whatever is stale the same way before it runs). The toolchain is not part of the key:
/// pass `--force` after upgrading it.
///
/// Exit code: 0 when every component is built or up to date, 1 when a build failed, 2 when
/// the pipeline is invalid.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The pipeline file
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Set a param, as `kiln run` would: NAME=VALUE (repeatable)
    #[arg(short = 'p', long = "param", value_name = "NAME=VALUE", value_parser = crate::parse_param)]
    params: Vec<(String, String)>,
    /// Build even what is up to date
    #[arg(long)]
    force: bool,
    /// Print the result as JSON on stdout
    #[arg(long, value_enum, default_value_t)]
    output: Output,
    #[command(flatten)]
    state: StateArgs,
}

/// One step's build, for the summary.
struct StepBuild {
    step: String,
    duration: Duration,
    result: Result<BuiltComponent, BuildFailure>,
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (source, compiled) = kiln_plan::plan_file(&args.file, &args.params)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    if !compiled.diagnostics.is_empty() {
        eprint!(
            "{}",
            source.render(&compiled.diagnostics, crate::stderr_color())
        );
    }
    let Some(plan) = compiled.plan else {
        return Ok(ExitCode::from(2));
    };
    let state = args.state.for_pipeline(&args.file);
    let base_dir = args
        .file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), PathBuf::from);

    // Fan-out instances share their step's component: one build per step name.
    let mut recipes: Vec<(String, BuildRecipe)> = Vec::new();
    for step in &plan.steps {
        if let StepKind::Wasm { component, .. } = &step.kind
            && let Some(recipe) = BuildRecipe::of(component)
            && !recipes.iter().any(|(name, _)| *name == step.step)
        {
            recipes.push((step.step.clone(), recipe));
        }
    }

    let mut builder = ComponentBuilder::for_plan(state.clone(), &base_dir, &plan);
    builder.force(args.force);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let terminal = std::io::stderr().is_terminal();
    let mut builds = Vec::new();
    for (step, recipe) in &recipes {
        let started = Instant::now();
        let bar = terminal.then(|| spinner(format!("checking {step}")));
        let mut progress = |BuildProgress::Started { command, .. }| match &bar {
            Some(bar) => bar.set_message(format!("building {step}: {command}")),
            None => eprintln!("building {step}: {command}"),
        };
        let result = runtime.block_on(builder.build(step, recipe, &mut progress));
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        let build = StepBuild {
            step: step.clone(),
            duration: started.elapsed(),
            result,
        };
        eprintln!("{}", progress_line(&build));
        builds.push(build);
    }

    let failed = builds.iter().filter(|b| b.result.is_err()).count();
    match args.output {
        Output::Text => print_summary(&args, &builds),
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&summary_json(&builds, failed))?
        ),
    }
    Ok(if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn spinner(message: String) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_msg}")
            .expect("a valid template"),
    );
    bar.set_message(message);
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

fn status_word(build: &StepBuild) -> &'static str {
    match &build.result {
        Ok(built) if built.cached => "cached",
        Ok(_) => "built",
        Err(_) => "failed",
    }
}

fn progress_line(build: &StepBuild) -> String {
    let detail = match &build.result {
        Ok(built) => format!(" {}", short_digest(&built.digest.to_string())),
        Err(_) => String::new(),
    };
    format!(
        "{:<7} {} ({}){detail}",
        status_word(build),
        build.step,
        human_duration(build.duration)
    )
}

fn print_summary(args: &Args, builds: &[StepBuild]) {
    if builds.is_empty() {
        eprintln!("{}: no step is built from source", args.file.display());
        return;
    }
    let count = |word: &str| builds.iter().filter(|b| status_word(b) == word).count();
    for build in builds {
        if let Err(failure) = &build.result {
            eprintln!("\nerror: step `{}`: {}", build.step, failure.message);
            for line in &failure.log_tail {
                eprintln!("  {line}");
            }
        }
    }
    eprintln!(
        "\n{}: {} built, {} up to date, {} failed",
        args.file.display(),
        count("built"),
        count("cached"),
        count("failed")
    );
}

fn summary_json(builds: &[StepBuild], failed: usize) -> serde_json::Value {
    serde_json::json!({
        "status": if failed > 0 { "failed" } else { "succeeded" },
        "steps": builds.iter().map(|b| {
            let mut step = serde_json::json!({
                "step": b.step,
                "status": status_word(b),
                "duration_ms": b.duration.as_millis() as u64,
            });
            match &b.result {
                Ok(built) => {
                    step["key"] = built.key.to_string().into();
                    step["component"] = built.digest.to_string().into();
                    step["path"] = built.path.display().to_string().into();
                }
                Err(failure) => {
                    step["message"] = failure.to_string().into();
                    if let Some(log) = &failure.log {
                        step["log"] = log.display().to_string().into();
                    }
                }
            }
            step
        }).collect::<Vec<_>>(),
    })
}
