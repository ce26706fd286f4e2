//! The engine against a fake executor, under tokio's paused clock: no test sleeps for real.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use kiln_engine::{
    Engine, EngineConfig, Event, ExecOutcome, Executor, ExecutorError, Executors, FailureKind,
    RecordEvent, RunInput, RunStatus, StagedTask, StateDir, StepStatus, read_record,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What the fake does for one step (by step name; every fan-out instance alike).
#[derive(Clone, Default)]
struct Behaviour {
    /// Virtual time the step takes.
    takes: Duration,
    /// Fail this many attempts before succeeding.
    fail_first: u32,
    /// Fail every attempt.
    always_fail: bool,
    /// Fail as a deterministic executor does: the failure says a retry cannot help.
    deterministic: bool,
    /// Write this to every output instead of the default content.
    content: Option<String>,
}

/// A fake executor: sleeps on tokio's clock, writes outputs derived from its inputs, and
/// remembers what it saw.
#[derive(Default)]
struct Fake {
    behaviour: HashMap<String, Behaviour>,
    running: AtomicUsize,
    max_running: AtomicUsize,
    started: Mutex<Vec<String>>,
    attempts: Mutex<HashMap<String, u32>>,
    inputs_seen: Mutex<HashMap<String, BTreeMap<String, String>>>,
}

impl Fake {
    fn with(mut self, step: &str, b: Behaviour) -> Self {
        self.behaviour.insert(step.to_owned(), b);
        self
    }

    fn started(&self) -> Vec<String> {
        self.started.lock().unwrap().clone()
    }
}

#[async_trait]
impl Executor for Fake {
    fn name(&self) -> &str {
        "fake"
    }

    async fn run_staged(&self, task: &StagedTask) -> Result<ExecOutcome, ExecutorError> {
        let b = self
            .behaviour
            .get(&task.step.step)
            .cloned()
            .unwrap_or_default();
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_running.fetch_max(now, Ordering::SeqCst);
        self.started.lock().unwrap().push(task.step.id.to_string());
        let attempt = {
            let mut attempts = self.attempts.lock().unwrap();
            let a = attempts.entry(task.step.id.to_string()).or_default();
            *a += 1;
            *a
        };
        let seen: BTreeMap<String, String> = task
            .inputs
            .iter()
            .map(|(k, p)| (k.clone(), kiln_test_support::read_tree_text(p)))
            .collect();
        self.inputs_seen
            .lock()
            .unwrap()
            .insert(task.step.id.to_string(), seen.clone());
        // Write outputs first, so a cancelled step leaves half-done work in its scratch folder.
        for (name, path) in &task.outputs {
            let content = b.content.clone().unwrap_or_else(|| {
                format!("{}:{name}:{seen:?}:{:?}", task.step.step, task.step.params)
            });
            std::fs::write(path, content).unwrap();
        }
        tokio::time::sleep(b.takes).await;
        self.running.fetch_sub(1, Ordering::SeqCst);
        if b.deterministic {
            return Ok(ExecOutcome::failure(
                FailureKind::StackOverflow,
                format!("attempt {attempt} overflowed its stack"),
                None,
            )
            .deterministic());
        }
        if b.always_fail || attempt <= b.fail_first {
            return Ok(ExecOutcome::failure(
                FailureKind::Exit,
                format!("attempt {attempt} failed"),
                Some(1),
            ));
        }
        Ok(ExecOutcome::success())
    }
}

struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn file(&self, name: &str, content: &str) {
        std::fs::write(self.dir.path().join(name), content).unwrap();
    }

    fn input(&self, yaml: &str) -> RunInput {
        let text = format!("apiVersion: kiln/v1\nname: t\n{yaml}");
        let pipeline = kiln_spec::parse(&text).unwrap_or_else(|d| panic!("{d:?}"));
        let compiled = kiln_plan::compile(
            &pipeline,
            &kiln_plan::PlanOptions {
                base_dir: self.dir.path().to_path_buf(),
                overrides: vec![],
            },
        );
        let plan = compiled
            .plan
            .unwrap_or_else(|| panic!("{:?}", compiled.diagnostics));
        // Pinned as `kiln run` pins before the engine starts: into the state folder's store.
        let store = StateDir::new(self.dir.path().join(".kiln")).store();
        let mut workspace = BTreeMap::new();
        for step in &plan.steps {
            for source in step.inputs.values() {
                if let kiln_plan::InputSource::Workspace { path } = source {
                    let full = self.dir.path().join(path);
                    let digest = if full.is_dir() {
                        store.put_tree(&full)
                    } else {
                        store.put_file(&full)
                    };
                    workspace.insert(path.clone(), digest.unwrap());
                }
            }
        }
        RunInput {
            plan,
            components: Default::default(),
            workspace,
            pipeline_file: "pipeline.yaml".into(),
            pipeline_text: text,
        }
    }

    fn engine(&self, fake: Arc<Fake>, config: EngineConfig) -> Engine {
        Engine::new(
            StateDir::new(self.dir.path().join(".kiln")),
            Executors {
                wasm: None,
                container: Some(fake),
            },
            config,
        )
    }
}

