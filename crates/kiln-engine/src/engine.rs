//! The scheduler: runs a plan's steps in dependency order, in parallel, with caching,
//! retries, timeouts, failure propagation and cancellation.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln_cas::{BlobStore, Digest, EntryKind, EntryName, ObjectKind, Tree, TreeEntry};
use kiln_plan::{ComponentSource, InputSource, Plan, PlannedStep, StepKind};
use kiln_spec::Value;
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::EngineError;
use crate::build::{BuildProgress, BuildRecipe, ComponentBuilder};
use crate::cache::{CacheEntry, CacheIndex, DETERMINISM_VERSION, KeyParts, canonical_json};
use crate::executor::{ExecOutcome, Executor, StepTask};
use crate::record::{AttemptStatus, RecordEvent, RecordWriter, RunStatus, StepRecord};
use crate::state::{StateDir, new_run_id, now_ms};

/// Failure kinds that repeat exactly on a retry (a sandbox's deterministic limits).
const DETERMINISTIC_FAILURES: &[&str] = &["out-of-fuel", "memory", "output-limit", "sandbox"];

/// The largest upstream output a `when` condition reads as JSON.
const MAX_CONDITION_INPUT: u64 = 1024 * 1024;

/// How the engine behaves.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Most steps running at once.
    pub jobs: usize,
    /// Stop everything at the first failure instead of finishing independent branches.
    pub fail_fast: bool,
    /// Reuse cached results (a step's `cache: false` still wins).
    pub use_cache: bool,
    /// The first retry waits this long; each next one twice as long.
    pub retry_base: Duration,
    /// The longest wait between retries.
    pub retry_max: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            jobs: std::thread::available_parallelism().map_or(2, |n| n.get()),
            fail_fast: false,
            use_cache: true,
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
        }
    }
}

/// The executors available to a run, by step kind.
#[derive(Clone, Default)]
pub struct Executors {
    /// Runs `wasm:` steps.
    pub wasm: Option<Arc<dyn Executor>>,
    /// Runs `container:` steps.
    pub container: Option<Arc<dyn Executor>>,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct RunInput {
    /// The plan.
    pub plan: Plan,
    /// The folder workspace paths are relative to.
    pub base_dir: PathBuf,
    /// The pipeline file as the user named it (for the record).
    pub pipeline_file: String,
    /// The pipeline file's text (its digest goes in the record).
    pub pipeline_text: String,
}

/// Progress, for a user interface.
#[derive(Debug, Clone)]
pub enum Event {
    /// The run has an id and this many steps.
    RunStarted {
        /// Run id.
        run_id: String,
        /// Planned steps.
        total: usize,
    },
    /// A wasm component is being built from source.
    Building {
        /// The step.
        step: String,
        /// The command.
        command: String,
    },
    /// An attempt started.
    StepStarted {
        /// Planned step id.
        id: String,
        /// Attempt, from 1.
        attempt: u32,
    },
    /// An attempt failed and will be retried.
    StepRetrying {
        /// Planned step id.
        id: String,
        /// The attempt that failed.
        attempt: u32,
        /// The wait before the next.
        delay: Duration,
        /// Why it failed.
        message: String,
    },
    /// A step is done, one way or another.
    StepFinished(StepSummary),
    /// The run is over.
    RunFinished {
        /// How it ended.
        status: RunStatus,
    },
}

/// How a step ended in a run.
#[derive(Debug, Clone, PartialEq)]
pub enum StepStatus {
    /// It ran and succeeded.
    Succeeded,
    /// Its result came from the cache.
    Cached,
    /// It failed (after its retries).
    Failed {
        /// A stable kind: `exit`, `timeout`, `out-of-fuel`, `missing-output`...
        kind: String,
        /// What went wrong.
        message: String,
    },
    /// It did not run.
    Skipped {
        /// Why: a false condition, or an upstream step that failed or was skipped.
        reason: String,
    },
    /// The run was cancelled before or while it ran.
    Cancelled,
}

impl StepStatus {
    /// Whether downstream steps may use its outputs.
    pub fn is_ok(&self) -> bool {
        matches!(self, StepStatus::Succeeded | StepStatus::Cached)
    }

    /// A one-word name.
    pub fn word(&self) -> &'static str {
        match self {
            StepStatus::Succeeded => "succeeded",
            StepStatus::Cached => "cached",
            StepStatus::Failed { .. } => "failed",
            StepStatus::Skipped { .. } => "skipped",
            StepStatus::Cancelled => "cancelled",
        }
    }
}

/// One step's result in a run.
#[derive(Debug, Clone, PartialEq)]
pub struct StepSummary {
    /// Planned step id.
    pub id: String,
    /// How it ended.
    pub status: StepStatus,
    /// Attempts started.
    pub attempts: u32,
    /// Wall time, from the first attempt to the end.
    pub duration: Duration,
    /// Output digests by name (when it succeeded or was cached).
    pub outputs: BTreeMap<String, Digest>,
    /// Metrics the step reported.
    pub metrics: BTreeMap<String, f64>,
}

