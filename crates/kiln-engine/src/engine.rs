//! The scheduler: runs a plan's steps in dependency order, in parallel, with caching,
//! retries, timeouts, failure propagation and cancellation.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln_cas::{BlobStore, Digest, EntryKind, EntryName, ObjectKind, Tree, TreeEntry};
use kiln_plan::{InputSource, Plan, PlannedStep, RetryPlan, StepId, StepKind};
use kiln_spec::Value;
use tokio::sync::{broadcast, mpsc::UnboundedSender};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::EngineError;
use crate::cache::{DETERMINISM_VERSION, KeyParts, canonical_json};
use crate::executor::{ExecOutcome, Executor, StepTask};
use crate::exports::{ExportProgress, Exporter};
use crate::staging::{ScratchLock, ScratchPool, StagingArea, remove_tree};
use kiln_record::CacheEntry;
use kiln_record::{
    AttemptStatus, ExportRecord, ExportStatus, FailureKind, FileMetadata, MetadataStore,
    RecordEvent, RunStatus, StepRecord,
};
use kiln_record::{StateDir, new_run_id};

/// The largest upstream output a `when` condition reads as JSON.
const MAX_CONDITION_INPUT: u64 = 1024 * 1024;
/// The largest list a step fans out over (`for_each: "{{steps.X.Y}}"`).
const MAX_LIST: u64 = 16 * 1024 * 1024;

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
    /// Keep each failed attempt's scratch folder (its inputs, what it wrote) in the state
    /// folder's `kept/RUN/` instead of removing it, and say where in the failure.
    pub keep_scratch: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            jobs: std::thread::available_parallelism().map_or(2, |n| n.get()),
            fail_fast: false,
            use_cache: true,
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            keep_scratch: false,
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
    /// The component of every wasm step, by step name, pinned to a digest in the store
    /// before the run (`kiln_build::pin`): the engine builds and resolves nothing itself.
    pub components: BTreeMap<String, Digest>,
    /// Every workspace input, by its path as the plan gives it, and every external input, by
    /// its URL, pinned to a digest in the store before the run: the engine reads no workspace
    /// file and fetches nothing itself.
    pub workspace: BTreeMap<String, Digest>,
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
        step: StepId,
        /// The command.
        command: String,
    },
    /// An attempt started.
    StepStarted {
        /// Planned step id.
        id: StepId,
        /// Attempt, from 1.
        attempt: u32,
    },
    /// An attempt failed and will be retried.
    StepRetrying {
        /// Planned step id.
        id: StepId,
        /// The attempt that failed.
        attempt: u32,
        /// The wait before the next.
        delay: Duration,
        /// Why it failed.
        message: String,
    },
    /// A step fanning out over a list a step wrote has its instances: they take its place.
    Expanded {
        /// The fan-out step.
        id: StepId,
        /// Its instances, in order.
        instances: Vec<StepId>,
        /// How people read them, where they have labels.
        labels: BTreeMap<StepId, String>,
    },
    /// A step's cached result was there but too old for its `cache.max_age`: it runs again.
    CacheExpired {
        /// Planned step id.
        id: StepId,
        /// Why: `cached result is 8d old, older than max_age 7d`.
        reason: String,
    },
    /// A step is done, one way or another.
    StepFinished(StepSummary),
    /// Bytes of an export are on their way (a report per few MiB of a big object).
    Exporting(ExportProgress),
    /// An export is done: uploaded, found unchanged, failed, or not exported.
    Exported(ExportRecord),
    /// The run is over.
    RunFinished {
        /// How it ended.
        status: RunStatus,
    },
}

/// An [`Event`] of one run: the one type the terminal, the record writer, tests and a
/// server's event stream all read.
#[derive(Debug, Clone)]
pub struct RunEvent {
    /// The run it belongs to.
    pub run_id: Arc<str>,
    /// Milliseconds since the Unix epoch, from the engine's [`Clock`].
    pub at_ms: u64,
    /// What happened.
    pub event: Event,
}

/// Where the engine reads the time of day for records and events (injected, so that tests
/// and replays can fix it).
pub trait Clock: Send + Sync {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The host's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        kiln_record::now_ms()
    }
}

/// A run started with [`Engine::start`]: its id at once, its events, a way to cancel it and
/// to wait for its end.
pub struct RunHandle {
    id: String,
    events: Option<broadcast::Receiver<RunEvent>>,
    sender: broadcast::Sender<RunEvent>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<Result<RunSummary, EngineError>>,
}

impl RunHandle {
    /// The run's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The run's events. The first call gets every event from the start; later calls get
    /// those sent from then on. A receiver that falls far behind misses events
    /// (`RecvError::Lagged`) rather than slowing the run.
    pub fn events(&mut self) -> broadcast::Receiver<RunEvent> {
        self.events
            .take()
            .unwrap_or_else(|| self.sender.subscribe())
    }

    /// What [`RunHandle::cancel`] cancels, for whoever holds the run while another waits
    /// for it (a server's cancel request).
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Asks the run to stop: running steps are stopped and the run ends as cancelled.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Waits for the run to end.
    pub async fn join(self) -> Result<RunSummary, EngineError> {
        match self.task.await {
            Ok(result) => result,
            Err(e) => Err(EngineError::Internal(format!("the run's task failed: {e}"))),
        }
    }
}

/// Why a step did not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// Its `when` condition was false.
    ConditionFalse {
        /// The condition.
        when: String,
    },
    /// A step it depends on failed.
    UpstreamFailed {
        /// That step's id.
        step: StepId,
    },
    /// A step it depends on was cancelled.
    UpstreamCancelled {
        /// That step's id.
        step: StepId,
    },
    /// A step it depends on was skipped because of its own upstream.
    UpstreamSkipped {
        /// That step's id.
        step: StepId,
    },
    /// A step it depends on was skipped by its condition.
    UpstreamConditionFalse {
        /// That step's id.
        step: StepId,
    },
    /// `--fail-fast` stopped the run before it started.
    FailFast,
    /// The run passed its `timeout` before the step started.
    RunTimeout {
        /// The run's timeout, as people read it (`2h`).
        timeout: String,
    },
    /// A `run: on-failure` step, and no step failed.
    NothingFailed,
    /// It runs after a step fails (`after: {step: x, on: failure}`), and that one did not.
    DidNotFail {
        /// That step's id (the first, where it waits for several).
        step: StepId,
    },
}

impl SkipReason {
    /// Whether it was skipped because of a step upstream (rather than its own condition).
    pub fn is_upstream(&self) -> bool {
        !matches!(
            self,
            SkipReason::ConditionFalse { .. }
                | SkipReason::FailFast
                | SkipReason::NothingFailed
                | SkipReason::RunTimeout { .. }
        )
    }
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SkipReason::ConditionFalse { when } => write!(f, "condition is false: {when}"),
            SkipReason::UpstreamFailed { step } => write!(f, "upstream `{step}` failed"),
            SkipReason::UpstreamCancelled { step } => {
                write!(f, "upstream `{step}` was cancelled")
            }
            SkipReason::UpstreamSkipped { step } => write!(f, "upstream `{step}` was skipped"),
            SkipReason::UpstreamConditionFalse { step } => {
                write!(f, "upstream `{step}` was skipped (its condition was false)")
            }
            SkipReason::FailFast => f.write_str("not started: --fail-fast stopped the run"),
            SkipReason::RunTimeout { timeout } => {
                write!(f, "not started: {}", run_timeout_message(timeout))
            }
            SkipReason::NothingFailed => f.write_str("runs on failure, and no step failed"),
            SkipReason::DidNotFail { step } => {
                write!(f, "runs after `{step}` fails, and it did not")
            }
        }
    }
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
        kind: FailureKind,
        /// What went wrong.
        message: String,
    },
    /// It did not run.
    Skipped {
        /// Why: a false condition, or an upstream step that failed or was skipped.
        reason: SkipReason,
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
    pub id: StepId,
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
    /// The plan's exports, in plan order: what each did.
    pub exports: Vec<ExportRecord>,
    /// Wall time.
    pub duration: Duration,
}

/// The engine: a state folder (scratch space, logs), a blob store, a metadata store,
/// executors, a clock and a configuration. Cheap to clone; any number of runs may go at once.
#[derive(Clone)]
pub struct Engine {
    state: StateDir,
    store: Arc<dyn BlobStore>,
    meta: Arc<dyn MetadataStore>,
    clock: Arc<dyn Clock>,
    executors: Executors,
    config: EngineConfig,
    exporter: Option<Arc<dyn Exporter>>,
}

