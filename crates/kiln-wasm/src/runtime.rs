//! The shared wasmtime engine: configuration, the epoch ticker, loaded components, and one
//! sandboxed run of a command component.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use kiln_engine::ExecOutcome;
use serde_json::json;
use tokio::sync::{OnceCell, Semaphore};
use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap};
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::WasmError;
use crate::cache::{ComponentDigest, LoadSource, PrecompiledCache};
use crate::command::{CommandLayout, GUEST_IN, GUEST_OUT};
use crate::determinism::{
    CLOCK_TICK_NS, ClockStart, Seed, VirtualMonotonicClock, VirtualWallClock,
};
use crate::limits::{GuestLimiter, MAX_INSTANCES, MAX_MEMORIES, MAX_TABLES};
use crate::log::{OutputLimitExceeded, RunLog};

/// Memory limit of a step that sets none: 512 MiB.
pub const DEFAULT_MEMORY_BYTES: u64 = 512 << 20;
/// The largest memory limit a step may ask for: 4 GiB (a 32-bit linear memory).
pub const MAX_MEMORY_BYTES: u64 = 4 << 30;
/// Fuel of a step that sets none: about 10¹² wasm instructions, minutes of CPU. The epoch
/// (the engine's timeout) stops a runaway long before.
pub const DEFAULT_FUEL: u64 = 1 << 40;
/// How much stdout and stderr together one run may write: 16 MiB.
pub const DEFAULT_LOG_LIMIT_BYTES: u64 = 16 << 20;
/// How often the epoch ticks; a running guest yields to the async executor at every tick.
pub const EPOCH_INTERVAL: Duration = Duration::from_millis(10);

/// Settings of a [`WasmRuntime`].
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    concurrency: usize,
    default_memory_bytes: u64,
    default_fuel: u64,
    log_limit_bytes: u64,
    clock_start: ClockStart,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        Self {
            concurrency: std::thread::available_parallelism().map_or(4, |n| n.get()),
            default_memory_bytes: DEFAULT_MEMORY_BYTES,
            default_fuel: DEFAULT_FUEL,
            log_limit_bytes: DEFAULT_LOG_LIMIT_BYTES,
            clock_start: ClockStart::default(),
        }
    }
}

impl RuntimeOptions {
    /// The defaults: concurrency = CPUs, 512 MiB, [`DEFAULT_FUEL`], 16 MiB of log.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many guests run at once; the instance pool is sized for exactly this many.
    pub fn concurrency(&mut self, n: usize) -> &mut Self {
        self.concurrency = n.max(1);
        self
    }

    /// Memory limit of steps that set none (at most [`MAX_MEMORY_BYTES`]).
    pub fn default_memory_bytes(&mut self, bytes: u64) -> &mut Self {
        self.default_memory_bytes = bytes.min(MAX_MEMORY_BYTES);
        self
    }

    /// Fuel of steps that set none.
    pub fn default_fuel(&mut self, fuel: u64) -> &mut Self {
        self.default_fuel = fuel;
        self
    }

    /// How much stdout and stderr together one run may write.
    pub fn log_limit_bytes(&mut self, bytes: u64) -> &mut Self {
        self.log_limit_bytes = bytes;
        self
    }

    /// Where the virtual clocks of every run start.
    pub fn clock_start(&mut self, start: ClockStart) -> &mut Self {
        self.clock_start = start;
        self
    }

    /// How many guests run at once.
    pub fn get_concurrency(&self) -> usize {
        self.concurrency
    }

    /// Memory limit of steps that set none.
    pub fn get_default_memory_bytes(&self) -> u64 {
        self.default_memory_bytes
    }

    /// Fuel of steps that set none.
    pub fn get_default_fuel(&self) -> u64 {
        self.default_fuel
    }

    /// The log cap of one run.
    pub fn get_log_limit_bytes(&self) -> u64 {
        self.log_limit_bytes
    }