/// The result of a run.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// Run id.
    pub run_id: String,
    /// How it ended.
    pub status: RunStatus,
    /// Every planned step, in plan order.
    pub steps: Vec<StepSummary>,
    /// Wall time.
    pub duration: Duration,
}

/// The engine: a state folder, a blob store, executors and a configuration.
pub struct Engine {
    state: StateDir,
    store: Arc<dyn BlobStore>,
    executors: Executors,
    config: EngineConfig,
}

/// What every step task of a run shares.
struct Shared {
    run_id: String,
    plan: Plan,
    base_dir: PathBuf,
    state: StateDir,
    store: Arc<dyn BlobStore>,
    cache: CacheIndex,
    executors: Executors,
    config: EngineConfig,
    components: HashMap<String, (PathBuf, Digest)>,
    record: Mutex<RecordWriter>,
    events: Option<UnboundedSender<Event>>,
    /// Outputs of finished steps, by step id.
    outputs: Mutex<HashMap<String, BTreeMap<String, Digest>>>,
    /// Digests of workspace inputs, hashed once per run.
    workspace: tokio::sync::Mutex<HashMap<String, Digest>>,
}

impl Shared {
    fn emit(&self, event: Event) {
        if let Some(tx) = &self.events {
            let _ = tx.send(event);
        }
    }

    fn record(&self, event: &RecordEvent) {
        if let Err(e) = self.record.lock().expect("record lock").append(event) {
            warn!(run = %self.run_id, error = %e, "cannot append to the run record");
        }
    }
}

impl Engine {
    /// An engine over a state folder.
    pub fn new(state: StateDir, executors: Executors, config: EngineConfig) -> Self {
        // Executors run steps in other working folders: every path they get must be absolute.
        let state = match std::path::absolute(state.root()) {
            Ok(root) => StateDir::new(root),
            Err(_) => state,
        };
        Self {
            store: Arc::new(state.store()),
            state,
            executors,
            config,
        }
    }

    /// Keeps artifacts in `store` instead of the state folder's own (an object store, say).
    pub fn with_store(mut self, store: Arc<dyn BlobStore>) -> Self {
        self.store = store;
        self
    }

    /// Runs a plan to the end, or until `cancel` fires.
    ///
    /// Everything that can be checked before a step runs is checked first (executors
    /// available, commands and images present, components built): a problem there is an
    /// [`EngineError::Preflight`] and nothing runs.
    pub async fn run(
        &self,
        input: RunInput,
        cancel: CancellationToken,
        events: Option<UnboundedSender<Event>>,
    ) -> Result<RunSummary, EngineError> {
        let started = Instant::now();
        let mut input = input;
        if let Ok(base) = std::path::absolute(&input.base_dir) {
            input.base_dir = base;
        }
        let run_id = new_run_id();
        let run_dir = self.state.run_dir(&run_id);
        let logs = run_dir.join("logs");
        std::fs::create_dir_all(&logs).map_err(|e| EngineError::io(&logs, e))?;
        let store = self.store.clone();

        let emit = |event: Event| {
            if let Some(tx) = &events {
                let _ = tx.send(event);
            }
        };
        let components = self
            .preflight(&input, &run_id, store.as_ref(), &emit)
            .await?;

        let plan_path = run_dir.join("plan.json");
        std::fs::write(
            &plan_path,
            serde_json::to_vec_pretty(&input.plan).expect("plans serialise"),
        )
        .map_err(|e| EngineError::io(&plan_path, e))?;
        let mut record = RecordWriter::create(&self.state.record_path(&run_id))?;
        let params_json = serde_json::to_value(&input.plan.params).expect("params serialise");
        record.append(&RecordEvent::RunStarted {
            run_id: run_id.clone(),
            pipeline: input.plan.pipeline.clone(),
            pipeline_digest: Digest::of_bytes(input.pipeline_text.as_bytes()).to_string(),
            params_digest: Digest::of_bytes(canonical_json(&params_json).as_bytes()).to_string(),
            params: input.plan.params.clone(),
            pipeline_file: input.pipeline_file.clone(),
            kiln_version: env!("CARGO_PKG_VERSION").to_owned(),
            determinism_version: DETERMINISM_VERSION,
            at_ms: now_ms(),
        })?;
        info!(run = %run_id, pipeline = %input.plan.pipeline, steps = input.plan.steps.len(), "run started");
        emit(Event::RunStarted {
            run_id: run_id.clone(),
            total: input.plan.steps.len(),
        });

        let shared = Arc::new(Shared {
            run_id: run_id.clone(),
            plan: input.plan,
            base_dir: input.base_dir,
            state: self.state.clone(),
            cache: CacheIndex::new(self.state.cache_dir()),
            store,
            executors: self.executors.clone(),
            config: self.config.clone(),
            components,
            record: Mutex::new(record),
            events: events.clone(),
            outputs: Mutex::new(HashMap::new()),
            workspace: tokio::sync::Mutex::new(HashMap::new()),
        });
        let (steps, cancelled) = schedule(shared.clone(), cancel).await;

        let status = if cancelled {
            RunStatus::Cancelled
        } else if steps
            .iter()
            .any(|s| matches!(s.status, StepStatus::Failed { .. } | StepStatus::Cancelled))
        {
            RunStatus::Failed
        } else {
            RunStatus::Succeeded
        };
        let duration = started.elapsed();
        shared.record(&RecordEvent::RunFinished {
            status,
            at_ms: now_ms(),
            duration_ms: duration.as_millis() as u64,
        });
        let scratch = self.state.scratch_dir(&run_id);
        remove_tree(&scratch);
        info!(run = %run_id, %status, "run finished");
        shared.emit(Event::RunFinished { status });
        Ok(RunSummary {
            run_id,
            status,
            steps,
            duration,
        })
    }

