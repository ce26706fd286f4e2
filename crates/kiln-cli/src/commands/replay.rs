//! `kiln replay`: run a recorded run's wasm steps again and compare with the record.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use kiln_engine::{
    Executors, ReplayOptions, ReplayProgress, ReplayReport, StateDir, StepReplay, Verdict,
};

use super::state::{StateArgs, human_duration, short_digest, table};
use crate::Output;

/// Run a recorded run's wasm steps again and compare their outputs with the record.
///
/// Every wasm step runs again with its recorded component, inputs, params, seed, clock start
/// and fuel budget, and each output is compared, digest by digest, with the recorded one.
/// Container steps are served from their recorded outputs (or run again with
/// `--rerun-containers`). RUN is a run in the state folder, or a bundle written by
/// `kiln export`, which needs nothing else.
///
/// With `--with STEP=FILE`, STEP runs FILE instead of its recorded component and every step
/// reads what its upstream steps wrote in the replay: the report says which outputs changed,
/// step by step. This is a regression test of one step's change without a GPU or a cluster.
///
/// Exit code: 0 when every replayed step is identical (or allowed to change), 1 when a step
/// diverged (kiln::replay::nondeterministic, kiln::replay::failed) or changed
/// (kiln::replay::changed), 3 when some step could not be replayed and none differed, 2 when
/// the replay could not start. The codes are explained in docs/replay.md.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A run id, a unique prefix of it, `latest`, or a bundle file (`run.kiln`)
    #[arg(value_name = "RUN|BUNDLE")]
    run: String,
    /// Replay STEP with another component: STEP=path/to/new.wasm (repeatable)
    #[arg(long = "with", value_name = "STEP=FILE", value_parser = crate::parse_param)]
    with: Vec<(String, String)>,
    /// Do not fail when STEP's outputs change (with `--with`; repeatable)
    #[arg(long, value_name = "STEP")]
    allow_change: Vec<String>,
    /// Run container steps again instead of serving their recorded outputs
    #[arg(long)]
    rerun_containers: bool,
    /// Most steps replayed at once; steps still wait for what they read, and the report
    /// keeps the plan's order [default: the number of cores]
    #[arg(short, long, value_name = "N")]
    jobs: Option<usize>,
    /// How re-run container steps run: process, podman or docker
    #[arg(long, value_name = "BACKEND", default_value = "process")]
    containers: kiln_container::Backend,
    /// Secrets for container steps' `secrets:`: a YAML file of `name: value`, or a folder
    /// with one file per secret [default: only `KILN_SECRET_<NAME>` variables]
    #[arg(long, value_name = "FILE|DIR")]
    secrets: Option<PathBuf>,
    /// Keep the replay's logs, scratch and (for a bundle) imported store in DIR [default: a
    /// folder under the state's `replays/` (for a bundle, a temporary folder), removed at the
    /// end]
    #[arg(long, value_name = "DIR")]
    work: Option<PathBuf>,
    /// Where compiled components are kept [default: as for `kiln run`, once per machine:
    /// `$KILN_CACHE_DIR`, else `$XDG_CACHE_HOME/kiln/compiled`, else
    /// `~/.cache/kiln/compiled`; where none is set, the state folder's for runs and a
    /// temporary folder for bundles]
    #[arg(long, value_name = "DIR")]
    wasm_cache: Option<PathBuf>,
    /// Print the report as JSON on stdout
    #[arg(long, value_enum, default_value_t)]
    output: Output,
    #[command(flatten)]
    state: StateArgs,
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    // Everything a replay writes goes under one temporary folder, unless `--work` says where.
    let temp = tempfile::Builder::new()
        .prefix("kiln-replay-")
        .tempdir()
        .context("cannot create a temporary folder for the replay")?;
    let (state, run_id, wasm_cache) = match bundle_path(&args.run) {
        Some(bundle) => {
            // Read and check the whole bundle before anything is written outside `temp`.
            let state = StateDir::new(temp.path().join("state"));
            let manifest = match kiln_record::bundle::import_bundle(&bundle, &state, &state.store())
            {
                Ok(manifest) => manifest,
                Err(e) => {
                    eprintln!("error[{}]: {e}", e.code());
                    return Ok(ExitCode::from(2));
                }
            };
            let cache = match &args.wasm_cache {
                Some(dir) => dir.clone(),
                None => crate::compiled_cache_or(temp.path().join("wasm-cache")),
            };
            (state, manifest.run_id, cache)
        }
        None => {
            let state = args.state.existing()?;
            let run_id = state.resolve_run(&args.run).map_err(anyhow::Error::msg)?;
            let cache = args
                .wasm_cache
                .clone()
                .unwrap_or_else(|| crate::compiled_cache_or(state.wasm_cache_dir()));
            (state, run_id, cache)
        }
    };
    // A run's replay works beside its state, as the run did: on this disk, not in a
    // temporary folder that may be elsewhere (a system /tmp full of files made and removed
    // is several times slower to create files in); removed when the replay ends.
    let beside = match (&args.work, bundle_path(&args.run)) {
        (None, None) => {
            let replays = state.root().join("replays");
            std::fs::create_dir_all(&replays)
                .with_context(|| format!("cannot create {}", replays.display()))?;
            Some(
                tempfile::Builder::new()
                    .prefix("replay-")
                    .tempdir_in(&replays)
                    .with_context(|| format!("cannot create a folder in {}", replays.display()))?,
            )
        }
        _ => None,
    };
    let work = match (&args.work, &beside) {
        (Some(dir), _) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            dir.clone()
        }
        (None, Some(beside)) => beside.path().join("work"),
        (None, None) => temp.path().join("work"),
    };
    replay(&args, &state, &run_id, &wasm_cache, &work)
}