    /// Where the virtual clocks start.
    pub fn get_clock_start(&self) -> ClockStart {
        self.clock_start
    }
}

/// What a guest's store holds: its WASI context and its limits.
pub(crate) struct GuestState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: GuestLimiter,
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// A component compiled (or loaded from the cache), linked and ready to instantiate.
pub struct LoadedComponent {
    digest: ComponentDigest,
    source: LoadSource,
    load_time: Duration,
    pre: CommandPre<GuestState>,
}

impl LoadedComponent {
    /// blake3 of the component's bytes.
    pub fn digest(&self) -> ComponentDigest {
        self.digest
    }

    /// Whether it was compiled by this process or loaded from the cache.
    pub fn source(&self) -> LoadSource {
        self.source
    }

    /// How long compiling or loading it took.
    pub fn load_time(&self) -> Duration {
        self.load_time
    }
}

impl std::fmt::Debug for LoadedComponent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedComponent")
            .field("digest", &self.digest)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// One run of a command component: where it reads and writes, its argv, its limits and the
/// values that make it deterministic.
#[derive(Debug, Clone)]
pub struct CommandRun {
    /// Folders and argv.
    pub layout: CommandLayout,
    /// The file stdout and stderr are appended to.
    pub log: PathBuf,
    /// Memory limit per linear memory; the runtime's default when `None`.
    pub memory_bytes: Option<u64>,
    /// Fuel; the runtime's default when `None`.
    pub fuel: Option<u64>,
    /// Seed of every random source.
    pub seed: Seed,
    /// Where the virtual clocks start; the runtime's default when `None`.
    pub clock_start: Option<ClockStart>,
}

/// When a file was last seen, to know whether its digest must be computed again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    #[cfg(unix)]
    inode: (u64, u64, i64, i64),
}

impl FileStamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        #[cfg(unix)]
        use std::os::unix::fs::MetadataExt as _;
        Self {
            len: meta.len(),
            modified: meta.modified().ok(),
            #[cfg(unix)]
            inode: (meta.dev(), meta.ino(), meta.ctime(), meta.ctime_nsec()),
        }
    }
}

type LoadSlot = Arc<OnceCell<Arc<LoadedComponent>>>;

/// The WebAssembly runtime of a kiln process: one wasmtime [`Engine`] with its instance pool,
/// epoch ticker and precompiled cache. Create one per process and clone it (clones share
/// everything).
#[derive(Clone)]
pub struct WasmRuntime {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    linker: Linker<GuestState>,
    cache: PrecompiledCache,
    options: RuntimeOptions,
    slots: Semaphore,
    loaded: Mutex<HashMap<ComponentDigest, LoadSlot>>,
    digests: Mutex<HashMap<PathBuf, (FileStamp, ComponentDigest)>>,
    _ticker: EpochTicker,
}

impl std::fmt::Debug for WasmRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmRuntime")
            .field("cache", &self.inner.cache.dir())
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

impl WasmRuntime {
    /// A runtime that keeps precompiled components under `cache_dir` and runs up to
    /// `concurrency` guests at once (the instance pool's size).
    pub fn new(cache_dir: impl AsRef<Path>, concurrency: usize) -> Result<Self, WasmError> {
        Self::with_options(cache_dir, RuntimeOptions::new().concurrency(concurrency))
    }