    /// Checks executors, commands and images; resolves and builds components.
    async fn preflight(
        &self,
        input: &RunInput,
        run_id: &str,
        store: &dyn BlobStore,
        emit: &impl Fn(Event),
    ) -> Result<HashMap<String, (PathBuf, Digest)>, EngineError> {
        let mut problems = Vec::new();
        let wasm_steps: Vec<&PlannedStep> = input
            .plan
            .steps
            .iter()
            .filter(|s| matches!(s.kind, StepKind::Wasm { .. }))
            .collect();
        let container_steps: Vec<&PlannedStep> = input
            .plan
            .steps
            .iter()
            .filter(|s| matches!(s.kind, StepKind::Container(_)))
            .collect();
        for (steps, executor, kind) in [
            (&wasm_steps, &self.executors.wasm, "wasm"),
            (&container_steps, &self.executors.container, "container"),
        ] {
            if steps.is_empty() {
                continue;
            }
            match executor {
                None => problems.push(format!(
                    "no executor for {kind} steps ({}) in this kiln",
                    steps
                        .iter()
                        .map(|s| s.id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
                Some(executor) => {
                    if let Err(mut found) = executor.preflight(steps).await {
                        problems.append(&mut found);
                    }
                }
            }
        }

        let mut components = HashMap::new();
        let mut builder =
            ComponentBuilder::for_plan(self.state.clone(), &input.base_dir, &input.plan);
        builder.log_dir(self.state.run_dir(run_id).join("logs"));
        for step in &wasm_steps {
            if components.contains_key(&step.step) {
                continue;
            }
            let StepKind::Wasm { component, .. } = &step.kind else {
                continue;
            };
            let resolved = match component {
                ComponentSource::Path { path } => Ok(input.base_dir.join(path)),
                ComponentSource::Build { .. } => {
                    let recipe = BuildRecipe::of(component).expect("a build recipe");
                    let mut progress = |BuildProgress::Started { command, .. }| {
                        emit(Event::Building {
                            step: step.step.clone(),
                            command,
                        })
                    };
                    builder
                        .build(&step.step, &recipe, &mut progress)
                        .await
                        .map(|built| built.path)
                        .map_err(|e| format!("step `{}`: {e}", step.step))
                }
                ComponentSource::Digest { digest } => match digest.parse::<Digest>() {
                    Ok(d) if store.contains(&d).await.unwrap_or(false) => {
                        let dir = self.state.components_dir();
                        let path = dir.join(format!("{}.wasm", d.to_hex()));
                        if !path.exists() {
                            let _ = std::fs::create_dir_all(&dir);
                            store.materialize(&d, &path).await?;
                        }
                        Ok(path)
                    }
                    _ => Err(format!(
                        "step `{}`: component {digest} is not in the local store",
                        step.step
                    )),
                },
                ComponentSource::Registry { name, version } => Err(format!(
                    "step `{}`: registry component `{name}@{version}` needs a kiln server, which local runs do not use yet; use a `.wasm` path or a build recipe",
                    step.step
                )),
            };
            // Every component a run used is kept in the store, so that the run can be
            // replayed and exported from its record alone.
            let keep = async |path: PathBuf| -> Result<(PathBuf, Digest), String> {
                let digest = Digest::of_file(&path).map_err(|e| {
                    format!("step `{}`: cannot read {}: {e}", step.step, path.display())
                })?;
                if !store.contains(&digest).await.unwrap_or(false) {
                    let stored = store.put_file(&path).await.map_err(|e| {
                        format!("step `{}`: cannot store its component: {e}", step.step)
                    })?;
                    if stored != digest {
                        return Err(format!(
                            "step `{}`: component {} changed while it was read",
                            step.step,
                            path.display()
                        ));
                    }
                }
                Ok((path, digest))
            };
            let kept = match resolved {
                Ok(path) => keep(path).await,
                Err(e) => Err(e),
            };
            match kept {
                Ok(found) => {
                    components.insert(step.step.clone(), found);
                }
                Err(e) => problems.push(e),
            }
        }
        if problems.is_empty() {
            Ok(components)
        } else {
            Err(EngineError::Preflight(problems))
        }
    }
}

/// The dependency-driven loop: returns each step's summary in plan order, and whether the
/// run was cancelled.
async fn schedule(shared: Arc<Shared>, cancel: CancellationToken) -> (Vec<StepSummary>, bool) {
    let steps = &shared.plan.steps;
    let n = steps.len();
    let index: HashMap<&str, usize> = steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.as_str(), i))
        .collect();
    let mut waiting: Vec<usize> = steps.iter().map(|s| s.depends_on.len()).collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, step) in steps.iter().enumerate() {
        for dep in &step.depends_on {
            dependents[index[dep.as_str()]].push(i);
        }
    }
    let mut results: Vec<Option<StepSummary>> = vec![None; n];
    let mut ready: BinaryHeap<Reverse<usize>> =
        (0..n).filter(|&i| waiting[i] == 0).map(Reverse).collect();
    let mut running: JoinSet<(usize, StepSummary)> = JoinSet::new();
    let mut running_ids: HashMap<tokio::task::Id, usize> = HashMap::new();
    let stop = cancel.child_token();
    let jobs = shared.config.jobs.max(1);
    let mut cancelled = false;

