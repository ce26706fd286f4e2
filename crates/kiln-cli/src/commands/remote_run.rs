//! `kiln run --server URL`: the pipeline pinned here, what the server lacks uploaded, the
//! run submitted, and its record followed as it is written, then shown as `kiln show` shows
//! a run.

use std::path::Path;
use std::process::ExitCode;

use kiln_build::registry::{RegistryClient, RunStreamEvent};
use kiln_cas::{BlobStore, Digest};
use kiln_record::{AttemptStatus, RecordEvent, RunView};

use crate::Output;

/// What the local run's preparation hands over.
pub struct Prepared<'a> {
    pub plan: kiln_plan::Plan,
    pub source: &'a kiln_spec::SourceFile,
    pub pipeline_file: String,
    pub state: kiln_engine::StateDir,
    pub base_dir: &'a Path,
    pub output: Output,
}

pub fn run_remote(prepared: Prepared<'_>, client: RegistryClient) -> anyhow::Result<ExitCode> {
    let Prepared {
        mut plan,
        source,
        pipeline_file,
        state,
        base_dir,
        output,
    } = prepared;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let store: std::sync::Arc<dyn BlobStore> = std::sync::Arc::new(state.store());
        // Pinned here, on the client: built, hashed, registry references resolved there.
        let mut resolver = kiln_build::LocalResolver::new(&state, base_dir, &plan, store.clone());
        resolver.on_build(|step, command| eprintln!("building `{step}`: {command}"));
        resolver.on_fetch(crate::fetch_reporter());
        resolver.with_registry(client.clone());
        let pinned = match kiln_build::pin(&plan, &mut resolver).await {
            Ok(pinned) => pinned,
            Err(problems) => {
                drop(resolver);
                eprintln!("error: the run cannot start:");
                for p in problems {
                    eprintln!("  - {p}");
                }
                return Ok(ExitCode::from(2));
            }
        };
        for pin in resolver.registry_pins() {
            eprintln!(
                "component {} is {} ({})",
                pin.reference,
                pin.version,
                super::state::short_digest(&pin.digest.to_string())
            );
        }
        drop(resolver);
        let local = state.store();
        if let Err(problems) =
            super::declared::check(source, &mut plan, &pinned.components, &local).await
        {
            match problems {
                super::declared::Problems::Located(diagnostics) => {
                    eprint!("{}", source.render(&diagnostics, crate::stderr_color()))
                }
                super::declared::Problems::Unreadable(problems) => {
                    for p in problems {
                        eprintln!("  - {p}");
                    }
                }
            }
            return Ok(ExitCode::from(2));
        }
        // What the server must hold: every component and input, folders with their files.
        let roots: Vec<Digest> = pinned
            .components
            .values()
            .chain(pinned.workspace.values())
            .copied()
            .collect();
        let uploaded = client.upload_missing(&*store, &roots).await?;
        eprintln!(
            "{}: {} of the {} objects the run reads were missing and were uploaded ({})",
            client.url(),
            uploaded.sent,
            uploaded.needed,
            super::run::human_bytes(uploaded.bytes)
        );
        let digests = |m: &std::collections::BTreeMap<String, Digest>| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.to_string()))
                .collect::<std::collections::BTreeMap<_, _>>()
        };
        let plan_json = serde_json::to_value(&plan)?;
        let submission = serde_json::json!({
            "plan": plan_json,
            "components": digests(&pinned.components),
            "workspace": digests(&pinned.workspace),
            "pipeline_file": pipeline_file,
            "pipeline_text": source.text.to_string(),
        });
        let key = kiln_record::new_run_id();
        let run_id = client.submit(&submission, &key).await?;
        eprintln!("run {run_id} submitted to {}", client.url());
        // Ctrl-C cancels the run on the server (and a second one leaves at once).
        let cancelling = client.clone();
        let id = run_id.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!(
                    "\ncancelling run {id} on the server (Ctrl-C again to detach: it goes on there)"
                );
                if let Err(e) = cancelling.cancel(&id).await {
                    eprintln!("cannot cancel: {e}");
                }
                if tokio::signal::ctrl_c().await.is_ok() {
                    eprintln!("detached; follow it with `kiln show {id} --server ...` later");
                    std::process::exit(130);
                }
            }
        });
        let mut events: Vec<RecordEvent> = Vec::new();
        let mut ended = String::from("interrupted");
        let mut on_event = |event: RunStreamEvent| match event.kind.as_str() {
            "record" => match serde_json::from_str::<RecordEvent>(&event.data) {
                Ok(record) => {
                    progress(&record);
                    events.push(record);
                }
                Err(e) => eprintln!("warning: an event of the run does not read: {e}"),
            },
            "end" => {
                if let Ok(end) = serde_json::from_str::<serde_json::Value>(&event.data)
                    && let Some(status) = end["status"].as_str()
                {
                    ended = status.to_owned();
                }
            }
            _ => eprintln!("warning: the event stream said: {}", event.data),
        };
        client.follow(&run_id, &mut on_event).await?;
        let mut view = RunView::from_events(&events);
        super::state::in_order_of(&plan_json, &mut view);
        match output {
            Output::Text => {
                println!();
                super::show::print_view(&run_id, &view, output)?;
                eprintln!(
                    "\nthe run's record, artifacts and logs are on {}",
                    client.url()
                );
            }
            Output::Json => println!(
                "{}",
                serde_json::to_string_pretty(&summary_json(&run_id, &ended, &view))?
            ),
        }
        Ok(match ended.as_str() {
            "succeeded" => ExitCode::SUCCESS,
            "cancelled" => ExitCode::from(130),
            _ => ExitCode::FAILURE,
        })
    })
}