    /// A runtime with these options.
    pub fn with_options(
        cache_dir: impl AsRef<Path>,
        options: &RuntimeOptions,
    ) -> Result<Self, WasmError> {
        let engine = Engine::new(&engine_config(options.concurrency))
            .map_err(|e| WasmError::Engine(format!("{e:#}")))?;
        let mut linker = Linker::new(&engine);
        // Every WASI 0.2 interface, `wasi:cli/exit.exit-with-code` included; network
        // interfaces are linked but deny everything (see `run_command`).
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| WasmError::Engine(format!("{e:#}")))?;
        let cache = PrecompiledCache::new(cache_dir.as_ref(), &engine)?;
        let ticker = EpochTicker::start(&engine, EPOCH_INTERVAL)
            .map_err(|e| WasmError::Engine(format!("cannot start the epoch thread: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                engine,
                linker,
                cache,
                slots: Semaphore::new(options.concurrency),
                options: options.clone(),
                loaded: Mutex::new(HashMap::new()),
                digests: Mutex::new(HashMap::new()),
                _ticker: ticker,
            }),
        })
    }

    /// The options this runtime was made with.
    pub fn options(&self) -> &RuntimeOptions {
        &self.inner.options
    }

    /// The folder precompiled components of this engine configuration are kept in.
    pub fn cache_dir(&self) -> &Path {
        self.inner.cache.dir()
    }

    /// The component in this `.wasm` file, ready to run: from memory when this process loaded
    /// the same bytes before, else from the precompiled cache, else compiled (and cached).
    /// Concurrent loads of one component compile it once.
    pub async fn load(&self, path: &Path) -> Result<Arc<LoadedComponent>, WasmError> {
        let (digest, bytes) = self.digest_of(path).await?;
        let slot = self
            .inner
            .loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(digest)
            .or_default()
            .clone();
        let loaded = slot
            .get_or_try_init(|| async {
                let bytes = match bytes {
                    Some(bytes) => bytes,
                    None => read(path).await?,
                };
                if ComponentDigest::of(&bytes) != digest {
                    return Err(WasmError::Changed {
                        path: path.to_owned(),
                    });
                }
                let runtime = self.clone();
                let path = path.to_owned();
                tokio::task::spawn_blocking(move || runtime.compile(digest, &bytes, &path))
                    .await
                    .map_err(|e| WasmError::Engine(format!("compiling thread failed: {e}")))?
                    .map(Arc::new)
            })
            .await?;
        Ok(loaded.clone())
    }

    /// The digest of a component file; its bytes too when they had to be read for it.
    async fn digest_of(
        &self,
        path: &Path,
    ) -> Result<(ComponentDigest, Option<Vec<u8>>), WasmError> {
        let io = |source| WasmError::Read {
            path: path.to_owned(),
            source,
        };
        let stamp = FileStamp::of(&std::fs::metadata(path).map_err(io)?);
        let known = self
            .inner
            .digests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(path)
            .copied();
        if let Some((seen, digest)) = known
            && seen == stamp
        {
            return Ok((digest, None));
        }
        let bytes = read(path).await?;
        let digest = ComponentDigest::of(&bytes);
        self.inner
            .digests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(path.to_owned(), (stamp, digest));
        Ok((digest, Some(bytes)))
    }

    fn compile(
        &self,
        digest: ComponentDigest,
        bytes: &[u8],
        path: &Path,
    ) -> Result<LoadedComponent, WasmError> {
        let started = Instant::now();
        let (component, source) =
            self.inner
                .cache
                .load_or_compile(&self.inner.engine, &digest, bytes, path)?;
        let pre = self
            .inner
            .linker
            .instantiate_pre(&component)
            .and_then(CommandPre::new)
            .map_err(|e| WasmError::NotACommand {
                path: path.to_owned(),
                message: format!("{e:#}"),
            })?;
        let load_time = started.elapsed();
        tracing::debug!(component = %digest, ?source, ?load_time, "component loaded");
        Ok(LoadedComponent {
            digest,
            source,
            load_time,
            pre,
        })
    }

    /// Runs a command component once in its sandbox and says how it ended. `Err` only when
    /// kiln could not run it at all; everything the guest did is in the outcome.
    ///
    /// Dropping the returned future stops the guest within one epoch tick.
    pub async fn run_command(
        &self,
        component: &LoadedComponent,
        run: &CommandRun,
    ) -> Result<ExecOutcome, WasmError> {
        let inner = &*self.inner;
        let options = &inner.options;
        let memory_bytes = run
            .memory_bytes
            .unwrap_or(options.default_memory_bytes)
            .min(MAX_MEMORY_BYTES);
        let fuel = run.fuel.unwrap_or(options.default_fuel);
        let clock = run.clock_start.unwrap_or(options.clock_start);
        let layout = &run.layout;

        let _slot = inner
            .slots
            .acquire()
            .await
            .map_err(|_| WasmError::Engine("the runtime is shutting down".into()))?;

        let log = RunLog::open(&run.log, options.log_limit_bytes).map_err(|source| {
            WasmError::Sandbox {
                path: run.log.clone(),
                source,
            }
        })?;
        let mut wasi = WasiCtxBuilder::new();
        wasi.allow_blocking_current_thread(true)
            .args(&layout.args)
            .initial_cwd("/")
            .stdout(log.stdout())
            .stderr(log.stderr())
            .wall_clock(VirtualWallClock::new(clock.wall_ns))
            .monotonic_clock(VirtualMonotonicClock::new(clock.monotonic_ns))
            .secure_random(run.seed.stream("wasi:random/random"))
            .insecure_random(run.seed.stream("wasi:random/insecure"))
            .insecure_random_seed(run.seed.insecure_seed())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        for (dir, guest, perms) in [
            (&layout.in_dir, GUEST_IN, FsPerms::ReadOnly),
            (&layout.out_dir, GUEST_OUT, FsPerms::ReadWrite),
        ] {
            std::fs::create_dir_all(dir).map_err(|source| WasmError::Sandbox {
                path: dir.clone(),
                source,
            })?;
            wasi.preopened_dir(dir, guest, perms)
                .map_err(|e| WasmError::Sandbox {
                    path: dir.clone(),
                    source: std::io::Error::other(format!("{e:#}")),
                })?;
        }

        let mut store = Store::new(
            &inner.engine,
            GuestState {
                wasi: wasi.build(),
                table: ResourceTable::new(),
                limiter: GuestLimiter::new(memory_bytes),
            },
        );
        store.limiter(|state| &mut state.limiter);
        store
            .set_fuel(fuel)
            .map_err(|e| WasmError::Engine(format!("{e:#}")))?;
        store.set_epoch_deadline(1);
        store.epoch_deadline_async_yield_and_update(1);

        let ended = match component.pre.instantiate_async(&mut store).await {
            Ok(command) => Ended::Ran(command.wasi_cli_run().call_run(&mut store).await),
            Err(e) => Ended::NotStarted(e),
        };

        let fuel_used = fuel.saturating_sub(store.get_fuel().unwrap_or(0));
        let limiter = &store.data().limiter;
        let details = BTreeMap::from([
            ("component".to_owned(), json!(component.digest.to_string())),
            ("fuel_used".to_owned(), json!(fuel_used)),
            ("fuel_limit".to_owned(), json!(fuel)),
            ("memory_limit_bytes".to_owned(), json!(memory_bytes)),
            ("memory_peak_bytes".to_owned(), json!(limiter.memory_peak)),
            ("seed".to_owned(), json!(run.seed.to_hex())),
            ("clock_wall_start_ns".to_owned(), json!(clock.wall_ns)),
            (
                "clock_monotonic_start_ns".to_owned(),
                json!(clock.monotonic_ns),
            ),
            ("clock_tick_ns".to_owned(), json!(CLOCK_TICK_NS)),
        ]);
        let facts = RunFacts {
            fuel,
            memory_bytes,
            memory_denied: limiter.memory_denied,
            log: &log,
        };
        let mut outcome = classify(ended, &facts, details)?;
        if matches!(outcome, ExecOutcome::Succeeded { .. })
            && let Some(found) =
                find_non_plain(&layout.out_dir).map_err(|source| WasmError::Sandbox {
                    path: layout.out_dir.clone(),
                    source,
                })?
        {
            outcome = ExecOutcome::failure(
                "sandbox",
                format!(
                    "the step left {found}; outputs must be plain files and folders (a link \
                     could make kiln read outside the sandbox when it stores them)"
                ),
                None,
            );
        }
        if let ExecOutcome::Failed { message, kind, .. } = &outcome {
            log.note(&format!("step failed ({kind}): {message}"));
        }
        if let Some(e) = log.write_error() {
            tracing::warn!(log = %run.log.display(), error = %e, "cannot write the step's log");
        }
        Ok(outcome)
    }
}

