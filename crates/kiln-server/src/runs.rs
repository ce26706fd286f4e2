//! Runs submitted to the server: a pinned plan in (every component and workspace input a
//! digest, uploaded first as blobs), the engine runs it in this process, its record is in the
//! metadata store, and its events stream out as Server-Sent Events.
//!
//! The events are the run's record, one SSE event per record event with its position as the
//! event id (1, 2, ...), so a client that reconnects with `Last-Event-ID` resumes after what
//! it saw; a stream ends with an `end` event naming how the run ended (or `interrupted` when
//! the server that ran it stopped first). An `Idempotency-Key` header makes a retried
//! submission answer the run the first one made.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::Stream;
use kiln_cas::Digest;
use kiln_engine::{Engine, RunInput};
use kiln_record::{MetadataStore, RecordEvent};

/// How a run ended, from its last record event, if it did.
async fn ended_as(meta: &SqlMetadata, run_id: &str, events: usize) -> Option<String> {
    let last = meta
        .events_after(run_id, events.checked_sub(1)?)
        .await
        .ok()?;
    match last.first() {
        Some((_, RecordEvent::RunFinished { status, .. })) => Some(status.to_string()),
        _ => None,
    }
}
use serde::{Deserialize, Serialize};
use sqlx::Row;
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::Scope;
use crate::metadata::SqlMetadata;
use crate::problem::Problem;

/// How often an event stream looks for new events of a run in progress.
const POLL: Duration = Duration::from_millis(100);

/// What runs here: the engine and the runs in progress in this process.
pub struct Runs {
    engine: Engine,
    meta: Arc<SqlMetadata>,
    live: Mutex<HashMap<String, tokio_util::sync::CancellationToken>>,
}

impl Runs {
    /// Runs on `engine`, whose records are in `meta` (the engine's own metadata store).
    pub fn new(engine: Engine, meta: Arc<SqlMetadata>) -> Self {
        Self {
            engine,
            meta,
            live: Mutex::default(),
        }
    }

    fn is_live(&self, run_id: &str) -> bool {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(run_id)
    }
}

pub(crate) fn routes() -> axum::Router<Arc<AppState>> {
    axum::Router::new()
        .route("/v1/runs", post(submit).get(list_runs))
        .route("/v1/runs/{id}", get(show_run))
        .route("/v1/runs/{id}/cancel", post(cancel_run))
        .route("/v1/runs/{id}/events", get(events))
}

/// A pinned plan: what `kiln run` hands its engine, as JSON.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Submission {
    /// The plan (as `kiln_plan::Plan` serialises it).
    #[schema(value_type = Object)]
    pub plan: serde_json::Value,
    /// Each wasm step's component, by step, as a digest the server's store holds.
    #[serde(default)]
    pub components: BTreeMap<String, String>,
    /// Each workspace and external input, by its path or URL, as a digest the store holds.
    #[serde(default)]
    pub workspace: BTreeMap<String, String>,
    /// The pipeline file's name, for the record.
    pub pipeline_file: String,
    /// The pipeline file's text (its digest goes in the record).
    pub pipeline_text: String,
}

/// A run as submitted.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Submitted {
    /// Its id.
    pub run_id: String,
}

/// A run's state, from its record.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RunState {
    /// Its id.
    pub run_id: String,
    /// `running`, `succeeded`, `failed`, `cancelled`, or `interrupted` (its server stopped
    /// before it ended).
    pub status: String,
    /// Its steps, by id.
    pub steps: BTreeMap<String, StepState>,
    /// How many events its record holds.
    pub events: usize,
}

/// A step's state.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StepState {
    /// `running`, `succeeded`, `cached`, `failed` or `skipped`.
    pub status: String,
    /// Its last attempt.
    pub attempt: u32,
    /// Its outputs' digests.
    pub outputs: BTreeMap<String, String>,
    /// What it reported.
    pub metrics: BTreeMap<String, f64>,
}

fn runs_of(state: &AppState) -> Result<&Runs, Problem> {
    state.runs.as_ref().ok_or_else(|| {
        Problem::new(
            StatusCode::NOT_IMPLEMENTED,
            "no-runner",
            "No runner",
            "this server runs no pipelines (it was started without an engine)",
        )
    })
}

fn parse(what: &str, text: &str) -> Result<Digest, Problem> {
    text.parse().map_err(|e| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "bad-digest",
            "Bad digest",
            format!("{what}: `{text}` is not a digest: {e}"),
        )
    })
}

