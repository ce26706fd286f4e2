//! Replay: re-execute a recorded run's wasm steps and compare what they write with what the
//! record says they wrote.
//!
//! Each wasm step runs again with the component, inputs, params, seed, clock starts, fuel and
//! memory budget of its recorded attempt; container steps are served from their recorded
//! outputs, or run again on request. A plain replay feeds every step its recorded inputs, so a
//! difference points at the step that differs and nothing else. A replay with replaced
//! components feeds each step what its upstream steps wrote in the replay, so a change shows
//! where it goes downstream.
//!
//! Every verdict that is not `identical` carries a stable code (documented in
//! `docs/replay.md`): `kiln::replay::nondeterministic`, `kiln::replay::changed`,
//! `kiln::replay::failed`, `kiln::replay::missing-object`, `kiln::replay::component`,
//! `kiln::replay::executor`, `kiln::replay::upstream`, `kiln::replay::stale-container`,
//! `kiln::replay::condition`, `kiln::replay::record`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kiln_cas::{BlobStore, Digest, EntryKind, ObjectKind};
use kiln_plan::{InputSource, Plan, PlannedStep, StepId, StepKind};
use serde::Serialize;

use crate::cache::{DETERMINISM_VERSION, KeyParts};
use crate::engine::{AttemptPlace, Executors, collect_tree, condition_holds, run_attempt};
use crate::staging::StagingArea;
use kiln_record::{AttemptStatus, RecordEvent, RunView, StepRecord, read_record};
use kiln_record::{StateDir, now_ms};

/// The note on an identical step whose upstream steps were all served from the record.
const INPUTS_SERVED: &str = "its inputs were served from the record";

/// The largest output (each side) shown as a text diff.
const MAX_DIFF_BYTES: u64 = 64 * 1024;
/// Lines of a diff shown per output.
const MAX_DIFF_LINES: usize = 40;
/// Paths listed per folder output that differs.
const MAX_LISTED_PATHS: usize = 20;

/// What a replay does besides re-executing wasm steps.
#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    /// Run container steps again instead of serving their recorded outputs.
    pub rerun_containers: bool,
    /// Components to use instead of the recorded ones: step name (or planned id) → `.wasm`.
    pub replace: BTreeMap<String, PathBuf>,
    /// Where attempts run and logs go (a folder the caller owns; created if missing).
    pub work_dir: PathBuf,
    /// The most steps replayed at once (0: one per core). Steps wait for the steps they
    /// read, as in a run; the report keeps the plan's order whatever finishes first.
    pub jobs: usize,
}

/// Why a replay could not start at all.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The record or plan cannot be read.
    #[error("{0}")]
    Record(String),
    /// The run was recorded by a runtime whose observable behaviour differs from this one.
    #[error(
        "run {run_id} was recorded with determinism version {recorded}; this kiln's runtime is \
         version {current}, so its steps may legitimately write other bytes. Record the run again \
         with this kiln (and re-export its bundle)"
    )]
    DeterminismVersion {
        /// The run.
        run_id: String,
        /// In the record.
        recorded: u32,
        /// This kiln.
        current: u32,
    },
    /// A `--with` names no wasm step of the run, or its file cannot be read.
    #[error("{0}")]
    Replace(String),
    /// The work folder cannot be made.
    #[error("{path}: {source}")]
    Io {
        /// The folder.
        path: String,
        /// What the system said.
        source: std::io::Error,
    },
}

impl ReplayError {
    /// A stable code for tools and docs.
    pub fn code(&self) -> &'static str {
        match self {
            ReplayError::Record(_) => "kiln::replay::record",
            ReplayError::DeterminismVersion { .. } => "kiln::replay::determinism-version",
            ReplayError::Replace(_) => "kiln::replay::with",
            ReplayError::Io { .. } => "kiln::replay::io",
        }
    }
}

/// How one step came out of a replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Same outputs and metrics as recorded.
    Identical,
    /// Different outputs, metrics or outcome from the same component and inputs.
    Diverged,
    /// Different outputs after its component was replaced or its inputs changed upstream.
    Changed,
    /// A container step whose recorded outputs were used as they are.
    Served,
    /// Not replayed: skipped or failed in the recorded run.
    Skipped,
    /// It could not be replayed: a missing object, a component that does not load...
    CouldNotReplay,
}

impl Verdict {
    /// The word `kiln replay` prints.
    pub fn word(self) -> &'static str {
        match self {
            Verdict::Identical => "identical",
            Verdict::Diverged => "diverged",
            Verdict::Changed => "changed",
            Verdict::Served => "served",
            Verdict::Skipped => "skipped",
            Verdict::CouldNotReplay => "could-not-replay",
        }
    }
}

/// One output compared.
#[derive(Debug, Clone, Serialize)]
pub struct OutputReplay {
    /// Output name.
    pub name: String,
    /// Digest in the record.
    pub recorded: String,
    /// Digest written by the replay.
    pub replayed: String,
    /// Whether the two are the same.
    pub same: bool,
    /// For folders that differ: the paths inside that differ (`~` changed, `+` only in the
    /// replay, `-` only in the record).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// A unified diff, when both sides are small text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
}