/// What every step task of a run shares.
pub(crate) struct Shared {
    pub(crate) run_id: String,
    pub(crate) plan: Plan,
    state: StateDir,
    pub(crate) store: Arc<dyn BlobStore>,
    meta: Arc<dyn MetadataStore>,
    clock: Arc<dyn Clock>,
    executors: Executors,
    config: EngineConfig,
    components: HashMap<String, Digest>,
    /// The first record event that could not be written; it stops the run.
    record_error: Mutex<Option<kiln_record::RecordError>>,
    /// Stops the run's steps (a user's cancel, `--fail-fast`, a record that cannot be written).
    stop: CancellationToken,
    /// The run id as events carry it (shared, not copied per event).
    event_run_id: Arc<str>,
    events: broadcast::Sender<RunEvent>,
    /// Outputs of finished steps, by step id.
    outputs: Mutex<HashMap<StepId, BTreeMap<String, Digest>>>,
    /// Steps skipped because a condition was false, theirs or upstream.
    conditional_skips: Mutex<HashSet<StepId>>,
    /// How each finished step ended (`succeeded`, from the cache or not, `failed`,
    /// `skipped`, `cancelled`), by step id: what `run.status` says.
    statuses: Mutex<BTreeMap<StepId, &'static str>>,
    /// Digests of workspace inputs, pinned before the run.
    workspace: BTreeMap<String, Digest>,
    /// The run's steps: the plan's, then the instances of fan-outs over lists steps wrote,
    /// added when those lists exist. A step keeps its index.
    steps: std::sync::RwLock<RunSteps>,
    /// The run's scratch folders, reused from one attempt to the next.
    scratch_pool: Arc<ScratchPool>,
    /// Writes what finished steps leave (cache entries, records) once their outputs are
    /// durable.
    committer: Committer,
}

/// A step that succeeded, waiting for its outputs to be durable before its cache entry and
/// its record say so.
struct Finished {
    key: Digest,
    entry: Option<CacheEntry>,
    record: StepRecord,
}