/// The argument as a bundle file, if it names one.
fn bundle_path(arg: &str) -> Option<PathBuf> {
    let path = Path::new(arg);
    (path.is_file() || arg.ends_with(".kiln")).then(|| path.to_owned())
}

fn replay(
    args: &Args,
    state: &StateDir,
    run_id: &str,
    wasm_cache: &Path,
    work: &Path,
) -> anyhow::Result<ExitCode> {
    let jobs = args.jobs.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let jobs = jobs.max(1);
    let executors =
        Executors {
            wasm: crate::wasm_executor_at(wasm_cache, jobs)?,
            container: Some(args.containers.executor_with(std::sync::Arc::new(
                crate::load_secrets(args.secrets.as_deref())?,
            ))),
        };
    let options = ReplayOptions {
        rerun_containers: args.rerun_containers,
        replace: args
            .with
            .iter()
            .map(|(step, file)| (step.clone(), PathBuf::from(file)))
            .collect(),
        work_dir: work.to_owned(),
        jobs,
    };
    let text = args.output == Output::Text;
    if text {
        eprintln!("replaying run {run_id}");
    }
    let progress = move |p: ReplayProgress| {
        if !text {
            return;
        }
        match p {
            ReplayProgress::Started { step } => eprintln!("  running   {step}"),
            ReplayProgress::Finished(s) => eprintln!(
                "  {:<9} {}{}",
                s.verdict.word(),
                s.step,
                match s.verdict {
                    Verdict::Served | Verdict::Skipped => String::new(),
                    _ => format!(
                        " ({})",
                        human_duration(Duration::from_millis(s.duration_ms))
                    ),
                }
            ),
        }
    };
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let store: std::sync::Arc<dyn kiln_cas::BlobStore> = std::sync::Arc::new(state.store());
    let report = runtime.block_on(async {
        let report =
            kiln_engine::replay_run(state, store, run_id, &executors, &options, &progress).await;
        kiln_container::cleanups_done().await;
        report
    });
    let report = match report {
        Ok(report) => report,
        Err(e) => {
            eprintln!("error[{}]: {e}", e.code());
            return Ok(ExitCode::from(2));
        }
    };
    let code = exit_code(&report, &args.allow_change);
    if args.output == Output::Json {
        let mut value = serde_json::to_value(&report)?;
        value["exit_code"] = code.into();
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print_report(&report, &args.allow_change, args.work.is_some());
    }
    Ok(ExitCode::from(code))
}