    loop {
        while running.len() < jobs && !stop.is_cancelled() {
            let Some(Reverse(i)) = ready.pop() else { break };
            // A step whose inputs failed or were skipped is skipped, and so are its dependents.
            if let Some(reason) = upstream_problem(&shared.plan.steps[i], &index, &results) {
                let summary = skipped(&shared.plan.steps[i].id, reason);
                finish(
                    &shared,
                    i,
                    summary,
                    &mut results,
                    &dependents,
                    &mut waiting,
                    &mut ready,
                );
                continue;
            }
            let task_shared = shared.clone();
            let handle = running.spawn(async move {
                let summary = run_step(&task_shared, i).await;
                (i, summary)
            });
            running_ids.insert(handle.id(), i);
        }
        if running.is_empty() {
            break;
        }
        tokio::select! {
            _ = stop.cancelled() => {
                cancelled = cancel.is_cancelled();
                running.abort_all();
                while let Some(joined) = running.join_next_with_id().await {
                    match joined {
                        Ok((_, (i, summary))) => {
                            finish(&shared, i, summary, &mut results, &dependents, &mut waiting, &mut ready);
                        }
                        Err(e) => {
                            let i = running_ids[&e.id()];
                            let summary = StepSummary {
                                id: shared.plan.steps[i].id.clone(),
                                status: StepStatus::Cancelled,
                                attempts: 1,
                                duration: Duration::ZERO,
                                outputs: BTreeMap::new(),
                                metrics: BTreeMap::new(),
                            };
                            shared.record(&RecordEvent::StepSkipped {
                                step: summary.id.clone(),
                                reason: "cancelled while running".into(),
                            });
                            finish(&shared, i, summary, &mut results, &dependents, &mut waiting, &mut ready);
                        }
                    }
                }
                break;
            }
            Some(joined) = running.join_next_with_id() => {
                let (i, summary) = match joined {
                    Ok((_, result)) => result,
                    Err(e) => {
                        // A panic in a step task is kiln's bug: the step fails, the run goes on.
                        let i = running_ids[&e.id()];
                        (i, StepSummary {
                            id: shared.plan.steps[i].id.clone(),
                            status: StepStatus::Failed { kind: "internal".into(), message: format!("kiln failed while running this step: {e}") },
                            attempts: 1,
                            duration: Duration::ZERO,
                            outputs: BTreeMap::new(),
                            metrics: BTreeMap::new(),
                        })
                    }
                };
                if shared.config.fail_fast && matches!(summary.status, StepStatus::Failed { .. }) {
                    stop.cancel();
                }
                finish(&shared, i, summary, &mut results, &dependents, &mut waiting, &mut ready);
            }
        }
    }

    // Whatever never started: cancelled (by Ctrl-C or --fail-fast) or skipped.
    for (i, result) in results.iter_mut().enumerate() {
        if result.is_none() {
            let id = shared.plan.steps[i].id.clone();
            let reason = if cancelled {
                "the run was cancelled".to_owned()
            } else {
                "not started: --fail-fast stopped the run".to_owned()
            };
            shared.record(&RecordEvent::StepSkipped {
                step: id.clone(),
                reason: reason.clone(),
            });
            let summary = StepSummary {
                id,
                status: if cancelled {
                    StepStatus::Cancelled
                } else {
                    StepStatus::Skipped { reason }
                },
                attempts: 0,
                duration: Duration::ZERO,
                outputs: BTreeMap::new(),
                metrics: BTreeMap::new(),
            };
            shared.emit(Event::StepFinished(summary.clone()));
            *result = Some(summary);
        }
    }
    (
        results
            .into_iter()
            .map(|r| r.expect("every step has a result"))
            .collect(),
        cancelled,
    )
}

fn skipped(id: &str, reason: String) -> StepSummary {
    StepSummary {
        id: id.to_owned(),
        status: StepStatus::Skipped { reason },
        attempts: 0,
        duration: Duration::ZERO,
        outputs: BTreeMap::new(),
        metrics: BTreeMap::new(),
    }
}

