//! `kiln step run`: one wasm step by hand, outside a pipeline, in the same sandbox.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use kiln_engine::{Engine, EngineConfig, Executors, RunInput, StepStatus};
use kiln_plan::{
    CacheKeyMaterial, ComponentSource, InputSource, Plan, PlannedStep, Policy, StepId, StepKind,
};
use kiln_spec::Value;
use tokio_util::sync::CancellationToken;

use super::state::{human_duration, metrics_text};

/// Work with one step outside a pipeline.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Run one wasm component by hand, with the sandbox and limits of a pipeline step
    ///
    /// Each `--in NAME=PATH` is what the step reads as input NAME (a file or a folder); each
    /// `--output NAME` is an output it writes, copied to `--out DIR/NAME` when it succeeds.
    /// `--param K=V` sets a param (`3` is an int, `0.5` a float, `true` a bool, anything else
    /// a string). Nothing is cached or recorded: the step runs in a temporary state folder
    /// that is removed afterwards. Compiled components are kept once per machine, as for
    /// `kiln run`.
    ///
    /// Exit code: 0 when the step succeeded, 1 when it failed, 2 when it could not start.
    Run(RunArgs),
}

/// `kiln step run`.
#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The component: a `.wasm` file
    #[arg(value_name = "COMPONENT")]
    component: PathBuf,
    /// An input: NAME=PATH (repeatable)
    #[arg(long = "in", value_name = "NAME=PATH", value_parser = crate::parse_param)]
    inputs: Vec<(String, String)>,
    /// A param: NAME=VALUE (repeatable)
    #[arg(short = 'p', long = "param", value_name = "NAME=VALUE", value_parser = crate::parse_param)]
    params: Vec<(String, String)>,
    /// An output the step writes (repeatable) [default: out]
    #[arg(long = "output", value_name = "NAME")]
    outputs: Vec<String>,
    /// Where outputs are copied: DIR/NAME for each output
    #[arg(long, value_name = "DIR", default_value = ".")]
    out: PathBuf,
    /// Fuel: the deterministic CPU budget
    #[arg(long, value_name = "N")]
    fuel: Option<u64>,
    /// Most linear memory, in bytes or with a suffix (`256Mi`)
    #[arg(long, value_name = "SIZE")]
    memory: Option<String>,
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Run(args) => run_one(args),
    }
}

/// A param value from the command line: the narrowest type that reads it.
fn param_value(text: &str) -> Value {
    if let Ok(i) = text.parse::<i64>() {
        Value::Int(i)
    } else if let Ok(x) = text.parse::<f64>()
        && x.is_finite()
    {
        Value::Float(x)
    } else {
        match text {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => Value::String(text.to_owned()),
        }
    }
}

fn check_name(what: &str, name: &str) -> anyhow::Result<()> {
    kiln_spec::ArtifactName::new(name)
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("{what} `{name}`: {e}"))
}

