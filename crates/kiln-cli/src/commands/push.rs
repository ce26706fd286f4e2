//! `kiln push`: publish a component to a kiln server's registry.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use kiln_build::registry::Pushed;

use super::remote::ServerArgs;

/// Publish wasm components to a kiln server's registry
///
/// `kiln push FILE.wasm NAME@VERSION` publishes one component. `kiln push pipeline.yaml`
/// builds every step the pipeline gives by source with a `publish: NAME@VERSION` in its build
/// recipe (only what is stale is built) and publishes each under that name and version.
///
/// The server checks that the file is a component of the kiln step world or a WASI command
/// before it keeps anything. Versions never change: pushing the same bytes again is fine,
/// other bytes under a published version are refused (push them as a new version). `--tag`
/// moves tags (`latest`, `stable`) to the version once it is there; pipelines that name
/// `NAME@TAG` pin the version the tag names when they run.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The component (`.wasm`), or a pipeline whose build recipes say `publish:`
    file: PathBuf,
    /// The component's name and version in the registry (`validate@1.0.0`); not for a pipeline
    #[arg(value_name = "NAME@VERSION")]
    reference: Option<String>,
    /// Also point this tag at the version (repeatable)
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    state: super::state::StateArgs,
}

fn is_pipeline(file: &Path) -> bool {
    matches!(
        file.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    )
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    for tag in &args.tags {
        kiln_spec::check_component_tag(tag).map_err(anyhow::Error::msg)?;
    }
    if !args.file.is_file() {
        anyhow::bail!("{} is not a file", args.file.display());
    }
    let to_push: Vec<(PathBuf, String, String)> = if is_pipeline(&args.file) {
        if let Some(reference) = &args.reference {
            anyhow::bail!(
                "a pipeline's components are published under the names its `publish:` fields give; drop `{reference}`"
            );
        }
        match built_from(&args)? {
            Some(found) => found,
            None => return Ok(ExitCode::from(2)),
        }
    } else {
        let Some(reference) = &args.reference else {
            anyhow::bail!(
                "give the name and version to publish {} as: `kiln push {} NAME@VERSION`",
                args.file.display(),
                args.file.display()
            );
        };
        let Some((name, version)) = reference.split_once('@') else {
            anyhow::bail!("`{reference}` is not NAME@VERSION (write `validate@1.0.0`)");
        };
        kiln_spec::check_component_name(name).map_err(anyhow::Error::msg)?;
        kiln_spec::check_component_version(version).map_err(anyhow::Error::msg)?;
        vec![(args.file.clone(), name.to_owned(), version.to_owned())]
    };
    let client = args.server.required("kiln push")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    for (file, name, version) in &to_push {
        runtime.block_on(push_one(&client, &args.tags, file, name, version))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Builds what the pipeline publishes; `(file, name, version)` for each, or `None` when the
/// pipeline has errors (printed).
fn built_from(args: &Args) -> anyhow::Result<Option<Vec<(PathBuf, String, String)>>> {
    let (source, compiled) = kiln_plan::plan_file(&args.file, &[])
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", args.file.display()))?;
    if !compiled.diagnostics.is_empty() {
        eprint!(
            "{}",
            source.render(&compiled.diagnostics, crate::stderr_color())
        );
    }
    let Some(plan) = compiled.plan else {
        return Ok(None);
    };
    // Each publish reference once, with the recipe that makes it.
    let mut wanted: BTreeMap<String, (String, kiln_build::BuildRecipe)> = BTreeMap::new();
    for step in &plan.steps {
        let kiln_plan::StepKind::Wasm { component, .. } = &step.kind else {
            continue;
        };
        let kiln_plan::ComponentSource::Build {
            publish: Some(publish),
            ..
        } = component
        else {
            continue;
        };
        let recipe = kiln_build::BuildRecipe::of(component).expect("a build recipe");
        match wanted.get(publish) {
            Some((other, first)) if *first != recipe => anyhow::bail!(
                "steps `{other}` and `{}` both publish `{publish}` from different build recipes",
                step.id
            ),
            Some(_) => {}
            None => {
                wanted.insert(publish.clone(), (step.id.to_string(), recipe));
            }
        }
    }
    if wanted.is_empty() {
        anyhow::bail!(
            "no step of {} says where to publish it: add `publish: NAME@VERSION` to a step's              `wasm:` build recipe",
            args.file.display()
        );
    }
    let state = args.state.for_pipeline(&args.file);
    let base_dir = args
        .file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), PathBuf::from);
    let mut builder = kiln_build::ComponentBuilder::for_plan(state, &base_dir, &plan);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut found = Vec::new();
    for (publish, (step, recipe)) in wanted {
        let mut progress = |kiln_build::BuildProgress::Started { command, .. }| {
            eprintln!("building `{step}`: {command}")
        };
        let built = runtime
            .block_on(builder.build(&step, &recipe, &mut progress))
            .map_err(|e| {
                let tail = e.log_tail.join("\n");
                anyhow::anyhow!(
                    "step `{step}`: {e}{}{tail}",
                    if tail.is_empty() { "" } else { "\n" }
                )
            })?;
        let (name, version) = publish.split_once('@').expect("checked by the planner");
        found.push((built.path, name.to_owned(), version.to_owned()));
    }
    Ok(Some(found))
}

async fn push_one(
    client: &kiln_build::registry::RegistryClient,
    tags: &[String],
    file: &Path,
    name: &str,
    version: &str,
) -> anyhow::Result<()> {
    {
        let pushed = client
            .push(file, name, version)
            .await
            .map_err(|e| anyhow::anyhow!("{name}@{version}: {e}"))?;
        let (word, shown) = match &pushed {
            Pushed::Created(v) => ("published", v),
            Pushed::Unchanged(v) => ("unchanged (the registry has these bytes)", v),
        };
        println!(
            "{name}@{version} {word}: {} ({} bytes, {}) on {}",
            shown.digest,
            shown.size,
            shown.world,
            client.url()
        );
        for tag in tags {
            let moved = client
                .tag(name, tag, version)
                .await
                .map_err(|e| anyhow::anyhow!("tag {name}@{tag}: {e}"))?;
            match moved.previous {
                Some(previous) if previous != moved.version => {
                    println!("{name}@{tag} moved from {previous} to {}", moved.version)
                }
                Some(_) => println!("{name}@{tag} is {} already", moved.version),
                None => println!("{name}@{tag} now names {}", moved.version),
            }
        }
        Ok(())
    }
}