/// Group commit of finished steps: every batch that arrived while the last sync ran is made
/// durable with one sync of the store ([`BlobStore::sync`]), then its cache entries and
/// records are written. Steps hand their results over and go on (their job slot is free at
/// once), so batches grow with the pace of the run.
struct Committer {
    queue: Mutex<Option<tokio::sync::mpsc::UnboundedSender<Finished>>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Committer {
    fn new() -> Self {
        Self {
            queue: Mutex::new(None),
            task: Mutex::new(None),
        }
    }

    /// Starts the committing task of the run.
    fn start(&self, shared: &Arc<Shared>) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Finished>();
        let shared = Arc::downgrade(shared);
        let task = tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while let Ok(more) = rx.try_recv() {
                    batch.push(more);
                }
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                if let Err(e) = shared.store.sync().await {
                    shared.fail_record(kiln_record::RecordError::Invalid(format!(
                        "cannot make the outputs of finished steps durable: {e}"
                    )));
                    continue;
                }
                for done in batch {
                    if let Some(entry) = &done.entry {
                        // An expired entry is replaced: the key is the same, the result newer.
                        if let Err(e) = shared.meta.put_cache_entry(&done.key, entry).await {
                            warn!(step = %done.record.step, error = %e, "cannot write the cache entry");
                        }
                    }
                    shared.record(&RecordEvent::StepFinished(Box::new(done.record)));
                }
            }
        });
        *self.queue.lock().expect("committer lock") = Some(tx);
        *self.task.lock().expect("committer lock") = Some(task);
    }

    fn submit(&self, done: Finished) {
        let queue = self.queue.lock().expect("committer lock");
        if let Some(tx) = queue.as_ref() {
            let _ = tx.send(done);
        }
    }

    /// Waits until everything handed over is written.
    async fn finish(&self) {
        drop(self.queue.lock().expect("committer lock").take());
        let task = self.task.lock().expect("committer lock").take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

/// The steps of a run, by index and by id.
#[derive(Default)]
struct RunSteps {
    list: Vec<Arc<PlannedStep>>,
    index: HashMap<String, usize>,
}

impl RunSteps {
    fn push(&mut self, step: Arc<PlannedStep>) -> usize {
        let i = self.list.len();
        self.index.insert(step.id.to_string(), i);
        self.list.push(step);
        i
    }
}

impl Shared {
    /// Step `i` of the run.
    fn step(&self, i: usize) -> Arc<PlannedStep> {
        self.steps.read().expect("steps lock").list[i].clone()
    }

    /// The step with id `id`: of the plan, or an instance added in the run.
    pub(crate) fn find(&self, id: &str) -> Option<Arc<PlannedStep>> {
        let steps = self.steps.read().expect("steps lock");
        steps.index.get(id).map(|&i| steps.list[i].clone())
    }

    pub(crate) fn emit(&self, event: Event) {
        let _ = self.events.send(RunEvent {
            run_id: self.event_run_id.clone(),
            at_ms: self.clock.now_ms(),
            event,
        });
    }

    /// Appends to the record; the first failure stops the run (a run whose record cannot be
    /// written must not go on as if it were recorded) and is what the run returns.
    pub(crate) fn record(&self, event: &RecordEvent) {
        let mut failed = self.record_error.lock().expect("record error lock");
        if failed.is_some() {
            return;
        }
        if let Err(e) = self.meta.append(&self.run_id, event) {
            warn!(run = %self.run_id, error = %e, "cannot append to the run record: stopping the run");
            *failed = Some(e);
            self.stop.cancel();
        }
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Stops the run on a failure that leaves its record or its results untrustworthy.
    fn fail_record(&self, error: kiln_record::RecordError) {
        let mut failed = self.record_error.lock().expect("record error lock");
        if failed.is_none() {
            warn!(run = %self.run_id, error = %error, "stopping the run");
            *failed = Some(error);
            self.stop.cancel();
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
            // Outputs are made durable in batches, before the records that name them.
            store: Arc::new(state.store().with_group_commit()),
            meta: Arc::new(FileMetadata::new(state.clone())),
            clock: Arc::new(SystemClock),
            state,
            executors,
            config,
            exporter: None,
        }
    }

    /// Copies the outputs a plan's `exports:` names with `exporter` once the steps are done;
    /// without one, a plan with exports cannot start.
    pub fn with_exporter(mut self, exporter: Arc<dyn Exporter>) -> Self {
        self.exporter = Some(exporter);
        self
    }

    /// Keeps cache entries, records and the run list in `meta` instead of the state folder.
    pub fn with_metadata(mut self, meta: Arc<dyn MetadataStore>) -> Self {
        self.meta = meta;
        self
    }

    /// Reads the time of day from `clock`.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Starts a run in the background and returns at once: the handle has its id, its events
    /// (every one of them, from the start), and ways to cancel it and wait for it. Needs a
    /// tokio runtime.
    pub fn start(&self, input: RunInput) -> RunHandle {
        self.spawn_run(input, CancellationToken::new())
    }

    fn spawn_run(&self, input: RunInput, cancel: CancellationToken) -> RunHandle {
        let id = new_run_id();
        let (sender, events) = event_channel(&input);
        let engine = self.clone();
        let (run_id, run_sender, run_cancel) = (id.clone(), sender.clone(), cancel.clone());
        let task =
            tokio::spawn(
                async move { engine.execute(run_id, input, run_cancel, run_sender).await },
            );
        RunHandle {
            id,
            events: Some(events),
            sender,
            cancel,
            task,
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
    ///
    /// [`Engine::start`] and [`RunHandle::join`] for a caller that runs one run and wants its
    /// events without their run id.
    pub async fn run(
        &self,
        input: RunInput,
        cancel: CancellationToken,
        events: Option<UnboundedSender<Event>>,
    ) -> Result<RunSummary, EngineError> {
        // On a worker of the runtime, like every run: measured, a run polled from a thread
        // that `block_on` holds schedules its steps more slowly.
        let mut handle = self.spawn_run(input, cancel);
        let mut rx = handle.events();
        // Nobody listening: no receiver (sending to none costs nothing) and no task.
        let Some(tx) = events else {
            drop(rx);
            return handle.join().await;
        };
        let forward = {
            tokio::spawn(async move {
                loop {
                    match rx.recv().await {
                        Ok(e) => {
                            let _ = tx.send(e.event);
                        }
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            warn!(missed = n, "progress fell behind; some events were dropped")
                        }
                        Err(broadcast::error::RecvError::Closed) => break,
                    }
                }
            })
        };
        let result = handle.join().await;
        let _ = forward.await;
        result
    }

    async fn execute(
        &self,
        run_id: String,
        input: RunInput,
        cancel: CancellationToken,
        events: broadcast::Sender<RunEvent>,
    ) -> Result<RunSummary, EngineError> {
        let started = Instant::now();
        // Nothing of the run is written before its preflight passed: a run that cannot start
        // leaves no ghost behind for `latest` to find.
        let store = self.store.clone();
        let clock = self.clock.clone();

        let emit = |event: Event| {
            let _ = events.send(RunEvent {
                run_id: run_id.as_str().into(),
                at_ms: clock.now_ms(),
                event,
            });
        };
        let components = self.preflight(&input, store.as_ref()).await?;

        self.meta
            .create_run(
                &run_id,
                &serde_json::to_vec_pretty(&input.plan).expect("plans serialise"),
            )
            .await?;
        let params_json = serde_json::to_value(&input.plan.params).expect("params serialise");
        let started_event = RecordEvent::RunStarted {
            run_id: run_id.clone(),
            pipeline: input.plan.pipeline.clone(),
            pipeline_digest: Digest::of_bytes(input.pipeline_text.as_bytes()).to_string(),
            params_digest: Digest::of_bytes(canonical_json(&params_json).as_bytes()).to_string(),
            params: input.plan.params.clone(),
            labels: input
                .plan
                .steps
                .iter()
                .filter(|s| s.label() != s.id.as_str())
                .map(|s| (s.id.clone(), s.label().to_owned()))
                .collect(),
            pipeline_file: input.pipeline_file.clone(),
            kiln_version: env!("CARGO_PKG_VERSION").to_owned(),
            determinism_version: DETERMINISM_VERSION,
            at_ms: self.clock.now_ms(),
        };
        self.meta.append(&run_id, &started_event)?;
        info!(run = %run_id, pipeline = %input.plan.pipeline, steps = input.plan.steps.len(), "run started");
        emit(Event::RunStarted {
            run_id: run_id.clone(),
            total: input.plan.steps.len(),
        });

        // The run's claim on its scratch space; what killed runs left is swept now.
        let scratch_root = self.state.scratch_root();
        let scratch_lock = {
            let (root, id) = (scratch_root.clone(), run_id.clone());
            tokio::task::spawn_blocking(move || ScratchLock::take(&root, &id))
                .await
                .map_err(|e| EngineError::Internal(format!("scratch lock: {e}")))?
                .map_err(|e| EngineError::io(&scratch_root, e))?
        };
        let stop = cancel.child_token();
        // The plan's steps move into the run's list (a fan-out of 10,000 is 10,000 steps:
        // one copy of them, not two).
        let mut steps = RunSteps::default();
        let mut input = input;
        for step in std::mem::take(&mut input.plan.steps) {
            steps.push(Arc::new(step));
        }
        let shared = Arc::new(Shared {
            steps: std::sync::RwLock::new(steps),
            run_id: run_id.clone(),
            plan: input.plan,
            workspace: input.workspace,
            state: self.state.clone(),
            store,
            meta: self.meta.clone(),
            clock: self.clock.clone(),
            executors: self.executors.clone(),
            config: self.config.clone(),
            components,
            record_error: Mutex::new(None),
            stop: stop.clone(),
            event_run_id: run_id.as_str().into(),
            events: events.clone(),
            outputs: Mutex::new(HashMap::new()),
            conditional_skips: Mutex::new(HashSet::new()),
            statuses: Mutex::new(BTreeMap::new()),
            scratch_pool: Arc::new(ScratchPool::new(self.state.scratch_dir(&run_id))),
            committer: Committer::new(),
        });
        shared.committer.start(&shared);
        let (steps, cancelled) = schedule(shared.clone(), stop, &cancel).await;
        shared.committer.finish().await;
        let exports = crate::exports::run_exports(
            &shared,
            self.exporter.as_ref(),
            &steps,
            cancelled,
            &cancel,
        )
        .await;
        // A cancel while exporting stops the exports, and the run ends as cancelled.
        let cancelled = cancelled || !exports.is_empty() && cancel.is_cancelled();

        let status = if cancelled {
            RunStatus::Cancelled
        } else if steps
            .iter()
            .any(|s| matches!(s.status, StepStatus::Failed { .. } | StepStatus::Cancelled))
            || exports.iter().any(|e| e.status == ExportStatus::Failed)
        {
            RunStatus::Failed
        } else {
            RunStatus::Succeeded
        };
        let duration = started.elapsed();
        shared.record(&RecordEvent::RunFinished {
            status,
            at_ms: shared.now_ms(),
            duration_ms: duration.as_millis() as u64,
        });
        let scratch = self.state.scratch_dir(&run_id);
        remove_tree(&scratch);
        drop(scratch_lock);
        let failed = shared
            .record_error
            .lock()
            .expect("record error lock")
            .take();
        if let Some(e) = failed {
            return Err(EngineError::Record(e));
        }
        self.meta.finish_run(&run_id).await?;
        info!(run = %run_id, %status, "run finished");
        emit(Event::RunFinished { status });
        Ok(RunSummary {
            run_id,
            status,
            steps,
            exports,
            duration,
        })
    }

    /// Checks executors, commands and images, and stages the pinned components.
    async fn preflight(
        &self,
        input: &RunInput,
        store: &dyn BlobStore,
    ) -> Result<HashMap<String, Digest>, EngineError> {
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

        // Every pinned component must be in the store; executors stage them where they run.
        let mut components = HashMap::new();
        for step in &wasm_steps {
            if components.contains_key(&step.step) {
                continue;
            }
            let Some(digest) = input.components.get(&step.step) else {
                problems.push(format!(
                    "step `{}`: its component was not pinned to a digest before the run",
                    step.step
                ));
                continue;
            };
            match store.contains(digest).await {
                Ok(true) => {
                    components.insert(step.step.clone(), *digest);
                }
                Ok(false) => problems.push(format!(
                    "step `{}`: component {digest} is not in the store",
                    step.step
                )),
                Err(e) => problems.push(format!("step `{}`: {e}", step.step)),
            }
        }
        if !input.plan.exports.is_empty() && self.exporter.is_none() {
            problems.push(format!(
                "the pipeline exports {} output{} (`exports:`), but this kiln has no exporter to copy them to a bucket",
                input.plan.exports.len(),
                if input.plan.exports.len() == 1 { "" } else { "s" }
            ));
        }
        if problems.is_empty() {
            Ok(components)
        } else {
            Err(EngineError::Preflight(problems))
        }
    }
}

/// The limits on what runs at once besides `-j`: a fan-out step's `parallelism` (its
/// instances running at once) and the plan's named `concurrency` limits.
struct Limits<'p> {
    by_step: HashMap<String, u32>,
    by_group: HashMap<String, u32>,
    groups: &'p BTreeMap<String, u32>,
}

impl<'p> Limits<'p> {
    fn new(plan: &'p Plan) -> Self {
        Self {
            by_step: HashMap::new(),
            by_group: HashMap::new(),
            groups: &plan.concurrency,
        }
    }

    /// Counts `step` as running if its limits allow; `false` (nothing counted) if not.
    fn take(&mut self, step: &PlannedStep) -> bool {
        let running = self.by_step.get(step.step.as_str()).copied().unwrap_or(0);
        if step.policy.parallelism.is_some_and(|most| running >= most) {
            return false;
        }
        if let Some(group) = &step.policy.concurrency {
            let most = self.groups.get(group).copied().unwrap_or(u32::MAX);
            let in_group = self.by_group.get(group.as_str()).copied().unwrap_or(0);
            if in_group >= most {
                return false;
            }
            *self.by_group.entry(group.clone()).or_default() += 1;
        }
        *self.by_step.entry(step.step.clone()).or_default() += 1;
        true
    }

    /// `step` stopped running.
    fn give_back(&mut self, step: &PlannedStep) {
        if let Some(n) = self.by_step.get_mut(step.step.as_str()) {
            *n = n.saturating_sub(1);
        }
        if let Some(group) = &step.policy.concurrency
            && let Some(n) = self.by_group.get_mut(group.as_str())
        {
            *n = n.saturating_sub(1);
        }
    }
}

/// A run's event channel, with room for every event of a run whose receiver is slow.
fn event_channel(input: &RunInput) -> (broadcast::Sender<RunEvent>, broadcast::Receiver<RunEvent>) {
    broadcast::channel((input.plan.steps.len() * 4 + 64).max(1024))
}

/// The dependency-driven loop: returns each step's summary in plan order, and whether the
/// run was cancelled.
async fn schedule(
    shared: Arc<Shared>,
    stop: CancellationToken,
    cancel: &CancellationToken,
) -> (Vec<StepSummary>, bool) {
    let steps: Vec<Arc<PlannedStep>> = shared.steps.read().expect("steps lock").list.clone();
    let n = steps.len();
    let mut index: HashMap<String, usize> = steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.to_string(), i))
        .collect();
    let mut waiting: Vec<usize> = steps.iter().map(|s| s.depends_on.len()).collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, step) in steps.iter().enumerate() {
        for dep in &step.depends_on {
            dependents[index[dep.as_str()]].push(i);
        }
    }
    drop(steps);
    let mut results: Vec<Option<StepSummary>> = vec![None; n];
    // Fan-out steps over lists steps wrote that got their instances: not in the summary.
    let mut expanded: Vec<bool> = vec![false; n];
    let mut instances_of: HashMap<usize, Vec<usize>> = HashMap::new();
    let mut ready: BinaryHeap<Reverse<usize>> =
        (0..n).filter(|&i| waiting[i] == 0).map(Reverse).collect();
    let mut running: JoinSet<(usize, StepSummary)> = JoinSet::new();
    let mut running_ids: HashMap<tokio::task::Id, usize> = HashMap::new();
    let jobs = shared.config.jobs.max(1);
    let mut cancelled = false;
    // Steps running now, by step name (a fan-out's `parallelism`) and by named limit.
    let mut limits = Limits::new(&shared.plan);
    let mut deferred: Vec<usize> = Vec::new();
    // The run's own `timeout`: when it passes, the run stops as a cancel stops it, but
    // fails, and its exit handlers still run.
    let run_timeout = shared.plan.timeout_ms.map(Duration::from_millis);
    let timeout_text = shared
        .plan
        .timeout_ms
        .map(short_duration)
        .unwrap_or_default();
    let deadline = async {
        match run_timeout {
            Some(limit) => tokio::time::sleep(limit).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let mut timed_out = false;

    loop {
        while running.len() < jobs && !stop.is_cancelled() {
            let Some(Reverse(i)) = ready.pop() else { break };
            let step = shared.step(i);
            // A step whose inputs failed or were skipped is skipped, and so are its dependents.
            if let Some(reason) = upstream_problem(&step, &index, &results) {
                let summary = skipped(&step.id, reason);
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
            if step.for_each.is_some() {
                match expand(&shared, &step).await {
                    Ok(instances) => {
                        let grown = instances.len();
                        results.resize(results.len() + grown, None);
                        expanded.resize(expanded.len() + grown, false);
                        waiting.resize(waiting.len() + grown, 0);
                        dependents.resize(dependents.len() + grown, Vec::new());
                        let consumers = dependents[i].clone();
                        for &(at, ref deps) in &instances {
                            index.insert(shared.step(at).id.to_string(), at);
                            for dep in deps {
                                let d = index[dep.as_str()];
                                if results[d].is_none() {
                                    waiting[at] += 1;
                                    dependents[d].push(at);
                                }
                            }
                            // What waited for the fan-out step waits for every instance.
                            for &c in &consumers {
                                waiting[c] += 1;
                                dependents[at].push(c);
                            }
                            if waiting[at] == 0 {
                                ready.push(Reverse(at));
                            }
                        }
                        expanded[i] = true;
                        instances_of.insert(i, instances.iter().map(|(at, _)| *at).collect());
                        results[i] = Some(StepSummary {
                            id: step.id.clone(),
                            status: StepStatus::Succeeded,
                            attempts: 0,
                            duration: Duration::ZERO,
                            outputs: BTreeMap::new(),
                            metrics: BTreeMap::new(),
                        });
                        for &d in &dependents[i] {
                            waiting[d] -= 1;
                            if waiting[d] == 0 {
                                ready.push(Reverse(d));
                            }
                        }
                    }
                    Err(message) => {
                        let summary = StepSummary {
                            id: step.id.clone(),
                            status: StepStatus::Failed {
                                kind: FailureKind::Input,
                                message,
                            },
                            attempts: 0,
                            duration: Duration::ZERO,
                            outputs: BTreeMap::new(),
                            metrics: BTreeMap::new(),
                        };
                        finish(
                            &shared,
                            i,
                            summary,
                            &mut results,
                            &dependents,
                            &mut waiting,
                            &mut ready,
                        );
                    }
                }
                continue;
            }
            if !limits.take(&step) {
                deferred.push(i);
                continue;
            }
            let task_shared = shared.clone();
            let handle = running.spawn(async move {
                let summary = run_step(&task_shared, step).await;
                (i, summary)
            });
            running_ids.insert(handle.id(), i);
        }
        ready.extend(deferred.drain(..).map(Reverse));
        if running.is_empty() {
            break;
        }
        tokio::select! {
            _ = &mut deadline, if !timed_out => {
                warn!(run = %shared.run_id, timeout = %timeout_text, "the run passed its timeout: stopping it");
                timed_out = true;
                stop.cancel();
            }
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
                            // Past the run's timeout, a step stopped while running failed
                            // (and so does the run); after a cancel it was cancelled.
                            let timeout = (timed_out && !cancelled)
                                .then(|| run_timeout_message(&timeout_text));
                            let summary = StepSummary {
                                id: shared.step(i).id.clone(),
                                status: match &timeout {
                                    Some(message) => StepStatus::Failed {
                                        kind: FailureKind::Timeout,
                                        message: format!("stopped while running: {message}"),
                                    },
                                    None => StepStatus::Cancelled,
                                },
                                attempts: 1,
                                duration: Duration::ZERO,
                                outputs: BTreeMap::new(),
                                metrics: BTreeMap::new(),
                            };
                            shared.record(&RecordEvent::StepSkipped {
                                step: summary.id.clone(),
                                reason: match &timeout {
                                    Some(message) => format!("stopped while running: {message}"),
                                    None => "cancelled while running".into(),
                                },
                            });
                            finish(&shared, i, summary, &mut results, &dependents, &mut waiting, &mut ready);
                        }
                    }
                }
                break;
            }
            Some(joined) = running.join_next_with_id() => {
                let (i, summary) = match joined {
                    Ok((_, result)) => {
                        limits.give_back(&shared.step(result.0));
                        result
                    }
                    Err(e) => {
                        // A panic in a step task is kiln's bug: the step fails, the run goes on.
                        let i = running_ids[&e.id()];
                        let step = shared.step(i);
                        limits.give_back(&step);
                        (i, StepSummary {
                            id: step.id.clone(),
                            status: StepStatus::Failed { kind: FailureKind::Internal, message: format!("kiln failed while running this step: {e}") },
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

    // Exit handlers still run after `--fail-fast` and the run's timeout (not after a
    // cancel): the rest first.
    let run_finally = !cancelled && (shared.config.fail_fast || timed_out);
    // Whatever never started: cancelled (by Ctrl-C or --fail-fast) or skipped.
    for (i, result) in results.iter_mut().enumerate() {
        let step = shared.step(i);
        if run_finally && step.policy.run.is_finally() {
            continue;
        }
        if result.is_none() {
            let id = step.id.clone();
            let reason = (!cancelled).then(|| match timed_out {
                true => SkipReason::RunTimeout {
                    timeout: timeout_text.clone(),
                },
                false => SkipReason::FailFast,
            });
            shared.record(&RecordEvent::StepSkipped {
                step: id.clone(),
                reason: reason
                    .as_ref()
                    .map_or_else(|| "the run was cancelled".to_owned(), |r| r.to_string()),
            });
            let summary = StepSummary {
                id,
                status: match reason {
                    None => StepStatus::Cancelled,
                    Some(reason) => StepStatus::Skipped { reason },
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
    if run_finally {
        // One at a time, in plan order (which is a topological order).
        for i in 0..results.len() {
            if results[i].is_some() {
                continue;
            }
            let step = shared.step(i);
            let summary = match upstream_problem(&step, &index, &results) {
                Some(reason) => skipped(&step.id, reason),
                None => run_step(&shared, step).await,
            };
            finish(
                &shared,
                i,
                summary,
                &mut results,
                &dependents,
                &mut waiting,
                &mut ready,
            );
        }
    }
    // In plan order, a fan-out's instances where the fan-out step is.
    let mut order = Vec::with_capacity(results.len());
    for i in 0..n {
        push_in_order(i, &expanded, &instances_of, &mut order);
    }
    let mut results: Vec<Option<StepSummary>> = results;
    (
        order
            .into_iter()
            .map(|i| results[i].take().expect("every step has a result"))
            .collect(),
        cancelled,
    )
}

/// Step `i` in summary order: itself, or its instances when it was expanded.
fn push_in_order(
    i: usize,
    expanded: &[bool],
    instances_of: &HashMap<usize, Vec<usize>>,
    order: &mut Vec<usize>,
) {
    if expanded[i] {
        for &k in instances_of.get(&i).into_iter().flatten() {
            push_in_order(k, expanded, instances_of, order);
        }
    } else {
        order.push(i);
    }
}

/// Gives a fan-out step over a list a step wrote its instances: reads the list, records the
/// items, adds the instances to the run and points the steps waiting for it at them. Each
/// instance's index and the ids it waits for.
async fn expand(
    shared: &Shared,
    template: &PlannedStep,
) -> Result<Vec<(usize, Vec<StepId>)>, String> {
    let list = template
        .for_each
        .as_ref()
        .expect("a fan-out over a step's output");
    let what = format!(
        "step `{}` fans out over `{}.{}`",
        template.id, list.step, list.output
    );
    let digest = shared
        .outputs
        .lock()
        .expect("outputs lock")
        .get(&list.step)
        .and_then(|o| o.get(&list.output).copied())
        .ok_or_else(|| format!("{what}, which was not produced"))?;
    let size = shared
        .store
        .blob_size(&digest)
        .await
        .map_err(|e| format!("{what}: {e}"))?
        .ok_or_else(|| format!("{what}, which is a folder, not a file holding a JSON list"))?;
    if size > MAX_LIST {
        return Err(format!(
            "{what}, which is {size} bytes; a list to fan out over is at most {MAX_LIST} bytes"
        ));
    }
    let bytes = shared
        .store
        .read_verified(&digest)
        .await
        .map_err(|e| format!("{what}: {e}"))?;
    let json: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("{what}, which is not JSON: {e}"))?;
    let items = kiln_plan::dynamic::check_items(&json).map_err(|e| format!("{what}: {e}"))?;
    let made = {
        let steps = shared.steps.read().expect("steps lock");
        kiln_plan::dynamic::instantiate(template, items, |id| {
            steps.index.get(id).map(|&k| &*steps.list[k])
        })?
    };
    let labels: BTreeMap<StepId, String> = made
        .iter()
        .filter(|s| s.label() != s.id.as_str())
        .map(|s| (s.id.clone(), s.label().to_owned()))
        .collect();
    shared.record(&RecordEvent::StepExpanded {
        step: template.id.clone(),
        list: digest.to_string(),
        items: items.to_vec(),
        labels: labels.clone(),
    });
    let ids: Vec<StepId> = made.iter().map(|s| s.id.clone()).collect();
    info!(run = %shared.run_id, step = %template.id, instances = ids.len(), "fan-out expanded");
    let mut added = Vec::with_capacity(made.len());
    {
        let mut steps = shared.steps.write().expect("steps lock");
        // The steps waiting for the template wait for, and collect from, every instance.
        for k in 0..steps.list.len() {
            if steps.list[k].depends_on.contains(&template.id) {
                let mut consumer = (*steps.list[k]).clone();
                if kiln_plan::dynamic::point_at_instances(&mut consumer, template, &ids) {
                    steps.list[k] = Arc::new(consumer);
                }
            }
        }
        for instance in made {
            let deps = instance.depends_on.clone();
            let at = steps.push(Arc::new(instance));
            added.push((at, deps));
        }
    }
    shared.emit(Event::Expanded {
        id: template.id.clone(),
        instances: ids,
        labels,
    });
    Ok(added)
}

fn skipped(id: &str, reason: SkipReason) -> StepSummary {
    StepSummary {
        id: StepId::from(id),
        status: StepStatus::Skipped { reason },
        attempts: 0,
        duration: Duration::ZERO,
        outputs: BTreeMap::new(),
        metrics: BTreeMap::new(),
    }
}

/// Why a step cannot run because of its dependencies, if it cannot.
/// A step's status in one word, as `run.status` gives it: a result from the cache is
/// `succeeded`, so that a run that ends the same way gives the same `run.status`.
fn status_word(status: &StepStatus) -> &'static str {
    match status {
        StepStatus::Succeeded | StepStatus::Cached => "succeeded",
        StepStatus::Failed { .. } => "failed",
        StepStatus::Skipped { .. } => "skipped",
        StepStatus::Cancelled => "cancelled",
    }
}

/// `run.status`: how the steps that are not exit handlers ended, as one line of JSON.
fn run_status(shared: &Shared) -> String {
    let finally: std::collections::HashSet<String> = shared
        .steps
        .read()
        .expect("steps lock")
        .list
        .iter()
        .filter(|s| s.policy.run.is_finally())
        .map(|s| s.id.as_str().to_owned())
        .collect();
    let statuses = shared.statuses.lock().expect("statuses lock");
    let steps: BTreeMap<&str, &str> = statuses
        .iter()
        .filter(|(id, _)| !finally.contains(id.as_str()))
        .map(|(id, status)| (id.as_str(), *status))
        .collect();
    let failed: Vec<&str> = steps
        .iter()
        .filter(|(_, s)| matches!(**s, "failed" | "cancelled"))
        .map(|(id, _)| *id)
        .collect();
    let status = if failed.is_empty() {
        "succeeded"
    } else {
        "failed"
    };
    serde_json::json!({"status": status, "failed": failed, "steps": steps}).to_string() + "\n"
}

fn upstream_problem(
    step: &PlannedStep,
    index: &HashMap<String, usize>,
    results: &[Option<StepSummary>],
) -> Option<SkipReason> {
    if step.policy.run.is_finally() {
        return finally_problem(step, index, results);
    }
    // A collecting step collects what ran: an instance skipped by a condition is left out.
    let collected: HashSet<&StepId> = step
        .inputs
        .values()
        .flat_map(|source| match source {
            InputSource::Collect { instances, .. } => instances.as_slice(),
            _ => &[],
        })
        .collect();
    let by_condition = |d: &StepId| {
        results[index[d.as_str()]].as_ref().is_some_and(|r| {
            matches!(
                r.status,
                StepStatus::Skipped {
                    reason: SkipReason::ConditionFalse { .. }
                        | SkipReason::UpstreamConditionFalse { .. }
                }
            )
        })
    };
    let required = step.depends_on.iter().filter(|d| {
        let left_out = collected.contains(d) && by_condition(d);
        !step.optional.contains(d) && !step.after_on.contains_key(*d) && !left_out
    });
    if let Some(problem) = first_problem(required, index, results) {
        return Some(problem);
    }
    // `after: {step: x, on: failure}`: only when one of those failed; `on: any`: whatever.
    let on_failure: Vec<&StepId> = step
        .after_on
        .iter()
        .filter(|(_, on)| **on == kiln_spec::AfterOn::Failure)
        .map(|(id, _)| id)
        .collect();
    if let Some(first) = on_failure.first()
        && !on_failure.iter().any(|d| {
            results[index[d.as_str()]].as_ref().is_some_and(|r| {
                matches!(r.status, StepStatus::Failed { .. } | StepStatus::Cancelled)
            })
        })
    {
        return Some(SkipReason::DidNotFail {
            step: (*first).clone(),
        });
    }
    // Read only through `??`: a skip is what the fallback is for, a failure is not.
    for dep in &step.optional {
        if let Some(result) = &results[index[dep.as_str()]] {
            let step = dep.clone();
            match result.status {
                StepStatus::Failed { .. } => return Some(SkipReason::UpstreamFailed { step }),
                StepStatus::Cancelled => return Some(SkipReason::UpstreamCancelled { step }),
                _ => {}
            }
        }
    }
    // A template with no default whose every step was skipped has nothing to read.
    for value in step.values.iter().filter(|v| v.default.is_none()) {
        let ran = value.from.iter().any(|source| {
            results[index[source.step.as_str()]]
                .as_ref()
                .is_some_and(|r| matches!(r.status, StepStatus::Succeeded | StepStatus::Cached))
        });
        if !ran {
            return first_problem(value.from.iter().map(|s| &s.step), index, results);
        }
    }
    None
}

/// Why a step cannot run because of one of `deps`: the first that did not succeed.
fn first_problem<'d>(
    deps: impl IntoIterator<Item = &'d StepId>,
    index: &HashMap<String, usize>,
    results: &[Option<StepSummary>],
) -> Option<SkipReason> {
    for dep in deps {
        let Some(result) = &results[index[dep.as_str()]] else {
            continue;
        };
        let step = dep.clone();
        match &result.status {
            StepStatus::Succeeded | StepStatus::Cached => {}
            StepStatus::Failed { .. } => return Some(SkipReason::UpstreamFailed { step }),
            StepStatus::Cancelled => return Some(SkipReason::UpstreamCancelled { step }),
            StepStatus::Skipped {
                reason: SkipReason::ConditionFalse { .. },
            } => return Some(SkipReason::UpstreamConditionFalse { step }),
            StepStatus::Skipped { .. } => return Some(SkipReason::UpstreamSkipped { step }),
        }
    }
    None
}

/// Why an exit handler does not run: `on-failure` when nothing failed, or a step whose
/// output it reads did not produce it. Every other step it waits for may have ended any way.
fn finally_problem(
    step: &PlannedStep,
    index: &HashMap<String, usize>,
    results: &[Option<StepSummary>],
) -> Option<SkipReason> {
    if step.policy.run == kiln_spec::RunWhen::OnFailure {
        let any_failed = step.depends_on.iter().any(|dep| {
            results[index[dep.as_str()]].as_ref().is_some_and(|r| {
                matches!(r.status, StepStatus::Failed { .. } | StepStatus::Cancelled)
            })
        });
        if !any_failed {
            return Some(SkipReason::NothingFailed);
        }
    }
    let read = step.inputs.values().flat_map(|source| match source {
        InputSource::Step { step, .. } => std::slice::from_ref(step),
        InputSource::Collect { instances, .. } => instances.as_slice(),
        _ => &[],
    });
    // Values without a fallback too: a template needs its step's output.
    let values = step
        .values
        .iter()
        .filter(|v| v.default.is_none() && v.from.len() == 1)
        .map(|v| &v.from[0].step);
    first_problem(read.chain(values), index, results)
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
        && (reason.is_upstream() || *reason == SkipReason::NothingFailed)
    {
        shared.record(&RecordEvent::StepSkipped {
            step: summary.id.clone(),
            reason: reason.to_string(),
        });
    }
    if let StepStatus::Skipped {
        reason: SkipReason::ConditionFalse { .. } | SkipReason::UpstreamConditionFalse { .. },
    } = &summary.status
    {
        shared
            .conditional_skips
            .lock()
            .expect("skips lock")
            .insert(summary.id.clone());
    }
    shared.emit(Event::StepFinished(summary.clone()));
    shared
        .statuses
        .lock()
        .expect("statuses lock")
        .insert(summary.id.clone(), status_word(&summary.status));
    results[i] = Some(summary);
    for &d in &dependents[i] {
        waiting[d] -= 1;
        if waiting[d] == 0 {
            ready.push(Reverse(d));
        }
    }
}

/// A step from start to end: condition, inputs, cache, attempts, outputs.
async fn run_step(shared: &Shared, step: Arc<PlannedStep>) -> StepSummary {
    let step = &*step;
    let started = Instant::now();
    let fail = |kind: FailureKind, message: String, attempts: u32| StepSummary {
        id: step.id.clone(),
        status: StepStatus::Failed { kind, message },
        attempts,
        duration: started.elapsed(),
        outputs: BTreeMap::new(),
        metrics: BTreeMap::new(),
    };

    if let Some(when) = &step.when {
        match evaluate_condition(shared, step, when).await {
            Ok(true) => {}
            Ok(false) => {
                let reason = SkipReason::ConditionFalse { when: when.clone() };
                shared.record(&RecordEvent::StepSkipped {
                    step: step.id.clone(),
                    reason: reason.to_string(),
                });
                return skipped(&step.id, reason);
            }
            Err(e) => return fail(FailureKind::Condition, e, 0),
        }
    }

    // Other steps' small outputs in its templates: read now, and recorded.
    let filled;
    let step = if step.values.is_empty() {
        step
    } else {
        match fill_values(shared, step).await {
            Ok(s) => {
                filled = s;
                &filled
            }
            Err(e) => return fail(FailureKind::Input, e, 0),
        }
    };

    let inputs = match resolve_inputs(shared, step).await {
        Ok(inputs) => inputs,
        Err(e) => return fail(FailureKind::Input, e, 0),
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
    let key_parts = KeyParts::new(&step.cache_key, component.as_ref(), &inputs, pins);
    let key = key_parts.digest();
    let key_json = serde_json::to_value(&key_parts).expect("key parts serialise");

    let base_record = |status: AttemptStatus, attempt: u32| StepRecord {
        step: step.id.clone(),
        attempt,
        status,
        cache_key: key,
        key: key_json.clone(),
        executor: executor.name().to_owned(),
        inputs: inputs.clone(),
        outputs: BTreeMap::new(),
        duration_ms: 0,
        message: None,
        failure_kind: None,
        exit_code: None,
        metrics: BTreeMap::new(),
        details: BTreeMap::new(),
        reused_from: None,
        cache_miss: None,
    };

    let entry = match shared.config.use_cache && step.policy.cache {
        true => shared.meta.cache_entry(&key).await.ok().flatten(),
        false => None,
    };
    let cache_miss = entry
        .as_ref()
        .and_then(|e| too_old(e, step.policy.max_age_ms, shared.now_ms()));
    if let Some(reason) = &cache_miss {
        info!(run = %shared.run_id, step = %step.id, key = %key, "{reason}: running it again");
        shared.emit(Event::CacheExpired {
            id: step.id.clone(),
            reason: reason.clone(),
        });
    }
    if let Some(entry) = entry.filter(|_| cache_miss.is_none())
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
            at_ms: shared.now_ms(),
        });
        shared.emit(Event::StepStarted {
            id: step.id.clone(),
            attempt,
        });
        let attempt_started = Instant::now();
        let place = AttemptPlace {
            run_id: &shared.run_id,
            area: StagingArea {
                store: shared.store.clone(),
                scratch: shared.state.scratch_dir(&shared.run_id),
                components: shared.state.components_dir(),
                log: shared.state.log_path(&shared.run_id, &step.id),
                keep_failed: shared
                    .config
                    .keep_scratch
                    .then(|| shared.state.kept_dir(&shared.run_id)),
                pool: Some(shared.scratch_pool.clone()),
            },
        };
        let result = run_attempt(
            &place,
            step,
            attempt,
            &key,
            &inputs,
            component,
            BTreeMap::new(),
            executor.as_ref(),
        )
        .await;
        let mut rec = base_record(AttemptStatus::Failed, attempt);
        rec.cache_miss = cache_miss.clone();
        rec.duration_ms = attempt_started.elapsed().as_millis() as u64;
        match result {
            Ok((outputs, metrics, details)) => {
                rec.status = AttemptStatus::Succeeded;
                rec.outputs = outputs.clone();
                rec.metrics = metrics.clone();
                rec.details = details;
                let entry = step.policy.cache.then(|| CacheEntry {
                    key,
                    outputs: rec.outputs.clone(),
                    run_id: shared.run_id.clone(),
                    step: step.id.clone(),
                    metrics: metrics.clone(),
                    created_ms: Some(shared.now_ms()),
                });
                // The cache entry and the record wait for the outputs to be durable; the steps
                // that read them need not, and start now.
                shared.committer.submit(Finished {
                    key,
                    entry,
                    record: rec,
                });
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
                rec.failure_kind = Some(failure.kind);
                rec.exit_code = failure.exit_code;
                rec.details = failure.details;
                shared.record(&RecordEvent::StepFinished(Box::new(rec)));
                if attempt >= max_attempts
                    || !failure.retryable
                    || !retried_on(&step.policy.retry, failure.kind, failure.exit_code)
                {
                    return fail(failure.kind, failure.message, attempt);
                }
                let delay = backoff(&shared.config, &step.policy.retry, attempt);
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

/// The wait after failed attempt `attempt` (from 1): base × factor^(attempt-1), capped; the
/// step's own policy first, then the run's (factor 2).
fn backoff(config: &EngineConfig, retry: &RetryPlan, attempt: u32) -> Duration {
    let base = retry
        .backoff_ms
        .map_or(config.retry_base, Duration::from_millis);
    let most = retry
        .max_backoff_ms
        .map_or(config.retry_max, Duration::from_millis);
    let factor = retry.factor.unwrap_or(2.0).max(1.0);
    let exponent = attempt.saturating_sub(1).min(64) as i32;
    let wait = base.as_secs_f64() * factor.powi(exponent);
    if wait.is_finite() && wait < most.as_secs_f64() {
        Duration::from_secs_f64(wait)
    } else {
        most
    }
}

/// Whether the step's `retries.on` lets this failure be retried (no list: every retryable
/// failure). `oom` is an exit with code 137, as container engines report a kill for memory,
/// or a kill by a signal.
fn retried_on(retry: &RetryPlan, kind: FailureKind, exit_code: Option<i32>) -> bool {
    retry.on.is_empty()
        || retry.on.iter().any(|on| match on.as_str() {
            "oom" => {
                (kind == FailureKind::Exit && exit_code == Some(137)) || kind == FailureKind::Signal
            }
            on => kind.as_str() == on,
        })
}

pub(crate) struct AttemptFailure {
    pub(crate) kind: FailureKind,
    pub(crate) message: String,
    pub(crate) exit_code: Option<i32>,
    pub(crate) details: BTreeMap<String, serde_json::Value>,
    pub(crate) retryable: bool,
}

pub(crate) type AttemptResult = Result<
    (
        BTreeMap<String, Digest>,
        BTreeMap<String, f64>,
        BTreeMap<String, serde_json::Value>,
    ),
    AttemptFailure,
>;

/// Where an attempt runs: its run, and where it is staged (the store its inputs come from
/// and its outputs go to, the folder its scratch folder is made in, its log).
pub(crate) struct AttemptPlace<'a> {
    pub(crate) run_id: &'a str,
    pub(crate) area: StagingArea,
}

/// Reads a step's metrics output from the store: a file, small, a flat object of numbers.
async fn read_metrics(
    store: &dyn BlobStore,
    name: &str,
    digest: &Digest,
) -> Result<BTreeMap<String, f64>, String> {
    use crate::metrics::{MAX_METRICS_BYTES, parse_metrics};
    let cannot = |e: kiln_cas::CasError| format!("cannot read metrics output `{name}`: {e}");
    if store.kind(digest).await.map_err(cannot)? == Some(ObjectKind::Tree) {
        return Err(format!(
            "metrics output `{name}` is a folder: write one JSON file, such as {{\"accuracy\": 0.93}}"
        ));
    }
    let size = store.blob_size(digest).await.map_err(cannot)?.unwrap_or(0);
    if size > MAX_METRICS_BYTES {
        return Err(format!(
            "metrics output `{name}` is {size} bytes; the most is {MAX_METRICS_BYTES}: write a small JSON object of numbers"
        ));
    }
    let bytes = store.read_verified(digest).await.map_err(cannot)?;
    parse_metrics(name, &bytes)
}

/// One attempt: hand the task, by digest, to the executor (which stages, runs and
/// publishes), within the step's timeout.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run_attempt(
    place: &AttemptPlace<'_>,
    step: &PlannedStep,
    attempt: u32,
    key: &Digest,
    inputs: &BTreeMap<String, Digest>,
    component: Option<Digest>,
    recorded: BTreeMap<String, serde_json::Value>,
    executor: &dyn Executor,
) -> AttemptResult {
    let task = StepTask {
        run_id: place.run_id.to_owned(),
        step: step.clone(),
        attempt,
        cache_key: *key,
        inputs: inputs.clone(),
        outputs: step.outputs.clone(),
        component,
        recorded,
    };
    let run = executor.run(&task, &place.area);
    let outcome = match step.policy.timeout_ms {
        Some(ms) => match tokio::time::timeout(Duration::from_millis(ms), run).await {
            Ok(outcome) => outcome,
            Err(_) => {
                return Err(AttemptFailure {
                    kind: FailureKind::Timeout,
                    message: format!("timed out after {}", humanize(Duration::from_millis(ms))),
                    exit_code: None,
                    details: BTreeMap::new(),
                    retryable: true,
                });
            }
        },
        None => run.await,
    };
    match outcome {
        Ok(ExecOutcome::Succeeded {
            outputs,
            metrics,
            details,
        }) => {
            // Every declared output: an executor that publishes outputs itself is held to
            // the plan.
            if let Some(name) = step.outputs.iter().find(|n| !outputs.contains_key(*n)) {
                return Err(AttemptFailure {
                    kind: FailureKind::MissingOutput,
                    message: format!("the executor reported no digest for output `{name}`"),
                    exit_code: None,
                    details,
                    retryable: false,
                });
            }
            let mut metrics = metrics;
            if let Some(name) = &step.metrics {
                let read = read_metrics(place.area.store.as_ref(), name, &outputs[name]).await;
                let conflict = |m: &BTreeMap<String, f64>| {
                    m.keys().find(|k| metrics.contains_key(*k)).cloned()
                };
                match read {
                    Ok(read) if conflict(&read).is_none() => metrics.extend(read),
                    other => {
                        let message = match other {
                            Err(message) => message,
                            Ok(read) => format!(
                                "metric `{}` is both returned by the step and in its metrics output `{name}`",
                                conflict(&read).unwrap_or_default()
                            ),
                        };
                        return Err(AttemptFailure {
                            kind: FailureKind::Metrics,
                            message,
                            exit_code: None,
                            details,
                            retryable: false,
                        });
                    }
                }
            }
            Ok((outputs, metrics, details))
        }
        Ok(ExecOutcome::Failed {
            message,
            exit_code,
            kind,
            retryable,
            details,
        }) => Err(AttemptFailure {
            kind,
            message,
            exit_code,
            details,
            retryable,
        }),
        Err(e) => Err(AttemptFailure {
            kind: e.kind,
            message: e.message,
            exit_code: None,
            details: BTreeMap::new(),
            retryable: false,
        }),
    }
}

/// Digests of every input: upstream outputs, collected fan-outs, pinned workspace inputs,
/// params.
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
                    match digest {
                        Some(digest) => digests.push((k, digest)),
                        // Skipped by a condition: what ran is collected.
                        None if skipped_by_condition(shared, &instances[k]) => {}
                        None => {
                            return Err(format!(
                                "input `{name}`: instance {k} has no output `{output}`"
                            ));
                        }
                    }
                }
                collect_tree(shared.store.as_ref(), &digests).await?
            }
            InputSource::Workspace { path } => *shared.workspace.get(path).ok_or_else(|| {
                format!("input `{name}`: workspace input {path} was not pinned before the run")
            })?,
            InputSource::External { url } => *shared.workspace.get(url).ok_or_else(|| {
                format!("input `{name}`: external input {url} was not fetched before the run")
            })?,
            InputSource::RunStatus => {
                let text = run_status(shared);
                shared
                    .store
                    .put_bytes(text.into_bytes().into())
                    .await
                    .map_err(|e| format!("input `{name}`: {e}"))?
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

/// Whether step `id` was skipped because a condition was false (its own, or an upstream
/// step's): an instance a collecting step may do without.
fn skipped_by_condition(shared: &Shared, id: &StepId) -> bool {
    shared
        .conditional_skips
        .lock()
        .expect("skips lock")
        .contains(id)
}

/// The folder a `Collect` input is: one entry per instance that ran, named by its index.
pub(crate) async fn collect_tree(
    store: &dyn BlobStore,
    digests: &[(usize, Digest)],
) -> Result<Digest, String> {
    let mut entries = Vec::new();
    for (k, digest) in digests {
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
        let digest = *entry.outputs.get(name)?;
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
    let produced: HashMap<StepId, BTreeMap<String, Digest>> = {
        let outputs = shared.outputs.lock().expect("outputs lock");
        step.depends_on
            .iter()
            .filter_map(|id| outputs.get(id).map(|o| (id.clone(), o.clone())))
            .collect()
    };
    let producer = |id: &str| {
        shared
            .find(id)
            .map(|s| (s.step.clone(), s.instance.is_some()))
    };
    condition_holds(
        &shared.plan.params,
        &producer,
        shared.store.as_ref(),
        &produced,
        step,
        when,
    )
    .await
}

/// Evaluates `when` with the small JSON outputs of the step's dependencies, read from
/// `produced` (outputs by step id).
pub(crate) async fn condition_holds(
    params: &BTreeMap<String, Value>,
    producer: &(dyn Fn(&str) -> Option<(String, bool)> + Sync),
    store: &dyn BlobStore,
    produced: &HashMap<StepId, BTreeMap<String, Digest>>,
    step: &PlannedStep,
    when: &str,
) -> Result<bool, String> {
    let mut steps: BTreeMap<String, BTreeMap<String, serde_json::Value>> = BTreeMap::new();
    let mut lists: BTreeMap<(String, String), Vec<serde_json::Value>> = BTreeMap::new();
    // A condition written in a sub-pipeline reads that file's params, and its steps by the
    // names the file gives them.
    let namespace = step
        .when_scope
        .as_ref()
        .map_or("", |s| s.namespace.as_str());
    let producers: Vec<(&StepId, String, bool)> = step
        .depends_on
        .iter()
        .filter_map(|id| producer(id).map(|(name, is_instance)| (id, name, is_instance)))
        .collect();
    // What the condition reads, to say so when an output it reads cannot be a value.
    let reads = kiln_plan::when::analyze(when)
        .map(|r| r.steps)
        .unwrap_or_default();
    for (id, name, is_instance) in &producers {
        let Some(outputs) = produced.get(*id) else {
            continue;
        };
        let Some(producer_name) = name.strip_prefix(namespace) else {
            continue;
        };
        // An instance paired with this one (`evaluate[1]` after `train[1]`) reads the one
        // value, not a list of one.
        let paired = *is_instance
            && step.instance.as_ref().map(|i| i.index) == id.index()
            && producers.iter().filter(|(_, n, _)| n == name).count() == 1;
        for (output, digest) in outputs {
            let value = match small_value(store, digest, MAX_CONDITION_INPUT).await {
                Ok(value) => value,
                Err(why) => {
                    if reads.iter().any(|(s, o)| s == producer_name && o == output) {
                        return Err(format!(
                            "step `{}`: `when` reads `steps.{producer_name}.{output}`, which cannot be a value: {why}",
                            step.id
                        ));
                    }
                    continue;
                }
            };
            if *is_instance && !paired {
                lists
                    .entry((producer_name.to_owned(), output.clone()))
                    .or_default()
                    .push(value);
            } else {
                steps
                    .entry(producer_name.to_owned())
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
    // The evaluator thread answers in microseconds, but it is a wait: not on a worker.
    let params = step
        .when_scope
        .as_ref()
        .map_or(params, |s| &s.params)
        .clone();
    let (when, item) = (when.to_owned(), item.cloned());
    tokio::task::spawn_blocking(move || {
        kiln_plan::when::evaluate(&when, &params, &steps, item.as_ref())
    })
    .await
    .map_err(|e| format!("a blocking task failed: {e}"))?
    .map_err(|e| format!("step `{}`: {e}", step.id))
}

/// Step `step` with the small outputs its templates read filled in: for each template the
/// first output whose step ran, else its default; recorded as `step_values`.
async fn fill_values(shared: &Shared, step: &PlannedStep) -> Result<PlannedStep, String> {
    let mut values = BTreeMap::new();
    for value in &step.values {
        let mut found = None;
        for source in &value.from {
            let digest = shared
                .outputs
                .lock()
                .expect("outputs lock")
                .get(&source.step)
                .and_then(|o| o.get(&source.output))
                .cloned();
            // Not there: that step was skipped; the next is tried.
            let Some(digest) = digest else { continue };
            let read = small_value(shared.store.as_ref(), &digest, kiln_plan::values::MAX_VALUE);
            found = Some(read.await.map_err(|e| {
                format!(
                    "`{{{{{}}}}}` reads `{}.{}`, which cannot be a value: {e}",
                    value.template, source.step, source.output
                )
            })?);
            break;
        }
        let Some(found) = found.or_else(|| value.default.clone()) else {
            return Err(format!(
                "`{{{{{}}}}}`: none of the steps it reads ran, and it has no default (`?? VALUE`)",
                value.template
            ));
        };
        values.insert(value.template.clone(), found);
    }
    let filled = kiln_plan::values::fill(step, &values)?;
    shared.record(&RecordEvent::StepValues {
        step: step.id.clone(),
        values,
    });
    Ok(filled)
}

/// An output as a value for a condition or a template (JSON, else its text:
/// [`kiln_plan::values::read`]), or why it cannot be one.
async fn small_value(
    store: &dyn BlobStore,
    digest: &Digest,
    max: u64,
) -> Result<serde_json::Value, String> {
    // A tree has no blob size.
    let size = store
        .blob_size(digest)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "it is a folder".to_owned())?;
    if size > max {
        return Err(format!(
            "it holds {size} bytes; a value is read from outputs of at most {max} bytes (read bigger ones as an input)"
        ));
    }
    let bytes = store
        .read_verified(digest)
        .await
        .map_err(|e| e.to_string())?;
    kiln_plan::values::read(&bytes)
}

/// What a run past its `timeout` says: `the run passed its timeout of 2h`.
fn run_timeout_message(timeout: &str) -> String {
    format!("the run passed its timeout of {timeout}")
}

/// Why a cached entry is too old for a step's `max_age`, if it is: an entry without the time
/// it was made (written by a kiln that did not note it) always is.
fn too_old(entry: &CacheEntry, max_age_ms: Option<u64>, now_ms: u64) -> Option<String> {
    let max_age_ms = max_age_ms?;
    let max_age = short_duration(max_age_ms);
    let Some(created) = entry.created_ms else {
        return Some(format!(
            "cached result has no time of making (an older kiln wrote it), so it counts as older than max_age {max_age}"
        ));
    };
    let age_ms = now_ms.saturating_sub(created);
    (age_ms > max_age_ms).then(|| {
        format!(
            "cached result is {} old, older than max_age {max_age}",
            short_duration(age_ms)
        )
    })
}

/// An age in its largest whole unit and the next (`8d`, `1d 2h`, `3h 5m`, `2s`).
fn short_duration(ms: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ];
    for (k, (unit, size)) in UNITS.iter().enumerate() {
        if ms >= *size {
            let whole = ms / size;
            let rest = UNITS
                .get(k + 1)
                .map(|(next, next_size)| (ms % size / next_size, next))
                .filter(|(n, _)| *n > 0)
                .map_or(String::new(), |(n, next)| format!(" {n}{next}"));
            return format!("{whole}{unit}{rest}");
        }
    }
    format!("{ms}ms")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_in_their_largest_units() {
        assert_eq!(short_duration(8 * 86_400_000), "8d");
        assert_eq!(short_duration(86_400_000 + 2 * 3_600_000 + 5), "1d 2h");
        assert_eq!(short_duration(90 * 60_000), "1h 30m");
        assert_eq!(short_duration(2_500), "2s");
        assert_eq!(short_duration(40), "40ms");
    }

    #[test]
    fn an_entry_is_too_old_only_past_max_age() {
        let entry = |created_ms| CacheEntry {
            key: Digest::of_bytes(b"k"),
            outputs: BTreeMap::new(),
            run_id: "r".into(),
            step: "a".into(),
            metrics: BTreeMap::new(),
            created_ms,
        };
        let day = 86_400_000;
        assert_eq!(too_old(&entry(Some(0)), None, 100 * day), None);
        assert_eq!(too_old(&entry(None), None, 100 * day), None);
        assert_eq!(too_old(&entry(Some(0)), Some(7 * day), 7 * day), None);
        assert_eq!(
            too_old(&entry(Some(0)), Some(7 * day), 8 * day).as_deref(),
            Some("cached result is 8d old, older than max_age 7d")
        );
        assert!(
            too_old(&entry(None), Some(7 * day), 0)
                .is_some_and(|r| r.contains("counts as older than max_age 7d"))
        );
        // A clock that went back does not make an entry young by wrapping around.
        assert_eq!(too_old(&entry(Some(5 * day)), Some(day), day), None);
    }
}