/// 1 for a divergence or a change not allowed, 3 for steps that could not be replayed, else 0.
fn exit_code(report: &ReplayReport, allow_change: &[String]) -> u8 {
    let allowed = |s: &StepReplay| {
        allow_change
            .iter()
            .any(|a| a == &s.step || s.step.split('[').next() == Some(a.as_str()))
    };
    if report
        .steps
        .iter()
        .any(|s| s.verdict == Verdict::Diverged || (s.verdict == Verdict::Changed && !allowed(s)))
    {
        1
    } else if report.count(Verdict::CouldNotReplay) > 0 {
        3
    } else {
        0
    }
}

fn print_report(report: &ReplayReport, allow_change: &[String], kept: bool) {
    println!();
    let rows: Vec<Vec<String>> = report
        .steps
        .iter()
        .map(|s| {
            let outputs = s
                .outputs
                .iter()
                .map(|o| {
                    if o.same {
                        format!("{}={}", o.name, short_digest(&o.replayed))
                    } else {
                        format!(
                            "{}={}→{}",
                            o.name,
                            short_digest(&o.recorded),
                            short_digest(&o.replayed)
                        )
                    }
                })
                .collect::<Vec<_>>()
                .join(" ");
            let metrics = s
                .metrics
                .iter()
                .map(|m| match (m.recorded, m.replayed) {
                    (Some(a), Some(b)) if a == b => format!("{}={}", m.name, round(a)),
                    (a, b) => format!("{}={}→{}", m.name, opt(a), opt(b)),
                })
                .collect::<Vec<_>>()
                .join(" ");
            let note = match (s.verdict, &s.code) {
                (Verdict::Identical | Verdict::Served, None) if s.replaced => {
                    "component replaced".to_owned()
                }
                (_, Some(code)) => code.to_string(),
                (Verdict::Skipped | Verdict::Identical, None) => {
                    s.message.clone().unwrap_or_default()
                }
                _ => String::new(),
            };
            vec![
                s.step.to_string(),
                s.verdict.word().to_owned(),
                if s.log.is_none() {
                    "-".to_owned()
                } else {
                    human_duration(Duration::from_millis(s.duration_ms))
                },
                outputs,
                metrics,
                note,
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &["STEP", "VERDICT", "TIME", "OUTPUTS", "METRICS", "NOTE"],
            &rows
        )
    );

    for s in &report.steps {
        let Some(code) = s.code else { continue };
        if s.verdict == Verdict::Skipped || code == "kiln::replay::upstream" {
            continue;
        }
        println!();
        println!("{} {} [{code}]", s.verdict.word(), s.step);
        if let Some(message) = &s.message {
            println!("  {message}");
        }
        for o in s.outputs.iter().filter(|o| !o.same) {
            println!("  output `{}`:", o.name);
            println!("    recorded {}", o.recorded);
            println!("    replayed {}", o.replayed);
            for path in &o.paths {
                println!("    {path}");
            }
            if let Some(diff) = &o.diff {
                for line in diff.lines() {
                    println!("    {line}");
                }
            }
        }
        if let Some(log) = &s.log
            && kept
        {
            println!("  log: {}", log.display());
        }
    }

    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for s in &report.steps {
        *counts.entry(s.verdict.word()).or_default() += 1;
    }
    let order = [
        "identical",
        "changed",
        "diverged",
        "served",
        "skipped",
        "could-not-replay",
    ];
    let summary: Vec<String> = order
        .iter()
        .filter_map(|w| counts.get(w).map(|n| format!("{n} {w}")))
        .collect();
    println!();
    let code = exit_code(report, allow_change);
    println!(
        "replay of run {} {}: {} in {}",
        report.run_id,
        match code {
            0 => "matches the record",
            1 => "differs from the record",
            _ => "is incomplete",
        },
        summary.join(", "),
        human_duration(Duration::from_millis(report.duration_ms))
    );
    if code != 0 && !kept {
        println!("  (pass --work DIR to keep the replay's logs)");
    }
}

fn round(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

fn opt(x: Option<f64>) -> String {
    x.map_or("none".to_owned(), |x| round(x).to_string())
}