/// How far a run got.
enum Ended {
    /// Instantiation failed.
    NotStarted(wasmtime::Error),
    /// `wasi:cli/run` was called and returned (or trapped).
    Ran(wasmtime::Result<Result<(), ()>>),
}

struct RunFacts<'a> {
    fuel: u64,
    memory_bytes: u64,
    memory_denied: Option<usize>,
    log: &'a RunLog,
}

impl RunFacts<'_> {
    fn with_stderr(&self, message: String) -> String {
        let tail = self.log.stderr_tail();
        if tail.is_empty() {
            message
        } else {
            format!("{message}; stderr ends with:\n{tail}")
        }
    }

    fn memory_failure(&self) -> Option<ExecOutcome> {
        let asked = self.memory_denied?;
        Some(ExecOutcome::failure(
            "memory",
            self.with_stderr(format!(
                "the step needs more than its memory limit of {} (it asked for {})",
                bytes_text(self.memory_bytes),
                bytes_text(asked as u64)
            )),
            None,
        ))
    }
}

/// Maps how the guest ended to an outcome; the order matters: a limit explains whatever
/// the guest did after hitting it.
fn classify(
    ended: Ended,
    facts: &RunFacts<'_>,
    details: BTreeMap<String, serde_json::Value>,
) -> Result<ExecOutcome, WasmError> {
    let success = || ExecOutcome::Succeeded {
        metrics: BTreeMap::new(),
        details: details.clone(),
    };
    let error = match ended {
        Ended::Ran(Ok(Ok(()))) => return Ok(success()),
        Ended::Ran(Ok(Err(()))) => {
            if let Some(failure) = facts.memory_failure() {
                return Ok(failure);
            }
            return Ok(ExecOutcome::failure(
                "exit",
                facts.with_stderr("the step exited with code 1".into()),
                Some(1),
            ));
        }
        Ended::Ran(Err(e)) => e,
        Ended::NotStarted(e) => {
            if let Some(failure) = facts.memory_failure() {
                return Ok(failure);
            }
            return Err(WasmError::Instantiate {
                message: format!("{e:#}"),
            });
        }
    };
    if let Some(limit) = error.downcast_ref::<OutputLimitExceeded>() {
        return Ok(ExecOutcome::failure(
            "output-limit",
            format!(
                "the step wrote more than {} to stdout and stderr and was stopped; the log \
                 holds the first {}",
                bytes_text(limit.limit),
                bytes_text(limit.limit)
            ),
            None,
        ));
    }
    if facts.log.limit_hit() {
        return Ok(ExecOutcome::failure(
            "output-limit",
            "the step wrote past its log limit and was stopped",
            None,
        ));
    }
    if let Some(exit) = error.downcast_ref::<I32Exit>() {
        if exit.0 == 0 {
            return Ok(success());
        }
        if let Some(failure) = facts.memory_failure() {
            return Ok(failure);
        }
        return Ok(ExecOutcome::failure(
            "exit",
            facts.with_stderr(format!("the step exited with code {}", exit.0)),
            Some(exit.0),
        ));
    }
    if let Some(Trap::OutOfFuel) = error.downcast_ref::<Trap>() {
        return Ok(ExecOutcome::failure(
            "out-of-fuel",
            format!("the step used all of its fuel ({})", facts.fuel),
            None,
        ));
    }
    if let Some(failure) = facts.memory_failure() {
        return Ok(failure);
    }
    let message = match error.downcast_ref::<Trap>() {
        Some(trap) => trap.to_string(),
        None => format!("{:#}", error),
    };
    Ok(ExecOutcome::failure(
        "trap",
        facts.with_stderr(format!("the step trapped: {message}")),
        None,
    ))
}

