//! `kiln run`: plan a pipeline and run it here.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{IsTerminal, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use kiln_engine::{
    Engine, EngineConfig, Event, Executors, RunInput, RunStatus, RunSummary, StepStatus,
};
use tokio_util::sync::CancellationToken;

use super::state::{StateArgs, human_duration, short_digest, table};
use crate::Output;

/// Run a pipeline on this machine.
///
/// Wasm steps run in-process; container steps run as local processes (the default: the image
/// is not used) or with podman or docker. Results are cached by content in the state folder:
/// a second run with the same inputs is served from the cache. Ctrl-C stops running steps
/// and records the run as cancelled.
///
/// Compiled wasm components are kept once per machine, in `$KILN_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/kiln/compiled`, else `~/.cache/kiln/compiled` (in the state folder's
/// `wasm-cache/` where none of these is set). Warnings go to stderr; `RUST_LOG` sets what
/// else is logged (`RUST_LOG=kiln_engine=debug`).
///
/// Outputs named in the pipeline's `exports:` are copied to their buckets once the steps are
/// done (credentials from the environment: `AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT_URL`...); an
/// object that holds the same bytes already is not uploaded again.
///
/// Exit code: 0 when every step succeeded or was cached or skipped by its condition, 1 when a
/// step or an export failed, 130 when cancelled, 2 when the run could not start.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The pipeline file
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Set a param: NAME=VALUE (repeatable)
    #[arg(short = 'p', long = "param", value_name = "NAME=VALUE", value_parser = crate::parse_param)]
    params: Vec<(String, String)>,
    /// Most steps running at once [default: the number of cores]
    #[arg(short, long, value_name = "N")]
    jobs: Option<usize>,
    /// Stop everything at the first failure instead of finishing independent branches
    #[arg(long)]
    fail_fast: bool,
    /// Run every step even when a cached result exists
    #[arg(long)]
    no_cache: bool,
    /// Keep each failed attempt's scratch folder (inputs, what it wrote) under the state
    /// folder's `kept/RUN/`, and print where
    #[arg(long)]
    keep_scratch: bool,
    /// How container steps run: process (on the host, image unused), podman or docker
    #[arg(long, value_name = "BACKEND", default_value = "process")]
    containers: kiln_container::Backend,
    /// Secrets for container steps' `secrets:`: a YAML file of `name: value`, or a folder
    /// with one file per secret [default: only `KILN_SECRET_<NAME>` variables]
    #[arg(long, value_name = "FILE|DIR")]
    secrets: Option<PathBuf>,
    /// Stream each step's output as it runs, and log what kiln does (unless `RUST_LOG` says
    /// otherwise)
    #[arg(short, long)]
    verbose: bool,
    /// Print the result as JSON on stdout
    #[arg(long, value_enum, default_value_t)]
    output: Output,
    #[command(flatten)]
    state: StateArgs,
    /// Submit the run to this kiln server (`http://HOST:8600`) instead of running it here:
    /// pinned here, what the server lacks uploaded, the run followed as it goes
    #[command(flatten)]
    server: super::remote::ServerArgs,
    /// Run here, taking `name@version` components from this kiln server's registry
    #[arg(
        long,
        value_name = "URL",
        env = "KILN_REGISTRY",
        conflicts_with = "server"
    )]
    registry: Option<String>,
}