fn config(jobs: usize) -> EngineConfig {
    EngineConfig {
        jobs,
        ..EngineConfig::default()
    }
}

fn secs(s: u64) -> Behaviour {
    Behaviour {
        takes: Duration::from_secs(s),
        ..Behaviour::default()
    }
}

/// A skipped step's reason, as people read it.
fn skip_reason(summary: &kiln_engine::RunSummary, id: &str) -> Option<String> {
    match status(summary, id) {
        StepStatus::Skipped { reason } => Some(reason.to_string()),
        _ => None,
    }
}

fn status<'a>(summary: &'a kiln_engine::RunSummary, id: &str) -> &'a StepStatus {
    &summary.steps.iter().find(|s| s.id == id).unwrap().status
}

const C: &str = "container: {image: fake}";

#[tokio::test(start_paused = true)]
async fn runs_in_dependency_order() {
    let s = Setup::new();
    let yaml = format!(
        "steps:\n  c:\n    {C}\n    inputs: {{x: b.out}}\n    outputs: [out]\n  a:\n    {C}\n    outputs: [out]\n  b:\n    {C}\n    inputs: {{x: a.out}}\n    outputs: [out]\n"
    );
    let fake = Arc::new(Fake::default());
    let summary = s
        .engine(fake.clone(), config(4))
        .run(s.input(&yaml), CancellationToken::new(), None)
        .await
        .unwrap();
    assert_eq!(summary.status, RunStatus::Succeeded);
    assert_eq!(fake.started(), vec!["a", "b", "c"]);
    // c saw b's output, which saw a's.
    let seen = fake.inputs_seen.lock().unwrap();
    assert!(seen["c"]["x"].starts_with("b:out:"), "{:?}", seen["c"]);
    assert!(seen["c"]["x"].contains("a:out:"));
}

#[tokio::test(start_paused = true)]
async fn parallelism_is_bounded_by_jobs() {
    let s = Setup::new();
    let mut yaml = String::from("steps:\n");
    // Different params, so no step is a cache hit of another.
    for i in 0..10 {
        yaml.push_str(&format!(
            "  s{i}:\n    {C}\n    with: {{i: {i}}}\n    outputs: [out]\n"
        ));
    }
    let fake = Arc::new(Fake::default().with_all(10, secs(1)));
    let started = Instant::now();
    let summary = s
        .engine(fake.clone(), config(3))
        .run(s.input(&yaml), CancellationToken::new(), None)
        .await
        .unwrap();
    assert_eq!(summary.status, RunStatus::Succeeded);
    assert_eq!(fake.max_running.load(Ordering::SeqCst), 3);
    // Ten one-second steps, three at a time: four rounds of virtual time.
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(4) && elapsed < Duration::from_secs(5),
        "{elapsed:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_fan_out_runs_at_most_its_parallelism_at_once() {
    let s = Setup::new();
    let yaml = format!(
        "steps:\n  f:\n    {C}\n    for_each: [1, 2, 3, 4, 5, 6]\n    with: {{i: \"{{{{item}}}}\"}}\n    parallelism: 2\n    outputs: [out]\n"
    );
    let fake = Arc::new(Fake::default().with("f", secs(1)));
    let started = Instant::now();
    let summary = s
        .engine(fake.clone(), config(4))
        .run(s.input(&yaml), CancellationToken::new(), None)
        .await
        .unwrap();
    assert_eq!(summary.status, RunStatus::Succeeded);
    assert_eq!(fake.max_running.load(Ordering::SeqCst), 2);
    // Six one-second instances, two at a time: three rounds of virtual time.
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(3) && elapsed < Duration::from_secs(4),
        "{elapsed:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn steps_sharing_a_named_limit_run_within_it_together() {
    let s = Setup::new();
    // Two fan-outs of three against one limit of 2, and a step outside it that runs beside
    // (each instance with its own item, so none is a cache hit of another).
    let yaml = format!(
        "concurrency:\n  quota: 2\nsteps:\n  \
         a:\n    {C}\n    for_each: [1, 2, 3]\n    with: {{i: \"{{{{item}}}}\"}}\n    concurrency: quota\n    outputs: [out]\n  \
         b:\n    {C}\n    for_each: [1, 2, 3]\n    with: {{j: \"{{{{item}}}}\"}}\n    concurrency: quota\n    outputs: [out]\n  \
         free:\n    {C}\n    outputs: [out]\n"
    );
    let fake = Arc::new(
        Fake::default()
            .with("a", secs(1))
            .with("b", secs(1))
            .with("free", secs(1)),
    );
    let started = Instant::now();
    let summary = s
        .engine(fake.clone(), config(8))
        .run(s.input(&yaml), CancellationToken::new(), None)
        .await
        .unwrap();
    assert_eq!(summary.status, RunStatus::Succeeded);
    // Two of the quota's and `free`, at most.
    assert_eq!(fake.max_running.load(Ordering::SeqCst), 3);
    // Six one-second steps two at a time: three rounds.
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(3) && elapsed < Duration::from_secs(4),
        "{elapsed:?}"
    );
}

