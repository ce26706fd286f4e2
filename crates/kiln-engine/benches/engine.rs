//! Engine overhead per step: the whole `Engine::run` (schedule, cache key, materialise inputs,
//! execute, hash and publish outputs, record) on no-op steps, with a fake executor that
//! writes its declared outputs (a few bytes each) and succeeds at once.
//!
//! `cargo bench -p kiln-engine --bench engine`. Environment:
//! - `KILN_BENCH_STEPS` (default `1000,10000`): step counts, comma-separated;
//! - `KILN_BENCH_RUNS` (default 5): timed runs per measurement (the median is reported; an
//!   untimed warm-up run of at most 100 steps of the same shape comes first);
//! - `KILN_BENCH_SHAPES` (default `wide,fan,deep`): which pipelines;
//! - `KILN_BENCH_DIR`: where the state folders go (default the system temp folder).
//!
//! Shapes: `wide` = N independent steps; `fan` = one source and N-1 readers of its output;
//! `deep` = a chain, each step reading the previous one's output. Every step has a distinct
//! `with: {i: N}`, so no step is a cache hit of another.
//!
//! Each run gets a fresh state folder (`fresh`: nothing cached), then the same plan runs again
//! on that state (`cached`: every step is a cache hit). `jobs` = the number of cores, on a
//! multi-threaded tokio runtime with as many workers, as `kiln run` does.
//!
//! Columns: wall ms of the whole run and per step (median), and the process's CPU time per
//! step (all threads, user + system, median; 10 ms ticks). Wall time includes waiting for the
//! disk (fsync) and for cores that other processes hold; CPU time does not.

#![allow(missing_docs)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use kiln_engine::{
    Engine, EngineConfig, ExecOutcome, Executor, ExecutorError, Executors, RunInput, RunStatus,
    StagedTask, StateDir, StepStatus,
};
use tokio_util::sync::CancellationToken;

/// Writes every declared output (the step id, a few bytes) and succeeds.
struct NoOp;

#[async_trait]
impl Executor for NoOp {
    fn name(&self) -> &str {
        "noop"
    }

    async fn run_staged(&self, task: &StagedTask) -> Result<ExecOutcome, ExecutorError> {
        for path in task.outputs.values() {
            std::fs::write(path, task.step.id.as_bytes())
                .map_err(|e| ExecutorError::new(e.to_string()))?;
        }
        Ok(ExecOutcome::success())
    }
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The pipeline's YAML text.
fn pipeline(shape: &str, n: usize) -> String {
    let mut yaml = format!("apiVersion: kiln/v1\nname: bench-{shape}-{n}\nsteps:\n");
    for i in 0..n {
        yaml.push_str(&format!(
            "  s{i}:\n    container: {{image: noop, command: [noop]}}\n    with: {{i: {i}}}\n    outputs: [out]\n"
        ));
        let input = match (shape, i) {
            (_, 0) | ("wide", _) => None,
            ("fan", _) => Some("s0.out".to_owned()),
            ("deep", _) => Some(format!("s{}.out", i - 1)),
            (other, _) => panic!("unknown shape `{other}` (wide, fan, deep)"),
        };
        if let Some(input) = input {
            yaml.push_str(&format!("    inputs: {{x: {input}}}\n"));
        }
    }
    yaml
}

fn run_input(shape: &str, n: usize, base_dir: &Path) -> RunInput {
    let text = pipeline(shape, n);
    let pipeline = kiln_spec::parse(&text).unwrap_or_else(|d| panic!("{d:?}"));
    let compiled = kiln_plan::compile(
        &pipeline,
        &kiln_plan::PlanOptions {
            base_dir: base_dir.to_path_buf(),
            overrides: vec![],
        },
    );
    let plan = compiled
        .plan
        .unwrap_or_else(|| panic!("{:?}", compiled.diagnostics));
    assert_eq!(plan.steps.len(), n);
    RunInput {
        plan,
        components: Default::default(),
        workspace: Default::default(),
        pipeline_file: "pipeline.yaml".into(),
        pipeline_text: text,
    }
}

/// CPU time used so far by this process, all threads (live and exited) together, user and
/// system, from /proc/self/stat (in clock ticks of 10 ms; zero where there is no /proc).
fn process_cpu() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Duration::ZERO;
    };
    // Fields after the command name (which may hold spaces) start at `state`, field 3;
    // utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse().ok())
        .collect();
    Duration::from_millis(fields.iter().sum::<u64>() * 10)
}