/// Why a step cannot run because of its dependencies, if it cannot.
fn upstream_problem(
    step: &PlannedStep,
    index: &HashMap<&str, usize>,
    results: &[Option<StepSummary>],
) -> Option<String> {
    for dep in &step.depends_on {
        let Some(result) = &results[index[dep.as_str()]] else {
            continue;
        };
        match &result.status {
            StepStatus::Succeeded | StepStatus::Cached => {}
            StepStatus::Failed { .. } => return Some(format!("upstream `{dep}` failed")),
            StepStatus::Cancelled => return Some(format!("upstream `{dep}` was cancelled")),
            StepStatus::Skipped { reason } if reason.starts_with("upstream") => {
                return Some(format!("upstream `{dep}` was skipped"));
            }
            StepStatus::Skipped { .. } => {
                return Some(format!(
                    "upstream `{dep}` was skipped (its condition was false)"
                ));
            }
        }
    }
    None
}

fn finish(
    shared: &Shared,
    i: usize,
    summary: StepSummary,
    results: &mut [Option<StepSummary>],
    dependents: &[Vec<usize>],
    waiting: &mut [usize],
    ready: &mut BinaryHeap<Reverse<usize>>,
) {
    if let StepStatus::Skipped { reason } = &summary.status
        && summary.attempts == 0
        && reason.starts_with("upstream")
    {
        shared.record(&RecordEvent::StepSkipped {
            step: summary.id.clone(),
            reason: reason.clone(),
        });
    }
    shared.emit(Event::StepFinished(summary.clone()));
    results[i] = Some(summary);
    for &d in &dependents[i] {
        waiting[d] -= 1;
        if waiting[d] == 0 {
            ready.push(Reverse(d));
        }
    }
}

