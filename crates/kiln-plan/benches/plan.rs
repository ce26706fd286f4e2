//! Planning benchmark: how long parsing and planning a generated pipeline of many steps takes,
//! and how much memory it needs at its peak.
//!
//! ```text
//! cargo bench -p kiln-plan --bench plan                 # wide, deep, mixed
//! cargo bench -p kiln-plan --bench plan -- deep mixed   # only these shapes
//! KILN_BENCH_STEPS=5000 KILN_BENCH_ITERS=5 cargo bench -p kiln-plan --bench plan
//! KILN_BENCH_STEPS=2000 cargo bench -p kiln-plan --bench plan -- typo cycles  # error paths
//! KILN_BENCH_DUMP=/tmp/shapes cargo bench -p kiln-plan --bench plan   # also write the YAML
//! cargo bench -p kiln-plan --bench plan -- file:/tmp/shapes/mixed.yaml # any pipeline file
//! ```
//!
//! A `file:PATH` pipeline is planned with the current folder as its base: its workspace
//! paths must exist relative to where the bench runs (the package folder under `cargo bench`).
//!
//! Under `cargo test --benches` (no `--bench` argument) it is a smoke test: 200 steps, one
//! iteration, and it fails if a shape does not plan or overflows the small stack.
//!
//! Shapes (each with `KILN_BENCH_STEPS` steps, default 10,000):
//! - `wide`: one source step, `N - 2` steps each reading it, one step collecting all of them.
//! - `deep`: a chain; every step reads the previous one's output.
//! - `mixed`: layers of 100 steps with diamonds (each step reads the same column of the layer
//!   before, even columns also the next one), fan-out (`for_each` over a list param, paired
//!   and collected), `when` conditions and `after` edges.
//! - probes of error paths, only when named: `typo` is `wide` with the source step renamed
//!   (`sources`), so every feature step reads an unknown step (an error with a "did you mean"
//!   each); `cycles` is `N / 2` two-step cycles.
//!
//! Every step is a wasm step named by registry (`name@1.0.0`) or a container step, and reads
//! only other steps' outputs and params, so the planner touches no file.
//!
//! Time: one warm-up, then `KILN_BENCH_ITERS` (default 10) iterations of `kiln_spec::parse`
//! and `kiln_plan::compile`, timed separately; the table gives the median and the min–max.
//! Memory: each shape runs once more in a fresh child process (this binary, re-executed with
//! `KILN_BENCH_CHILD=<shape>`), which reports its peak resident set (`VmHWM`) over parsing and
//! planning, minus its resident set just before (the generated text already in memory; the
//! high-water mark is reset through `/proc/self/clear_refs` first).
//! The CPU column is the bench thread's own CPU time over parse + plan (from
//! `/proc/thread-self/schedstat`): on a busy machine it stays put while wall time grows. It
//! leaves out threads the planner starts (one per `when` condition).
//! Stack: each shape is also parsed and planned once in a child process on a thread with a
//! 2 MiB stack (Rust's default for spawned threads and test threads, and tokio's for its
//! workers), because a stack overflow aborts the process.
//!
//! The spec's YAML budget (`kiln_spec::parse`) caps a document's nodes; the generated steps
//! are kept small enough (about 20 nodes each) that 10,000 of them fit.

use std::fmt::Write as _;
use std::hint::black_box;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use kiln_plan::{PlanOptions, compile};