/// One metric compared.
#[derive(Debug, Clone, Serialize)]
pub struct MetricReplay {
    /// Metric name.
    pub name: String,
    /// In the record (absent if the replay reported a new one).
    pub recorded: Option<f64>,
    /// In the replay (absent if it no longer reports it).
    pub replayed: Option<f64>,
}

/// One step's replay.
#[derive(Debug, Clone, Serialize)]
pub struct StepReplay {
    /// Planned step id.
    pub step: StepId,
    /// The executor that ran it (`wasm`, `process`...), or that recorded it.
    pub executor: String,
    /// How it came out.
    pub verdict: Verdict,
    /// A stable code for everything but `identical`, `served` and `skipped`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'static str>,
    /// Why, for people; on an identical step, what the verdict rests on where it is less
    /// than it reads ("its inputs were served from the record").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Outputs compared (empty when it did not run).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<OutputReplay>,
    /// Metrics compared, where either side has any.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<MetricReplay>,
    /// Whether its component was replaced (`--with`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub replaced: bool,
    /// Inputs whose digests differ from the record (changed upstream).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub inputs_changed: Vec<String>,
    /// Wall time of the replayed attempt.
    pub duration_ms: u64,
    /// The replay's log of the step, when it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<PathBuf>,
}

impl StepReplay {
    fn new(step: &str, executor: &str, verdict: Verdict) -> Self {
        Self {
            step: StepId::from(step),
            executor: executor.to_owned(),
            verdict,
            code: None,
            message: None,
            outputs: Vec::new(),
            metrics: Vec::new(),
            replaced: false,
            inputs_changed: Vec::new(),
            duration_ms: 0,
            log: None,
        }
    }

    fn problem(mut self, verdict: Verdict, code: &'static str, message: String) -> Self {
        self.verdict = verdict;
        self.code = Some(code);
        self.message = Some(message);
        self
    }
}

/// The result of a replay.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayReport {
    /// The recorded run.
    pub run_id: String,
    /// Its pipeline.
    pub pipeline: String,
    /// The determinism version it was recorded (and replayed) with.
    pub determinism_version: u32,
    /// Replaced components: step → digest of the new component.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub replaced: BTreeMap<String, String>,
    /// Every planned step, in plan order.
    pub steps: Vec<StepReplay>,
    /// Wall time of the replay.
    pub duration_ms: u64,
}

impl ReplayReport {
    /// How many steps got each verdict.
    pub fn count(&self, verdict: Verdict) -> usize {
        self.steps.iter().filter(|s| s.verdict == verdict).count()
    }
}

/// Progress of a replay, for a user interface.
#[derive(Debug, Clone)]
pub enum ReplayProgress {
    /// A step is about to run again.
    Started {
        /// Planned step id.
        step: StepId,
    },
    /// A step has its verdict.
    Finished(StepReplay),
}