/// A step from start to end: condition, inputs, cache, attempts, outputs.
async fn run_step(shared: &Shared, i: usize) -> StepSummary {
    let step = &shared.plan.steps[i];
    let started = Instant::now();
    let fail = |kind: &str, message: String, attempts: u32| StepSummary {
        id: step.id.clone(),
        status: StepStatus::Failed {
            kind: kind.to_owned(),
            message,
        },
        attempts,
        duration: started.elapsed(),
        outputs: BTreeMap::new(),
        metrics: BTreeMap::new(),
    };

    if let Some(when) = &step.when {
        match evaluate_condition(shared, step, when).await {
            Ok(true) => {}
            Ok(false) => {
                let reason = format!("condition is false: {when}");
                shared.record(&RecordEvent::StepSkipped {
                    step: step.id.clone(),
                    reason: reason.clone(),
                });
                return skipped(&step.id, reason);
            }
            Err(e) => return fail("condition", e, 0),
        }
    }

    let inputs = match resolve_inputs(shared, step).await {
        Ok(inputs) => inputs,
        Err(e) => return fail("input", e, 0),
    };
    let (executor, component) = match &step.kind {
        StepKind::Wasm { .. } => (
            shared.executors.wasm.clone().expect("checked in preflight"),
            shared.components.get(&step.step).cloned(),
        ),
        StepKind::Container(_) => (
            shared
                .executors
                .container
                .clone()
                .expect("checked in preflight"),
            None,
        ),
    };
    let pins = match executor.key_pins(step).await {
        Ok(pins) => pins,
        Err(e) => return fail(e.kind, e.message, 0),
    };
    let key_parts = KeyParts::new(
        &step.cache_key,
        component.as_ref().map(|(_, d)| d),
        &inputs,
        pins,
    );
    let key = key_parts.digest();
    let key_json = serde_json::to_value(&key_parts).expect("key parts serialise");
    let input_digests: BTreeMap<String, String> = inputs
        .iter()
        .map(|(k, v)| (k.clone(), v.to_string()))
        .collect();

    let base_record = |status: AttemptStatus, attempt: u32| StepRecord {
        step: step.id.clone(),
        attempt,
        status,
        cache_key: key.to_string(),
        key: key_json.clone(),
        executor: executor.name().to_owned(),
        inputs: input_digests.clone(),
        outputs: BTreeMap::new(),
        duration_ms: 0,
        message: None,
        failure_kind: None,
        exit_code: None,
        metrics: BTreeMap::new(),
        details: BTreeMap::new(),
        reused_from: None,
    };

    if shared.config.use_cache
        && step.policy.cache
        && let Some(entry) = shared.cache.get(&key)
        && let Some(outputs) = present_outputs(shared.store.as_ref(), &entry, &step.outputs).await
    {
        debug!(run = %shared.run_id, step = %step.id, key = %key, "cache hit");
        let mut rec = base_record(AttemptStatus::Cached, 0);
        rec.outputs = entry.outputs.clone();
        rec.metrics = entry.metrics.clone();
        rec.reused_from = Some(entry.run_id.clone());
        shared.record(&RecordEvent::StepFinished(Box::new(rec)));
        shared
            .outputs
            .lock()
            .expect("outputs lock")
            .insert(step.id.clone(), outputs.clone());
        return StepSummary {
            id: step.id.clone(),
            status: StepStatus::Cached,
            attempts: 0,
            duration: started.elapsed(),
            outputs,
            metrics: entry.metrics,
        };
    }

    let max_attempts = step.policy.retries + 1;
    let mut attempt = 0;
    loop {
        attempt += 1;
        shared.record(&RecordEvent::StepStarted {
            step: step.id.clone(),
            attempt,
            at_ms: now_ms(),
        });
        shared.emit(Event::StepStarted {
            id: step.id.clone(),
            attempt,
        });
        let attempt_started = Instant::now();
        let place = AttemptPlace {
            run_id: &shared.run_id,
            store: shared.store.as_ref(),
            scratch: shared.state.scratch_dir(&shared.run_id),
            log: shared.state.log_path(&shared.run_id, &step.id),
        };
        let result = run_attempt(
            &place,
            step,
            attempt,
            &key,
            &inputs,
            component.as_ref().map(|(p, _)| p.clone()),
            BTreeMap::new(),
            executor.as_ref(),
        )
        .await;
        let mut rec = base_record(AttemptStatus::Failed, attempt);
        rec.duration_ms = attempt_started.elapsed().as_millis() as u64;
        match result {
            Ok((outputs, metrics, details)) => {
                rec.status = AttemptStatus::Succeeded;
                rec.outputs = outputs
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_string()))
                    .collect();
                rec.metrics = metrics.clone();
                rec.details = details;
                if step.policy.cache {
                    let entry = CacheEntry {
                        key: key.to_string(),
                        outputs: rec.outputs.clone(),
                        run_id: shared.run_id.clone(),
                        step: step.id.clone(),
                        metrics: metrics.clone(),
                    };
                    if let Err(e) = shared.cache.put(&key, &entry) {
                        warn!(step = %step.id, error = %e, "cannot write the cache entry");
                    }
                }
                shared.record(&RecordEvent::StepFinished(Box::new(rec)));
                shared
                    .outputs
                    .lock()
                    .expect("outputs lock")
                    .insert(step.id.clone(), outputs.clone());
                return StepSummary {
                    id: step.id.clone(),
                    status: StepStatus::Succeeded,
                    attempts: attempt,
                    duration: started.elapsed(),
                    outputs,
                    metrics,
                };
            }
            Err(failure) => {
                rec.message = Some(failure.message.clone());
                rec.failure_kind = Some(failure.kind.clone());
                rec.exit_code = failure.exit_code;
                rec.details = failure.details;
                shared.record(&RecordEvent::StepFinished(Box::new(rec)));
                if attempt >= max_attempts || !failure.retryable {
                    return fail(&failure.kind, failure.message, attempt);
                }
                let delay = backoff(&shared.config, attempt);
                shared.emit(Event::StepRetrying {
                    id: step.id.clone(),
                    attempt,
                    delay,
                    message: failure.message.clone(),
                });
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// The wait after failed attempt `attempt` (from 1): base × 2^(attempt-1), capped.
fn backoff(config: &EngineConfig, attempt: u32) -> Duration {
    let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(20));
    config
        .retry_base
        .saturating_mul(factor)
        .min(config.retry_max)
}

pub(crate) struct AttemptFailure {
    pub(crate) kind: String,
    pub(crate) message: String,
    pub(crate) exit_code: Option<i32>,
    pub(crate) details: BTreeMap<String, serde_json::Value>,
    pub(crate) retryable: bool,
}

impl AttemptFailure {
    fn new(kind: &str, message: String) -> Self {
        Self {
            kind: kind.to_owned(),
            message,
            exit_code: None,
            details: BTreeMap::new(),
            retryable: true,
        }
    }
}

pub(crate) type AttemptResult = Result<
    (
        BTreeMap<String, Digest>,
        BTreeMap<String, f64>,
        BTreeMap<String, serde_json::Value>,
    ),
    AttemptFailure,
>;

/// Where an attempt runs: its run, the store its inputs come from and its outputs go to, the
/// folder its scratch folder is made in, and its log.
pub(crate) struct AttemptPlace<'a> {
    pub(crate) run_id: &'a str,
    pub(crate) store: &'a dyn BlobStore,
    pub(crate) scratch: PathBuf,
    pub(crate) log: PathBuf,
}