const DEFAULT_SHAPES: &[&str] = &["wide", "deep", "mixed"];
/// Shapes run only when named; their pipelines are wrong on purpose (error paths).
const PROBE_SHAPES: &[&str] = &["typo", "cycles"];
/// The target from the issue, per shape: parse + plan.
const TARGET_MS: f64 = 100.0;
/// "A few tens of MB".
const TARGET_MB: f64 = 50.0;
/// Stack of the thread the stack check plans on: Rust's default for spawned threads, and
/// tokio's for its workers.
const SMALL_STACK: usize = 2 << 20;
/// Steps per layer in the `mixed` shape.
const LAYER_WIDTH: usize = 100;

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .replace('_', "")
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a number")),
        Err(_) => default,
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` (or `--all-targets`) does not,
    // and then this runs as a quick smoke test on small pipelines.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let steps = env_usize("KILN_BENCH_STEPS", if smoke { 200 } else { 10_000 }).max(3);
    if let Ok(shape) = std::env::var("KILN_BENCH_CHILD") {
        match shape.strip_prefix("stack:") {
            Some(shape) => stack_child(shape, steps),
            None => child(&shape, steps),
        }
        return;
    }
    let iters = env_usize("KILN_BENCH_ITERS", if smoke { 1 } else { 10 }).max(1);
    // `cargo bench` passes `--bench`; any other word names a shape to run.
    let wanted: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let shapes: Vec<&str> = if wanted.is_empty() {
        DEFAULT_SHAPES.to_vec()
    } else {
        for w in &wanted {
            assert!(
                DEFAULT_SHAPES.contains(&w.as_str())
                    || PROBE_SHAPES.contains(&w.as_str())
                    || w.starts_with("file:"),
                "unknown shape `{w}`; shapes: {}, {}, or file:PATH",
                DEFAULT_SHAPES.join(", "),
                PROBE_SHAPES.join(", ")
            );
        }
        wanted.iter().map(String::as_str).collect()
    };

    println!(
        "kiln-plan planning benchmark: {steps} steps per shape, {iters} timed iterations (+1 warm-up), {} CPUs",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let mut rows = Vec::new();
    for shape in shapes {
        let text = generate(shape, steps);
        if let Ok(dir) = std::env::var("KILN_BENCH_DUMP")
            && !shape.starts_with("file:")
        {
            let path = PathBuf::from(dir).join(format!("{shape}.yaml"));
            std::fs::create_dir_all(path.parent().expect("a folder")).expect("dump folder");
            std::fs::write(&path, &text).expect("dump the generated pipeline");
            println!("wrote {}", path.display());
        }
        let run = time_shape(&text, iters);
        let (mem, stack) = if run.is_ok() {
            (
                measure_memory(shape, steps),
                check_small_stack(shape, steps),
            )
        } else {
            (None, None)
        };
        rows.push((shape, text.len(), run, mem, stack));
    }

    println!();
    println!(
        "| shape | steps | planned | YAML KB | parse ms median (min–max) | plan ms median (min–max) | total ms median (min–max) | CPU ms median (bench thread) | peak MB |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut over = Vec::new();
    for (shape, bytes, run, mem, stack) in &rows {
        let run = match run {
            Ok(run) => run,
            Err(e) => {
                println!("| {shape} | {steps} | – | {} | {e} | | | | |", bytes / 1024);
                over.push(format!("{shape}: {e}"));
                continue;
            }
        };
        let peak = mem.map_or("n/a".to_owned(), |m| format!("{:.1}", m.extra_mb()));
        let planned = match run.planned {
            Some(n) => n.to_string(),
            None => format!("{} errors", run.errors),
        };
        println!(
            "| {shape} | {} | {planned} | {} | {} | {} | {} | {:.1} | {peak} |",
            run.declared,
            bytes / 1024,
            stats(&run.parse),
            stats(&run.plan),
            stats(&run.total),
            median(&run.cpu),
        );
        if run.planned.is_none() && !PROBE_SHAPES.contains(shape) {
            over.push(format!(
                "{shape}: does not plan: {}",
                run.first_error.as_deref().unwrap_or("")
            ));
        }
        let total = median(&run.total);
        if total > TARGET_MS {
            over.push(format!(
                "{shape}: parse + plan median {total:.1} ms > {TARGET_MS} ms"
            ));
        }
        if let Some(Err(e)) = stack {
            over.push(format!(
                "{shape}: parse + plan on a {} KiB thread stack fails: {e}",
                SMALL_STACK >> 10
            ));
        }
        if let Some(m) = mem
            && m.extra_mb() > TARGET_MB
        {
            over.push(format!(
                "{shape}: peak {:.1} MB > {TARGET_MB} MB",
                m.extra_mb()
            ));
        }
    }
    println!();
    for (shape, _, run, mem, stack) in &rows {
        let Ok(run) = run else { continue };
        let mut line = format!("{shape}: {} errors, {} warnings", run.errors, run.warnings);
        if let Some(e) = &run.first_error {
            let _ = write!(line, " (first: {e})");
        }
        if let Some(m) = mem {
            let _ = write!(
                line,
                "; memory child: VmHWM {:.1} MB, {:.1} MB before parsing (YAML text {:.1} MB), {:.1} MB above that after parsing alone",
                m.hwm_kb as f64 / 1024.0,
                m.base_kb as f64 / 1024.0,
                m.text_bytes as f64 / (1024.0 * 1024.0),
                m.parse_kb.saturating_sub(m.base_kb) as f64 / 1024.0,
            );
        }
        match stack {
            Some(Ok(())) => {
                let _ = write!(line, "; fits a {} KiB thread stack", SMALL_STACK >> 10);
            }
            Some(Err(e)) => {
                let _ = write!(
                    line,
                    "; FAILS on a {} KiB thread stack: {e}",
                    SMALL_STACK >> 10
                );
            }
            None => {}
        }
        println!("{line}");
    }
    println!(
        "sizes: Located<Step> {} B, PlannedStep {} B, InputSource {} B, Value {} B",
        std::mem::size_of::<kiln_spec::Located<kiln_spec::Step>>(),
        std::mem::size_of::<kiln_plan::PlannedStep>(),
        std::mem::size_of::<kiln_plan::InputSource>(),
        std::mem::size_of::<kiln_spec::Value>(),
    );
    println!();
    if !smoke {
        if over.is_empty() {
            println!(
                "target (parse + plan < {TARGET_MS} ms, peak < {TARGET_MB} MB per shape): met by every shape"
            );
        } else {
            println!(
                "target (parse + plan < {TARGET_MS} ms, peak < {TARGET_MB} MB per shape): NOT met"
            );
            for o in over {
                println!("  - {o}");
            }
        }
    }
    if smoke {
        println!("(smoke run: `cargo bench -p kiln-plan --bench plan` measures 10,000 steps)");
        for (shape, _, run, _, stack) in &rows {
            if PROBE_SHAPES.contains(shape) {
                continue;
            }
            let run = run.as_ref().unwrap_or_else(|e| panic!("{shape}: {e}"));
            assert!(run.planned.is_some(), "{shape}: {:?}", run.first_error);
            if let Some(Err(e)) = stack {
                panic!("{shape}: {e}");
            }
        }
    }
}

struct Run {
    parse: Vec<f64>,
    plan: Vec<f64>,
    total: Vec<f64>,
    cpu: Vec<f64>,
    /// Steps in the pipeline.
    declared: usize,
    /// Planned steps, or `None` when planning found errors.
    planned: Option<usize>,
    errors: usize,
    warnings: usize,
    first_error: Option<String>,
}

fn options() -> PlanOptions {
    PlanOptions {
        base_dir: PathBuf::from("."),
        overrides: Vec::new(),
    }
}

/// Times parse and plan; `Err` only when the text does not parse (nothing to plan).
fn time_shape(text: &str, iters: usize) -> Result<Run, String> {
    let options = options();
    let mut run = Run {
        parse: Vec::new(),
        plan: Vec::new(),
        total: Vec::new(),
        cpu: Vec::new(),
        declared: 0,
        planned: None,
        errors: 0,
        warnings: 0,
        first_error: None,
    };
    for i in 0..=iters {
        let c0 = thread_cpu_ns();
        let t0 = Instant::now();
        let pipeline = kiln_spec::parse(black_box(text))
            .map_err(|d| format!("parse error: {}: {}", d.code, d.message))?;
        let t1 = Instant::now();
        let compiled = compile(black_box(&pipeline), &options);
        let t2 = Instant::now();
        let c2 = thread_cpu_ns();
        run.declared = pipeline.steps.len();
        run.planned = compiled.plan.as_ref().map(|p| p.steps.len());
        run.errors = compiled.diagnostics.iter().filter(|d| d.is_error()).count();
        run.warnings = compiled.diagnostics.len() - run.errors;
        run.first_error = compiled
            .diagnostics
            .iter()
            .find(|d| d.is_error())
            .map(|d| format!("{}: {}", d.code, d.message));
        if i == 0 {
            continue; // warm-up
        }
        run.parse.push(ms(t1 - t0));
        run.plan.push(ms(t2 - t1));
        run.total.push(ms(t2 - t0));
        run.cpu.push(c2.saturating_sub(c0) as f64 / 1e6);
        drop(black_box(compiled));
        drop(black_box(pipeline));
    }
    Ok(run)
}

/// CPU time this thread has run, in nanoseconds (0 where the kernel does not say).
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn stats(v: &[f64]) -> String {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{:.1} ({:.1}–{:.1})", median(v), min, max)
}

// ---------------------------------------------------------------------------------------------
// Peak memory, in a fresh child process.

#[derive(Clone, Copy)]
struct Mem {
    text_bytes: usize,
    base_kb: u64,
    /// `VmHWM` after parsing, before planning.
    parse_kb: u64,
    hwm_kb: u64,
}

impl Mem {
    fn extra_mb(&self) -> f64 {
        self.hwm_kb.saturating_sub(self.base_kb) as f64 / 1024.0
    }
}

fn measure_memory(shape: &str, steps: usize) -> Option<Mem> {
    let exe = std::env::current_exe().ok()?;
    let out = Command::new(exe)
        .env("KILN_BENCH_CHILD", shape)
        .env("KILN_BENCH_STEPS", steps.to_string())
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!(
            "memory child for `{shape}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().find(|l| l.starts_with("KILN_BENCH_MEM "))?;
    let field = |key: &str| -> Option<u64> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))?
            .parse()
            .ok()
    };
    Some(Mem {
        text_bytes: field("text_bytes")? as usize,
        base_kb: field("base_kb")?,
        parse_kb: field("parse_kb")?,
        hwm_kb: field("hwm_kb")?,
    })
}

