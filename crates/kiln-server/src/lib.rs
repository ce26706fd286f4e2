//! `kiln serve`: the HTTP API of a shared kiln server (axum).
//!
//! This crate holds the component registry (immutable versions, tags that move, uploads
//! streamed, hashed and validated before anything is stored), bearer-token scopes, errors as
//! `application/problem+json`, health and readiness, Prometheus metrics and the OpenAPI
//! document generated from the handlers; and blobs by digest ([`blobs`]), uploaded before
//! the runs that read them. Metadata is in SQL ([`db`]: SQLite by default, PostgreSQL for
//! several replicas); artifacts and components are in a [`BlobStore`] (the
//! local store or an object store). What a server does with a new component (compiling it
//! ahead of the first run) is the caller's: [`ServerOptions::on_component`].
//!
//! It does not parse command lines or run steps.

pub mod api;
pub mod auth;
pub mod blobs;
pub mod db;
pub mod metadata;
mod metrics;
pub mod problem;
mod registry;
pub mod runs;
pub mod validate;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use kiln_cas::{BlobStore, Digest};

pub use auth::{Caller, Scope, Tokens, check_listen};
pub use db::{Backend, Db};
pub use metadata::SqlMetadata;
pub use problem::Problem;

/// Called with the digest of every component stored by an upload, after the upload has
/// been answered: a server compiles it there, so that no request waits for a compiler.
pub type ComponentHook = Arc<dyn Fn(Digest) + Send + Sync>;

/// The largest component upload a server takes unless told otherwise: 512 MiB.
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 512 << 20;

/// The largest blob upload a server takes unless told otherwise: 64 GiB.
pub const DEFAULT_MAX_BLOB_BYTES: u64 = 64 << 30;

/// How a server is set up.
pub struct ServerOptions {
    /// The state folder (uploads are received under `tmp/` there).
    pub state_dir: PathBuf,
    /// The metadata database.
    pub db: Db,
    /// Where components and artifacts are kept.
    pub store: Arc<dyn BlobStore>,
    /// The tokens it accepts (none: everyone may do everything; loopback only).
    pub tokens: Tokens,
    /// The largest component upload, in bytes.
    pub max_upload_bytes: u64,
    /// The largest blob upload (a workspace input of a run), in bytes.
    pub max_blob_bytes: u64,
    /// What to do with a newly stored component.
    pub on_component: Option<ComponentHook>,
    /// What runs submitted pipelines, if this server runs any.
    pub runs: Option<runs::Runs>,
}

/// What every handler shares.
pub(crate) struct AppState {
    pub(crate) db: Db,
    pub(crate) store: Arc<dyn BlobStore>,
    pub(crate) tokens: Tokens,
    pub(crate) max_upload_bytes: u64,
    pub(crate) max_blob_bytes: u64,
    pub(crate) tmp_dir: PathBuf,
    pub(crate) on_component: Option<ComponentHook>,
    pub(crate) runs: Option<runs::Runs>,
    pub(crate) metrics: metrics::Metrics,
}

/// A server, ready to be given a listener.
#[derive(Clone)]
pub struct Server {
    state: Arc<AppState>,
}

impl Server {
    /// A server with these options; makes its folder for uploads in progress (and empties it
    /// of what a killed server left there).
    pub fn new(options: ServerOptions) -> std::io::Result<Self> {
        let tmp_dir = options.state_dir.join("tmp").join("uploads");
        if tmp_dir.exists() {
            std::fs::remove_dir_all(&tmp_dir)?;
        }
        std::fs::create_dir_all(&tmp_dir)?;
        Ok(Self {
            state: Arc::new(AppState {
                db: options.db,
                store: options.store,
                tokens: options.tokens,
                max_upload_bytes: options.max_upload_bytes,
                max_blob_bytes: options.max_blob_bytes,
                tmp_dir,
                on_component: options.on_component,
                runs: options.runs,
                metrics: metrics::Metrics::new(),
            }),
        })
    }

    /// The routes, with their state.
    pub fn router(&self) -> Router {
        let api = registry::routes()
            .merge(blobs::routes())
            .merge(runs::routes())
            .route("/healthz", get(api::healthz))
            .route("/readyz", get(api::readyz))
            .route("/metrics", get(metrics::render))
            .route("/openapi.json", get(api::openapi_json))
            .fallback(api::not_found);
        api.layer(axum::middleware::from_fn_with_state(
            self.state.clone(),
            metrics::track,
        ))
        .with_state(self.state.clone())
    }

    /// Serves on `listener` until `shutdown` completes, then finishes the requests in
    /// progress and closes the database.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let router = self.router();
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await;
        self.state.db.close().await;
        served
    }

    /// The address a listener got, for messages.
    pub fn describe(addr: &SocketAddr) -> String {
        format!("http://{addr}")
    }
}
