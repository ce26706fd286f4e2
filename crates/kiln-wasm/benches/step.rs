//! Whole-step overhead of wasm steps through the engine, and first compile versus cached
//! start of a component.
//!
//! ```text
//! cargo bench -p kiln-wasm --bench step
//! KILN_BENCH_DIR=/tmp KILN_BENCH_STEPS=300 cargo bench -p kiln-wasm --bench step -- engine
//! KILN_BENCH_COMPONENTS=path/to/zscore-py.wasm cargo bench -p kiln-wasm --bench step -- load
//! ```
//!
//! `load`: for the trivial guest (`noop`, `fn main() {}`), the `copy` guest and the z-score
//! step of the `zscore` benchmark (`bench/zscore/rust`), plus any component named in
//! `KILN_BENCH_COMPONENTS` (comma-separated paths; the slot for the Python component): the
//! first load of the component (compile, write the precompiled file, link) into an empty
//! precompiled cache, and the load by a fresh runtime from that cache (what every `kiln run`
//! after the first pays once per component); `KILN_BENCH_LOADS` (default 7) times each,
//! median and min–max. Also the start of a `WasmRuntime` itself (the wasmtime engine and its
//! instance pool).
//!
//! `engine`: `Engine::run` with the real `WasmExecutor` (as `kiln run` sets it up) on a plan of
//! `KILN_BENCH_STEPS` (default 500) independent wasm steps, every one fresh: the state folder
//! keeps the precompiled cache warm across runs, and each run gives every step a new `salt`
//! param, so no step is a cache hit. Guests (`KILN_BENCH_GUESTS`, default
//! `noop,copy,zscore`): `noop` (no inputs, no outputs), `copy` (reads a 4 KiB workspace
//! file, writes it to its output and two lines to its log, so materialising, hashing and
//! publishing are in it) and `zscore` (the `zscore` benchmark's step on its 10,000 × 5 CSV,
//! made by `bench/zscore/make_data.py` with `python3`; at most 100 steps a run).
//! - With `jobs = 1` the steps run one after another, and the time from one step's executor
//!   call to the next one's is the whole cost of a step: record its start, materialise
//!   inputs, instantiate and run the guest, hash and publish outputs, write the cache entry
//!   and the record line, remove the scratch folder, schedule the next. Median and p99 over
//!   every step of `KILN_BENCH_RUNS` (default 5) timed runs (the first step of each run,
//!   which loads the component from the precompiled cache, is left out: that is `load`'s
//!   figure), and the same for the executor call alone (`WasmExecutor::run`).
//! - With `jobs` = the number of cores: the whole run's wall time per step (median of the
//!   runs), what a fan-out of such steps costs, and the process's CPU time per step.
//!
//! One untimed warm-up run (at most 50 steps) comes first. State folders go under
//! `KILN_BENCH_DIR`, default `/dev/shm` where it exists (the engine's own cost; see
//! docs/benchmarks.md for what ext4 on the development machine adds), else the temp folder.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use kiln_engine::{
    Engine, EngineConfig, ExecOutcome, Executor, ExecutorError, Executors, RunInput, RunStatus,
    StagedTask, StateDir, StepStatus,
};
use kiln_plan::PlannedStep;
use kiln_wasm::{LoadSource, WasmExecutor, WasmRuntime};

fn main() {
    let parts: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--") && a != "step")
        .collect();
    // `cargo bench` passes other benches' filters too: run only what is named here, or all.
    if parts.iter().any(|p| p != "load" && p != "engine") {
        return;
    }
    let wants = |part: &str| parts.is_empty() || parts.iter().any(|p| p == part);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores())
        .enable_all()
        .build()
        .unwrap();
    println!(
        "{} cores; load average at start: {}",
        cores(),
        load_average()
    );
    if wants("load") {
        rt.block_on(load_table());
    }
    if wants("engine") {
        engine_table(&rt);
    }
    println!("load average at end: {}", load_average());
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Where state folders go: `KILN_BENCH_DIR`, else `/dev/shm` where it exists, else the
/// system temp folder.
fn bench_base() -> PathBuf {
    if let Some(dir) = std::env::var_os("KILN_BENCH_DIR") {
        return dir.into();
    }
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_owned()
    } else {
        std::env::temp_dir()
    }
}