/// One attempt in its own scratch folder: materialise, execute, publish outputs.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run_attempt(
    place: &AttemptPlace<'_>,
    step: &PlannedStep,
    attempt: u32,
    key: &Digest,
    inputs: &BTreeMap<String, Digest>,
    component: Option<PathBuf>,
    recorded: BTreeMap<String, serde_json::Value>,
    executor: &dyn Executor,
) -> AttemptResult {
    let workdir = place.scratch.join(format!("{}.{attempt}", step.id));
    let guard = ScratchGuard(workdir.clone());
    let in_dir = workdir.join("in");
    let out_dir = workdir.join("out");
    for dir in [&in_dir, &out_dir] {
        std::fs::create_dir_all(dir).map_err(|e| {
            AttemptFailure::new("internal", format!("cannot create {}: {e}", dir.display()))
        })?;
    }
    let mut input_paths = BTreeMap::new();
    for (name, digest) in inputs {
        let dest = in_dir.join(name);
        place.store.materialize(digest, &dest).await.map_err(|e| {
            AttemptFailure::new("input", format!("cannot materialise input `{name}`: {e}"))
        })?;
        input_paths.insert(name.clone(), dest);
    }
    let outputs: BTreeMap<String, PathBuf> = step
        .outputs
        .iter()
        .map(|name| (name.clone(), out_dir.join(name)))
        .collect();
    let task = StepTask {
        run_id: place.run_id.to_owned(),
        step: step.clone(),
        attempt,
        cache_key: key.to_string(),
        workdir: workdir.clone(),
        inputs: input_paths,
        outputs: outputs.clone(),
        component,
        log: place.log.clone(),
        recorded,
    };
    let run = executor.run(&task);
    let outcome = match step.policy.timeout_ms {
        Some(ms) => match tokio::time::timeout(Duration::from_millis(ms), run).await {
            Ok(outcome) => outcome,
            Err(_) => {
                return Err(AttemptFailure::new(
                    "timeout",
                    format!("timed out after {}", humanize(Duration::from_millis(ms))),
                ));
            }
        },
        None => run.await,
    };
    let (metrics, details) = match outcome {
        Ok(ExecOutcome::Succeeded { metrics, details }) => (metrics, details),
        Ok(ExecOutcome::Failed {
            message,
            exit_code,
            kind,
        }) => {
            let mut failure = AttemptFailure::new(&kind, message);
            failure.exit_code = exit_code;
            // A deterministic limit gives the same result every time: retrying cannot help.
            failure.retryable = !DETERMINISTIC_FAILURES.contains(&kind.as_str());
            return Err(failure);
        }
        Err(e) => {
            let mut failure = AttemptFailure::new(e.kind, e.message);
            failure.retryable = false;
            return Err(failure);
        }
    };
    let mut published = BTreeMap::new();
    for (name, path) in outputs {
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(_) => {
                let mut failure = AttemptFailure::new(
                    "missing-output",
                    format!("the step succeeded but did not write its output `{name}`"),
                );
                failure.retryable = false;
                return Err(failure);
            }
        };
        if !meta.is_dir() && !meta.is_file() {
            // Following a link would publish whatever it points at, outside the step's folder.
            let mut failure = AttemptFailure::new(
                "sandbox",
                format!(
                    "output `{name}` is a symbolic link or a special file; outputs must be plain files or folders"
                ),
            );
            failure.retryable = false;
            return Err(failure);
        }
        let stored = if meta.is_dir() {
            place.store.put_tree_owned(&path).await
        } else {
            place.store.put_file_owned(&path).await
        };
        let digest = stored.map_err(|e| {
            AttemptFailure::new("output", format!("cannot store output `{name}`: {e}"))
        })?;
        published.insert(name, digest);
    }
    drop(guard);
    Ok((published, metrics, details))
}

/// Removes a scratch folder when an attempt ends, however it ends.
struct ScratchGuard(PathBuf);

impl Drop for ScratchGuard {
    fn drop(&mut self) {
        remove_tree(&self.0);
    }
}

/// Removes a folder tree even where materialised inputs made parts of it read-only.
fn remove_tree(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if std::fs::remove_dir_all(path).is_ok() || !path.exists() {
        return;
    }
    fn make_writable(path: &Path) {
        if let Ok(meta) = std::fs::symlink_metadata(path)
            && meta.is_dir()
        {
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755));
            if let Ok(entries) = std::fs::read_dir(path) {
                for entry in entries.flatten() {
                    make_writable(&entry.path());
                }
            }
        }
    }
    make_writable(path);
    let _ = std::fs::remove_dir_all(path);
}

/// Digests of every input, hashing workspace files once per run.
async fn resolve_inputs(
    shared: &Shared,
    step: &PlannedStep,
) -> Result<BTreeMap<String, Digest>, String> {
    let mut digests = BTreeMap::new();
    for (name, source) in &step.inputs {
        let digest = match source {
            InputSource::Step {
                step: producer,
                output,
            } => shared
                .outputs
                .lock()
                .expect("outputs lock")
                .get(producer)
                .and_then(|o| o.get(output))
                .copied()
                .ok_or_else(|| format!("input `{name}`: `{producer}` has no output `{output}`"))?,
            InputSource::Collect {
                output, instances, ..
            } => {
                let found: Vec<Option<Digest>> = {
                    let outputs = shared.outputs.lock().expect("outputs lock");
                    instances
                        .iter()
                        .map(|id| outputs.get(id).and_then(|o| o.get(output)).copied())
                        .collect()
                };
                let mut digests = Vec::new();
                for (k, digest) in found.into_iter().enumerate() {
                    digests.push(digest.ok_or_else(|| {
                        format!("input `{name}`: instance {k} has no output `{output}`")
                    })?);
                }
                collect_tree(shared.store.as_ref(), &digests).await?
            }
            InputSource::Workspace { path } => {
                let mut cache = shared.workspace.lock().await;
                match cache.get(path) {
                    Some(d) => *d,
                    None => {
                        let full = shared.base_dir.join(path);
                        let stored = if full.is_dir() {
                            shared.store.put_tree(&full).await
                        } else {
                            shared.store.put_file(&full).await
                        };
                        let digest = stored.map_err(|e| {
                            format!("input `{name}`: cannot read {}: {e}", full.display())
                        })?;
                        cache.insert(path.clone(), digest);
                        digest
                    }
                }
            }
            InputSource::Param { value, .. } => {
                let text = match value {
                    Value::String(s) => s.clone(),
                    other => serde_json::to_string(other).expect("values serialise"),
                };
                shared
                    .store
                    .put_bytes(text.into_bytes().into())
                    .await
                    .map_err(|e| format!("input `{name}`: {e}"))?
            }
        };
        digests.insert(name.clone(), digest);
    }
    Ok(digests)
}

