//! `kiln serve`: a kiln server, the component registry over HTTP.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use kiln_cas::{BlobStore, Digest};
use kiln_server::{Db, Server, ServerOptions, Tokens};

use super::state::StateArgs;

/// The environment variable that may hold the token lines instead of a file.
const TOKENS_ENV: &str = "KILN_SERVER_TOKENS";

/// How the server logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum LogFormat {
    /// Lines for people.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Start a kiln server: the component registry over HTTP
///
/// One binary is a complete server: metadata in SQLite under the state folder, components in
/// the state folder's store. `--database postgres://...` and `--store s3://bucket/prefix`
/// (endpoint and credentials from the usual AWS_* variables) switch to the cluster setting.
///
/// Tokens come from `--tokens FILE` or KILN_SERVER_TOKENS, one per line: `SCOPE TOKEN [NAME]`
/// with SCOPE `read` (list, download), `write` (also upload, tag) or `admin` (also delete).
/// Without tokens every caller may do everything, so the server then listens on loopback
/// only. Uploaded components are compiled for this machine after the upload is answered.
///
/// The API is described by `GET /openapi.json`; errors are application/problem+json.
/// Runs submitted to a server are not there yet.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to listen
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8600")]
    listen: SocketAddr,
    #[command(flatten)]
    state: StateArgs,
    /// The metadata database [default: SQLite at STATE/server.db]
    #[arg(long, value_name = "URL")]
    database: Option<String>,
    /// Where components are kept [default: the state folder's store]
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// The token file
    #[arg(long, value_name = "FILE")]
    tokens: Option<PathBuf>,
    /// The largest component upload (`512Mi`, `2Gi`)
    #[arg(long, value_name = "SIZE", default_value = "512Mi")]
    max_upload: kiln_spec::Memory,
    /// The largest blob upload (a workspace input of a run)
    #[arg(long, value_name = "SIZE", default_value = "64Gi")]
    max_blob: kiln_spec::Memory,
    /// How to log
    #[arg(long, value_enum, default_value_t)]
    log_format: LogFormat,
    /// Where submitted runs' container steps run: podman or docker. Without it they are
    /// refused when they start (wasm steps always run)
    #[arg(long, value_enum, value_name = "BACKEND")]
    containers: Option<kiln_container::Backend>,
    /// Let `--containers process` run submitted commands on this host, with no sandbox: anyone
    /// with a write token then runs what they like as this server's user
    #[arg(long)]
    allow_host_processes: bool,
    /// Steps run at once, across all runs [default: the number of cores]
    #[arg(short, long, value_name = "N")]
    jobs: Option<usize>,
}

impl Args {
    /// Whether the server logs JSON lines.
    pub fn json_logs(&self) -> bool {
        self.log_format == LogFormat::Json
    }
}

fn tokens(args: &Args) -> anyhow::Result<Tokens> {
    if let Some(file) = &args.tokens {
        let text = std::fs::read_to_string(file)
            .map_err(|e| anyhow::anyhow!("cannot read the token file {}: {e}", file.display()))?;
        return Tokens::parse(&text, &file.display().to_string()).map_err(anyhow::Error::msg);
    }
    match std::env::var(TOKENS_ENV) {
        Ok(text) if !text.trim().is_empty() => {
            Tokens::parse(&text, TOKENS_ENV).map_err(anyhow::Error::msg)
        }
        _ => Ok(Tokens::none()),
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let tokens = tokens(&args)?;
    kiln_server::check_listen(&args.listen, &tokens).map_err(anyhow::Error::msg)?;
    let state_dir = args
        .state
        .state
        .clone()
        .unwrap_or_else(|| PathBuf::from(".kiln"));
    std::fs::create_dir_all(&state_dir)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", state_dir.display()))?;
    let state = kiln_engine::StateDir::new(&state_dir);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let (db, db_said) = match &args.database {
            Some(url) => (
                Db::connect(url).await.map_err(|e| {
                    anyhow::anyhow!("cannot open the database {}: {e}", redact(url))
                })?,
                redact(url),
            ),
            None => {
                let path = state_dir.join("server.db");
                (
                    Db::sqlite(&path)
                        .await
                        .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?,
                    format!("SQLite at {}", path.display()),
                )
            }
        };
        let (store, store_said): (Arc<dyn BlobStore>, String) = match &args.store {
            Some(url) => (
                Arc::new(kiln_build::external::bucket_store(url, &[]).map_err(anyhow::Error::msg)?),
                url.clone(),
            ),
            None => (
                Arc::new(state.store()),
                format!("{}", state.root().join("store").display()),
            ),
        };
        let on_component = precompiler(&state, store.clone())?;
        let runs = Some(runner(&args, &state, &db, store.clone())?);
        let server = Server::new(ServerOptions {
            state_dir: state_dir.clone(),
            db,
            store,
            tokens: tokens.clone(),
            max_upload_bytes: args.max_upload.bytes,
            max_blob_bytes: args.max_blob.bytes,
            on_component: Some(on_component),
            runs,
        })?;
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
        let addr = listener.local_addr()?;
        tracing::info!(
            listen = %addr,
            database = %db_said,
            store = %store_said,
            tokens = tokens.len(),
            "kiln server started"
        );
        eprintln!("kiln server on http://{addr}");
        eprintln!("  metadata: {db_said}");
        eprintln!("  store:    {store_said}");
        if tokens.is_empty() {
            eprintln!(
                "  no tokens: every caller may do everything, so it listens on loopback only"
            );
        } else {
            eprintln!("  {} token(s) accepted", tokens.len());
        }
        server.serve(listener, shutdown_signal()).await?;
        eprintln!("kiln server stopped");
        Ok(ExitCode::SUCCESS)
    })
}