/// Replays run `run_id` of `state`: its record, plan and objects are read from there, and the
/// replayed outputs are stored in its store (content-addressed, so nothing recorded changes).
pub async fn replay_run(
    state: &StateDir,
    store: Arc<dyn BlobStore>,
    run_id: &str,
    executors: &Executors,
    options: &ReplayOptions,
    progress: &(dyn Fn(ReplayProgress) + Send + Sync),
) -> Result<ReplayReport, ReplayError> {
    let started = Instant::now();
    let record_path = state.record_path(run_id);
    let events = read_record(&record_path).map_err(|e| ReplayError::Record(e.to_string()))?;
    let view = RunView::from_events(&events);
    let Some(RecordEvent::RunStarted {
        pipeline,
        determinism_version,
        ..
    }) = &view.started
    else {
        return Err(ReplayError::Record(format!(
            "{}: the record does not start with a run",
            record_path.display()
        )));
    };
    if *determinism_version != DETERMINISM_VERSION {
        return Err(ReplayError::DeterminismVersion {
            run_id: run_id.to_owned(),
            recorded: *determinism_version,
            current: DETERMINISM_VERSION,
        });
    }
    let plan_path = state.run_dir(run_id).join("plan.json");
    let plan: Plan = std::fs::read(&plan_path)
        .map_err(|e| format!("{}: {e}", plan_path.display()))
        .and_then(|bytes| {
            serde_json::from_slice(&bytes)
                .map_err(|e| format!("{}: not a plan kiln can read: {e}", plan_path.display()))
        })
        .map_err(ReplayError::Record)?;
    let plan = plan_as_run(plan, &events).map_err(ReplayError::Record)?;

    let replaced = replacements(&plan, &options.replace)?;
    // A replacement runs from the store like any component.
    for (name, (path, digest)) in &replaced {
        let stored = store
            .put_file(path)
            .await
            .map_err(|e| ReplayError::Replace(format!("--with {name}={}: {e}", path.display())))?;
        if stored != *digest {
            return Err(ReplayError::Replace(format!(
                "--with {name}={}: the file changed while it was read",
                path.display()
            )));
        }
    }
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| ReplayError::Io {
            path: path.display().to_string(),
            source,
        }
    };
    let logs = options.work_dir.join("logs");
    std::fs::create_dir_all(&logs).map_err(io(&logs))?;
    let components = state.components_dir();

    let replay_id = format!("replay-{run_id}-{}", now_ms());
    let propagate = !replaced.is_empty();
    let plan = Arc::new(plan);
    let ctx = Arc::new(Ctx {
        plan: plan.clone(),
        store: store.clone(),
        executors: executors.clone(),
        options: options.clone(),
        replaced: replaced.clone(),
        propagate,
        current: Mutex::new(HashMap::new()),
        failed_upstream: Mutex::new(HashMap::new()),
        served: Mutex::new(HashSet::new()),
        replay_id,
        components,
        logs,
    });
    // A fan-out over a list a step wrote is replayed as its instances.
    let order: Vec<&PlannedStep> = plan.steps.iter().filter(|s| s.for_each.is_none()).collect();
    let position: HashMap<&str, usize> = order
        .iter()
        .enumerate()
        .map(|(k, s)| (s.id.as_str(), k))
        .collect();
    // Each step waits for the steps it reads or runs after, as in a run.
    let mut waiting = vec![0usize; order.len()];
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); order.len()];
    for (k, planned) in order.iter().enumerate() {
        let mut deps: Vec<usize> = planned
            .depends_on
            .iter()
            .filter_map(|d| position.get(d.as_str()).copied())
            .collect();
        deps.sort_unstable();
        deps.dedup();
        waiting[k] = deps.len();
        for d in deps {
            dependents[d].push(k);
        }
    }
    let mut ready: BinaryHeap<Reverse<usize>> = (0..order.len())
        .filter(|&k| waiting[k] == 0)
        .map(Reverse)
        .collect();
    let jobs = match options.jobs {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let (started_tx, mut started_rx) = tokio::sync::mpsc::unbounded_channel::<StepId>();
    let mut running = tokio::task::JoinSet::new();
    let mut results: Vec<Option<StepReplay>> = vec![None; order.len()];
    loop {
        while running.len() < jobs
            && let Some(Reverse(k)) = ready.pop()
        {
            let ctx = ctx.clone();
            let planned = order[k].clone();
            let view = view.step(&planned.id).cloned();
            let tx = started_tx.clone();
            running.spawn(async move {
                let started = move |id: StepId| {
                    let _ = tx.send(id);
                };
                (k, ctx.step(&planned, view.as_ref(), &started).await)
            });
        }
        if running.is_empty() {
            break;
        }
        tokio::select! {
            Some(step) = started_rx.recv() => progress(ReplayProgress::Started { step }),
            Some(joined) = running.join_next() => {
                let (k, result) = joined
                    .map_err(|e| ReplayError::Record(format!("a step's replay failed: {e}")))?;
                while let Ok(step) = started_rx.try_recv() {
                    progress(ReplayProgress::Started { step });
                }
                progress(ReplayProgress::Finished(result.clone()));
                results[k] = Some(result);
                for &d in &dependents[k] {
                    waiting[d] -= 1;
                    if waiting[d] == 0 {
                        ready.push(Reverse(d));
                    }
                }
            }
        }
    }
    let steps: Vec<StepReplay> = results
        .into_iter()
        .map(|r| r.expect("every step is replayed once its upstream steps are"))
        .collect();
    let _ = std::fs::remove_dir_all(options.work_dir.join("scratch"));
    Ok(ReplayReport {
        run_id: run_id.to_owned(),
        pipeline: pipeline.clone(),
        determinism_version: *determinism_version,
        replaced: replaced
            .iter()
            .map(|(step, (_, digest))| (step.clone(), digest.to_string()))
            .collect(),
        steps,
        duration_ms: started.elapsed().as_millis() as u64,
    })
}

/// A run's plan with the instances its fan-outs over lists steps wrote got in the run (the
/// record's `step_expanded` events), as the engine made them.
pub fn plan_as_run(mut plan: Plan, events: &[RecordEvent]) -> Result<Plan, String> {
    for event in events {
        match event {
            RecordEvent::StepExpanded { step, items, .. } => {
                plan.expand(step, items)
                    .map_err(|e| format!("the record's instances of `{step}`: {e}"))?;
            }
            RecordEvent::StepValues { step, values } => {
                plan.fill_values(step, values)
                    .map_err(|e| format!("the record's values for `{step}`: {e}"))?;
            }
            _ => {}
        }
    }
    Ok(plan)
}

/// Resolves `--with STEP=FILE`: every STEP must be a wasm step of the plan.
fn replacements(
    plan: &Plan,
    replace: &BTreeMap<String, PathBuf>,
) -> Result<BTreeMap<String, (PathBuf, Digest)>, ReplayError> {
    let mut found = BTreeMap::new();
    for (name, path) in replace {
        let matching: Vec<&PlannedStep> = plan
            .steps
            .iter()
            .filter(|s| &s.step == name || &s.id == name)
            .collect();
        if matching.is_empty() {
            let names: Vec<&str> = plan.steps.iter().map(|s| s.step.as_str()).collect();
            return Err(ReplayError::Replace(format!(
                "--with {name}=…: the run has no step `{name}` (its steps: {})",
                dedup(names).join(", ")
            )));
        }
        if matching
            .iter()
            .any(|s| !matches!(s.kind, StepKind::Wasm { .. }))
        {
            return Err(ReplayError::Replace(format!(
                "--with {name}=…: `{name}` is a container step; only wasm components can be \
                 replaced"
            )));
        }
        let digest = Digest::of_file(path).map_err(|e| {
            ReplayError::Replace(format!(
                "--with {name}={}: cannot read it: {e}",
                path.display()
            ))
        })?;
        let path = std::path::absolute(path).unwrap_or_else(|_| path.clone());
        found.insert(name.clone(), (path, digest));
    }
    Ok(found)
}

