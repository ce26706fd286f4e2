//! `kiln push`: publish a component to a kiln server's registry.

use std::path::PathBuf;
use std::process::ExitCode;

use kiln_build::registry::Pushed;

use super::remote::ServerArgs;

/// Publish a wasm component to a kiln server's registry as NAME@VERSION
///
/// The server checks that the file is a component of the kiln step world or a WASI command
/// before it keeps anything. Versions never change: pushing the same bytes again is fine,
/// other bytes under a published version are refused (push them as a new version). `--tag`
/// moves tags (`latest`, `stable`) to the version once it is there; pipelines that name
/// `NAME@TAG` pin the version the tag names when they run.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The component (`.wasm`)
    file: PathBuf,
    /// Its name and version in the registry (`validate@1.0.0`)
    #[arg(value_name = "NAME@VERSION")]
    reference: String,
    /// Also point this tag at the version (repeatable)
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
    #[command(flatten)]
    server: ServerArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let Some((name, version)) = args.reference.split_once('@') else {
        anyhow::bail!(
            "`{}` is not NAME@VERSION (write `validate@1.0.0`)",
            args.reference
        );
    };
    kiln_spec::check_component_name(name).map_err(anyhow::Error::msg)?;
    kiln_spec::check_component_version(version).map_err(anyhow::Error::msg)?;
    for tag in &args.tags {
        kiln_spec::check_component_tag(tag).map_err(anyhow::Error::msg)?;
    }
    if !args.file.is_file() {
        anyhow::bail!("{} is not a file", args.file.display());
    }
    let client = args.server.required("kiln push")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let pushed = client
            .push(&args.file, name, version)
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
        for tag in &args.tags {
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
        Ok(ExitCode::SUCCESS)
    })
}