#[utoipa::path(
    post,
    path = "/v1/runs",
    tag = "runs",
    description = "Submits a pinned plan: every digest it names must be in the store (upload \
                   the missing ones first). With an `Idempotency-Key`, a retry answers the run \
                   the first submission made.",
    request_body = Submission,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retried submission create one run")),
    responses(
        (status = 201, description = "Started", body = Submitted),
        (status = 200, description = "The run this idempotency key made", body = Submitted),
        (status = 400, description = "`bad-request` or `bad-digest`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`missing-blobs`: digests the store lacks (`missing`)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["write"]), ()),
)]
pub(crate) async fn submit(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Json<Submission>, JsonRejection>,
) -> Result<Response, Problem> {
    state.tokens.authorize(&headers, Scope::Write)?;
    let runs = runs_of(&state)?;
    let Json(submission) = body.map_err(|e| Problem::bad_request(e.body_text()))?;
    let plan: kiln_plan::Plan = serde_json::from_value(submission.plan)
        .map_err(|e| Problem::bad_request(format!("the plan does not read: {e}")))?;
    let mut components = BTreeMap::new();
    for (step, digest) in &submission.components {
        components.insert(
            step.clone(),
            parse(&format!("component of `{step}`"), digest)?,
        );
    }
    let mut workspace = BTreeMap::new();
    for (path, digest) in &submission.workspace {
        workspace.insert(path.clone(), parse(&format!("input {path}"), digest)?);
    }
    let mut missing = Vec::new();
    for digest in components.values().chain(workspace.values()) {
        if !state.store.contains(digest).await? && !missing.contains(&digest.to_string()) {
            missing.push(digest.to_string());
        }
    }
    if !missing.is_empty() {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "missing-blobs",
            "Missing blobs",
            format!(
                "the store lacks {} of the digests the plan names: upload them (PUT /v1/blobs/{{digest}}) and submit again",
                missing.len()
            ),
        )
        .with("missing", missing));
    }
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let Some(key) = &key
        && let Some(existing) = claim_key(&state, key).await?
    {
        return Ok((StatusCode::OK, Json(Submitted { run_id: existing })).into_response());
    }
    let input = RunInput {
        plan,
        components,
        workspace,
        pipeline_file: submission.pipeline_file,
        pipeline_text: submission.pipeline_text,
    };
    let mut handle = runs.engine.start(input);
    // Nobody reads the engine's own events here: the stream is the record.
    drop(handle.events());
    let run_id = handle.id().to_owned();
    runs.live
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(run_id.clone(), handle.cancel_token());
    if let Some(key) = &key {
        sqlx::query("UPDATE idempotency_keys SET run_id = $1 WHERE idem_key = $2")
            .bind(&run_id)
            .bind(key)
            .execute(state.db.pool())
            .await?;
    }
    tracing::info!(run = %run_id, "run submitted");
    let owner = state.clone();
    let id = run_id.clone();
    tokio::spawn(async move {
        match handle.join().await {
            Ok(summary) => tracing::info!(run = %id, status = %summary.status, "run finished"),
            Err(e) => tracing::warn!(run = %id, error = %e, "run failed to finish"),
        }
        if let Some(runs) = &owner.runs {
            runs.live
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
        }
    });
    Ok((StatusCode::CREATED, Json(Submitted { run_id })).into_response())
}