fn dedup(mut names: Vec<&str>) -> Vec<&str> {
    names.dedup();
    names
}

/// What the steps of one replay share; steps replayed at once each hold it.
struct Ctx {
    plan: Arc<Plan>,
    /// The store, also for staging attempts.
    store: Arc<dyn BlobStore>,
    executors: Executors,
    options: ReplayOptions,
    replaced: BTreeMap<String, (PathBuf, Digest)>,
    /// Feed steps what the replay wrote upstream (with replacements) rather than what the
    /// record says they read.
    propagate: bool,
    /// Outputs downstream steps read, by step id.
    current: Mutex<HashMap<StepId, BTreeMap<String, Digest>>>,
    /// Steps that produced nothing usable in the replay, and why.
    failed_upstream: Mutex<HashMap<StepId, String>>,
    /// Container steps whose recorded outputs were served as they are.
    served: Mutex<HashSet<StepId>>,
    replay_id: String,
    components: PathBuf,
    logs: PathBuf,
}

impl Ctx {
    fn failed(&self, id: &StepId, why: String) {
        self.failed_upstream
            .lock()
            .expect("replay lock")
            .insert(id.clone(), why);
    }

    fn failed_why(&self, id: &str) -> Option<String> {
        self.failed_upstream
            .lock()
            .expect("replay lock")
            .get(id)
            .cloned()
    }

    fn produced(&self, id: &StepId, outputs: BTreeMap<String, Digest>) {
        self.current
            .lock()
            .expect("replay lock")
            .insert(id.clone(), outputs);
    }