/// The run as `kiln run --output json` prints a local one, from its record.
fn summary_json(run_id: &str, status: &str, view: &RunView) -> serde_json::Value {
    let duration_ms = match &view.finished {
        Some(RecordEvent::RunFinished { duration_ms, .. }) => *duration_ms,
        _ => 0,
    };
    let steps: Vec<serde_json::Value> = view
        .steps
        .iter()
        .map(|(id, step)| {
            let last = step.last.as_ref();
            let status = match (last.map(|r| r.status), &step.skipped) {
                (_, Some(_)) if last.is_none() => "skipped",
                (Some(AttemptStatus::Succeeded), _) => "succeeded",
                (Some(AttemptStatus::Cached), _) => "cached",
                (Some(AttemptStatus::Failed), _) => "failed",
                (None, _) => "cancelled",
            };
            serde_json::json!({
                "id": id,
                "label": view.label(id),
                "status": status,
                "attempts": step.attempts,
                "duration_ms": last.map_or(0, |r| r.duration_ms),
                "outputs": last.map(|r| r.outputs.iter().map(|(k, v)| (k.clone(), v.to_string())).collect::<std::collections::BTreeMap<_, _>>()).unwrap_or_default(),
                "metrics": last.map(|r| r.metrics.clone()).unwrap_or_default(),
                "message": step.skipped.clone().or_else(|| last.and_then(|r| r.message.clone())),
                "failure_kind": last.and_then(|r| r.failure_kind),
            })
        })
        .collect();
    serde_json::json!({
        "run_id": run_id,
        "status": status,
        "duration_ms": duration_ms,
        "steps": steps,
        "exports": view.exports,
    })
}

/// One line per step event on stderr.
fn progress(event: &RecordEvent) {
    match event {
        RecordEvent::StepStarted { step, attempt, .. } => {
            if *attempt > 1 {
                eprintln!("  started    {step} (attempt {attempt})");
            } else {
                eprintln!("  started    {step}");
            }
        }
        RecordEvent::StepFinished(done) => {
            let status = match done.status {
                AttemptStatus::Succeeded => "succeeded",
                AttemptStatus::Cached => "cached",
                AttemptStatus::Failed => "failed",
            };
            eprintln!(
                "  {status:<10} {} {}",
                done.step,
                super::state::human_duration(std::time::Duration::from_millis(done.duration_ms))
            );
        }
        RecordEvent::StepSkipped { step, reason } => eprintln!("  skipped    {step}: {reason}"),
        _ => {}
    }
}
