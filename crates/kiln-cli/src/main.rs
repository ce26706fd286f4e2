//! The `kiln` binary: the one place where the crates are wired together.

mod commands;

use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Mutex, PoisonError};

use clap::{Parser, Subcommand, ValueEnum};
use indicatif::ProgressBar;

/// kiln runs machine-learning pipelines described in YAML: small steps as sandboxed
/// WebAssembly, training as containers, one DAG for both.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, propagate_version = true)]
#[command(
    after_help = "Try `kiln run examples/digits/pipeline.yaml` from the repository root.\n\
    The format is described in docs/pipeline-format.md."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check pipeline files and report every problem at once
    Validate(commands::validate::Args),
    /// Draw a pipeline's DAG as Graphviz dot or Mermaid
    Graph(commands::graph::Args),
    /// Print the JSON Schema of the pipeline format, for editors
    Schema(commands::schema::Args),
    /// Build the wasm components of steps given by source, when stale
    Build(commands::build::Args),
    // No doc comment here: it would hide the long help of `kiln run --help`, which the
    // doc comment of `commands::run::Args` gives (its first line is the summary).
    Run(commands::run::Args),
    // As for `Run`: the doc comments of these `Args` give the summary and the long help.
    Runs(commands::runs::Args),
    /// Show one run step by step
    Show(commands::show::Args),
    Diff(commands::diff::Args),
    /// Print a step's log from a run
    Logs(commands::logs::Args),
    /// Say why a step ran instead of coming from the cache
    Explain(commands::explain::Args),
    /// Copy artifacts out of the store
    Artifact(commands::artifact::Args),
    /// Run a recorded run's wasm steps again and compare their outputs with the record
    Replay(commands::replay::Args),
    // As for `Run`: the doc comment of `commands::report::Args` gives the summary.
    Report(commands::report::Args),
    /// Write a run to one file that `kiln replay` can replay anywhere
    Export(commands::export::Args),
    /// Run one wasm step by hand, outside a pipeline (`kiln step run COMPONENT --in NAME=FILE`)
    Step(commands::step::Args),
    /// Start a step from a template (`kiln new step --rust|--python NAME`)
    New(commands::new::Args),
    // As for `Run`: the doc comments of these `Args` give the summary and the long help.
    Serve(commands::serve::Args),
    Push(commands::push::Args),
    Components(commands::components::Args),
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Output {
    /// For people.
    #[default]
    Text,
    /// For tools and editors.
    Json,
}

/// Whether to colour what goes to stderr.
pub fn stderr_color() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// Splits a `-p NAME=VALUE` argument.
pub fn parse_param(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(format!("`{s}` is not NAME=VALUE")),
    }
}

/// The secrets container steps may read: `--secrets FILE|DIR` when given, and
/// `KILN_SECRET_<NAME>` variables. A file others can read is used, with a warning.
pub fn load_secrets(file: Option<&std::path::Path>) -> anyhow::Result<kiln_container::Secrets> {
    if let Some(file) = file
        && let Ok(meta) = std::fs::metadata(file)
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                "{} can be read by other users; `chmod go= {}` keeps secrets yours",
                file.display(),
                file.display()
            );
        }
    }
    Ok(kiln_container::Secrets::load(file)?)
}

/// What `kiln run` and `kiln validate` show while external inputs are fetched: a line per
/// object, and for a big one on a terminal, a progress bar.
pub fn fetch_reporter() -> impl FnMut(kiln_build::external::FetchProgress) + Send + Sync {
    use kiln_build::external::FetchProgress;
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    let mut bar: Option<ProgressBar> = None;
    move |progress| match progress {
        FetchProgress::Unchanged { url, size } => eprintln_above_bar(&format!(
            "{url}: unchanged since it was fetched ({:.1} MiB), not downloaded again",
            mib(size)
        )),
        FetchProgress::Downloading { url, done, total } => {
            if bar.is_none() && total >= 16 << 20 && std::io::stderr().is_terminal() {
                let new = ProgressBar::new(total).with_style(
                    indicatif::ProgressStyle::with_template(
                        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                    )
                    .expect("a valid template")
                    .progress_chars("=> "),
                );
                new.set_message(format!("fetching {url}"));
                bar = Some(new);
            }
            if let Some(bar) = &bar {
                bar.set_position(done);
            }
        }
        FetchProgress::Fetched { url, size } => {
            if let Some(bar) = bar.take() {
                bar.finish_and_clear();
            }
            eprintln_above_bar(&format!("{url}: fetched ({:.1} MiB)", mib(size)));
        }
    }
}

/// What copies a run's `exports:` to buckets: [`kiln_build::upload`] behind the engine's
/// [`kiln_engine::Exporter`] seam, staging blobs in the state folder's `exports/` when the
/// store is not a local folder.
pub struct BucketExporter(kiln_build::upload::Uploader);