    async fn step(
        &self,
        planned: &PlannedStep,
        view: Option<&kiln_record::StepView>,
        started: &(dyn Fn(StepId) + Send + Sync),
    ) -> StepReplay {
        let kind_name = match planned.kind {
            StepKind::Wasm { .. } => "wasm",
            StepKind::Container(_) => "container",
        };
        let recorded_ran = view.is_some_and(|v| v.last.is_some() && v.skipped.is_none());
        if self.propagate
            && let Some(when) = &planned.when
            && !planned
                .depends_on
                .iter()
                .any(|d| self.failed_why(d).is_some())
        {
            let current = self.current.lock().expect("replay lock").clone();
            match condition_holds(
                &self.plan.params,
                &|id: &str| {
                    self.plan
                        .step(id)
                        .map(|s| (s.step.clone(), s.instance.is_some()))
                },
                self.store.as_ref(),
                &current,
                planned,
                when,
            )
            .await
            {
                Ok(true) if !recorded_ran => {
                    return self.not_produced(
                        planned,
                        kind_name,
                        Verdict::Changed,
                        Some("kiln::replay::changed"),
                        format!(
                            "its condition `{when}` now holds, but the recorded run skipped it: \
                             nothing to compare it with"
                        ),
                    );
                }
                Ok(false) if recorded_ran => {
                    return self.not_produced(
                        planned,
                        kind_name,
                        Verdict::Changed,
                        Some("kiln::replay::changed"),
                        format!(
                            "its condition `{when}` no longer holds: a run would skip it (and \
                             the steps that read it)"
                        ),
                    );
                }
                Ok(_) => {}
                Err(e) => {
                    return self.not_produced(
                        planned,
                        kind_name,
                        Verdict::CouldNotReplay,
                        Some("kiln::replay::condition"),
                        format!("its condition cannot be evaluated: {e}"),
                    );
                }
            }
        }
        let Some(rec) = view.and_then(|v| v.last.as_ref()) else {
            let reason = view
                .and_then(|v| v.skipped.clone())
                .unwrap_or_else(|| "it did not run in the recorded run".to_owned());
            return self.not_produced(planned, kind_name, Verdict::Skipped, None, reason);
        };
        if rec.status == AttemptStatus::Failed {
            let reason = format!(
                "it failed in the recorded run ({}): nothing to compare",
                rec.failure_kind.map_or("failed", |k| k.as_str())
            );
            return self.not_produced(planned, &rec.executor, Verdict::Skipped, None, reason);
        }
        if self.propagate
            && let Some((dep, why)) = planned
                .depends_on
                .iter()
                .find_map(|d| self.failed_why(d).map(|why| (d, why)))
        {
            let message = format!("upstream `{dep}` has no outputs in the replay: {why}");
            return self.not_produced(
                planned,
                &rec.executor,
                Verdict::CouldNotReplay,
                Some("kiln::replay::upstream"),
                message,
            );
        }
        let recorded_outputs = rec.outputs.clone();
        let recorded_inputs = rec.inputs.clone();

        // What this step reads in the replay.
        let inputs = if self.propagate {
            match self.inputs_from_upstream(planned, &recorded_inputs).await {
                Ok(inputs) => inputs,
                Err((code, message)) => {
                    return self.not_produced(
                        planned,
                        &rec.executor,
                        Verdict::CouldNotReplay,
                        Some(code),
                        message,
                    );
                }
            }
        } else {
            recorded_inputs.clone()
        };
        let inputs_changed: Vec<String> = inputs
            .iter()
            .filter(|(name, d)| recorded_inputs.get(*name) != Some(*d))
            .map(|(name, _)| name.clone())
            .collect();

        let replacement = self
            .replaced
            .get(planned.id.as_str())
            .or_else(|| self.replaced.get(&planned.step))
            .cloned();
        let mut result = StepReplay::new(&planned.id, &rec.executor, Verdict::Identical);
        result.replaced = replacement.is_some();
        result.inputs_changed = inputs_changed.clone();

        if let StepKind::Container(_) = planned.kind
            && !self.options.rerun_containers
        {
            result.verdict = Verdict::Served;
            let mut missing = None;
            for (name, digest) in &recorded_outputs {
                if !self.store.contains(digest).await.unwrap_or(false) {
                    missing = Some((name, digest));
                    break;
                }
            }
            if let Some((name, digest)) = missing {
                self.failed(&planned.id, format!("its output `{name}` is missing"));
                return result.problem(
                    Verdict::CouldNotReplay,
                    "kiln::replay::missing-object",
                    format!(
                        "its recorded output `{name}` ({digest}) is not in the store or bundle"
                    ),
                );
            }
            self.produced(&planned.id, recorded_outputs);
            self.served
                .lock()
                .expect("replay lock")
                .insert(planned.id.clone());
            if !inputs_changed.is_empty() {
                return result.problem(
                    Verdict::CouldNotReplay,
                    "kiln::replay::stale-container",
                    format!(
                        "served from the record although its input{} {} changed upstream; pass \
                         --rerun-containers to run it again",
                        if inputs_changed.len() == 1 { "" } else { "s" },
                        quoted(&inputs_changed)
                    ),
                );
            }
            return result;
        }

        // Everything it reads must be at hand before it runs.
        for (name, digest) in &inputs {
            if !self.store.contains(digest).await.unwrap_or(false) {
                self.failed(&planned.id, "an input is missing".to_owned());
                return result.problem(
                    Verdict::CouldNotReplay,
                    "kiln::replay::missing-object",
                    format!("its input `{name}` ({digest}) is not in the store or bundle"),
                );
            }
        }
        let recorded_component = recorded_component(rec);
        let component = match (&planned.kind, &replacement) {
            (StepKind::Container(_), _) => None,
            (StepKind::Wasm { .. }, Some((_, digest))) => Some(*digest),
            (StepKind::Wasm { .. }, None) => {
                match self.component_in_store(rec, recorded_component).await {
                    Ok(found) => Some(found),
                    Err(message) => {
                        self.failed(&planned.id, "its component is missing".to_owned());
                        return result.problem(
                            Verdict::CouldNotReplay,
                            "kiln::replay::missing-object",
                            message,
                        );
                    }
                }
            }
        };
        let executor = match &planned.kind {
            StepKind::Wasm { .. } => self.executors.wasm.clone(),
            StepKind::Container(_) => self.executors.container.clone(),
        };
        let Some(executor) = executor else {
            self.failed(&planned.id, "no executor".to_owned());
            return result.problem(
                Verdict::CouldNotReplay,
                "kiln::replay::executor",
                format!("this kiln has no executor for {kind_name} steps"),
            );
        };
        result.executor = executor.name().to_owned();
        // A container step run again on an image that is no longer the recorded one.
        let image_changed = match &planned.kind {
            StepKind::Container(c) => {
                image_change(&rec.key, executor.key_pins(planned).await.ok(), &c.image)
            }
            StepKind::Wasm { .. } => None,
        };

        // Same component and inputs: the recorded key, hence the recorded seed. Otherwise the
        // key a run would compute, as `kiln run` would seed it.
        let same_component = component == recorded_component;
        let key = if same_component && inputs_changed.is_empty() {
            Some(rec.cache_key)
        } else {
            serde_json::from_value::<KeyParts>(rec.key.clone())
                .ok()
                .map(|mut parts| {
                    parts.component = component.map(|d| d.to_string());
                    parts.inputs = inputs
                        .iter()
                        .map(|(k, v)| (k.clone(), v.to_string()))
                        .collect();
                    parts.digest()
                })
        };
        let Some(key) = key else {
            return self.record_problem(planned, rec, "its cache key cannot be read".into());
        };

        started(planned.id.clone());
        let log = self.logs.join(format!("{}.log", planned.id.file_stem()));
        let _ = std::fs::remove_file(&log);
        let place = AttemptPlace {
            run_id: &self.replay_id,
            area: StagingArea {
                store: self.store.clone(),
                scratch: self.options.work_dir.join("scratch"),
                components: self.components.clone(),
                log: log.clone(),
                keep_failed: None,
                pool: None,
            },
        };
        let recorded_facts = if matches!(planned.kind, StepKind::Wasm { .. }) {
            rec.details.clone()
        } else {
            BTreeMap::new()
        };
        let attempt_started = Instant::now();
        let outcome = run_attempt(
            &place,
            planned,
            1,
            &key,
            &inputs,
            component,
            recorded_facts,
            executor.as_ref(),
        )
        .await;
        result.duration_ms = attempt_started.elapsed().as_millis() as u64;
        result.log = Some(log);
        let explained = result.replaced || !inputs_changed.is_empty() || image_changed.is_some();
        let cause = cause_text(result.replaced, &inputs_changed, image_changed.as_deref());

        let (outputs, metrics) = match outcome {
            Ok((outputs, metrics, _)) => (outputs, metrics),
            Err(failure) => {
                self.failed(
                    &planned.id,
                    format!("it failed in the replay ({})", failure.kind),
                );
                let message = format!(
                    "{} in the replay ({}): {}",
                    if failure.kind == "component" {
                        "its component could not be loaded"
                    } else {
                        "it failed"
                    },
                    failure.kind,
                    failure.message
                );
                return match failure.kind.as_str() {
                    "component" => {
                        result.problem(Verdict::CouldNotReplay, "kiln::replay::component", message)
                    }
                    "executor" | "input" | "internal" => {
                        result.problem(Verdict::CouldNotReplay, "kiln::replay::executor", message)
                    }
                    _ if explained => result.problem(
                        Verdict::Changed,
                        "kiln::replay::failed",
                        format!("{message} (after {cause})"),
                    ),
                    _ => result.problem(Verdict::Diverged, "kiln::replay::failed", message),
                };
            }
        };

        result.outputs = Vec::with_capacity(outputs.len());
        for (name, replayed) in &outputs {
            let recorded = recorded_outputs.get(name);
            let same = recorded == Some(replayed);
            let (paths, diff) = match recorded {
                Some(recorded) if !same => describe(self.store.as_ref(), recorded, replayed).await,
                _ => (Vec::new(), None),
            };
            result.outputs.push(OutputReplay {
                name: name.clone(),
                recorded: recorded.map(ToString::to_string).unwrap_or_default(),
                replayed: replayed.to_string(),
                same,
                paths,
                diff,
            });
        }
        let mut names: Vec<&String> = rec.metrics.keys().chain(metrics.keys()).collect();
        names.sort();
        names.dedup();
        result.metrics = names
            .into_iter()
            .map(|name| MetricReplay {
                name: name.clone(),
                recorded: rec.metrics.get(name).copied(),
                replayed: metrics.get(name).copied(),
            })
            .collect();
        let differing: Vec<String> = result
            .outputs
            .iter()
            .filter(|o| !o.same)
            .map(|o| format!("output `{}`", o.name))
            .chain(
                result
                    .metrics
                    .iter()
                    .filter(|m| m.recorded != m.replayed)
                    .map(|m| format!("metric `{}`", m.name)),
            )
            .collect();
        self.produced(
            &planned.id,
            if self.propagate {
                outputs
            } else {
                recorded_outputs
            },
        );
        if differing.is_empty() {
            // Identical says less when nothing upstream ran again: the step was fed what the
            // record says, not what a replay of its upstream steps wrote.
            if let Some(image) = &image_changed {
                result.message = Some(format!("identical although its {image}"));
            } else if self.inputs_all_served(planned) {
                result.message = Some(INPUTS_SERVED.to_owned());
            }
            return result;
        }
        // "output `model` differs", "output `model`, metric `loss` differ".
        let verb = if differing.len() == 1 {
            "differs"
        } else {
            "differ"
        };
        if explained {
            let message = format!("{} {verb} after {cause}", differing.join(", "));
            result.problem(Verdict::Changed, "kiln::replay::changed", message)
        } else {
            let message = format!(
                "{} {verb} although the component, inputs, params and seed are the recorded \
                 ones: the step reads something kiln does not control, or this runtime behaves \
                 differently from the one that recorded the run",
                differing.join(", ")
            );
            result.problem(Verdict::Diverged, "kiln::replay::nondeterministic", message)
        }
    }