impl Args {
    /// Whether `-v` was given.
    pub fn verbose(&self) -> bool {
        self.verbose
    }
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (source, compiled) = kiln_plan::plan_file(&args.file, &args.params)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let color = crate::stderr_color();
    if !compiled.diagnostics.is_empty() {
        eprint!("{}", source.render(&compiled.diagnostics, color));
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
    if let Some(client) = args.server.client()? {
        if args.registry.as_deref().is_some_and(|r| !r.is_empty()) {
            anyhow::bail!(
                "--server runs the pipeline on that server, with its registry; --registry is for runs here: give one"
            );
        }
        let prepared = super::remote_run::Prepared {
            plan,
            source: &source,
            pipeline_file: args.file.display().to_string(),
            state,
            base_dir: &base_dir,
            output: args.output,
        };
        return super::remote_run::run_remote(prepared, client);
    }
    let registry = args
        .registry
        .as_deref()
        .filter(|url| !url.is_empty())
        .map(|url| {
            kiln_build::registry::RegistryClient::new(url, args.server.token.clone())
                .map_err(anyhow::Error::msg)
        })
        .transpose()?;
    let mut config = EngineConfig {
        fail_fast: args.fail_fast,
        use_cache: !args.no_cache,
        keep_scratch: args.keep_scratch,
        ..EngineConfig::default()
    };
    if let Some(jobs) = args.jobs {
        config.jobs = jobs.max(1);
    }
    // A pipeline without wasm steps neither starts wasmtime nor touches the compiled cache.
    let has_wasm = plan
        .steps
        .iter()
        .any(|s| matches!(s.kind, kiln_plan::StepKind::Wasm { .. }));
    let executors =
        Executors {
            wasm: if has_wasm {
                crate::wasm_executor(&state, config.jobs)?
            } else {
                None
            },
            container: Some(args.containers.executor_with(std::sync::Arc::new(
                crate::load_secrets(args.secrets.as_deref())?,
            ))),
        };
    let engine = Engine::new(state.clone(), executors, config)
        .with_exporter(std::sync::Arc::new(crate::BucketExporter::new(&state)));
    let labels: Labels = std::sync::Arc::new(std::sync::Mutex::new(
        plan.steps
            .iter()
            .map(|s| (s.id.clone(), s.label().to_owned()))
            .collect(),
    ));
    let input = RunInput {
        plan,
        components: Default::default(),
        workspace: Default::default(),
        pipeline_file: args.file.display().to_string(),
        pipeline_text: source.text.to_string(),
    };

    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let summary = runtime.block_on(async {
        let cancel = CancellationToken::new();
        let on_signal = cancel.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                crate::eprintln_above_bar(
                    "\ncancelling: stopping running steps (Ctrl-C again to quit at once)",
                );
                on_signal.cancel();
                if tokio::signal::ctrl_c().await.is_ok() {
                    std::process::exit(130);
                }
            }
        });
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let reporter = tokio::spawn(report(rx, state.clone(), args.verbose, labels.clone()));
        // Pin first, here on the client: every component built or resolved to a digest in
        // the store. The engine builds and resolves nothing itself.
        let mut input = input;
        let store: std::sync::Arc<dyn kiln_cas::BlobStore> = std::sync::Arc::new(state.store());
        let building = tx.clone();
        let mut resolver = kiln_build::LocalResolver::new(&state, &base_dir, &input.plan, store);
        resolver.on_build(move |step, command| {
            let _ = building.send(Event::Building {
                step: step.into(),
                command: command.to_owned(),
            });
        });
        resolver.on_fetch(crate::fetch_reporter());
        if let Some(client) = registry {
            resolver.with_registry(client);
        }
        let result = match kiln_build::pin(&input.plan, &mut resolver).await {
            Ok(pinned) => {
                for pin in resolver.registry_pins() {
                    crate::eprintln_above_bar(&format!(
                        "component {} is {} ({})",
                        pin.reference,
                        pin.version,
                        short_digest(&pin.digest.to_string())
                    ));
                }
                drop(resolver);
                // What the components declare: `with:` checked, defaults filled in.
                let store = state.store();
                match super::declared::check(&source, &mut input.plan, &pinned.components, &store)
                    .await
                {
                    Ok(()) => {
                        input.components = pinned.components;
                        input.workspace = pinned.workspace;
                        engine.run(input, cancel, Some(tx)).await
                    }
                    Err(problems) => {
                        drop(tx);
                        Err(kiln_engine::EngineError::Preflight(match problems {
                            super::declared::Problems::Located(diagnostics) => {
                                eprint!("{}", source.render(&diagnostics, color));
                                let n = diagnostics.len();
                                vec![format!(
                                    "{n} problem{} with `with:` and the params the components declare (above)",
                                    if n == 1 { "" } else { "s" }
                                )]
                            }
                            super::declared::Problems::Unreadable(problems) => problems,
                        }))
                    }
                }
            }
            Err(problems) => {
                drop(resolver);
                drop(tx);
                Err(kiln_engine::EngineError::Preflight(problems))
            }
        };
        let _ = reporter.await;
        // Containers of steps that were cancelled or timed out are removed before kiln exits.
        kiln_container::cleanups_done().await;
        result
    });
    let summary = match summary {
        Ok(summary) => summary,
        Err(kiln_engine::EngineError::Preflight(problems)) => {
            eprintln!("error: the run cannot start:");
            for p in problems {
                eprintln!("  - {p}");
            }
            return Ok(ExitCode::from(2));
        }
        Err(e) => return Err(e.into()),
    };
    match args.output {
        Output::Text => print_summary(&summary, &state, &args.state, &labels),
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&summary_json(&summary, &labels))?
        ),
    }
    Ok(match summary.status {
        RunStatus::Succeeded => ExitCode::SUCCESS,
        RunStatus::Failed => ExitCode::FAILURE,
        RunStatus::Cancelled => ExitCode::from(130),
    })
}