impl BucketExporter {
    /// An exporter for runs kept in `state`.
    pub fn new(state: &kiln_engine::StateDir) -> Self {
        BucketExporter(kiln_build::upload::Uploader::new(
            state.root().join("exports"),
        ))
    }
}

#[async_trait::async_trait]
impl kiln_engine::Exporter for BucketExporter {
    async fn export(
        &self,
        task: &kiln_engine::ExportTask,
        store: std::sync::Arc<dyn kiln_cas::BlobStore>,
        progress: &(dyn Fn(kiln_engine::ExportProgress) + Send + Sync),
    ) -> Result<kiln_engine::ExportDone, String> {
        let forward = |p: kiln_build::upload::UploadProgress| {
            progress(kiln_engine::ExportProgress {
                url: p.url,
                done: p.done,
                total: p.total,
            })
        };
        let done = self
            .0
            .upload(
                store,
                task.digest,
                task.kind,
                &task.file_name,
                &task.to,
                &forward,
            )
            .await?;
        Ok(kiln_engine::ExportDone {
            url: done.url,
            size: done.size,
            objects: done.objects,
            uploaded: done.uploaded,
        })
    }
}

/// The executor for wasm steps: one wasmtime engine, precompiled components kept once per
/// machine ([`compiled_cache_or`], else in the state folder), an instance pool sized to the
/// run's parallelism.
pub fn wasm_executor(
    state: &kiln_engine::StateDir,
    jobs: usize,
) -> anyhow::Result<Option<std::sync::Arc<dyn kiln_engine::Executor>>> {
    wasm_executor_at(&compiled_cache_or(state.wasm_cache_dir()), jobs)
}

/// Where compiled wasm components are kept: in the user's cache folder ([`user_compiled_cache`])
/// when there is one and it can be created, else in `fallback`. `kiln run` and `kiln replay`
/// both ask here, so a component compiled by one is loaded by the other.
pub fn compiled_cache_or(fallback: PathBuf) -> PathBuf {
    let Some(dir) = user_compiled_cache() else {
        return fallback;
    };
    match std::fs::create_dir_all(&dir) {
        Ok(()) => dir,
        Err(e) => {
            tracing::warn!(
                dir = %dir.display(),
                fallback = %fallback.display(),
                error = %e,
                "cannot create the compiled-components cache; compiling into the fallback"
            );
            fallback
        }
    }
}

/// The user's folder for compiled wasm components, kept once per machine: `$KILN_CACHE_DIR`,
/// else `$XDG_CACHE_HOME/kiln/compiled`, else `$HOME/.cache/kiln/compiled`; `None` where
/// none of these is set.
pub fn user_compiled_cache() -> Option<PathBuf> {
    compiled_cache_from(
        std::env::var_os("KILN_CACHE_DIR"),
        std::env::var_os("XDG_CACHE_HOME"),
        std::env::var_os("HOME"),
    )
}

/// [`user_compiled_cache`] from the values of its variables (empty counts as unset, and so
/// does a relative `XDG_CACHE_HOME`, as the XDG base directory specification says).
fn compiled_cache_from(
    kiln_cache_dir: Option<OsString>,
    xdg_cache_home: Option<OsString>,
    home: Option<OsString>,
) -> Option<PathBuf> {
    let set = |value: Option<OsString>| value.filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = set(kiln_cache_dir) {
        return Some(dir);
    }
    let base = set(xdg_cache_home)
        .filter(|dir| dir.is_absolute())
        .or_else(|| set(home).map(|home| home.join(".cache")))?;
    Some(base.join("kiln").join("compiled"))
}

/// The executor for wasm steps, with its precompiled components kept in `cache_dir`.
pub fn wasm_executor_at(
    cache_dir: &std::path::Path,
    jobs: usize,
) -> anyhow::Result<Option<std::sync::Arc<dyn kiln_engine::Executor>>> {
    let mut options = kiln_wasm::RuntimeOptions::new();
    options
        .concurrency(jobs.max(1))
        .on_compile(kiln_wasm::CompileListener::new(|notice| match notice {
            // Compiling a large component (a Python one is tens of MiB) takes a while, once
            // per machine: say so rather than look stuck.
            kiln_wasm::CompileNotice::Started { path, bytes } if *bytes >= 1 << 20 => {
                eprintln_above_bar(&format!(
                    "compiling {} ({:.1} MiB) for this machine; this happens once",
                    path.display(),
                    *bytes as f64 / (1024.0 * 1024.0)
                ))
            }
            kiln_wasm::CompileNotice::Finished { path, took } => eprintln_above_bar(&format!(
                "compiled {} in {:.1}s",
                path.display(),
                took.as_secs_f64()
            )),
            _ => {}
        }));
    let runtime = kiln_wasm::WasmRuntime::with_options(cache_dir, &options)
        .map_err(|e| anyhow::anyhow!("cannot start the wasm runtime: {e}"))?;
    Ok(Some(std::sync::Arc::new(kiln_wasm::WasmExecutor::new(
        runtime,
    ))))
}