    /// A step with no outputs in the replay: downstream steps that read it cannot run when
    /// outputs propagate.
    fn not_produced(
        &self,
        planned: &PlannedStep,
        executor: &str,
        verdict: Verdict,
        code: Option<&'static str>,
        reason: String,
    ) -> StepReplay {
        self.failed(&planned.id, reason.clone());
        let mut result = StepReplay::new(&planned.id, executor, verdict);
        result.code = code;
        result.message = Some(reason);
        result
    }

    fn record_problem(&self, planned: &PlannedStep, rec: &StepRecord, e: String) -> StepReplay {
        self.not_produced(
            planned,
            &rec.executor,
            Verdict::CouldNotReplay,
            Some("kiln::replay::record"),
            format!("its record is damaged: {e}"),
        )
    }

    /// The inputs of a step from what the replay wrote upstream.
    async fn inputs_from_upstream(
        &self,
        planned: &PlannedStep,
        recorded: &BTreeMap<String, Digest>,
    ) -> Result<BTreeMap<String, Digest>, (&'static str, String)> {
        let upstream = |id: &str| -> Result<BTreeMap<String, Digest>, (&'static str, String)> {
            if let Some(why) = self.failed_why(id) {
                return Err((
                    "kiln::replay::upstream",
                    format!("upstream `{id}` has no outputs in the replay: {why}"),
                ));
            }
            self.current
                .lock()
                .expect("replay lock")
                .get(id)
                .cloned()
                .ok_or_else(|| {
                    (
                        "kiln::replay::upstream",
                        format!("upstream `{id}` has no outputs in the replay"),
                    )
                })
        };
        let mut inputs = BTreeMap::new();
        for (name, source) in &planned.inputs {
            let digest = match source {
                InputSource::Step { step, output } => {
                    *upstream(step)?.get(output).ok_or_else(|| {
                        (
                            "kiln::replay::upstream",
                            format!("upstream `{step}` wrote no `{output}` in the replay"),
                        )
                    })?
                }
                InputSource::Collect {
                    output, instances, ..
                } => {
                    let mut digests = Vec::new();
                    for (k, id) in instances.iter().enumerate() {
                        // Skipped (by a condition) in the replay: left out, as in the run.
                        let ran = self.current.lock().expect("replay lock").contains_key(id);
                        if !ran && self.failed_why(id).is_none() {
                            continue;
                        }
                        digests.push((
                            k,
                            *upstream(id)?.get(output).ok_or_else(|| {
                                (
                                    "kiln::replay::upstream",
                                    format!("upstream `{id}` wrote no `{output}` in the replay"),
                                )
                            })?,
                        ));
                    }
                    collect_tree(self.store.as_ref(), &digests)
                        .await
                        .map_err(|e| ("kiln::replay::executor", format!("input `{name}`: {e}")))?
                }
                InputSource::Workspace { .. }
                | InputSource::External { .. }
                | InputSource::Param { .. }
                | InputSource::RunStatus => *recorded.get(name).ok_or_else(|| {
                    (
                        "kiln::replay::record",
                        format!("the record has no digest for input `{name}`"),
                    )
                })?,
            };
            inputs.insert(name.clone(), digest);
        }
        Ok(inputs)
    }