/// Claims an idempotency key: `None` when this submission is the first with it, else the run
/// the first one made (waiting a moment for it to be recorded).
async fn claim_key(state: &AppState, key: &str) -> Result<Option<String>, Problem> {
    if key.is_empty() || key.len() > 200 {
        return Err(Problem::bad_request(
            "an Idempotency-Key is 1 to 200 characters",
        ));
    }
    let claimed = sqlx::query(
        "INSERT INTO idempotency_keys (idem_key, run_id, created_ms) VALUES ($1, NULL, $2) \
         ON CONFLICT (idem_key) DO NOTHING",
    )
    .bind(key)
    .bind(i64::try_from(kiln_record::now_ms()).unwrap_or(i64::MAX))
    .execute(state.db.pool())
    .await?;
    if claimed.rows_affected() == 1 {
        return Ok(None);
    }
    for _ in 0..100 {
        let row = sqlx::query("SELECT run_id FROM idempotency_keys WHERE idem_key = $1")
            .bind(key)
            .fetch_one(state.db.pool())
            .await?;
        if let Some(run_id) = row.try_get::<Option<String>, _>("run_id")? {
            return Ok(Some(run_id));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(Problem::new(
        StatusCode::CONFLICT,
        "submission-in-progress",
        "Submission in progress",
        "another submission with this Idempotency-Key has not started its run yet; try again",
    ))
}

fn run_state(run_id: &str, record: &[RecordEvent], live: bool) -> RunState {
    let mut steps: BTreeMap<String, StepState> = BTreeMap::new();
    let mut status = if live { "running" } else { "interrupted" }.to_owned();
    for event in record {
        match event {
            RecordEvent::StepStarted { step, attempt, .. } => {
                let entry = steps.entry(step.to_string()).or_insert_with(|| StepState {
                    status: "running".into(),
                    attempt: *attempt,
                    outputs: BTreeMap::new(),
                    metrics: BTreeMap::new(),
                });
                entry.status = "running".into();
                entry.attempt = *attempt;
            }
            RecordEvent::StepFinished(done) => {
                steps.insert(
                    done.step.to_string(),
                    StepState {
                        status: match done.status {
                            kiln_record::AttemptStatus::Succeeded => "succeeded",
                            kiln_record::AttemptStatus::Cached => "cached",
                            kiln_record::AttemptStatus::Failed => "failed",
                        }
                        .into(),
                        attempt: done.attempt,
                        outputs: done
                            .outputs
                            .iter()
                            .map(|(k, v)| (k.clone(), v.to_string()))
                            .collect(),
                        metrics: done.metrics.clone(),
                    },
                );
            }
            RecordEvent::StepSkipped { step, .. } => {
                steps.insert(
                    step.to_string(),
                    StepState {
                        status: "skipped".into(),
                        attempt: 0,
                        outputs: BTreeMap::new(),
                        metrics: BTreeMap::new(),
                    },
                );
            }
            RecordEvent::RunFinished { status: s, .. } => status = s.to_string(),
            _ => {}
        }
    }
    RunState {
        run_id: run_id.to_owned(),
        status,
        steps,
        events: record.len(),
    }
}

/// A run's record so far: empty for a run this server has started whose record the engine
/// has not made yet.
async fn record_of(runs: &Runs, run_id: &str) -> Result<Vec<RecordEvent>, Problem> {
    match runs.meta.record(run_id).await {
        Err(kiln_record::RecordError::NoRun(_)) if runs.is_live(run_id) => Ok(Vec::new()),
        other => other.map_err(|e| record_problem(run_id, e)),
    }
}

fn record_problem(run_id: &str, e: kiln_record::RecordError) -> Problem {
    match e {
        kiln_record::RecordError::NoRun(_) => Problem::not_found(format!("no run {run_id}")),
        other => Problem::internal(other),
    }
}

#[utoipa::path(
    get,
    path = "/v1/runs/{id}",
    tag = "runs",
    description = "A run's status and its steps', from its record.",
    params(("id" = String, Path, description = "The run's id")),
    responses(
        (status = 200, description = "The run", body = RunState),
        (status = 404, description = "`not-found`", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["read"]), ()),
)]
pub(crate) async fn show_run(
    State(state): State<Arc<AppState>>,
    Path(run_id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<RunState>, Problem> {
    state.tokens.authorize(&headers, Scope::Read)?;
    let runs = runs_of(&state)?;
    let record = record_of(runs, &run_id).await?;
    Ok(Json(run_state(&run_id, &record, runs.is_live(&run_id))))
}

#[utoipa::path(
    get,
    path = "/v1/runs",
    tag = "runs",
    description = "Every run's id, oldest first.",
    responses((status = 200, description = "Run ids", body = Vec<String>)),
    security(("bearer" = ["read"]), ()),
)]
pub(crate) async fn list_runs(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Vec<String>>, Problem> {
    state.tokens.authorize(&headers, Scope::Read)?;
    let runs = runs_of(&state)?;
    Ok(Json(runs.meta.run_ids().await.map_err(Problem::internal)?))
}

#[utoipa::path(
    post,
    path = "/v1/runs/{id}/cancel",
    tag = "runs",
    description = "Asks a run in progress to stop: it ends as cancelled.",
    params(("id" = String, Path, description = "The run's id")),
    responses(
        (status = 202, description = "Asked"),
        (status = 404, description = "`not-found`: no such run in progress here", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["write"]), ()),
)]
pub(crate) async fn cancel_run(
    State(state): State<Arc<AppState>>,
    Path(run_id): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, Problem> {
    state.tokens.authorize(&headers, Scope::Write)?;
    let runs = runs_of(&state)?;
    let token = runs
        .live
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&run_id)
        .cloned()
        .ok_or_else(|| Problem::not_found(format!("no run {run_id} in progress here")))?;
    token.cancel();
    Ok(StatusCode::ACCEPTED)
}