/// The folder a `Collect` input is: one entry per instance, named by its index.
pub(crate) async fn collect_tree(
    store: &dyn BlobStore,
    digests: &[Digest],
) -> Result<Digest, String> {
    let mut entries = Vec::new();
    for (k, digest) in digests.iter().enumerate() {
        let kind = match store.kind(digest).await.map_err(|e| e.to_string())? {
            Some(ObjectKind::Tree) => EntryKind::Folder,
            _ => EntryKind::File,
        };
        entries.push(TreeEntry {
            name: EntryName::try_from(k.to_string()).map_err(|e| e.to_string())?,
            kind,
            digest: *digest,
        });
    }
    let tree = Tree::new(entries).map_err(|e| e.to_string())?;
    store.put_manifest(&tree).await.map_err(|e| e.to_string())
}

/// The cached outputs, if every declared output is there and its object is still stored.
async fn present_outputs(
    store: &dyn BlobStore,
    entry: &CacheEntry,
    declared: &[String],
) -> Option<BTreeMap<String, Digest>> {
    let mut outputs = BTreeMap::new();
    for name in declared {
        let digest: Digest = entry.outputs.get(name)?.parse().ok()?;
        if !store.contains(&digest).await.unwrap_or(false) {
            return None;
        }
        outputs.insert(name.clone(), digest);
    }
    Some(outputs)
}

/// Evaluates `when` with the small JSON outputs of the step's dependencies.
async fn evaluate_condition(
    shared: &Shared,
    step: &PlannedStep,
    when: &str,
) -> Result<bool, String> {
    let produced: HashMap<String, BTreeMap<String, Digest>> = {
        let outputs = shared.outputs.lock().expect("outputs lock");
        step.depends_on
            .iter()
            .filter_map(|id| outputs.get(id).map(|o| (id.clone(), o.clone())))
            .collect()
    };
    condition_holds(&shared.plan, shared.store.as_ref(), &produced, step, when).await
}

/// Evaluates `when` with the small JSON outputs of the step's dependencies, read from
/// `produced` (outputs by step id).
pub(crate) async fn condition_holds(
    plan: &Plan,
    store: &dyn BlobStore,
    produced: &HashMap<String, BTreeMap<String, Digest>>,
    step: &PlannedStep,
    when: &str,
) -> Result<bool, String> {
    let mut steps: BTreeMap<String, BTreeMap<String, serde_json::Value>> = BTreeMap::new();
    let mut lists: BTreeMap<(String, String), Vec<serde_json::Value>> = BTreeMap::new();
    for id in &step.depends_on {
        let Some(outputs) = produced.get(id) else {
            continue;
        };
        let producer = plan.step(id).expect("planned dependency");
        for (output, digest) in outputs {
            let Some(value) = small_json(store, digest).await else {
                continue;
            };
            if producer.instance.is_some() {
                lists
                    .entry((producer.step.clone(), output.clone()))
                    .or_default()
                    .push(value);
            } else {
                steps
                    .entry(producer.step.clone())
                    .or_default()
                    .insert(output.clone(), value);
            }
        }
    }
    for ((name, output), values) in lists {
        steps
            .entry(name)
            .or_default()
            .insert(output, serde_json::Value::Array(values));
    }
    let item = step.instance.as_ref().map(|i| &i.item);
    kiln_plan::when::evaluate(when, &plan.params, &steps, item)
        .map_err(|e| format!("step `{}`: {e}", step.id))
}

async fn small_json(store: &dyn BlobStore, digest: &Digest) -> Option<serde_json::Value> {
    // A tree has no blob size: `None` here covers both "not a blob" and "not stored".
    let size = store.blob_size(digest).await.ok()??;
    if size > MAX_CONDITION_INPUT {
        return None;
    }
    serde_json::from_slice(&store.read_verified(digest).await.ok()?).ok()
}

/// `1m 30s` style.
fn humanize(d: Duration) -> String {
    let secs = d.as_secs();
    match (secs / 3600, secs % 3600 / 60, secs % 60, d.subsec_millis()) {
        (0, 0, 0, ms) => format!("{ms}ms"),
        (0, 0, s, 0) => format!("{s}s"),
        (0, 0, s, ms) => format!("{s}.{ms:03}s"),
        (0, m, 0, _) => format!("{m}m"),
        (0, m, s, _) => format!("{m}m {s}s"),
        (h, m, _, _) => format!("{h}h {m}m"),
    }
}