/// The progress bar on screen, if any: what kiln logs is printed above it, not through it.
static PROGRESS_BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Makes `bar` the progress bar that log lines are printed above, or, with `None`, says there
/// is none any more (before the bar is cleared).
pub fn log_above(bar: Option<&ProgressBar>) {
    *PROGRESS_BAR.lock().unwrap_or_else(PoisonError::into_inner) = bar.cloned();
}

/// Prints `line` on stderr, above the progress bar when one is on screen.
pub fn eprintln_above_bar(line: &str) {
    write_above_bar(format!("{line}\n").as_bytes());
}

fn write_above_bar(bytes: &[u8]) {
    let bar = PROGRESS_BAR
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let write = || {
        let _ = std::io::stderr().lock().write_all(bytes);
    };
    match bar {
        // `suspend` clears the bar, lets the line through and draws the bar again below it.
        Some(bar) => bar.suspend(write),
        None => write(),
    }
}

/// One log event's text, written whole by [`write_above_bar`] when the formatter is done.
struct LogLine(Vec<u8>);

impl Write for LogLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            write_above_bar(&self.0);
        }
    }
}

/// Sends `tracing` events to stderr: what `RUST_LOG` says when it is set; otherwise warnings,
/// and with `verbose` (`kiln run -v`) kiln's own info lines too.
fn init_logging(verbose: bool) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => {
            tracing_subscriber::EnvFilter::builder().parse_lossy(directives)
        }
        // `kiln` matches every target that starts with it: all of kiln's crates.
        _ if verbose => tracing_subscriber::EnvFilter::new("warn,kiln=info"),
        _ => tracing_subscriber::EnvFilter::new("warn"),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| LogLine(Vec::new()))
        .without_time()
        .init();
}

/// A server's logs on stderr: kiln's info lines and everyone's warnings (or what `RUST_LOG`
/// says), with times, as text or as one JSON object per line.
fn init_server_logging(json: bool) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => {
            tracing_subscriber::EnvFilter::builder().parse_lossy(directives)
        }
        _ => tracing_subscriber::EnvFilter::new("warn,kiln=info"),
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        logs.json().init();
    } else {
        logs.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Command::Serve(args) => init_server_logging(args.json_logs()),
        command => init_logging(matches!(command, Command::Run(args) if args.verbose())),
    }
    let result = match cli.command {
        Command::Validate(args) => commands::validate::run(args),
        Command::Graph(args) => commands::graph::run(args),
        Command::Schema(args) => commands::schema::run(args),
        Command::Build(args) => commands::build::run(args),
        Command::Run(args) => commands::run::run(args),
        Command::Runs(args) => commands::runs::run(args),
        Command::Show(args) => commands::show::run(args),
        Command::Diff(args) => commands::diff::run(args),
        Command::Logs(args) => commands::logs::run(args),
        Command::Explain(args) => commands::explain::run(args),
        Command::Artifact(args) => commands::artifact::run(args),
        Command::Replay(args) => commands::replay::run(args),
        Command::Report(args) => commands::report::run(args),
        Command::Export(args) => commands::export::run(args),
        Command::Step(args) => commands::step::run(args),
        Command::New(args) => commands::new::run(args),
        Command::Serve(args) => commands::serve::run(args),
        Command::Push(args) => commands::push::run(args),
        Command::Components(args) => commands::components::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::compiled_cache_from;
    use std::path::PathBuf;

    fn cache(kiln: Option<&str>, xdg: Option<&str>, home: Option<&str>) -> Option<PathBuf> {
        compiled_cache_from(
            kiln.map(Into::into),
            xdg.map(Into::into),
            home.map(Into::into),
        )
    }

    #[test]
    fn the_compiled_cache_is_the_users() {
        let all = (Some("/k"), Some("/x"), Some("/h"));
        assert_eq!(cache(all.0, all.1, all.2), Some("/k".into()));
        assert_eq!(cache(None, all.1, all.2), Some("/x/kiln/compiled".into()));
        assert_eq!(
            cache(Some(""), all.1, all.2),
            Some("/x/kiln/compiled".into())
        );
        assert_eq!(
            cache(None, None, all.2),
            Some("/h/.cache/kiln/compiled".into())
        );
        // A relative XDG_CACHE_HOME is ignored, as the XDG specification says.
        assert_eq!(
            cache(None, Some("rel"), all.2),
            Some("/h/.cache/kiln/compiled".into())
        );
        assert_eq!(cache(None, Some(""), Some("")), None);
        assert_eq!(cache(None, None, None), None);
    }
}