fn run_one(args: RunArgs) -> anyhow::Result<ExitCode> {
    if !args.component.is_file() {
        bail!(
            "no component at {}: give a `.wasm` file (`kiln build` builds a pipeline's steps)",
            args.component.display()
        );
    }
    let outputs = if args.outputs.is_empty() {
        vec!["out".to_owned()]
    } else {
        args.outputs.clone()
    };
    for name in &outputs {
        check_name("output", name)?;
    }
    let memory_bytes = match &args.memory {
        Some(text) => Some(
            text.parse::<kiln_spec::Memory>()
                .map_err(|e| anyhow::anyhow!("--memory {text}: {e}"))?
                .bytes,
        ),
        None => None,
    };
    // Workspace paths are relative to a base folder: the root, so that any path can be given.
    let relative = |path: &Path| -> anyhow::Result<String> {
        let absolute = std::fs::canonicalize(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Ok(absolute
            .to_string_lossy()
            .trim_start_matches('/')
            .to_owned())
    };
    let mut inputs = BTreeMap::new();
    for (name, path) in &args.inputs {
        check_name("input", name)?;
        let path = relative(Path::new(path)).with_context(|| format!("input `{name}`"))?;
        if inputs
            .insert(name.clone(), InputSource::Workspace { path })
            .is_some()
        {
            bail!("input `{name}` is given twice");
        }
    }
    let mut params = BTreeMap::new();
    for (name, value) in &args.params {
        kiln_spec::ParamName::new(name).map_err(|e| anyhow::anyhow!("param `{name}`: {e}"))?;
        params.insert(name.clone(), param_value(value));
    }
    let name = args
        .component
        .file_stem()
        .map(|s| s.to_string_lossy().to_lowercase())
        .filter(|s| kiln_spec::StepName::new(s.as_str()).is_ok())
        .unwrap_or_else(|| "step".to_owned());
    let step = PlannedStep {
        id: StepId::new(name.as_str()),
        step: name.clone(),
        instance: None,
        kind: StepKind::Wasm {
            component: ComponentSource::Path {
                path: relative(&args.component)?,
            },
            memory_bytes,
            fuel: args.fuel,
            command: Default::default(),
        },
        inputs: inputs.clone(),
        outputs: outputs.clone(),
        output_files: BTreeMap::new(),
        metrics: None,
        params: params.clone(),
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
            cache: false,
            max_age_ms: None,
        },
        cache_key: CacheKeyMaterial {
            version: kiln_plan::PLAN_VERSION,
            kind: "wasm".into(),
            container: None,
            params: params.clone(),
            inputs: inputs.keys().cloned().collect(),
            outputs: {
                let mut sorted = outputs.clone();
                sorted.sort();
                sorted
            },
            output_files: BTreeMap::new(),
            metrics: None,
            command: None,
            key: None,
        },
        for_each: None,
        values: Vec::new(),
        optional: Vec::new(),
        after_on: Default::default(),
    };
    let plan = Plan {
        plan_version: kiln_plan::PLAN_VERSION,
        pipeline: "step-run".into(),
        params: BTreeMap::new(),
        steps: vec![step],
        concurrency: BTreeMap::new(),
        timeout_ms: None,
        exports: Vec::new(),
    };

    let temp = tempfile::Builder::new()
        .prefix(".kiln-step-")
        .tempdir()
        .context("cannot make a temporary state folder")?;
    let state = kiln_engine::StateDir::new(temp.path());
    // The store keeps read-only copies, which a plain recursive removal cannot delete.
    struct Cleanup(PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            kiln_engine::staging::remove_tree(&self.0);
        }
    }
    let _cleanup = Cleanup(temp.path().to_owned());
    let config = EngineConfig {
        jobs: 1,
        use_cache: false,
        ..EngineConfig::default()
    };
    let executors = Executors {
        wasm: crate::wasm_executor(&state, 1)?,
        container: None,
    };
    let engine = Engine::new(state.clone(), executors, config);
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let store: std::sync::Arc<dyn kiln_cas::BlobStore> = std::sync::Arc::new(state.store());
    let result = runtime.block_on(async {
        let mut resolver =
            kiln_build::LocalResolver::new(&state, Path::new("/"), &plan, store.clone());
        let pinned = kiln_build::pin(&plan, &mut resolver).await;
        drop(resolver);
        let pinned = match pinned {
            Ok(pinned) => pinned,
            Err(problems) => return Err(kiln_engine::EngineError::Preflight(problems)),
        };
        let input = RunInput {
            plan,
            components: pinned.components,
            workspace: pinned.workspace,
            pipeline_file: args.component.display().to_string(),
            pipeline_text: String::new(),
        };
        engine.run(input, CancellationToken::new(), None).await
    });
    let summary = match result {
        Ok(summary) => summary,
        Err(kiln_engine::EngineError::Preflight(problems)) => {
            eprintln!("error: the step cannot start:");
            for p in problems {
                eprintln!("  - {p}");
            }
            return Ok(ExitCode::from(2));
        }
        Err(e) => return Err(e.into()),
    };
    let step = &summary.steps[0];
    let log =
        std::fs::read_to_string(state.log_path(&summary.run_id, &step.id)).unwrap_or_default();
    if !log.is_empty() {
        eprint!("{log}");
        if !log.ends_with('\n') {
            eprintln!();
        }
    }
    match &step.status {
        StepStatus::Succeeded => {
            std::fs::create_dir_all(&args.out)
                .with_context(|| format!("cannot create {}", args.out.display()))?;
            for (name, digest) in &step.outputs {
                let dest = args.out.join(name);
                let partial = args.out.join(format!(".{name}.kiln-partial"));
                let _ = std::fs::remove_dir_all(&partial);
                let _ = std::fs::remove_file(&partial);
                runtime
                    .block_on(store.materialize(digest, &partial))
                    .with_context(|| {
                        format!("cannot copy output `{name}` to {}", dest.display())
                    })?;
                if dest.is_dir() {
                    std::fs::remove_dir_all(&dest)
                        .with_context(|| format!("cannot replace {}", dest.display()))?;
                }
                // The store hands out read-only copies; these are the user's files now.
                make_writable(&partial);
                std::fs::rename(&partial, &dest)
                    .with_context(|| format!("cannot write {}", dest.display()))?;
                eprintln!("wrote {} ({digest})", dest.display());
            }
            eprintln!(
                "step {} succeeded in {}{}",
                step.id,
                human_duration(step.duration),
                if step.metrics.is_empty() {
                    String::new()
                } else {
                    format!(": {}", metrics_text(&step.metrics))
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        StepStatus::Failed { kind, message } => {
            // The log ends with the failure already, as kiln writes it there too.
            if log.contains(message.as_str()) {
                eprintln!("step {} failed ({kind})", step.id);
            } else {
                eprintln!("step {} failed ({kind}):\n{message}", step.id);
            }
            Ok(ExitCode::FAILURE)
        }
        other => {
            eprintln!("step {} did not run: {}", step.id, other.word());
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Gives the user write permission on a file or folder tree copied out of the store.
fn make_writable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    let mode = meta.permissions().mode() | 0o200;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
    if meta.is_dir()
        && let Ok(entries) = std::fs::read_dir(path)
    {
        for entry in entries.flatten() {
            make_writable(&entry.path());
        }
    }
}