/// How people read each step of the plan (`train[lr=0.1]` for a fan-out instance).
/// How people read the run's steps; fan-outs over lists steps wrote add theirs as they go.
type Labels = std::sync::Arc<std::sync::Mutex<BTreeMap<kiln_plan::StepId, String>>>;

fn label(labels: &Labels, id: &str) -> String {
    labels
        .lock()
        .expect("labels lock")
        .get(id)
        .map_or_else(|| id.to_owned(), String::clone)
}

/// Shows progress: a bar on a terminal, one line per event otherwise.
async fn report(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Event>,
    state: kiln_engine::StateDir,
    verbose: bool,
    labels: Labels,
) {
    let terminal = std::io::stderr().is_terminal();
    let mut bar: Option<ProgressBar> = None;
    let mut total = 0;
    let mut done = 0;
    let mut run_id = String::new();
    let mut running: BTreeSet<kiln_plan::StepId> = BTreeSet::new();
    let mut tails: BTreeMap<kiln_plan::StepId, u64> = BTreeMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(150));
    let mut export_bar: Option<ProgressBar> = None;
    let say = |bar: &Option<ProgressBar>, line: String| match bar {
        Some(bar) => bar.println(line),
        None => eprintln!("{line}"),
    };
    loop {
        let event = tokio::select! {
            event = rx.recv() => match event {
                Some(event) => event,
                None => break,
            },
            _ = tick.tick() => {
                if verbose {
                    for (id, offset) in tails.iter_mut() {
                        for line in read_new_lines(&state.log_path(&run_id, id), offset) {
                            say(&bar, format!("  {id} | {line}"));
                        }
                    }
                }
                continue;
            }
        };
        match event {
            Event::RunStarted {
                run_id: id,
                total: n,
            } => {
                total = n;
                run_id = id;
                say(&bar, format!("run {run_id}: {total} steps"));
                if terminal {
                    let b = ProgressBar::new(total as u64);
                    b.set_style(
                        ProgressStyle::with_template(
                            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {wide_msg}",
                        )
                        .expect("a valid template"),
                    );
                    b.enable_steady_tick(Duration::from_millis(100));
                    crate::log_above(Some(&b));
                    bar = Some(b);
                }
            }
            Event::Building { step, command } => say(&bar, format!("building {step}: {command}")),
            Event::StepStarted { id, attempt } => {
                running.insert(id.clone());
                tails.entry(id.clone()).or_insert(0);
                let retry = if attempt > 1 {
                    format!(" (attempt {attempt})")
                } else {
                    String::new()
                };
                if bar.is_none() {
                    eprintln!(
                        "[{done:>w$}/{total}] started   {}{retry}",
                        label(&labels, &id),
                        w = digits(total)
                    );
                }
            }
            Event::StepRetrying {
                id,
                attempt,
                delay,
                message,
            } => {
                say(
                    &bar,
                    format!(
                        "retrying {} in {} (attempt {attempt} failed: {})",
                        label(&labels, &id),
                        human_duration(delay),
                        first_line(&message)
                    ),
                );
            }
            Event::StepFinished(step) => {
                done += 1;
                running.remove(&step.id);
                if verbose && let Some(offset) = tails.get_mut(&step.id) {
                    for line in read_new_lines(&state.log_path(&run_id, &step.id), offset) {
                        say(&bar, format!("  {} | {line}", label(&labels, &step.id)));
                    }
                }
                tails.remove(&step.id);
                let detail = match &step.status {
                    StepStatus::Failed { message, .. } => format!(": {}", first_line(message)),
                    StepStatus::Skipped { reason } => format!(": {reason}"),
                    _ => String::new(),
                };
                let line = format!(
                    "[{done:>w$}/{total}] {:<9} {} ({}){detail}",
                    step.status.word(),
                    label(&labels, &step.id),
                    human_duration(step.duration),
                    w = digits(total)
                );
                say(&bar, line);
                if let Some(b) = &bar {
                    b.set_position(done as u64);
                }
            }
            Event::Expanded {
                id,
                instances,
                labels: named,
            } => {
                // The instances take the fan-out step's place in the count.
                total = total + instances.len() - 1;
                labels.lock().expect("labels lock").extend(named);
                say(
                    &bar,
                    format!(
                        "{} fans out to {} instance{}",
                        label(&labels, &id),
                        instances.len(),
                        if instances.len() == 1 { "" } else { "s" }
                    ),
                );
                if let Some(b) = &bar {
                    b.set_length(total as u64);
                }
            }
            Event::CacheExpired { id, reason } => {
                say(
                    &bar,
                    format!("{}: {reason}; running it again", label(&labels, &id)),
                );
            }
            Event::Exporting(progress) => {
                if export_bar.is_none() && terminal {
                    let b = ProgressBar::new(progress.total).with_style(
                        ProgressStyle::with_template(
                            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                        )
                        .expect("a valid template")
                        .progress_chars("=> "),
                    );
                    b.set_message(format!("exporting {}", progress.url));
                    export_bar = Some(b);
                }
                match &export_bar {
                    Some(b) => b.set_position(progress.done),
                    None => say(
                        &bar,
                        format!(
                            "exporting {}: {} of {}",
                            progress.url,
                            human_bytes(progress.done),
                            human_bytes(progress.total)
                        ),
                    ),
                }
            }
            Event::Exported(export) => {
                if let Some(b) = export_bar.take() {
                    b.finish_and_clear();
                }
                say(&bar, export_line(&export));
            }
            Event::RunFinished { .. } => {}
        }
        if let Some(b) = &bar {
            b.set_message(running.iter().cloned().collect::<Vec<_>>().join(", "));
        }
    }
    if let Some(b) = bar {
        crate::log_above(None);
        b.finish_and_clear();
    }
}