/// An entry under the output folder that is not a plain file or folder, described with its
/// guest path (the first by name in the first folder that has one). wasmtime-wasi lets a
/// guest create relative symbolic links pointing out of `/out`; the guest cannot follow them,
/// but the host storing the outputs would.
fn find_non_plain(out_dir: &Path) -> std::io::Result<Option<String>> {
    // An explicit stack: a guest can make folders deeper than the host's stack.
    let mut stack = vec![(out_dir.to_owned(), GUEST_OUT.to_owned())];
    while let Some((dir, guest)) = stack.pop() {
        let mut entries = std::fs::read_dir(&dir)?.collect::<Result<Vec<_>, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        let mut folders = Vec::new();
        for entry in entries {
            let kind = entry.file_type()?;
            let path = format!("{guest}/{}", entry.file_name().to_string_lossy());
            if kind.is_symlink() {
                return Ok(Some(format!("a symbolic link at `{path}`")));
            } else if kind.is_dir() {
                folders.push((entry.path(), path));
            } else if !kind.is_file() {
                return Ok(Some(format!("a special file at `{path}`")));
            }
        }
        stack.extend(folders.into_iter().rev());
    }
    Ok(None)
}

fn bytes_text(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{bytes} bytes")
    }
}

async fn read(path: &Path) -> Result<Vec<u8>, WasmError> {
    let owned = path.to_owned();
    tokio::task::spawn_blocking(move || std::fs::read(&owned))
        .await
        .map_err(|e| WasmError::Engine(format!("reading thread failed: {e}")))?
        .map_err(|source| WasmError::Read {
            path: path.to_owned(),
            source,
        })
}