/// The z-score step of `bench/zscore/rust`, built for `wasm32-wasip2` (release).
fn zscore_component() -> PathBuf {
    let workspace = support::repo_dir().join("bench/zscore/rust");
    kiln_test_support::build_wasm(&workspace, &[]).join("zscore.wasm")
}

/// The `zscore` benchmark's input table (`bench/zscore/make_data.py`, 10,000 rows, seed 7).
fn make_data(path: &Path) {
    let python = std::env::var("KILN_BENCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let status = Command::new(&python)
        .arg(support::repo_dir().join("bench/zscore/make_data.py"))
        .arg(path)
        .status()
        .unwrap_or_else(|e| panic!("cannot run `{python}` (the zscore guest needs it): {e}"));
    assert!(status.success(), "make_data.py failed");
}

// ---- load -------------------------------------------------------------------------------

async fn load_table() {
    let loads = env_or("KILN_BENCH_LOADS", 7).max(1);
    let mut components: Vec<(String, PathBuf)> = vec![
        ("noop".into(), support::guest("noop")),
        ("copy".into(), support::guest("copy")),
        ("zscore (Rust)".into(), zscore_component()),
    ];
    for path in std::env::var("KILN_BENCH_COMPONENTS")
        .unwrap_or_default()
        .split(',')
        .filter(|p| !p.is_empty())
    {
        let path = PathBuf::from(path);
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        components.push((name, path));
    }
    let base = tempfile::tempdir_in(bench_base()).unwrap();
    println!(
        "\nload: {loads} times each, median (min–max), ms; precompiled caches under {}",
        base.path().display()
    );
    println!(
        "{:<16} {:>9}  {:>22}  {:>22}  {:>22}",
        "component", "KiB", "runtime start", "first compile", "cached load"
    );
    let mut k = 0;
    for (name, path) in &components {
        let (mut start, mut compile, mut cached) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..loads {
            k += 1;
            let cache = base.path().join(format!("cache-{k}"));
            let t = Instant::now();
            let runtime = WasmRuntime::new(&cache, cores()).unwrap();
            start.push(t.elapsed());
            let t = Instant::now();
            let loaded = runtime.load(path).await.unwrap();
            compile.push(t.elapsed());
            assert_eq!(loaded.source(), LoadSource::Compiled);
            drop((loaded, runtime));

            // A fresh runtime on the filled cache: a later `kiln run`.
            let runtime = WasmRuntime::new(&cache, cores()).unwrap();
            let t = Instant::now();
            let loaded = runtime.load(path).await.unwrap();
            cached.push(t.elapsed());
            assert_eq!(loaded.source(), LoadSource::Cached);
        }
        let size = std::fs::metadata(path).unwrap().len() as f64 / 1024.0;
        println!(
            "{name:<16} {size:>9.1}  {:>22}  {:>22}  {:>22}",
            spread_ms(&mut start),
            spread_ms(&mut compile),
            spread_ms(&mut cached)
        );
    }
}

/// `median (min–max)` in ms.
fn spread_ms(times: &mut [Duration]) -> String {
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    format!(
        "{:.2} ({:.2}–{:.2})",
        ms(times[times.len() / 2]),
        ms(times[0]),
        ms(times[times.len() - 1])
    )
}

// ---- engine -----------------------------------------------------------------------------

/// The real executor, with the start and end of every call noted.
struct TimedExecutor {
    inner: WasmExecutor,
    calls: Mutex<Vec<(Instant, Instant)>>,
}

#[async_trait]
impl Executor for TimedExecutor {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn preflight(&self, steps: &[&PlannedStep]) -> Result<(), Vec<String>> {
        self.inner.preflight(steps).await
    }

    async fn run_staged(&self, task: &StagedTask) -> Result<ExecOutcome, ExecutorError> {
        let start = Instant::now();
        let outcome = self.inner.run_staged(task).await;
        self.calls.lock().unwrap().push((start, Instant::now()));
        outcome
    }
}

/// `n` independent steps of `guest`, each with its own `i` and the run's `salt`.
fn pipeline(guest: &str, n: usize, salt: usize) -> String {
    let mut yaml = format!("apiVersion: kiln/v1\nname: step-{guest}\nsteps:\n");
    for i in 0..n {
        // zscore steps z-score column x0..x4 in turn.
        let (column, io) = match guest {
            "copy" => (
                String::new(),
                "    inputs: {src: ./input.bin}\n    outputs: [dst]\n",
            ),
            "zscore" => (
                format!("column: x{}, ", i % 5),
                "    inputs: {data: ./data.csv}\n    outputs: [data]\n",
            ),
            _ => (String::new(), ""),
        };
        yaml.push_str(&format!(
            "  s{i}:\n    wasm: {guest}.wasm\n    with: {{{column}i: {i}, salt: {salt}}}\n{io}"
        ));
    }
    yaml
}

fn run_input(guest: &str, n: usize, salt: usize, base_dir: &Path) -> RunInput {
    let text = pipeline(guest, n, salt);
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
    RunInput {
        plan,
        components: Default::default(),
        workspace: Default::default(),
        pipeline_file: "pipeline.yaml".into(),
        pipeline_text: text,
    }
}

/// What one run measured.
struct Measured {
    wall: Duration,
    cpu: Duration,
    calls: Vec<(Instant, Instant)>,
}

/// One fresh `Engine::run`, with a new runtime on the state's precompiled cache (as each
/// `kiln run` process starts one); checks every step ran (none was a cache hit).
fn timed_run(
    rt: &tokio::runtime::Runtime,
    state: &Path,
    jobs: usize,
    input: RunInput,
    base_dir: &Path,
) -> Measured {
    let state = StateDir::new(state);
    // As `kiln run` does (`wasm_executor` in crates/kiln-cli/src/main.rs).
    let runtime = WasmRuntime::new(state.root().join("wasm-cache"), jobs).unwrap();
    let timed = Arc::new(TimedExecutor {
        inner: WasmExecutor::new(runtime),
        calls: Mutex::new(Vec::with_capacity(input.plan.steps.len())),
    });
    let engine = Engine::new(
        state.clone(),
        Executors {
            wasm: Some(timed.clone()),
            container: None,
        },
        EngineConfig {
            jobs,
            ..EngineConfig::default()
        },
    );
    let (start, cpu) = (Instant::now(), process_cpu());
    // Pinning is timed too: it is what the engine's preflight did before it moved out.
    let mut input = input;
    let store: Arc<dyn kiln_cas::BlobStore> = Arc::new(state.store());
    let mut resolver = kiln_build::LocalResolver::new(&state, base_dir, &input.plan, store);
    let pinned = rt
        .block_on(kiln_build::pin(&input.plan, &mut resolver))
        .expect("the components pin");
    (input.components, input.workspace) = (pinned.components, pinned.workspace);
    drop(resolver);
    // `Default::default()`: a cancellation token that is never cancelled.
    let summary = rt
        .block_on(engine.run(input, Default::default(), None))
        .expect("the run starts");
    let (wall, cpu) = (start.elapsed(), process_cpu().saturating_sub(cpu));
    assert_eq!(summary.status, RunStatus::Succeeded, "{:?}", summary.steps);
    for step in &summary.steps {
        assert_eq!(step.status, StepStatus::Succeeded, "step {}", step.id);
    }
    let calls = std::mem::take(&mut *timed.calls.lock().unwrap());
    Measured { wall, cpu, calls }
}

fn engine_table(rt: &tokio::runtime::Runtime) {
    let n = env_or("KILN_BENCH_STEPS", 500).max(2);
    let runs = env_or("KILN_BENCH_RUNS", 5).max(1);
    let guests = std::env::var("KILN_BENCH_GUESTS").unwrap_or_else(|_| "noop,copy,zscore".into());
    let jobs = cores();
    let base = tempfile::tempdir_in(bench_base()).unwrap();
    println!(
        "\nengine: Engine::run + WasmExecutor, {n} fresh steps a run, {runs} runs (after a \
         warm-up); state under {}",
        base.path().display()
    );
    println!(
        "{:<6} {:>30}  {:>30}  {:>27}",
        "",
        "jobs = 1: step, µs",
        "executor call, µs",
        format!("jobs = {jobs}: µs/step")
    );
    println!(
        "{:<6} {:>9} {:>9} {:>10}  {:>9} {:>9} {:>10}  {:>9} {:>8} {:>8}",
        "guest", "median", "p99", "max", "median", "p99", "max", "wall", "min", "CPU"
    );
    let mut salt = 0;
    for guest in guests.split(',') {
        let dir = base.path().join(guest);
        std::fs::create_dir_all(&dir).unwrap();
        let component = if guest == "zscore" {
            make_data(&dir.join("data.csv"));
            zscore_component()
        } else {
            support::guest(guest)
        };
        std::fs::copy(component, dir.join(format!("{guest}.wasm"))).unwrap();
        std::fs::write(dir.join("input.bin"), [7u8; 4096]).unwrap();
        // Real work is slower: fewer steps of it.
        let n = if guest == "zscore" { n.min(100) } else { n };
        let state = dir.join("state");
        // Warm-up: fills the precompiled cache, the page cache and the runtime's threads.
        salt += 1;
        timed_run(
            rt,
            &state,
            jobs,
            run_input(guest, n.min(50), salt, &dir),
            &dir,
        );

        let (mut step, mut exec) = (Vec::new(), Vec::new());
        let (mut wide, mut wide_cpu) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            salt += 1;
            let mut m = timed_run(rt, &state, 1, run_input(guest, n, salt, &dir), &dir);
            m.calls.sort();
            step.extend(m.calls.windows(2).skip(1).map(|w| w[1].0 - w[0].0));
            exec.extend(m.calls.iter().skip(1).map(|(s, e)| *e - *s));

            salt += 1;
            let m = timed_run(rt, &state, jobs, run_input(guest, n, salt, &dir), &dir);
            wide.push(m.wall / n as u32);
            wide_cpu.push(m.cpu / n as u32);
        }
        let (s, e) = (percentiles(&mut step), percentiles(&mut exec));
        wide.sort();
        wide_cpu.sort();
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        println!(
            "{guest:<6} {:>9.0} {:>9.0} {:>10.0}  {:>9.0} {:>9.0} {:>10.0}  {:>9.0} {:>8.0} {:>8.0}",
            us(s[0]),
            us(s[1]),
            us(s[2]),
            us(e[0]),
            us(e[1]),
            us(e[2]),
            us(wide[wide.len() / 2]),
            us(wide[0]),
            us(wide_cpu[wide_cpu.len() / 2]),
        );
    }
    println!("target: a fresh trivial step in ≤ 500 µs (median, jobs = 1)");
}

/// Median, p99 (nearest rank) and max.
fn percentiles(times: &mut [Duration]) -> [Duration; 3] {
    times.sort();
    let n = times.len();
    [
        times[n / 2],
        times[(n * 99).div_ceil(100).max(1) - 1],
        times[n - 1],
    ]
}

/// CPU time used so far by this process, all threads, user and system, from /proc/self/stat
/// (10 ms ticks; zero where there is no /proc).
fn process_cpu() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Duration::ZERO;
    };
    // Fields after the command name (which may hold spaces) start at `state`, field 3;
    // utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: u64 = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse::<u64>().ok())
        .sum();
    Duration::from_millis(ticks * 10)
}

/// The first three fields of /proc/loadavg: on a shared machine, other work on the cores
/// shows in the figures.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").map_or_else(
        |_| "unknown".into(),
        |s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
    )
}
