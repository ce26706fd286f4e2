//! Shared by the tests and the benchmark: building guest components from the sources in this
//! repository (once per process; cargo keeps the builds between runs) and making step tasks.

#![allow(dead_code, missing_docs)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use kiln_engine::StagedTask;
use kiln_plan::{CacheKeyMaterial, ComponentSource, PlannedStep, Policy, StepKind};
use kiln_spec::Value;

/// This crate's folder.
pub fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The repository's root.
pub fn repo_dir() -> PathBuf {
    crate_dir().join("../..")
}

/// Builds a cargo workspace for `wasm32-wasip2` (release) into its own `target/` and returns
/// the folder holding the `.wasm` files.
fn build_wasm(workspace: &Path, packages: &[&str]) -> PathBuf {
    build_wasm_with(workspace, packages, &[])
}

/// [`build_wasm`] with extra cargo arguments.
fn build_wasm_with(workspace: &Path, packages: &[&str], extra: &[&str]) -> PathBuf {
    let mut args: Vec<&str> = packages.iter().flat_map(|p| ["-p", *p]).collect();
    args.extend_from_slice(extra);
    kiln_test_support::build_wasm(workspace, &args)
}

/// A test guest from `tests/guests/src/bin/<name>.rs`.
pub fn guest(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| build_wasm(&crate_dir().join("tests/guests"), &[]))
        .join(format!("{name}.wasm"))
}

/// A step program of the digits example (`examples/digits/steps`).
pub fn digits_step(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        build_wasm(
            &repo_dir().join("examples/digits/steps"),
            &["ingest", "validate"],
        )
    })
    .join(format!("{name}.wasm"))
}

/// A digits step built as a component of the kiln step world (`<name>_step.wasm`).
pub fn digits_component(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        build_wasm_with(
            &repo_dir().join("examples/digits/steps"),
            &["evaluate", "pick"],
            &["--lib", "--features", "evaluate/component,pick/component"],
        )
    })
    .join(format!("{name}_step.wasm"))
}

/// What a test step looks like.
#[derive(Default)]
pub struct TaskSpec<'a> {
    pub inputs: Vec<(&'a str, Vec<u8>)>,
    pub outputs: Vec<&'a str>,
    pub params: BTreeMap<String, Value>,
    pub memory_bytes: Option<u64>,
    pub fuel: Option<u64>,
    /// The step's own command line (`args`, `env`, `stdin`, `stdout`).
    pub command: kiln_plan::CommandLine,
}

/// A step task in `dir` (`dir/work/in`, `dir/work/out`, `dir/step.log`) as the engine
/// would hand it over, with the inputs written.
pub fn task(dir: &Path, step: &str, component: &Path, spec: TaskSpec<'_>) -> StagedTask {
    let workdir = dir.join("work");
    let (in_dir, out_dir) = (workdir.join("in"), workdir.join("out"));
    std::fs::create_dir_all(&in_dir).unwrap();
    std::fs::create_dir_all(&out_dir).unwrap();
    let mut inputs = BTreeMap::new();
    for (name, bytes) in &spec.inputs {
        let path = in_dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        inputs.insert((*name).to_owned(), path);
    }
    let outputs: BTreeMap<String, PathBuf> = spec
        .outputs
        .iter()
        .map(|n| ((*n).to_owned(), out_dir.join(n)))
        .collect();
    let step = planned(step, &spec);
    // The engine passes the step's cache key; tests stand in a digest of what a key covers.
    let cache_key = format!(
        "blake3:{}",
        blake3::hash(format!("{:?}{:?}", step.step, step.params).as_bytes()).to_hex()
    );
    StagedTask {
        run_id: "run-1".into(),
        step,
        attempt: 1,
        cache_key,
        workdir,
        inputs,
        outputs,
        component: Some(component.to_owned()),
        log: dir.join("step.log"),
        recorded: Default::default(),
    }
}

fn planned(step: &str, spec: &TaskSpec<'_>) -> PlannedStep {
    PlannedStep {
        id: step.into(),
        step: step.into(),
        instance: None,
        kind: StepKind::Wasm {
            component: ComponentSource::Path {
                path: format!("{step}.wasm"),
            },
            memory_bytes: spec.memory_bytes,
            fuel: spec.fuel,
            command: spec.command.clone(),
        },
        inputs: BTreeMap::new(),
        outputs: spec.outputs.iter().map(|s| (*s).to_owned()).collect(),
        output_files: BTreeMap::new(),
        metrics: None,
        params: spec.params.clone(),
        depends_on: Vec::new(),
        when: None,
        when_scope: None,
        policy: Policy {
            retries: 0,
            run: Default::default(),
            retry: Default::default(),
            parallelism: None,
            concurrency: None,
            timeout_ms: None,
            cache: true,
            max_age_ms: None,
        },
        cache_key: CacheKeyMaterial {
            version: 1,
            kind: "wasm".into(),
            container: None,
            params: spec.params.clone(),
            inputs: spec.inputs.iter().map(|(n, _)| (*n).to_owned()).collect(),
            outputs: spec.outputs.iter().map(|s| (*s).to_owned()).collect(),
            output_files: BTreeMap::new(),
            metrics: None,
            command: (!spec.command.is_default()).then(|| spec.command.clone()),
            key: None,
        },
        for_each: None,
        values: Vec::new(),
        optional: Vec::new(),
        after_on: Default::default(),
    }
}
