//! `kiln components`: what a kiln server's registry holds.

use std::process::ExitCode;

use crate::Output;

use super::remote::ServerArgs;
use super::state::table;

/// List the components in a kiln server's registry, or one component's versions
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A component: show its versions in full
    name: Option<String>,
    #[command(flatten)]
    server: ServerArgs,
    /// How to print it
    #[arg(long, short = 'o', value_enum, default_value_t)]
    output: Output,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let client = args.server.required("kiln components")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match &args.name {
            None => {
                let list = client.list().await?;
                if args.output == Output::Json {
                    println!("{}", serde_json::to_string_pretty(&list)?);
                    return Ok(ExitCode::SUCCESS);
                }
                if list.is_empty() {
                    println!(
                        "{} has no components yet (publish one with `kiln push`)",
                        client.url()
                    );
                    return Ok(ExitCode::SUCCESS);
                }
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|c| {
                        let tags: Vec<String> =
                            c.tags.iter().map(|(t, v)| format!("{t}={v}")).collect();
                        vec![c.name.clone(), c.versions.join(", "), tags.join(", ")]
                    })
                    .collect();
                print!("{}", table(&["COMPONENT", "VERSIONS", "TAGS"], &rows));
            }
            Some(name) => {
                let versions = client.versions(name).await?;
                if args.output == Output::Json {
                    println!("{}", serde_json::to_string_pretty(&versions)?);
                    return Ok(ExitCode::SUCCESS);
                }
                let rows: Vec<Vec<String>> = versions
                    .iter()
                    .map(|v| {
                        vec![
                            v.version.clone(),
                            v.digest.clone(),
                            v.size.to_string(),
                            v.world.clone(),
                            v.tags.join(", "),
                            format!("{} {}", v.uploaded_by, v.uploaded_at),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table(
                        &["VERSION", "DIGEST", "BYTES", "WORLD", "TAGS", "UPLOADED"],
                        &rows
                    )
                );
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}