#[utoipa::path(
    get,
    path = "/v1/runs/{id}/events",
    tag = "runs",
    description = "The run's record as Server-Sent Events: one `record` event per record \
                   event (JSON) with its position as id, from the start or after \
                   `Last-Event-ID`; keep-alive comments while nothing happens; an `end` event \
                   with how the run ended (`interrupted` when its server stopped first).",
    params(
        ("id" = String, Path, description = "The run's id"),
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this event"),
    ),
    responses(
        (status = 200, description = "The stream", content_type = "text/event-stream", body = String),
        (status = 404, description = "`not-found`", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["read"]), ()),
)]
pub(crate) async fn events(
    State(state): State<Arc<AppState>>,
    Path(run_id): Path<String>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, Problem> {
    state.tokens.authorize(&headers, Scope::Read)?;
    runs_of(&state)?;
    let after: usize = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    // The run must exist now; a stream that starts is the stream of a run.
    let runs = runs_of(&state)?;
    let first = match runs.meta.events_after(&run_id, after).await {
        Err(kiln_record::RecordError::NoRun(_)) if runs.is_live(&run_id) => Vec::new(),
        other => other.map_err(|e| record_problem(&run_id, e))?,
    };
    struct Cursor {
        state: Arc<AppState>,
        run_id: String,
        sent: usize,
        pending: std::collections::VecDeque<SseEvent>,
        fetched: Option<Vec<(usize, RecordEvent)>>,
        committed: tokio::sync::watch::Receiver<u64>,
        ended: bool,
    }
    let cursor = Cursor {
        committed: runs.meta.committed(),
        state,
        run_id,
        sent: after,
        pending: Default::default(),
        fetched: Some(first),
        ended: false,
    };
    let stream =
        futures_util::stream::unfold(cursor, |mut c| async move {
            loop {
                if let Some(next) = c.pending.pop_front() {
                    return Some((Ok(next), c));
                }
                if c.ended {
                    return None;
                }
                let runs = c.state.runs.as_ref()?;
                let live = runs.is_live(&c.run_id);
                // Marked seen before the read: a commit after it wakes the next wait.
                c.committed.borrow_and_update();
                let fetched = match c.fetched.take() {
                    Some(fetched) => Ok(fetched),
                    None => match runs.meta.events_after(&c.run_id, c.sent).await {
                        Err(kiln_record::RecordError::NoRun(_)) if live => Ok(Vec::new()),
                        other => other,
                    },
                };
                let fetched = match fetched {
                    Ok(fetched) => fetched,
                    Err(e) => {
                        c.pending
                            .push_back(SseEvent::default().event("error").data(e.to_string()));
                        c.ended = true;
                        continue;
                    }
                };
                let mut finished = None;
                for (position, event) in &fetched {
                    if let RecordEvent::RunFinished { status, .. } = event {
                        finished = Some(status.to_string());
                    }
                    let json = serde_json::to_string(event).unwrap_or_default();
                    c.pending.push_back(
                        SseEvent::default()
                            .id(position.to_string())
                            .event("record")
                            .data(json),
                    );
                    c.sent = *position;
                }
                let end = match finished {
                    Some(status) => Some(status),
                    None if !live && fetched.is_empty() => Some(
                        ended_as(&runs.meta, &c.run_id, c.sent)
                            .await
                            .unwrap_or_else(|| "interrupted".to_owned()),
                    ),
                    None => None,
                };
                if let Some(status) = end {
                    c.pending.push_back(SseEvent::default().event("end").data(
                        serde_json::json!({ "status": status, "events": c.sent }).to_string(),
                    ));
                    c.ended = true;
                    continue;
                }
                if c.pending.is_empty() {
                    // Woken by the next commit; the timeout notices a run that ended without one.
                    let _ = tokio::time::timeout(POLL, c.committed.changed()).await;
                }
            }
        });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