/// One line for an export that is done: `exported train.model to s3://... (1.2 MiB)`.
pub(crate) fn export_line(export: &kiln_engine::ExportRecord) -> String {
    use kiln_engine::ExportStatus;
    let size = export.size.map(human_bytes).unwrap_or_default();
    let objects = match export.objects {
        Some(n) if n != 1 => format!(", {n} objects"),
        _ => String::new(),
    };
    let message = export.message.as_deref().unwrap_or_default();
    match export.status {
        ExportStatus::Uploaded => {
            let some = match (export.objects, export.uploaded) {
                (Some(n), Some(up)) if up < n => format!(", {up} uploaded, the rest unchanged"),
                _ => String::new(),
            };
            format!(
                "exported  {} to {} ({size}{objects}{some})",
                export.from, export.url
            )
        }
        ExportStatus::Unchanged => format!(
            "unchanged {} at {} ({size}{objects}): it holds these bytes already, not uploaded again",
            export.from, export.url
        ),
        ExportStatus::Failed => format!("export of {} failed: {message}", export.from),
        ExportStatus::NotExported => {
            format!("not exported {} to {}: {message}", export.from, export.url)
        }
    }
}

/// A size as people read it: `512 B`, `1.2 KiB`, `3.4 MiB`, `5.6 GiB`.
pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

fn digits(n: usize) -> usize {
    n.to_string().len()
}

/// The line of a failure message worth a progress line: the last one, which for a command
/// is the end of its log.
fn first_line(s: &str) -> &str {
    s.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
}

/// New complete lines of a growing log file since `offset`.
fn read_new_lines(path: &std::path::Path, offset: &mut u64) -> Vec<String> {
    let Ok(mut file) = std::fs::File::open(path) else {
        return Vec::new();
    };
    if file.seek(SeekFrom::Start(*offset)).is_err() {
        return Vec::new();
    }
    let mut buf = Vec::new();
    if file.read_to_end(&mut buf).is_err() {
        return Vec::new();
    }
    let Some(end) = buf.iter().rposition(|&b| b == b'\n') else {
        return Vec::new();
    };
    *offset += end as u64 + 1;
    String::from_utf8_lossy(&buf[..end])
        .lines()
        .map(str::to_owned)
        .collect()
}