/// `VmHWM` and `VmRSS` of this process, in KiB.
fn proc_status() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let get = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (get("VmHWM:"), get("VmRSS:"))
}

fn child(shape: &str, steps: usize) {
    let text = generate(shape, steps);
    // Reset the high-water mark to the current resident set (Linux 4.0+), so the peak is that
    // of parsing and planning alone, with the text already in memory.
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let (hwm_before, rss_before) = proc_status();
    let base_kb = if reset { rss_before } else { hwm_before };
    let pipeline = kiln_spec::parse(black_box(&text)).expect("parses");
    let (parse_kb, _) = proc_status();
    let compiled = compile(black_box(&pipeline), &options());
    let (hwm_kb, _) = proc_status();
    black_box((&pipeline, &compiled));
    println!(
        "KILN_BENCH_MEM shape={shape} text_bytes={} base_kb={base_kb} parse_kb={parse_kb} hwm_kb={hwm_kb} reset={reset}",
        text.len()
    );
}

/// Parses and plans `shape` in a child process, on a thread with a [`SMALL_STACK`] stack: a
/// stack overflow aborts a process, so it cannot be caught in this one.
fn check_small_stack(shape: &str, steps: usize) -> Option<Result<(), String>> {
    let exe = std::env::current_exe().ok()?;
    let out = Command::new(exe)
        .env("KILN_BENCH_CHILD", format!("stack:{shape}"))
        .env("KILN_BENCH_STEPS", steps.to_string())
        .output()
        .ok()?;
    if out.status.success() {
        return Some(Ok(()));
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let why = stderr
        .lines()
        .find(|l| l.contains("overflow"))
        .unwrap_or_else(|| stderr.lines().last().unwrap_or(""));
    Some(Err(format!("{} ({})", why.trim(), out.status)))
}

fn stack_child(shape: &str, steps: usize) {
    let text = generate(shape, steps);
    std::thread::Builder::new()
        .stack_size(SMALL_STACK)
        .spawn(move || {
            let pipeline = kiln_spec::parse(&text).expect("parses");
            let compiled = compile(&pipeline, &options());
            black_box((&pipeline, &compiled));
        })
        .expect("spawn")
        .join()
        .expect("plan on a small stack");
}

// ---------------------------------------------------------------------------------------------
// Pipeline generators.

fn header(out: &mut String, shape: &str) {
    let _ = write!(
        out,
        r#"# Generated by crates/kiln-plan/benches/plan.rs (shape `{shape}`).
apiVersion: kiln/v1
name: bench-{shape}
description: A generated pipeline for the planning benchmark.

params:
  seed:
    type: int
    default: 0
    description: Seed of every step.
  epochs:
    type: int
    default: 20
    description: Passes over the training set.
  learning_rates:
    type: list[float]
    default: [0.01, 0.1, 1.0]
    description: One training instance each.
  threshold:
    type: float
    default: 0.5
    description: The smallest accuracy worth keeping.
  image:
    type: string
    default: python:3.11-slim
    description: Image of the container steps.

steps:
"#
    );
}

/// A container step body (indented under its name) reading `inputs`, writing `output`.
/// With `fan`, the step is a fan-out instance and passes `{{item}}` as `--lr`.
fn container_step(
    out: &mut String,
    what: &str,
    k: usize,
    inputs: &[(String, String)],
    output: &str,
    fan: bool,
) {
    let _ = writeln!(out, "    description: {what} {k} (container).");
    out.push_str("    container:\n");
    out.push_str("      image: \"{{params.image}}\"\n");
    let _ = writeln!(out, "      command: [python3, {what}.py]");
    out.push_str("      args:\n");
    for (name, _) in inputs {
        let _ = writeln!(
            out,
            "        - --{name}\n        - \"{{{{inputs.{name}}}}}\""
        );
    }
    if fan {
        out.push_str("        - --lr\n        - \"{{item}}\"\n");
    }
    if fan {
        out.push_str("        - --epochs\n        - \"{{params.epochs}}\"\n");
    }
    let _ = writeln!(
        out,
        "        - --seed=part-{k}-{{{{params.seed}}}}\n        - --out\n        - \"{{{{outputs.{output}}}}}\""
    );
    out.push_str("      env:\n        OMP_NUM_THREADS: \"1\"\n");
    out.push_str("      resources: {cpu: 500m, memory: 1Gi}\n");
    inputs_block(out, inputs);
    let _ = writeln!(
        out,
        "    outputs: [{output}]\n    retries: 1\n    timeout: 10m"
    );
}

/// A wasm step body (indented under its name) reading `inputs`, writing `output`.
/// With `fan`, the step is a fan-out instance and passes `{{item}}` as `with.lr`.
fn wasm_step(
    out: &mut String,
    component: &str,
    k: usize,
    inputs: &[(String, String)],
    output: &str,
    fan: bool,
) {
    let _ = writeln!(out, "    wasm: {component}@1.0.0");
    inputs_block(out, inputs);
    let _ = writeln!(out, "    with:\n      part: {k}");
    if k.is_multiple_of(2) {
        out.push_str("      seed: \"{{params.seed}}\"\n");
    }
    if fan {
        out.push_str("      lr: \"{{item}}\"\n");
    }
    let _ = writeln!(out, "    outputs: [{output}]");
    if k % 10 == 1 {
        out.push_str("    limits: {memory: 64Mi, fuel: 1000000000}\n");
    }
}

fn inputs_block(out: &mut String, inputs: &[(String, String)]) {
    out.push_str("    inputs:\n");
    for (name, source) in inputs {
        let _ = writeln!(out, "      {name}: {source}");
    }
}

fn one(name: &str, source: String) -> Vec<(String, String)> {
    vec![(name.to_owned(), source)]
}

fn generate(shape: &str, n: usize) -> String {
    if let Some(path) = shape.strip_prefix("file:") {
        return std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    }
    let mut out = String::with_capacity(n * 400);
    header(&mut out, shape);
    match shape {
        "wide" => wide(&mut out, n, false),
        "typo" => wide(&mut out, n, true),
        "cycles" => cycles(&mut out, n),
        "deep" => deep(&mut out, n),
        "mixed" => mixed(&mut out, n),
        other => panic!("unknown shape `{other}`"),
    }
    out
}

fn wide_source(out: &mut String, name: &str) {
    let _ = writeln!(out, "  {name}:");
    out.push_str("    description: Read the table every feature step works on.\n");
    wasm_step(
        out,
        "ingest",
        0,
        &one("seed", "params.seed".into()),
        "table",
        false,
    );
}

/// `source`, `n - 2` feature steps each reading it, and `collect` reading them all. With
/// `typo`, the source step is called `sources`, and every `source.table` is an unknown step.
fn wide(out: &mut String, n: usize, typo: bool) {
    wide_source(out, if typo { "sources" } else { "source" });
    let middle = n - 2;
    for k in 1..=middle {
        let _ = writeln!(out, "  f_{k:05}:");
        let inputs = one("table", "source.table".into());
        if k % 10 == 0 {
            container_step(out, "featurize", k, &inputs, "features", false);
        } else {
            wasm_step(out, "featurize", k, &inputs, "features", false);
        }
    }
    out.push_str("  collect:\n");
    out.push_str("    description: Join every feature into one table.\n");
    let inputs: Vec<(String, String)> = (1..=middle)
        .map(|k| (format!("f_{k:05}"), format!("f_{k:05}.features")))
        .collect();
    wasm_step(out, "gather", 0, &inputs, "summary", false);
}

/// `n / 2` pairs `a_k <-> b_k`, each a cycle.
fn cycles(out: &mut String, n: usize) {
    for k in 0..n / 2 {
        for (me, other) in [("a", "b"), ("b", "a")] {
            let _ = writeln!(out, "  {me}_{k:05}:");
            wasm_step(
                out,
                "loop",
                k,
                &one("x", format!("{other}_{k:05}.out")),
                "out",
                false,
            );
        }
    }
}

/// `s_00000 -> s_00001 -> ... -> s_{n-1}`.
fn deep(out: &mut String, n: usize) {
    for k in 0..n {
        let _ = writeln!(out, "  s_{k:05}:");
        let inputs = if k == 0 {
            one("seed", "params.seed".into())
        } else {
            one("prev", format!("s_{:05}.out", k - 1))
        };
        if k % 10 == 5 {
            container_step(out, "transform", k, &inputs, "out", false);
        } else {
            wasm_step(out, "transform", k, &inputs, "out", false);
        }
    }
}

/// Layers of [`LAYER_WIDTH`] steps; step `(l, c)` is `m_{l}_{c}`. Step `(l, c)` reads
/// `(l - 1, c)`, and even columns also `(l - 1, c + 1)` (diamonds). In every layer, column
/// `c % 10 == 3` is a container training step fanned out over `params.learning_rates`,
/// `c % 10 == 4` a wasm step fanned out over the same list (paired with the training step),
/// `c % 10 == 7` has a `when` on a step of the layer before, `c % 10 == 9` an `after` edge.
/// A plain step reading a fan-out step collects all its instances.
fn mixed(out: &mut String, n: usize) {
    let width = LAYER_WIDTH.min(n);
    let name = |i: usize| format!("m_{:03}_{:02}", i / width, i % width);
    for i in 0..n {
        let (l, c) = (i / width, i % width);
        let _ = writeln!(out, "  {}:", name(i));
        let fan = matches!(c % 10, 3 | 4);
        if fan {
            out.push_str("    for_each: \"{{params.learning_rates}}\"\n");
        }
        let mut inputs = Vec::new();
        if l == 0 {
            inputs.push(("seed".to_owned(), "params.seed".to_owned()));
        } else {
            let prev = i - width;
            let next = (l - 1) * width + (c + 1) % width;
            inputs.push(("a".to_owned(), format!("{}.out", name(prev))));
            if c % 2 == 0 && next < n && next != prev {
                inputs.push(("b".to_owned(), format!("{}.out", name(next))));
            }
        }
        if c % 10 == 4 && c > 0 {
            // The paired evaluation reads its own training instance.
            inputs.push(("model".to_owned(), format!("{}.out", name(i - 1))));
        }
        if l > 0 && c % 10 == 7 {
            let _ = writeln!(
                out,
                "    when: \"steps.{}.out.accuracy > params.threshold\"",
                name(i - width)
            );
        }
        if l > 0 && c % 10 == 9 {
            let _ = writeln!(out, "    after: [{}]", name((l - 1) * width));
        }
        match c % 10 {
            3 => container_step(out, "train", i, &inputs, "out", true),
            5 => container_step(out, "report", i, &inputs, "out", false),
            4 => wasm_step(out, "evaluate", i, &inputs, "out", true),
            _ => wasm_step(out, "combine", i, &inputs, "out", false),
        }
    }
}
