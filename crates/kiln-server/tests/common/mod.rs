//! A real `kiln serve` in the test process: on a free port of 127.0.0.1, its metadata in
//! SQLite or a real PostgreSQL, its store a local folder or a bucket on a real S3 server.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use kiln_cas::{BlobStore, Digest, LocalStore};
use kiln_server::{Db, Server, ServerOptions, Tokens};
use kiln_test_support::postgres::{Postgres, postgres_or_skip};
use kiln_test_support::s3::{S3Server, s3_server_or_skip};

/// Tokens the test servers accept, one per scope.
pub const READ: &str = "read-token-0123456789";
pub const WRITE: &str = "write-token-0123456789";
pub const ADMIN: &str = "admin-token-0123456789";

/// The upload limit of the test servers: 4 MiB.
pub const LIMIT: u64 = 4 << 20;

/// Which database and which store.
#[derive(Debug, Clone, Copy)]
pub enum Setting {
    SqliteLocal,
    PostgresLocal,
    SqliteS3,
    PostgresS3,
}

/// A running server and what it stores into, for checking behind its back.
pub struct TestServer {
    pub url: String,
    pub client: reqwest::Client,
    pub db: Db,
    pub store: Arc<dyn BlobStore>,
    pub state_dir: PathBuf,
    pub hooked: Arc<AtomicUsize>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    _dir: tempfile::TempDir,
    _postgres: Option<Postgres>,
    _s3: Option<S3Server>,
}

impl TestServer {
    /// A server in `setting`, or `None` when what it needs is not installed here (said on
    /// stderr; under CI a panic).
    pub async fn start(setting: Setting) -> Option<TestServer> {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("state");
        std::fs::create_dir_all(&state_dir).unwrap();
        let what = format!("the registry suite on {setting:?}");
        let (postgres, db) = match setting {
            Setting::PostgresLocal | Setting::PostgresS3 => {
                let postgres = postgres_or_skip(&what)?;
                let db = Db::connect(&postgres.new_database()).await.unwrap();
                (Some(postgres), db)
            }
            _ => (None, Db::sqlite(&state_dir.join("kiln.db")).await.unwrap()),
        };
        let (s3, store): (Option<S3Server>, Arc<dyn BlobStore>) = match setting {
            Setting::SqliteS3 | Setting::PostgresS3 => {
                let s3 = s3_server_or_skip(&what)?;
                s3.create_bucket("registry").unwrap();
                let store =
                    kiln_build::external::bucket_store("s3://registry/kiln", &s3.env()).unwrap();
                (Some(s3), Arc::new(store))
            }
            _ => (None, Arc::new(LocalStore::new(state_dir.join("store")))),
        };
        let tokens = Tokens::parse(
            &format!("read {READ} reader\nwrite {WRITE} ci\nadmin {ADMIN} ops\n"),
            "tokens",
        )
        .unwrap();
        let hooked = Arc::new(AtomicUsize::new(0));
        let counter = hooked.clone();
        let server = Server::new(ServerOptions {
            state_dir: state_dir.clone(),
            db: db.clone(),
            store: store.clone(),
            tokens,
            max_upload_bytes: LIMIT,
            max_blob_bytes: LIMIT,
            on_component: Some(Arc::new(move |_digest: Digest| {
                counter.fetch_add(1, Ordering::SeqCst);
            })),
            runs: None,
        })
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(server.serve(listener, async {
            let _ = stop.await;
        }));
        Some(TestServer {
            url,
            client: reqwest::Client::new(),
            db,
            store,
            state_dir,
            hooked,
            shutdown: Some(shutdown),
            served: Some(served),
            _dir: dir,
            _postgres: postgres,
            _s3: s3,
        })
    }

    /// `path` on this server.
    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// Stops the server and waits until it has.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(served) = self.served.take() {
            served.await.unwrap().unwrap();
        }
    }
}

/// A kiln step-world component: the digits example's `pick`, built as a component.
pub fn step_component() -> Vec<u8> {
    let dir = kiln_test_support::build_wasm(
        &kiln_test_support::repo_dir().join("examples/digits/steps"),
        &["-p", "pick", "--lib", "--features", "component"],
    );
    std::fs::read(dir.join("pick_step.wasm")).unwrap()
}

/// A WASI command component: the `noop` test guest.
pub fn command_component() -> Vec<u8> {
    let dir = kiln_test_support::build_wasm(&kiln_test_support::guests_dir(), &["--bin", "noop"]);
    std::fs::read(dir.join("noop.wasm")).unwrap()
}

/// A valid component of another world: it exports a nested component named `other`, and
/// neither a `run` function nor `wasi:cli/run`.
pub fn other_world_component() -> Vec<u8> {
    let inner = wasm_encoder::Component::new();
    let mut outer = wasm_encoder::Component::new();
    outer.section(&wasm_encoder::NestedComponentSection(&inner));
    let mut exports = wasm_encoder::ComponentExportSection::new();
    exports.export(
        "other",
        wasm_encoder::ComponentExportKind::Component,
        0,
        None,
    );
    outer.section(&exports);
    outer.finish()
}

/// A valid core module (one function that returns 42), not a component.
pub fn core_module() -> Vec<u8> {
    let mut module = wasm_encoder::Module::new();
    let mut types = wasm_encoder::TypeSection::new();
    types.ty().function([], [wasm_encoder::ValType::I32]);
    module.section(&types);
    let mut functions = wasm_encoder::FunctionSection::new();
    functions.function(0);
    module.section(&functions);
    let mut exports = wasm_encoder::ExportSection::new();
    exports.export("answer", wasm_encoder::ExportKind::Func, 0);
    module.section(&exports);
    let mut code = wasm_encoder::CodeSection::new();
    let mut body = wasm_encoder::Function::new([]);
    body.instructions().i32_const(42).end();
    code.function(&body);
    module.section(&code);
    module.finish()
}