/// One `Engine::run`, timed from the call to its return (wall time and the process's CPU
/// time); checks every step ended as expected.
fn timed_run(
    runtime: &tokio::runtime::Runtime,
    state: &Path,
    jobs: usize,
    input: RunInput,
    expect: &StepStatus,
) -> (Duration, Duration) {
    let engine = Engine::new(
        StateDir::new(state),
        Executors {
            wasm: None,
            container: Some(Arc::new(NoOp)),
        },
        EngineConfig {
            jobs,
            ..EngineConfig::default()
        },
    );
    let (start, cpu) = (Instant::now(), process_cpu());
    let summary = runtime
        .block_on(engine.run(input, CancellationToken::new(), None))
        .expect("the run starts");
    let time = (start.elapsed(), process_cpu().saturating_sub(cpu));
    assert_eq!(summary.status, RunStatus::Succeeded);
    for step in &summary.steps {
        assert_eq!(&step.status, expect, "step {}", step.id);
    }
    time
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument that is not ours means "not me".
    if std::env::args()
        .skip(1)
        .any(|a| !a.starts_with("--") && a != "engine")
    {
        return;
    }
    let counts: Vec<usize> = std::env::var("KILN_BENCH_STEPS")
        .unwrap_or_else(|_| "1000,10000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let shapes: Vec<String> = std::env::var("KILN_BENCH_SHAPES")
        .unwrap_or_else(|_| "wide,fan,deep".into())
        .split(',')
        .map(|s| s.trim().to_owned())
        .collect();
    let runs = env_or("KILN_BENCH_RUNS", 5).max(1);
    let base: PathBuf = std::env::var_os("KILN_BENCH_DIR")
        .map(Into::into)
        .unwrap_or_else(std::env::temp_dir);
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(jobs)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir_in(base).unwrap();
    println!(
        "Engine::run with a no-op executor; jobs = {jobs}; {runs} runs each (median); state under {}",
        dir.path().display()
    );
    println!("load average at start: {}", load_average());
    println!(
        "{:<6} {:>6}  {:>9} {:>8} {:>8}  {:>9} {:>8} {:>8}",
        "", "", "fresh", "", "", "cached", "", ""
    );
    println!(
        "{:<6} {:>6}  {:>9} {:>8} {:>8}  {:>9} {:>8} {:>8}",
        "shape", "steps", "ms", "µs/step", "CPU µs", "ms", "µs/step", "CPU µs"
    );
    let mut k = 0;
    for &n in &counts {
        for shape in &shapes {
            // An untimed warm-up on a smaller pipeline of the same shape (page cache,
            // allocator, the runtime's blocking threads).
            let warm_up = run_input(shape, n.min(100), dir.path());
            let input = run_input(shape, n, dir.path());
            let (mut fresh, mut fresh_cpu) = (Vec::new(), Vec::new());
            let (mut cached, mut cached_cpu) = (Vec::new(), Vec::new());
            for round in 0..=runs {
                k += 1;
                let state = dir.path().join(format!("state-{k}"));
                let input = if round == 0 { &warm_up } else { &input };
                let f = timed_run(
                    &runtime,
                    &state,
                    jobs,
                    input.clone(),
                    &StepStatus::Succeeded,
                );
                let c = timed_run(&runtime, &state, jobs, input.clone(), &StepStatus::Cached);
                std::fs::remove_dir_all(&state).unwrap();
                if round > 0 {
                    fresh.push(f.0);
                    fresh_cpu.push(f.1);
                    cached.push(c.0);
                    cached_cpu.push(c.1);
                }
            }
            let per = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
            let (f, c) = (median(&mut fresh), median(&mut cached));
            let (fc, cc) = (median(&mut fresh_cpu), median(&mut cached_cpu));
            println!(
                "{shape:<6} {n:>6}  {:>9.1} {:>8.1} {:>8.1}  {:>9.1} {:>8.1} {:>8.1}",
                f.as_secs_f64() * 1e3,
                per(f),
                per(fc),
                c.as_secs_f64() * 1e3,
                per(c),
                per(cc)
            );
        }
    }
    println!("load average at end: {}", load_average());
}

/// The first three fields of /proc/loadavg, where there is one: on a shared machine, other
/// work on the cores shows in the figures.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").map_or_else(
        |_| "unknown".into(),
        |s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
    )
}