/// The engine's configuration: determinism, limits, and a pool for `concurrency` guests.
fn engine_config(concurrency: usize) -> Config {
    let n = u32::try_from(concurrency).unwrap_or(u32::MAX);
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(n)
        .total_core_instances(n.saturating_mul(MAX_INSTANCES as u32))
        .max_core_instances_per_component(MAX_INSTANCES as u32)
        .total_memories(n.saturating_mul(MAX_MEMORIES as u32))
        .max_memories_per_component(MAX_MEMORIES as u32)
        .total_tables(n.saturating_mul(MAX_TABLES as u32))
        .max_tables_per_component(MAX_TABLES as u32)
        .total_stacks(n)
        .max_memory_size(MAX_MEMORY_BYTES as usize);

    let mut config = Config::new();
    config
        .wasm_component_model(true)
        // Determinism: the same bytes on every machine.
        .cranelift_nan_canonicalization(true)
        .relaxed_simd_deterministic(true)
        // Limits: fuel is the recorded CPU budget, epochs let a runaway be stopped.
        .consume_fuel(true)
        .epoch_interruption(true)
        .parallel_compilation(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    // Threads stay off: wasmtime is built without its `threads` feature, so shared memories
    // and atomics.wait are rejected when a component is compiled.
    config
}

/// Increments the engine's epoch every interval on a thread of its own until dropped.
struct EpochTicker {
    stop: Option<std::sync::mpsc::Sender<()>>,
}

impl EpochTicker {
    fn start(engine: &Engine, interval: Duration) -> std::io::Result<Self> {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let engine = engine.weak();
        std::thread::Builder::new()
            .name("kiln-wasm-epoch".into())
            .spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(interval)
                {
                    match engine.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })?;
        Ok(Self { stop: Some(stop) })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        // Dropping the sender wakes the thread, which then ends.
        self.stop.take();
    }
}