/// A pipeline where `a` (and so `b`) may fail, with an exit handler of each kind.
fn with_exit_handlers() -> String {
    format!(
        "steps:\n  \
         a:\n    {C}\n    outputs: [out]\n  \
         b:\n    {C}\n    inputs: {{x: a.out}}\n    outputs: [out]\n  \
         free:\n    {C}\n    outputs: [out]\n    with: {{k: 1}}\n  \
         cleanup:\n    {C}\n    run: always\n    inputs: {{status: run.status, side: free.out}}\n    outputs: [out]\n    cache: false\n  \
         alert:\n    {C}\n    run: on-failure\n    inputs: {{status: run.status}}\n    outputs: [out]\n    cache: false\n"
    )
}

#[tokio::test(start_paused = true)]
async fn exit_handlers_run_after_everything_and_read_how_it_ended() {
    let s = Setup::new();
    let failing = Behaviour {
        always_fail: true,
        ..Behaviour::default()
    };
    let fake = Arc::new(Fake::default().with("a", failing.clone()));
    let summary = s
        .engine(fake.clone(), config(4))
        .run(
            s.input(&with_exit_handlers()),
            CancellationToken::new(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(summary.status, RunStatus::Failed);
    assert!(matches!(status(&summary, "cleanup"), StepStatus::Succeeded));
    assert!(matches!(status(&summary, "alert"), StepStatus::Succeeded));
    let started = fake.started();
    let last_two: Vec<&str> = started[started.len() - 2..]
        .iter()
        .map(String::as_str)
        .collect();
    assert!(
        last_two.contains(&"cleanup") && last_two.contains(&"alert"),
        "{started:?}"
    );
    let seen = fake.inputs_seen.lock().unwrap().clone();
    assert_eq!(
        seen["cleanup"]["status"],
        "{\"failed\":[\"a\"],\"status\":\"failed\",\"steps\":{\"a\":\"failed\",\"b\":\"skipped\",\"free\":\"succeeded\"}}\n"
    );
    assert!(seen["cleanup"]["side"].starts_with("free:out:"));
    assert_eq!(seen["alert"]["status"], seen["cleanup"]["status"]);

    // Nothing fails: `cleanup` runs, `alert` is skipped and says why.
    let s = Setup::new();
    let fake = Arc::new(Fake::default());
    let summary = s
        .engine(fake.clone(), config(4))
        .run(
            s.input(&with_exit_handlers()),
            CancellationToken::new(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(summary.status, RunStatus::Succeeded);
    assert!(matches!(status(&summary, "cleanup"), StepStatus::Succeeded));
    assert_eq!(
        skip_reason(&summary, "alert").as_deref(),
        Some("runs on failure, and no step failed")
    );
    let seen = fake.inputs_seen.lock().unwrap().clone();
    assert!(seen["cleanup"]["status"].starts_with("{\"failed\":[],\"status\":\"succeeded\""));

    // `--fail-fast` stops the rest, and the exit handlers still run.
    let s = Setup::new();
    let fake = Arc::new(Fake::default().with("a", failing));
    let mut fail_fast = config(1);
    fail_fast.fail_fast = true;
    let summary = s
        .engine(fake.clone(), fail_fast)
        .run(
            s.input(&with_exit_handlers()),
            CancellationToken::new(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(summary.status, RunStatus::Failed);
    // `cleanup` reads `free`, which never started (one job: `a` ran first): it cannot run.
    assert_eq!(
        skip_reason(&summary, "cleanup").as_deref(),
        Some("upstream `free` was skipped")
    );
    assert!(
        matches!(status(&summary, "alert"), StepStatus::Succeeded),
        "{:?}",
        status(&summary, "alert")
    );
}

impl Fake {
    fn with_all(mut self, n: usize, b: Behaviour) -> Self {
        for i in 0..n {
            self.behaviour.insert(format!("s{i}"), b.clone());
        }
        self
    }
}

#[tokio::test(start_paused = true)]
async fn retries_with_exponential_backoff() {
    let s = Setup::new();
    let yaml = format!("steps:\n  flaky:\n    {C}\n    outputs: [out]\n    retries: 3\n");
    let fake = Arc::new(Fake::default().with(
        "flaky",
        Behaviour {
            fail_first: 2,
            ..Behaviour::default()
        },
    ));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let started = Instant::now();
    let summary = s
        .engine(fake.clone(), config(1))
        .run(s.input(&yaml), CancellationToken::new(), Some(tx))
        .await
        .unwrap();
    assert_eq!(summary.status, RunStatus::Succeeded);
    assert_eq!(summary.steps[0].attempts, 3);
    // Waits of 1 s and then 2 s between the three attempts.
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(3) && elapsed < Duration::from_secs(4),
        "{elapsed:?}"
    );
    let mut delays = Vec::new();
    while let Ok(event) = rx.try_recv() {
        if let Event::StepRetrying { delay, .. } = event {
            delays.push(delay);
        }
    }
    assert_eq!(delays, vec![Duration::from_secs(1), Duration::from_secs(2)]);
}

#[tokio::test(start_paused = true)]
async fn a_retry_policy_sets_the_waits_and_the_failures_retried() {
    let s = Setup::new();
    let policy = "retries: {limit: 3, backoff: 5s, factor: 3, max_backoff: 20s}";
    let yaml = format!("steps:\n  flaky:\n    {C}\n    outputs: [out]\n    {policy}\n");
    let fake = Arc::new(Fake::default().with(
        "flaky",
        Behaviour {
            fail_first: 3,
            ..Behaviour::default()
        },
    ));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let summary = s
        .engine(fake.clone(), config(1))
        .run(s.input(&yaml), CancellationToken::new(), Some(tx))
        .await
        .unwrap();
    assert_eq!(summary.status, RunStatus::Succeeded);
    assert_eq!(summary.steps[0].attempts, 4);
    let mut delays = Vec::new();
    while let Ok(event) = rx.try_recv() {
        if let Event::StepRetrying { delay, .. } = event {
            delays.push(delay);
        }
    }
    // 5 s, then 5 × 3, then 5 × 9 capped at 20 s.
    assert_eq!(
        delays,
        [5, 15, 20].map(Duration::from_secs).to_vec(),
        "{delays:?}"
    );

    // Retried only on timeouts: an exit failure is final at once (a new state folder, so
    // the first run's result is not in the cache).
    let s = Setup::new();
    let yaml = format!(
        "steps:\n  flaky:\n    {C}\n    outputs: [out]\n    retries: {{limit: 3, on: [timeout]}}\n"
    );
    let fake = Arc::new(Fake::default().with(
        "flaky",
        Behaviour {
            fail_first: 1,
            ..Behaviour::default()
        },
    ));
    let summary = s
        .engine(fake.clone(), config(1))
        .run(s.input(&yaml), CancellationToken::new(), None)
        .await
        .unwrap();
    assert_eq!(summary.status, RunStatus::Failed);
    assert_eq!(summary.steps[0].attempts, 1);

    // And on `exit` it is retried.
    let yaml = yaml.replace("on: [timeout]", "on: [timeout, exit]");
    let fake = Arc::new(Fake::default().with(
        "flaky",
        Behaviour {
            fail_first: 1,
            ..Behaviour::default()
        },
    ));
    let summary = s
        .engine(fake.clone(), config(1))
        .run(s.input(&yaml), CancellationToken::new(), None)
        .await
        .unwrap();
    assert_eq!(summary.status, RunStatus::Succeeded);
    assert_eq!(summary.steps[0].attempts, 2);
}

#[tokio::test(start_paused = true)]
async fn a_failure_the_executor_calls_deterministic_is_not_retried() {
    let s = Setup::new();
    let yaml = format!("steps:\n  deep:\n    {C}\n    outputs: [out]\n    retries: 3\n");
    let fake = Arc::new(Fake::default().with(
        "deep",
        Behaviour {
            deterministic: true,
            ..Behaviour::default()
        },
    ));
    let summary = s
        .engine(fake.clone(), config(1))
        .run(s.input(&yaml), CancellationToken::new(), None)
        .await
        .unwrap();
    assert_eq!(summary.status, RunStatus::Failed);
    assert_eq!(
        summary.steps[0].attempts, 1,
        "retried a deterministic failure"
    );
    assert_eq!(fake.started(), vec!["deep".to_owned()]);
    assert!(matches!(
        &summary.steps[0].status,
        StepStatus::Failed {
            kind: FailureKind::StackOverflow,
            ..
        }
    ));
}

#[tokio::test(start_paused = true)]
async fn retries_run_out() {
    let s = Setup::new();
    let yaml = format!("steps:\n  bad:\n    {C}\n    outputs: [out]\n    retries: 1\n");
    let fake = Arc::new(Fake::default().with(
        "bad",
        Behaviour {
            always_fail: true,
            ..Behaviour::default()
        },
    ));
    let summary = s
        .engine(fake.clone(), config(1))
        .run(s.input(&yaml), CancellationToken::new(), None)
        .await
        .unwrap();
    assert_eq!(summary.status, RunStatus::Failed);
    assert_eq!(summary.steps[0].attempts, 2);
    assert!(matches!(
        status(&summary, "bad"),
        StepStatus::Failed { kind, message } if kind == "exit" && message == "attempt 2 failed"
    ));
}

#[tokio::test(start_paused = true)]
async fn a_step_past_its_timeout_is_stopped() {
    let s = Setup::new();
    let yaml = format!("steps:\n  slow:\n    {C}\n    outputs: [out]\n    timeout: 2s\n");
    let fake = Arc::new(Fake::default().with("slow", secs(3600)));
    let started = Instant::now();
    let summary = s
        .engine(fake.clone(), config(1))
        .run(s.input(&yaml), CancellationToken::new(), None)
        .await
        .unwrap();
    assert_eq!(summary.status, RunStatus::Failed);
    assert!(matches!(
        status(&summary, "slow"),
        StepStatus::Failed { kind, message } if kind == "timeout" && message == "timed out after 2s"
    ));
    assert!(started.elapsed() < Duration::from_secs(3));
    // The executor's future was dropped: it never finished its sleep.
    assert_eq!(fake.running.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn failure_skips_dependents_and_independent_branches_finish() {
    let s = Setup::new();
    let yaml = format!(
        "steps:\n  a:\n    {C}\n    outputs: [out]\n  b:\n    {C}\n    inputs: {{x: a.out}}\n    outputs: [out]\n  c:\n    {C}\n    inputs: {{x: b.out}}\n    outputs: [out]\n  other:\n    {C}\n    outputs: [out]\n"
    );
    let fake = Arc::new(
        Fake::default()
            .with(
                "a",
                Behaviour {
                    always_fail: true,
                    ..Behaviour::default()
                },
            )
            .with("other", secs(5)),
    );
    let summary = s
        .engine(fake.clone(), config(2))
        .run(s.input(&yaml), CancellationToken::new(), None)
        .await
        .unwrap();
    assert_eq!(summary.status, RunStatus::Failed);
    assert_eq!(
        skip_reason(&summary, "b"),
        Some("upstream `a` failed".to_owned())
    );
    assert_eq!(
        skip_reason(&summary, "c"),
        Some("upstream `b` was skipped".to_owned())
    );
    assert_eq!(status(&summary, "other"), &StepStatus::Succeeded);
}

#[tokio::test(start_paused = true)]
async fn fail_fast_stops_everything_else() {
    let s = Setup::new();
    let yaml = format!(
        "steps:\n  a:\n    {C}\n    outputs: [out]\n  slow:\n    {C}\n    outputs: [out]\n  later:\n    {C}\n    outputs: [out]\n"
    );
    let fake = Arc::new(
        Fake::default()
            .with(
                "a",
                Behaviour {
                    always_fail: true,
                    takes: Duration::from_secs(1),
                    ..Behaviour::default()
                },
            )
            .with("slow", secs(100)),
    );
    let config = EngineConfig {
        fail_fast: true,
        ..config(2)
    };
    let summary = s
        .engine(fake.clone(), config)
        .run(s.input(&yaml), CancellationToken::new(), None)
        .await
        .unwrap();
    assert_eq!(summary.status, RunStatus::Failed);
    assert_eq!(status(&summary, "slow"), &StepStatus::Cancelled);
    assert!(matches!(
        status(&summary, "later"),
        StepStatus::Skipped { .. }
    ));
    assert_eq!(fake.started(), vec!["a", "slow"]);
}

#[tokio::test(start_paused = true)]
async fn cancellation_stops_running_steps_and_publishes_nothing() {
    let s = Setup::new();
    let yaml = format!(
        "steps:\n  a:\n    {C}\n    outputs: [out]\n  b:\n    {C}\n    inputs: {{x: a.out}}\n    outputs: [out]\n"
    );
    let fake = Arc::new(Fake::default().with("a", secs(100)));
    let cancel = CancellationToken::new();
    let canceller = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        canceller.cancel();
    });
    let state = s.dir.path().join(".kiln");
    let summary = s
        .engine(fake.clone(), config(2))
        .run(s.input(&yaml), cancel, None)
        .await
        .unwrap();
    assert_eq!(summary.status, RunStatus::Cancelled);
    assert_eq!(status(&summary, "a"), &StepStatus::Cancelled);
    assert_eq!(status(&summary, "b"), &StepStatus::Cancelled);
    // `a` wrote its output into scratch before it was stopped: nothing reached the store or
    // the cache, and the scratch folder is gone.
    assert!(!state.join("cas/blobs").exists(), "a blob was published");
    assert!(!state.join("cache").exists());
    assert!(!state.join("scratch").join(&summary.run_id).exists());
    let events = read_record(
        &state
            .join("runs")
            .join(&summary.run_id)
            .join("record.jsonl"),
    )
    .unwrap();
    assert!(matches!(
        events.last(),
        Some(RecordEvent::RunFinished {
            status: RunStatus::Cancelled,
            ..
        })
    ));
}

#[tokio::test(start_paused = true)]
async fn fan_out_instances_run_and_a_collector_sees_them_all() {
    let s = Setup::new();
    let yaml = format!(
        "params:\n  lrs: {{type: 'list[float]', default: [0.1, 0.2, 0.3], description: x}}\nsteps:\n  train:\n    {C}\n    for_each: '{{{{params.lrs}}}}'\n    with: {{lr: '{{{{item}}}}'}}\n    outputs: [model]\n  pick:\n    {C}\n    inputs: {{models: train.model}}\n    outputs: [best]\n"
    );
    let fake = Arc::new(Fake::default().with("train", secs(1)));
    let summary = s
        .engine(fake.clone(), config(8))
        .run(s.input(&yaml), CancellationToken::new(), None)
        .await
        .unwrap();
    assert_eq!(summary.status, RunStatus::Succeeded);
    assert_eq!(fake.max_running.load(Ordering::SeqCst), 3);
    let seen = fake.inputs_seen.lock().unwrap();
    let models = &seen["pick"]["models"];
    assert!(models.starts_with("[0=train:model:"), "{models}");
    for lr in ["0.1", "0.2", "0.3"] {
        assert!(models.contains(&format!("Float({lr})")), "{models}");
    }
}

#[tokio::test(start_paused = true)]
async fn when_reads_params_and_upstream_outputs() {
    let s = Setup::new();
    let yaml = format!(
        "params:\n  go: {{type: bool, default: true, description: x}}\nsteps:\n  check:\n    {C}\n    outputs: [report]\n  yes:\n    {C}\n    when: params.go && steps.check.report.ok\n    outputs: [out]\n  no:\n    {C}\n    when: steps.check.report.rows > 10\n    outputs: [out]\n  after_no:\n    {C}\n    inputs: {{x: no.out}}\n    outputs: [out]\n"
    );
    let fake = Arc::new(Fake::default().with(
        "check",
        Behaviour {
            content: Some(r#"{"ok": true, "rows": 3}"#.into()),
            ..Behaviour::default()
        },
    ));
    let summary = s
        .engine(fake.clone(), config(2))
        .run(s.input(&yaml), CancellationToken::new(), None)
        .await
        .unwrap();
    assert_eq!(status(&summary, "yes"), &StepStatus::Succeeded);
    assert_eq!(
        skip_reason(&summary, "no"),
        Some("condition is false: steps.check.report.rows > 10".to_owned())
    );
    assert_eq!(
        skip_reason(&summary, "after_no"),
        Some("upstream `no` was skipped (its condition was false)".to_owned())
    );
    // A false condition is not a failure.
    assert_eq!(summary.status, RunStatus::Succeeded);
}

#[tokio::test(start_paused = true)]
async fn second_run_is_cached_and_a_changed_byte_reruns_only_its_dependents() {
    let s = Setup::new();
    s.file("a.csv", "1,2,3\n");
    s.file("b.csv", "4,5,6\n");
    let yaml = format!(
        "steps:\n  pa:\n    {C}\n    inputs: {{data: ./a.csv}}\n    outputs: [out]\n  pb:\n    {C}\n    inputs: {{data: ./b.csv}}\n    outputs: [out]\n  join:\n    {C}\n    inputs: {{a: pa.out, b: pb.out}}\n    outputs: [out]\n"
    );
    let fake = Arc::new(Fake::default());
    let engine = s.engine(fake.clone(), config(2));
    let first = engine
        .run(s.input(&yaml), CancellationToken::new(), None)
        .await
        .unwrap();
    assert!(
        first
            .steps
            .iter()
            .all(|s| s.status == StepStatus::Succeeded)
    );
    let second = engine
        .run(s.input(&yaml), CancellationToken::new(), None)
        .await
        .unwrap();
    assert!(second.steps.iter().all(|s| s.status == StepStatus::Cached));
    assert_eq!(fake.started().len(), 3);

    s.file("b.csv", "4,5,7\n");
    let third = engine
        .run(s.input(&yaml), CancellationToken::new(), None)
        .await
        .unwrap();
    assert_eq!(status(&third, "pa"), &StepStatus::Cached);
    assert_eq!(status(&third, "pb"), &StepStatus::Succeeded);
    assert_eq!(status(&third, "join"), &StepStatus::Succeeded);
}

/// A clock the test sets: the time of day the engine notes in cache entries and compares
/// with `cache.max_age`.
struct SetClock(std::sync::atomic::AtomicU64);

impl kiln_engine::Clock for SetClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

const DAY_MS: u64 = 86_400_000;

/// The `cache_miss` note of step `id`'s attempt in a run's record.
fn cache_miss(s: &Setup, run_id: &str, id: &str) -> Option<String> {
    let record = s
        .dir
        .path()
        .join(".kiln/runs")
        .join(run_id)
        .join("record.jsonl");
    read_record(&record)
        .unwrap()
        .into_iter()
        .find_map(|event| match event {
            RecordEvent::StepFinished(rec) if rec.step == id => Some(rec.cache_miss.clone()),
            _ => None,
        })
        .flatten()
}

#[tokio::test(start_paused = true)]
async fn a_cached_result_older_than_max_age_runs_again_and_replaces_the_entry() {
    let s = Setup::new();
    let yaml = format!(
        "steps:\n  aged:\n    {C}\n    outputs: [out]\n    cache: {{max_age: 7d}}\n  kept:\n    {C}\n    outputs: [kept]\n"
    );
    let fake = Arc::new(Fake::default());
    let clock = Arc::new(SetClock(1_700_000_000_000.into()));
    let engine = s.engine(fake.clone(), config(2)).with_clock(clock.clone());
    let run = || async {
        engine
            .run(s.input(&yaml), CancellationToken::new(), None)
            .await
            .unwrap()
    };
    let first = run().await;
    assert_eq!(status(&first, "aged"), &StepStatus::Succeeded);

    // Six days on: younger than seven, reused.
    clock.0.fetch_add(6 * DAY_MS, Ordering::SeqCst);
    let second = run().await;
    assert_eq!(status(&second, "aged"), &StepStatus::Cached);
    assert_eq!(status(&second, "kept"), &StepStatus::Cached);

    // Eight days after it was made: too old, run again, and the run says why.
    clock.0.fetch_add(2 * DAY_MS, Ordering::SeqCst);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let third = engine
        .run(s.input(&yaml), CancellationToken::new(), Some(tx))
        .await
        .unwrap();
    assert_eq!(status(&third, "aged"), &StepStatus::Succeeded);
    assert_eq!(
        status(&third, "kept"),
        &StepStatus::Cached,
        "a step without max_age is reused however old"
    );
    let mut expired = Vec::new();
    while let Ok(event) = rx.try_recv() {
        if let Event::CacheExpired { id, reason } = event {
            expired.push((id.to_string(), reason));
        }
    }
    let why = "cached result is 8d old, older than max_age 7d";
    assert_eq!(expired, vec![("aged".to_owned(), why.to_owned())]);
    assert_eq!(cache_miss(&s, &third.run_id, "aged").as_deref(), Some(why));
    assert_eq!(fake.started(), vec!["aged", "kept", "aged"]);

    // The new result replaced the entry: a day later it is young again.
    clock.0.fetch_add(DAY_MS, Ordering::SeqCst);
    let fourth = run().await;
    assert_eq!(status(&fourth, "aged"), &StepStatus::Cached);
    assert_eq!(fake.started().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn an_entry_without_its_time_is_too_old_for_max_age() {
    let s = Setup::new();
    let yaml = format!(
        "steps:\n  aged:\n    {C}\n    outputs: [out]\n    cache: {{max_age: 30d}}\n  kept:\n    {C}\n    outputs: [kept]\n"
    );
    let fake = Arc::new(Fake::default());
    let engine = s.engine(fake.clone(), config(2));
    let first = engine
        .run(s.input(&yaml), CancellationToken::new(), None)
        .await
        .unwrap();
    assert_eq!(status(&first, "aged"), &StepStatus::Succeeded);
    // Entries as a kiln that did not note their time wrote them: one file per key, in place
    // of the journal this kiln appended them to.
    let mut rewritten = 0;
    let cache = s.dir.path().join(".kiln/cache");
    for journal in std::fs::read_dir(&cache).unwrap() {
        let journal = journal.unwrap().path();
        for line in std::fs::read_to_string(&journal).unwrap().lines() {
            let mut entry: serde_json::Value = serde_json::from_str(line).unwrap();
            assert!(entry["created_ms"].is_u64(), "a new entry notes its time");
            entry.as_object_mut().unwrap().remove("created_ms");
            let hex = entry["key"]
                .as_str()
                .unwrap()
                .trim_start_matches("blake3:")
                .to_owned();
            std::fs::create_dir_all(cache.join(&hex[..2])).unwrap();
            let path = cache.join(&hex[..2]).join(format!("{hex}.json"));
            std::fs::write(&path, serde_json::to_vec(&entry).unwrap()).unwrap();
            rewritten += 1;
        }
        std::fs::remove_file(&journal).unwrap();
    }
    assert_eq!(rewritten, 2);
    // A new process reads them (an engine keeps the entries it has read).
    let engine = s.engine(fake.clone(), config(2));
    let second = engine
        .run(s.input(&yaml), CancellationToken::new(), None)
        .await
        .unwrap();
    assert_eq!(status(&second, "aged"), &StepStatus::Succeeded);
    assert_eq!(status(&second, "kept"), &StepStatus::Cached);
    assert_eq!(
        cache_miss(&s, &second.run_id, "aged").as_deref(),
        Some(
            "cached result has no time of making (an older kiln wrote it), so it counts as older than max_age 30d"
        )
    );
}

#[tokio::test(start_paused = true)]
async fn a_run_past_its_timeout_stops_skips_the_rest_and_runs_its_exit_handlers() {
    let s = Setup::new();
    let yaml = format!(
        "timeout: 10s\nsteps:\n  quick:\n    {C}\n    outputs: [out]\n  slow:\n    {C}\n    outputs: [out]\n  later:\n    {C}\n    inputs: {{x: slow.out}}\n    outputs: [out]\n  notify:\n    {C}\n    inputs: {{status: run.status}}\n    outputs: [out]\n    run: always\n"
    );
    let fake = Arc::new(
        Fake::default()
            .with("quick", secs(1))
            .with("slow", secs(3600)),
    );
    let started = Instant::now();
    let summary = s
        .engine(fake.clone(), config(2))
        .run(s.input(&yaml), CancellationToken::new(), None)
        .await
        .unwrap();
    assert_eq!(summary.status, RunStatus::Failed);
    assert_eq!(status(&summary, "quick"), &StepStatus::Succeeded);
    assert!(
        matches!(
            status(&summary, "slow"),
            StepStatus::Failed { kind, message }
                if *kind == FailureKind::Timeout
                    && message == "stopped while running: the run passed its timeout of 10s"
        ),
        "{:?}",
        status(&summary, "slow")
    );
    assert_eq!(
        skip_reason(&summary, "later").as_deref(),
        Some("not started: the run passed its timeout of 10s")
    );
    assert_eq!(status(&summary, "notify"), &StepStatus::Succeeded);
    assert_eq!(fake.started(), vec!["quick", "slow", "notify"]);
    // Stopped at the timeout, not at the end of the slow step (virtual time).
    assert!(started.elapsed() < Duration::from_secs(60));
    // The exit handler read how it ended.
    let seen = fake.inputs_seen.lock().unwrap()["notify"]["status"].clone();
    assert!(seen.contains(r#""status":"failed""#), "{seen}");
    // As after `--fail-fast`, a step that never started is not in `run.status`.
    assert!(!seen.contains("later"), "{seen}");
}

#[tokio::test(start_paused = true)]
async fn a_cancel_before_the_run_timeout_is_still_a_cancel() {
    let s = Setup::new();
    let yaml = format!("timeout: 1h\nsteps:\n  slow:\n    {C}\n    outputs: [out]\n");
    let fake = Arc::new(Fake::default().with("slow", secs(7200)));
    let cancel = CancellationToken::new();
    let canceller = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        canceller.cancel();
    });
    let summary = s
        .engine(fake.clone(), config(1))
        .run(s.input(&yaml), cancel, None)
        .await
        .unwrap();
    assert_eq!(summary.status, RunStatus::Cancelled);
    assert_eq!(status(&summary, "slow"), &StepStatus::Cancelled);
}
