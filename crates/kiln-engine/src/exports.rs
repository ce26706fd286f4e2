//! Exports: once a run's steps are done, the outputs the pipeline's `exports:` names are
//! copied out of the store to a bucket by an [`Exporter`], one after the other, each one
//! recorded ([`RecordEvent::Exported`]).
//!
//! An export whose step succeeded (ran, or came from the cache) is handed to the exporter;
//! one whose step failed, was skipped or cancelled is recorded as not exported, with the
//! reason, and does not fail the run by itself. An upload that fails fails the run. A
//! cancelled run exports nothing. The engine names no bucket client: the exporter is given
//! to it ([`crate::Engine::with_exporter`]).

use std::sync::Arc;

use kiln_cas::{BlobStore, Digest, ObjectKind};
use kiln_plan::PlannedExport;
use kiln_record::{ExportRecord, ExportStatus, RecordEvent};
use tokio_util::sync::CancellationToken;

use crate::engine::{Event, Shared, StepStatus, StepSummary};

/// One output to copy: what the engine hands an [`Exporter`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportTask {
    /// Where it goes, as planned: `s3://BUCKET/KEY`, or a prefix ending in `/`.
    pub to: String,
    /// The output's digest in the store.
    pub digest: Digest,
    /// A file (one object) or a folder (one object per file, under `to` as a prefix).
    pub kind: ObjectKind,
    /// The output's file name: a file exported to a prefix is named by it.
    pub file_name: String,
}

/// What an export did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportDone {
    /// The object's URL, or the prefix a folder's files went under.
    pub url: String,
    /// Bytes exported (every file of a folder).
    pub size: u64,
    /// Objects written or found holding these bytes already.
    pub objects: u64,
    /// Of those, the objects uploaded.
    pub uploaded: u64,
}

/// Bytes of an export on their way, for a progress display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportProgress {
    /// The object being uploaded.
    pub url: String,
    /// Bytes sent so far.
    pub done: u64,
    /// Its size.
    pub total: u64,
}

/// Copies outputs out of the store to where `exports:` says.
#[async_trait::async_trait]
pub trait Exporter: Send + Sync {
    /// Copies `task.digest` from `store` to `task.to`, skipping any object that holds those
    /// bytes already; `progress` hears about big uploads. The error says which URL and why.
    async fn export(
        &self,
        task: &ExportTask,
        store: Arc<dyn BlobStore>,
        progress: &(dyn Fn(ExportProgress) + Send + Sync),
    ) -> Result<ExportDone, String>;
}

/// Runs the plan's exports after its steps, records and announces each, and returns them.
pub(crate) async fn run_exports(
    shared: &Shared,
    exporter: Option<&Arc<dyn Exporter>>,
    steps: &[StepSummary],
    cancelled: bool,
    cancel: &CancellationToken,
) -> Vec<ExportRecord> {
    let mut done = Vec::with_capacity(shared.plan.exports.len());
    for export in &shared.plan.exports {
        let summary = steps.iter().find(|s| s.id == export.step);
        let record = match (summary, exporter) {
            _ if cancelled || cancel.is_cancelled() => {
                not_exported(shared, export, "the run was cancelled".into())
            }
            (Some(s), Some(exporter)) if s.status.is_ok() => {
                tokio::select! {
                    record = export_one(shared, exporter, export, s) => record,
                    () = cancel.cancelled() => failed(
                        shared,
                        export,
                        Some(s),
                        format!("{}: the run was cancelled during the upload", export.to),
                    ),
                }
            }
            (Some(s), _) if s.status.is_ok() => failed(
                shared,
                export,
                Some(s),
                "this kiln has no exporter to copy outputs to a bucket".into(),
            ),
            (Some(s), _) => not_exported(shared, export, why_not(s)),
            (None, _) => not_exported(
                shared,
                export,
                format!("step `{}` is not in the run", export.step),
            ),
        };
        shared.record(&RecordEvent::Exported(Box::new(record.clone())));
        shared.emit(Event::Exported(record.clone()));
        done.push(record);
    }
    done
}

async fn export_one(
    shared: &Shared,
    exporter: &Arc<dyn Exporter>,
    export: &PlannedExport,
    step: &StepSummary,
) -> ExportRecord {
    let Some(digest) = step.outputs.get(&export.output).copied() else {
        return failed(
            shared,
            export,
            Some(step),
            format!(
                "step `{}` has no output `{}` in this run",
                export.step, export.output
            ),
        );
    };
    let kind = match shared.store.kind(&digest).await {
        Ok(Some(kind)) => kind,
        Ok(None) => {
            return failed(
                shared,
                export,
                Some(step),
                format!("{}: output {digest} is not in the store", export.to),
            );
        }
        Err(e) => return failed(shared, export, Some(step), format!("{}: {e}", export.to)),
    };
    let file_name = shared.find(export.step.as_str()).map_or_else(
        || export.output.clone(),
        |s| s.output_file(&export.output).to_owned(),
    );
    let task = ExportTask {
        to: export.to.clone(),
        digest,
        kind,
        file_name,
    };
    let progress = |p: ExportProgress| {
        shared.emit(Event::Exporting(p));
    };
    tracing::info!(run = %shared.run_id, from = %export.from, to = %export.to, "exporting");
    match exporter
        .export(&task, shared.store.clone(), &progress)
        .await
    {
        Ok(done) => ExportRecord {
            from: export.from.clone(),
            step: export.step.clone(),
            output: export.output.clone(),
            url: done.url,
            status: if done.uploaded == 0 {
                ExportStatus::Unchanged
            } else {
                ExportStatus::Uploaded
            },
            digest: Some(digest),
            size: Some(done.size),
            objects: Some(done.objects),
            uploaded: Some(done.uploaded),
            message: None,
            at_ms: shared.now_ms(),
        },
        Err(message) => {
            tracing::warn!(run = %shared.run_id, to = %export.to, error = %message, "export failed");
            failed(shared, export, Some(step), message)
        }
    }
}

/// Why an export's step left nothing to export.
fn why_not(step: &StepSummary) -> String {
    match &step.status {
        StepStatus::Failed { .. } => format!("step `{}` failed", step.id),
        StepStatus::Skipped { reason } => format!("step `{}` was skipped: {reason}", step.id),
        StepStatus::Cancelled => format!("step `{}` was cancelled", step.id),
        StepStatus::Succeeded | StepStatus::Cached => String::new(),
    }
}

fn not_exported(shared: &Shared, export: &PlannedExport, message: String) -> ExportRecord {
    ExportRecord {
        from: export.from.clone(),
        step: export.step.clone(),
        output: export.output.clone(),
        url: export.to.clone(),
        status: ExportStatus::NotExported,
        digest: None,
        size: None,
        objects: None,
        uploaded: None,
        message: Some(message),
        at_ms: shared.now_ms(),
    }
}

fn failed(
    shared: &Shared,
    export: &PlannedExport,
    step: Option<&StepSummary>,
    message: String,
) -> ExportRecord {
    ExportRecord {
        status: ExportStatus::Failed,
        digest: step.and_then(|s| s.outputs.get(&export.output).copied()),
        ..not_exported(shared, export, message)
    }
}