/// The engine that runs submitted pipelines: wasm steps in this process, container steps with
/// the engine `--containers` names; records and the cache in the server's database.
fn runner(
    args: &Args,
    state: &kiln_engine::StateDir,
    db: &Db,
    store: Arc<dyn BlobStore>,
) -> anyhow::Result<kiln_server::runs::Runs> {
    let container = match args.containers {
        Some(kiln_container::Backend::Process) if !args.allow_host_processes => anyhow::bail!(
            "--containers process runs submitted commands on this host with no sandbox; add \
             --allow-host-processes to allow it, or use podman or docker"
        ),
        Some(backend) => Some(backend.executor_with(Arc::new(crate::load_secrets(None)?))),
        None => None,
    };
    let mut config = kiln_engine::EngineConfig::default();
    if let Some(jobs) = args.jobs {
        config.jobs = jobs.max(1);
    }
    let executors = kiln_engine::Executors {
        wasm: crate::wasm_executor(state, config.jobs)?,
        container,
    };
    let meta = Arc::new(kiln_server::SqlMetadata::new(db.clone()));
    let mut engine = kiln_engine::Engine::new(state.clone(), executors, config)
        .with_metadata(meta.clone() as Arc<dyn kiln_engine::MetadataStore>);
    // The state folder's store is the engine's own, with outputs made durable in batches;
    // another store is handed over as it is.
    if args.store.is_some() {
        engine = engine.with_store(store);
    }
    Ok(kiln_server::runs::Runs::new(engine, meta))
}

/// A database URL without its password.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

/// Ctrl-C or SIGTERM: the server stops taking connections and finishes what it serves.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => {
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down: finishing the requests in progress");
}

/// Compiles each newly uploaded component for this machine, into the compiled cache that
/// `kiln run` uses, one at a time, off the request path.
fn precompiler(
    state: &kiln_engine::StateDir,
    store: Arc<dyn BlobStore>,
) -> anyhow::Result<kiln_server::ComponentHook> {
    let runtime = kiln_wasm::WasmRuntime::new(crate::compiled_cache_or(state.wasm_cache_dir()), 1)
        .map_err(|e| anyhow::anyhow!("cannot start the wasm runtime: {e}"))?;
    let scratch = state.root().join("tmp").join("compile");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Digest>();
    tokio::spawn(async move {
        while let Some(digest) = rx.recv().await {
            let started = std::time::Instant::now();
            let (path, temporary) = match store.local() {
                Some(local) => (local.blob_path(&digest), false),
                None => {
                    let path = scratch.join(format!("{}.wasm", digest.to_hex()));
                    let written = async {
                        tokio::fs::create_dir_all(&scratch).await?;
                        let bytes = store
                            .read_verified(&digest)
                            .await
                            .map_err(std::io::Error::other)?;
                        tokio::fs::write(&path, &bytes).await
                    };
                    if let Err(e) = written.await {
                        tracing::warn!(%digest, error = %e, "cannot fetch a component to compile it");
                        continue;
                    }
                    (path, true)
                }
            };
            match runtime.load(&path).await {
                Ok(_) => {
                    tracing::info!(%digest, took_ms = started.elapsed().as_millis() as u64, "component compiled")
                }
                Err(e) => {
                    tracing::warn!(%digest, error = %e, "component does not compile; runs of it will fail")
                }
            }
            if temporary {
                let _ = tokio::fs::remove_file(&path).await;
            }
        }
    });
    Ok(Arc::new(move |digest| {
        let _ = tx.send(digest);
    }))
}