    /// Whether the step reads outputs of other steps, and every step it reads was served
    /// from the record rather than run again.
    fn inputs_all_served(&self, planned: &PlannedStep) -> bool {
        let mut upstream = planned
            .inputs
            .values()
            .flat_map(|source| match source {
                InputSource::Step { step, .. } => std::slice::from_ref(step),
                InputSource::Collect { instances, .. } => instances.as_slice(),
                InputSource::Workspace { .. }
                | InputSource::External { .. }
                | InputSource::Param { .. }
                | InputSource::RunStatus => &[],
            })
            .peekable();
        let served = self.served.lock().expect("replay lock");
        upstream.peek().is_some() && upstream.all(|id| served.contains(id))
    }

    /// The recorded component, which must be in the store.
    async fn component_in_store(
        &self,
        rec: &StepRecord,
        digest: Option<Digest>,
    ) -> Result<Digest, String> {
        let digest = digest.ok_or_else(|| "the record names no component".to_owned())?;
        if !self.store.contains(&digest).await.unwrap_or(false) {
            return Err(format!(
                "its component {digest} is not in the store or bundle (step `{}`)",
                rec.step
            ));
        }
        Ok(digest)
    }
}

/// The component digest a record's key names.
fn recorded_component(rec: &StepRecord) -> Option<Digest> {
    rec.key
        .get("component")
        .and_then(|v| v.as_str())
        .and_then(|s| s.parse().ok())
}