fn print_summary(
    summary: &RunSummary,
    state: &kiln_engine::StateDir,
    state_args: &StateArgs,
    labels: &Labels,
) {
    let rows: Vec<Vec<String>> = summary
        .steps
        .iter()
        .map(|s| {
            vec![
                label(labels, &s.id).to_owned(),
                s.status.word().to_owned(),
                human_duration(s.duration),
                if s.status == StepStatus::Cached {
                    "yes".into()
                } else {
                    "no".into()
                },
                s.outputs
                    .iter()
                    .map(|(k, v)| format!("{k}={}", short_digest(&v.to_string())))
                    .collect::<Vec<_>>()
                    .join(" "),
                super::state::metrics_text(&s.metrics),
            ]
        })
        .collect();
    eprintln!();
    eprint!(
        "{}",
        table(
            &["STEP", "STATUS", "TIME", "CACHED", "OUTPUTS", "METRICS"],
            &rows
        )
    );
    let failed: Vec<_> = summary
        .steps
        .iter()
        .filter_map(|s| match &s.status {
            StepStatus::Failed { message, kind } => Some((s, kind, message)),
            _ => None,
        })
        .collect();
    for (step, kind, message) in &failed {
        eprintln!(
            "\nstep {} failed ({kind}):\n{}",
            label(labels, &step.id),
            indent(message)
        );
    }
    let failed_exports: Vec<_> = summary
        .exports
        .iter()
        .filter(|e| e.status == kiln_engine::ExportStatus::Failed)
        .collect();
    if !summary.exports.is_empty() {
        let rows: Vec<Vec<String>> = summary
            .exports
            .iter()
            .map(|e| {
                vec![
                    e.from.clone(),
                    e.url.clone(),
                    e.status.to_string(),
                    e.size.map(human_bytes).unwrap_or_default(),
                ]
            })
            .collect();
        eprintln!();
        eprint!("{}", table(&["EXPORT", "TO", "STATUS", "SIZE"], &rows));
    }
    for export in &failed_exports {
        eprintln!(
            "\nexport of {} failed:\n{}",
            export.from,
            indent(export.message.as_deref().unwrap_or_default())
        );
    }
    let cached = summary
        .steps
        .iter()
        .filter(|s| s.status == StepStatus::Cached)
        .count();
    let here = std::path::absolute(".kiln").ok();
    let state_flag = if state_args.state.is_none() && std::path::absolute(state.root()).ok() != here
    {
        format!(" --state {}", state.root().display())
    } else {
        String::new()
    };
    eprintln!(
        "\nrun {} {} in {} ({} steps, {cached} cached)\n  details: kiln show {}{state_flag}",
        summary.run_id,
        summary.status,
        human_duration(summary.duration),
        summary.steps.len(),
        summary.run_id,
    );
    if !failed.is_empty() {
        eprintln!(
            "  logs:    kiln logs {} {}{state_flag}",
            summary.run_id, failed[0].0.id
        );
    }
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn summary_json(summary: &RunSummary, labels: &Labels) -> serde_json::Value {
    serde_json::json!({
        "run_id": summary.run_id,
        "status": summary.status,
        "duration_ms": summary.duration.as_millis() as u64,
        "steps": summary.steps.iter().map(|s| {
            let (reason, kind) = match &s.status {
                StepStatus::Failed { kind, message } => (Some(message.clone()), Some(*kind)),
                StepStatus::Skipped { reason } => (Some(reason.to_string()), None),
                _ => (None, None),
            };
            serde_json::json!({
                "id": s.id,
                "label": label(labels, &s.id),
                "status": s.status.word(),
                "attempts": s.attempts,
                "duration_ms": s.duration.as_millis() as u64,
                "outputs": s.outputs.iter().map(|(k, v)| (k.clone(), v.to_string())).collect::<BTreeMap<_, _>>(),
                "metrics": s.metrics,
                "message": reason,
                "failure_kind": kind,
            })
        }).collect::<Vec<_>>(),
        "exports": summary.exports,
    })
}