fn quoted(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn cause_text(replaced: bool, inputs_changed: &[String], image: Option<&str>) -> String {
    let mut causes = Vec::new();
    match (replaced, inputs_changed.is_empty()) {
        (true, true) => causes.push("its component was replaced".to_owned()),
        (true, false) => causes.push(format!(
            "its component was replaced and its inputs {} changed upstream",
            quoted(inputs_changed)
        )),
        (false, false) => causes.push(format!(
            "input{} {} changed upstream",
            if inputs_changed.len() == 1 { "" } else { "s" },
            quoted(inputs_changed)
        )),
        (false, true) => {}
    }
    if let Some(image) = image {
        causes.push(format!("its {image}"));
    }
    causes.join(", and ")
}

/// How a container step's image differs from the one its record pins: `image `x` is now
/// sha256:…, and the recorded run used sha256:…`; `None` when the same, or when either side
/// does not know (the process backend pins no image).
fn image_change(
    key: &serde_json::Value,
    today: Option<BTreeMap<String, String>>,
    image: &str,
) -> Option<String> {
    let recorded = key.get("pins")?.get("image_id")?.as_str()?;
    let today = today?;
    let now = today.get("image_id")?;
    let short = |id: &str| id.chars().take(19).collect::<String>();
    (now != recorded).then(|| {
        format!(
            "image `{image}` is now {}, and the recorded run used {}",
            short(now),
            short(recorded)
        )
    })
}

/// How two versions of an output differ: the paths that differ inside folders, and a diff of
/// small text.
async fn describe(
    store: &dyn BlobStore,
    recorded: &Digest,
    replayed: &Digest,
) -> (Vec<String>, Option<String>) {
    match (store.kind(recorded).await, store.kind(replayed).await) {
        (Ok(Some(ObjectKind::Blob)), Ok(Some(ObjectKind::Blob))) => {
            (Vec::new(), text_diff(store, recorded, replayed, "").await)
        }
        (Ok(Some(ObjectKind::Tree)), Ok(Some(ObjectKind::Tree))) => {
            let mut paths = Vec::new();
            let mut changed_files = Vec::new();
            tree_changes(
                store,
                "",
                recorded,
                replayed,
                &mut paths,
                &mut changed_files,
            )
            .await;
            let mut diffs = String::new();
            for (path, a, b) in changed_files.iter().take(3) {
                if let Some(d) = text_diff(store, a, b, path).await {
                    diffs.push_str(&d);
                }
            }
            let total = paths.len();
            paths.truncate(MAX_LISTED_PATHS);
            if total > MAX_LISTED_PATHS {
                paths.push(format!("… and {} more", total - MAX_LISTED_PATHS));
            }
            (paths, (!diffs.is_empty()).then_some(diffs))
        }
        _ => (Vec::new(), None),
    }
}

/// Walks two trees, listing the paths that differ; changed files go to `files` too.
async fn tree_changes(
    store: &dyn BlobStore,
    prefix: &str,
    a: &Digest,
    b: &Digest,
    paths: &mut Vec<String>,
    files: &mut Vec<(String, Digest, Digest)>,
) {
    let (Ok(ta), Ok(tb)) = (store.get_tree(a).await, store.get_tree(b).await) else {
        paths.push(format!("~ {prefix}(unreadable)"));
        return;
    };
    let mut names: Vec<&str> = ta
        .entries()
        .iter()
        .chain(tb.entries())
        .map(|e| e.name.as_str())
        .collect();
    names.sort_unstable();
    names.dedup();
    for name in names {
        let path = format!("{prefix}{name}");
        match (ta.get(name), tb.get(name)) {
            (Some(ea), Some(eb)) if ea.digest == eb.digest && ea.kind == eb.kind => {}
            (Some(ea), Some(eb))
                if ea.kind == EntryKind::Folder && eb.kind == EntryKind::Folder =>
            {
                Box::pin(tree_changes(
                    store,
                    &format!("{path}/"),
                    &ea.digest,
                    &eb.digest,
                    paths,
                    files,
                ))
                .await;
            }
            (Some(ea), Some(eb)) => {
                paths.push(format!("~ {path}"));
                if ea.kind != EntryKind::Folder && eb.kind != EntryKind::Folder {
                    files.push((path, ea.digest, eb.digest));
                }
            }
            (Some(_), None) => paths.push(format!("- {path}")),
            (None, Some(_)) => paths.push(format!("+ {path}")),
            (None, None) => {}
        }
    }
}

/// A unified diff of two small text blobs, cut to [`MAX_DIFF_LINES`] lines.
async fn text_diff(store: &dyn BlobStore, a: &Digest, b: &Digest, label: &str) -> Option<String> {
    for d in [a, b] {
        if !matches!(store.blob_size(d).await, Ok(Some(size)) if size <= MAX_DIFF_BYTES) {
            return None;
        }
    }
    let a = String::from_utf8(store.read_verified(a).await.ok()?.to_vec()).ok()?;
    let b = String::from_utf8(store.read_verified(b).await.ok()?.to_vec()).ok()?;
    let (old, new) = if label.is_empty() {
        ("recorded".to_owned(), "replayed".to_owned())
    } else {
        (format!("recorded/{label}"), format!("replayed/{label}"))
    };
    let text = similar::TextDiff::from_lines(&a, &b)
        .unified_diff()
        .context_radius(2)
        .header(&old, &new)
        .to_string();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = lines
        .iter()
        .take(MAX_DIFF_LINES)
        .copied()
        .collect::<Vec<_>>()
        .join("\n");
    if lines.len() > MAX_DIFF_LINES {
        out.push_str(&format!("\n… {} more lines", lines.len() - MAX_DIFF_LINES));
    }
    out.push('\n');
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_change_is_said_only_when_both_ids_are_known_and_differ() {
        let key = serde_json::json!({"pins": {"backend": "podman", "image_id": "sha256:aaaaaaaaaaaaaaaaaaaa"}});
        let today = |id: &str| {
            Some(BTreeMap::from([
                ("backend".to_owned(), "podman".to_owned()),
                ("image_id".to_owned(), id.to_owned()),
            ]))
        };
        assert_eq!(
            image_change(&key, today("sha256:aaaaaaaaaaaaaaaaaaaa"), "x"),
            None
        );
        let said = image_change(&key, today("sha256:bbbbbbbbbbbbbbbbbbbb"), "x").unwrap();
        assert_eq!(
            said,
            "image `x` is now sha256:bbbbbbbbbbbb, and the recorded run used sha256:aaaaaaaaaaaa"
        );
        assert_eq!(image_change(&key, None, "x"), None);
        let process = serde_json::json!({"pins": {"backend": "process"}});
        assert_eq!(image_change(&process, today("sha256:b"), "x"), None);
        assert_eq!(cause_text(false, &[], Some(&said)), format!("its {said}"));
        assert_eq!(
            cause_text(false, &["src".to_owned()], Some("image changed")),
            "input `src` changed upstream, and its image changed"
        );
    }
}
