//! The shared wasmtime engine: configuration, the epoch ticker, loaded components, and one
//! sandboxed run of a guest (a `wasi:cli/command` or a kiln step-world component).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use kiln_engine::{ExecOutcome, FailureKind};

use crate::facts::{FACTS_VERSION, WasmFacts};
use tokio::sync::{OnceCell, Semaphore};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable, types::ComponentItem};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap,
    UpdateDeadline,
};
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::WasmError;
use crate::cache::{ComponentDigest, LoadSource, PrecompiledCache};
use crate::command::{GUEST_IN, GUEST_OUT, GuestLayout};
use crate::determinism::{
    CLOCK_TICK_NS, ClockStart, Seed, VirtualMonotonicClock, VirtualWallClock,
};
use crate::fsmeta::FsMeta;
use crate::limits::{GuestLimiter, MAX_INSTANCES, MAX_MEMORIES, MAX_TABLES};
use crate::log::{LogLimitExceeded, RunLog};
use crate::world::{self, StepPre};

/// Memory limit of a step that sets none: 512 MiB.
pub const DEFAULT_MEMORY_BYTES: u64 = 512 << 20;
/// The largest memory limit a step may ask for: 4 GiB (a 32-bit linear memory).
pub const MAX_MEMORY_BYTES: u64 = 4 << 30;
/// Fuel of a step that sets none: about 10¹² wasm instructions, minutes of CPU. The epoch
/// (the engine's timeout) stops a runaway long before.
pub const DEFAULT_FUEL: u64 = 1 << 40;
/// How much stdout and stderr together one run may write: 16 MiB.
pub const DEFAULT_LOG_LIMIT_BYTES: u64 = 16 << 20;
/// How many bytes one run may leave in its outputs: 4 GiB.
pub const DEFAULT_OUTPUT_LIMIT_BYTES: u64 = 4 << 30;
/// How often the epoch ticks; a running guest yields to the async executor at every tick.
pub const EPOCH_INTERVAL: Duration = Duration::from_millis(10);

/// What a [`WasmRuntime`] says when it must compile a component (not in its precompiled
/// cache): a large one takes long enough that a person should be told.
#[derive(Debug, Clone)]
pub enum CompileNotice {
    /// Compiling `path` (`bytes` long) starts.
    Started {
        /// The component file.
        path: PathBuf,
        /// Its size.
        bytes: u64,
    },
    /// It is compiled and cached; later runs on this machine load it in milliseconds.
    Finished {
        /// The component file.
        path: PathBuf,
        /// How long compiling took.
        took: Duration,
    },
}

/// A function told about compiles.
#[derive(Clone)]
pub struct CompileListener(Arc<dyn Fn(&CompileNotice) + Send + Sync>);

impl CompileListener {
    /// A listener calling `f`.
    pub fn new(f: impl Fn(&CompileNotice) + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }
}

impl std::fmt::Debug for CompileListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CompileListener")
    }
}

/// Settings of a [`WasmRuntime`].
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    concurrency: usize,
    default_memory_bytes: u64,
    default_fuel: u64,
    log_limit_bytes: u64,
    output_limit_bytes: u64,
    clock_start: ClockStart,
    on_compile: Option<CompileListener>,
    own_threads: bool,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        Self {
            concurrency: std::thread::available_parallelism().map_or(4, |n| n.get()),
            default_memory_bytes: DEFAULT_MEMORY_BYTES,
            default_fuel: DEFAULT_FUEL,
            log_limit_bytes: DEFAULT_LOG_LIMIT_BYTES,
            output_limit_bytes: DEFAULT_OUTPUT_LIMIT_BYTES,
            clock_start: ClockStart::default(),
            on_compile: None,
            own_threads: false,
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

    /// Runs guests on threads of the runtime's own (`concurrency` of them) instead of the
    /// caller's: for a process that schedules many runs and must stay responsive while
    /// guests compute and do their (synchronous) WASI file work. Off by default: the hand-off
    /// costs about 60 µs a step on two cores, as much as the rest of a trivial step (see
    /// docs/benchmarks.md); guests yield at every epoch tick either way.
    pub fn own_threads(&mut self, on: bool) -> &mut Self {
        self.own_threads = on;
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

    /// How many bytes one run may leave under its output folder. It is checked at every
    /// epoch tick, so a fast writer can pass it by what it writes in one tick (10 ms).
    pub fn output_limit_bytes(&mut self, bytes: u64) -> &mut Self {
        self.output_limit_bytes = bytes;
        self
    }

    /// Who is told when a component must be compiled (to show progress).
    pub fn on_compile(&mut self, listener: CompileListener) -> &mut Self {
        self.on_compile = Some(listener);
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

    /// The output cap of one run.
    pub fn get_output_limit_bytes(&self) -> u64 {
        self.output_limit_bytes
    }

    /// Where the virtual clocks start.
    pub fn get_clock_start(&self) -> ClockStart {
        self.clock_start
    }
}

/// What a guest's store holds: its WASI context, its limits, the log its logger writes to
/// and what normalises the file metadata it reads.
pub(crate) struct GuestState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: GuestLimiter,
    log: RunLog,
    pub(crate) fsmeta: FsMeta,
    outputs: OutputWatch,
}

impl world::kiln::step::log::Host for GuestState {
    async fn log(&mut self, level: world::Level, message: String) {
        // Past the cap the message is dropped; the next stdout or stderr write stops the
        // guest, and the outcome says so.
        let _ = self.log.message(world::level_text(level), &message);
    }
}

impl world::kiln::step::types::Host for GuestState {}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Which of the two kinds of wasm step a component is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComponentKind {
    /// A plain `wasi:cli/command` (it exports `wasi:cli/run`): argv in, exit code out.
    Command,
    /// A component of the kiln step world (`wit/step.wit`, it exports `run`): a typed
    /// context in, metrics and outputs or a typed error out.
    Step,
}

enum Pre {
    Command(CommandPre<GuestState>),
    Step(StepPre<GuestState>),
}

/// A component compiled (or loaded from the cache), linked and ready to instantiate.
pub struct LoadedComponent {
    digest: ComponentDigest,
    source: LoadSource,
    load_time: Duration,
    pre: Pre,
}

impl LoadedComponent {
    /// Whether it is a command or a step-world component.
    pub fn kind(&self) -> ComponentKind {
        match self.pre {
            Pre::Command(_) => ComponentKind::Command,
            Pre::Step(_) => ComponentKind::Step,
        }
    }

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
            .field("kind", &self.kind())
            .finish_non_exhaustive()
    }
}

/// One run of a guest: where it reads and writes, its argv or context, its limits and the
/// values that make it deterministic.
#[derive(Debug, Clone)]
pub struct GuestRun {
    /// Folders and argv.
    pub layout: GuestLayout,
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
    /// Where guests run when [`RuntimeOptions::own_threads`] is on.
    guests: Option<GuestThreads>,
}

/// The threads guests run on: a runtime of their own, so that a guest's synchronous WASI file
/// work never holds up the threads that schedule steps, and the scheduler's load never slows
/// a guest.
struct GuestThreads(Option<tokio::runtime::Runtime>);

impl GuestThreads {
    fn start(threads: usize) -> std::io::Result<Self> {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("kiln-wasm")
            .enable_time()
            .build()
            .map(|runtime| Self(Some(runtime)))
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.0.as_ref().expect("running until dropped").handle()
    }
}

impl Drop for GuestThreads {
    fn drop(&mut self) {
        // The last handle on a runtime may go away inside async code, where a blocking
        // shutdown would panic; guests still running are stopped at their next epoch tick.
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// Aborts a spawned guest when the future waiting for it is dropped (a timeout, a cancel).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
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
        // interfaces are linked but deny everything (see `run_guest`).
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .and_then(|()| crate::fsmeta::add_to_linker(&mut linker))
            .and_then(|()| {
                world::Step::add_to_linker::<GuestState, HasSelf<GuestState>>(&mut linker, |s| s)
            })
            .map_err(|e| WasmError::Engine(format!("{e:#}")))?;
        let cache = PrecompiledCache::new(cache_dir.as_ref(), &engine)?;
        let ticker = EpochTicker::start(&engine, EPOCH_INTERVAL)
            .map_err(|e| WasmError::Engine(format!("cannot start the epoch thread: {e}")))?;
        let guests =
            if options.own_threads {
                Some(GuestThreads::start(options.concurrency).map_err(|e| {
                    WasmError::Engine(format!("cannot start the guests' threads: {e}"))
                })?)
            } else {
                None
            };
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
                guests,
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
        let listener = self.inner.options.on_compile.as_ref();
        let notify = || {
            if let Some(CompileListener(f)) = listener {
                f(&CompileNotice::Started {
                    path: path.to_owned(),
                    bytes: bytes.len() as u64,
                });
            }
        };
        let (component, source) =
            self.inner
                .cache
                .load_or_compile(&self.inner.engine, &digest, bytes, path, &notify)?;
        if let (Some(CompileListener(f)), LoadSource::Compiled) = (listener, source) {
            f(&CompileNotice::Finished {
                path: path.to_owned(),
                took: started.elapsed(),
            });
        }
        let linked = self.inner.linker.instantiate_pre(&component);
        let pre = if exports_step_run(&self.inner.engine, &component) {
            linked.and_then(StepPre::new).map(Pre::Step)
        } else {
            linked.and_then(CommandPre::new).map(Pre::Command)
        }
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

    /// Runs a guest once in its sandbox and says how it ended. `Err` only when kiln could not
    /// run it at all; everything the guest did is in the outcome.
    ///
    /// Dropping the returned future stops the guest within one epoch tick.
    /// Runs a guest (see [`WasmRuntime::run_guest`]) on the runtime's own threads when
    /// [`RuntimeOptions::own_threads`] is on, else on the current task; dropping the
    /// returned future stops the guest either way.
    pub async fn run_guest_shared(
        &self,
        component: Arc<LoadedComponent>,
        run: GuestRun,
    ) -> Result<ExecOutcome, WasmError> {
        let Some(guests) = &self.inner.guests else {
            return self.run_guest(&component, &run).await;
        };
        let this = self.clone();
        let spawned = guests
            .handle()
            .spawn(async move { this.run_guest(&component, &run).await });
        let mut guard = AbortOnDrop(spawned);
        match (&mut guard.0).await {
            Ok(outcome) => outcome,
            Err(e) => Err(WasmError::Engine(format!("the guest's task failed: {e}"))),
        }
    }

    /// Runs a guest on the current task.
    pub async fn run_guest(
        &self,
        component: &LoadedComponent,
        run: &GuestRun,
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
        match component.kind() {
            ComponentKind::Command => wasi.args(&layout.args),
            // A step-world guest gets its step in the context; argv holds only its name.
            ComponentKind::Step => {
                let own = [
                    (layout.own_args, "`args`"),
                    (layout.stdin.is_some(), "`stdin`"),
                    (layout.stdout.is_some(), "`stdout`"),
                ];
                if let Some((_, field)) = own.iter().find(|(set, _)| *set) {
                    return Err(WasmError::CommandLine {
                        step: layout.step.clone(),
                        message: format!(
                            "{field} is for command components (`wasi:cli/run`), and this one \
                             is of the kiln step world, which gets its inputs, outputs and \
                             params in its context: remove {field} from the step"
                        ),
                    });
                }
                wasi.args(&layout.args[..1])
            }
        };
        for (name, value) in &layout.env {
            wasi.env(name, value);
        }

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
        if let Some((name, path)) = &layout.stdin {
            let file = std::fs::File::open(path).map_err(|source| WasmError::Sandbox {
                path: path.clone(),
                source,
            })?;
            if file.metadata().is_ok_and(|m| m.is_dir()) {
                return Err(WasmError::CommandLine {
                    step: layout.step.clone(),
                    message: format!(
                        "`stdin: inputs.{name}` needs a file, and input `{name}` is a folder"
                    ),
                });
            }
            wasi.stdin(wasmtime_wasi::cli::InputFile::new(file));
        }
        if let Some((_, path)) = &layout.stdout {
            // The output is the file the guest's stdout writes; kiln checks its size like
            // any output's, and only stderr goes to the log.
            let file = std::fs::File::create(path).map_err(|source| WasmError::Sandbox {
                path: path.clone(),
                source,
            })?;
            wasi.stdout(wasmtime_wasi::cli::OutputFile::new(file));
        }

        let mut store = Store::new(
            &inner.engine,
            GuestState {
                wasi: wasi.build(),
                table: ResourceTable::new(),
                limiter: GuestLimiter::new(memory_bytes),
                log: log.clone(),
                fsmeta: FsMeta::new(clock.wall_ns),
                outputs: OutputWatch::new(layout.out_dir.clone(), options.output_limit_bytes),
            },
        );
        store.limiter(|state| &mut state.limiter);
        store
            .set_fuel(fuel)
            .map_err(|e| WasmError::Engine(format!("{e:#}")))?;
        // At every tick: check the outputs' size, then let other tasks run.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|mut store| {
            store.data_mut().outputs.tick()?;
            Ok(UpdateDeadline::Yield(1))
        });

        let ended = match &component.pre {
            Pre::Command(pre) => match pre.instantiate_async(&mut store).await {
                Ok(command) => Ended::Ran(command.wasi_cli_run().call_run(&mut store).await),
                Err(e) => Ended::NotStarted(e),
            },
            Pre::Step(pre) => match pre.instantiate_async(&mut store).await {
                Ok(step) => {
                    let context = world::context(
                        &layout.step,
                        &layout.params,
                        &layout.inputs,
                        &layout.outputs,
                    );
                    Ended::Returned(step.call_run(&mut store, &context).await)
                }
                Err(e) => Ended::NotStarted(e),
            },
        };

        let fuel_used = fuel.saturating_sub(store.get_fuel().unwrap_or(0));
        let limiter = &store.data().limiter;
        let details = WasmFacts {
            facts_version: FACTS_VERSION,
            component: component.digest.to_string(),
            fuel_used,
            fuel_limit: fuel,
            memory_limit_bytes: memory_bytes,
            memory_peak_bytes: limiter.memory_peak as u64,
            seed: run.seed.to_hex(),
            clock_wall_start_ns: clock.wall_ns,
            clock_monotonic_start_ns: clock.monotonic_ns,
            clock_tick_ns: CLOCK_TICK_NS,
        }
        .to_details();
        let facts = RunFacts {
            fuel,
            memory_bytes,
            memory_denied: limiter.memory_denied,
            log: &log,
        };
        let mut outcome = classify(ended, &facts, layout, details.clone())?;
        if let ExecOutcome::Succeeded { .. } = &outcome {
            outcome = check_outputs(outcome, layout, options.output_limit_bytes)?;
        }
        if let ExecOutcome::Failed { .. } = &outcome {
            // Same component, inputs, seed, clocks and fuel: a wasm step fails the same way
            // every time, so a retry cannot help. The record keeps what the attempt used.
            outcome = outcome.with_details(details).deterministic();
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

/// Whether a component exports the step world's `run` function (else it should be a
/// command, exporting `wasi:cli/run`).
fn exports_step_run(engine: &Engine, component: &Component) -> bool {
    component
        .component_type()
        .exports(engine)
        .any(|(name, item)| name == "run" && matches!(item.ty, ComponentItem::ComponentFunc(_)))
}

/// The checks of a run that succeeded: inline outputs written, no links or special files,
/// the output cap.
fn check_outputs(
    outcome: ExecOutcome,
    layout: &GuestLayout,
    limit: u64,
) -> Result<ExecOutcome, WasmError> {
    let sandbox = |source| WasmError::Sandbox {
        path: layout.out_dir.clone(),
        source,
    };
    if let Some(found) = find_non_plain(&layout.out_dir).map_err(sandbox)? {
        return Ok(ExecOutcome::failure(
            FailureKind::Sandbox,
            format!(
                "the step left {found}; outputs must be plain files and folders (a link \
                 could make kiln read outside the sandbox when it stores them)"
            ),
            None,
        ));
    }
    let size = tree_size(&layout.out_dir).map_err(sandbox)?;
    if size > limit {
        return Ok(output_limit_failure(limit));
    }
    Ok(outcome)
}

fn output_limit_failure(limit: u64) -> ExecOutcome {
    ExecOutcome::failure(
        FailureKind::OutputLimit,
        format!(
            "the step wrote more than its output limit of {} (or more than {MAX_OUTPUT_ENTRIES} \
             files and folders) into its outputs and was stopped",
            bytes_text(limit)
        ),
        None,
    )
}

/// Watches the size of a run's output folder at epoch ticks. A walk costs time in
/// proportion to the number of files, so after a slow walk the next one waits longer: at
/// most a tenth of the run is spent walking.
struct OutputWatch {
    dir: PathBuf,
    limit: u64,
    skip: u32,
    every: u32,
}

/// The trap raised when a run's outputs grow past the cap.
#[derive(Debug, thiserror::Error)]
#[error("the step's outputs grew past {limit} bytes")]
struct OutputLimitExceeded {
    limit: u64,
}

impl OutputWatch {
    fn new(dir: PathBuf, limit: u64) -> Self {
        Self {
            dir,
            limit,
            skip: 0,
            every: 1,
        }
    }

    fn tick(&mut self) -> Result<(), OutputLimitExceeded> {
        if self.skip > 0 {
            self.skip -= 1;
            return Ok(());
        }
        let started = Instant::now();
        // An entry the guest removes during the walk makes it fail: look again next tick.
        if let Ok(size) = tree_size(&self.dir)
            && size > self.limit
        {
            return Err(OutputLimitExceeded { limit: self.limit });
        }
        // At most a tenth of the time walking, and a check at least every 100 ms (a guest
        // making folders of files slow to walk hits MAX_OUTPUT_ENTRIES first).
        let spent = started.elapsed().as_secs_f64() / EPOCH_INTERVAL.as_secs_f64();
        self.every = ((spent * 10.0).ceil() as u32).clamp(1, 10);
        self.skip = self.every - 1;
        Ok(())
    }
}

/// How many files and folders one run may leave in its outputs.
pub const MAX_OUTPUT_ENTRIES: u64 = 100_000;

/// Bytes in the files under `dir` (not following links); past [`MAX_OUTPUT_ENTRIES`]
/// entries, `u64::MAX`.
fn tree_size(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0u64;
    let mut entries = 0u64;
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            entries += 1;
            if entries > MAX_OUTPUT_ENTRIES {
                return Ok(u64::MAX);
            }
            let meta = entry.metadata()?;
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total = total.saturating_add(meta.len());
            }
        }
    }
    Ok(total)
}

/// How far a run got.
enum Ended {
    /// Instantiation failed.
    NotStarted(wasmtime::Error),
    /// `wasi:cli/run` was called and returned (or trapped).
    Ran(wasmtime::Result<Result<(), ()>>),
    /// The step world's `run` was called and returned (or trapped).
    Returned(wasmtime::Result<Result<world::Success, world::StepError>>),
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
            FailureKind::Memory,
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
    layout: &GuestLayout,
    details: BTreeMap<String, serde_json::Value>,
) -> Result<ExecOutcome, WasmError> {
    let success = || ExecOutcome::success().with_details(details.clone());
    let error = match ended {
        Ended::Ran(Ok(Ok(()))) => return Ok(success()),
        Ended::Returned(Ok(Ok(returned))) => return step_success(returned, layout, details),
        Ended::Returned(Ok(Err(e))) => {
            return Ok(ExecOutcome::failure(
                FailureKind::StepError,
                format!("{}: {}", world::error_kind_text(e.kind), e.message),
                None,
            ));
        }
        Ended::Returned(Err(e)) => e,
        Ended::Ran(Ok(Err(()))) => {
            if let Some(failure) = facts.memory_failure() {
                return Ok(failure);
            }
            return Ok(ExecOutcome::failure(
                FailureKind::Exit,
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
        return Ok(output_limit_failure(limit.limit));
    }
    if let Some(limit) = error.downcast_ref::<LogLimitExceeded>() {
        return Ok(ExecOutcome::failure(
            FailureKind::LogLimit,
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
            FailureKind::LogLimit,
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
            FailureKind::Exit,
            facts.with_stderr(format!("the step exited with code {}", exit.0)),
            Some(exit.0),
        ));
    }
    if let Some(Trap::OutOfFuel) = error.downcast_ref::<Trap>() {
        return Ok(ExecOutcome::failure(
            FailureKind::OutOfFuel,
            format!("the step used all of its fuel ({})", facts.fuel),
            None,
        ));
    }
    if let Some(failure) = facts.memory_failure() {
        return Ok(failure);
    }
    if let Some(Trap::StackOverflow) = error.downcast_ref::<Trap>() {
        return Ok(ExecOutcome::failure(
            FailureKind::StackOverflow,
            facts.with_stderr(
                "the step overflowed its call stack (unbounded recursion?)".to_owned(),
            ),
            None,
        ));
    }
    let message = match error.downcast_ref::<Trap>() {
        Some(trap) => trap.to_string(),
        None => format!("{:#}", error),
    };
    Ok(ExecOutcome::failure(
        FailureKind::Trap,
        facts.with_stderr(format!("the step trapped: {message}")),
        None,
    ))
}

/// The outcome of a step-world guest that returned `ok`: its metrics checked, its inline
/// outputs written where the engine expects them.
fn step_success(
    returned: world::Success,
    layout: &GuestLayout,
    details: BTreeMap<String, serde_json::Value>,
) -> Result<ExecOutcome, WasmError> {
    let refuse = |message: String| Ok(ExecOutcome::failure(FailureKind::StepError, message, None));
    let mut metrics = BTreeMap::new();
    for metric in returned.metrics {
        if !metric.value.is_finite() {
            return refuse(format!(
                "the step returned metric `{}` = {}, which is not a finite number",
                metric.name, metric.value
            ));
        }
        if metrics.insert(metric.name.clone(), metric.value).is_some() {
            return refuse(format!("the step returned metric `{}` twice", metric.name));
        }
    }
    for (name, bytes) in returned.outputs {
        let Some((_, guest)) = layout.outputs.iter().find(|(n, _)| *n == name) else {
            let declared: Vec<&str> = layout.outputs.iter().map(|(n, _)| n.as_str()).collect();
            return refuse(format!(
                "the step returned output `{name}`, which it does not declare (its outputs: {})",
                if declared.is_empty() {
                    "none".to_owned()
                } else {
                    declared.join(", ")
                }
            ));
        };
        let rel = guest
            .strip_prefix(GUEST_OUT)
            .unwrap_or(guest)
            .trim_start_matches('/');
        let path = layout.out_dir.join(rel);
        if std::fs::symlink_metadata(&path).is_ok() {
            return refuse(format!(
                "the step both wrote output `{name}` at `{guest}` and returned it; do one or \
                 the other"
            ));
        }
        let write = || -> std::io::Result<()> {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&path, &bytes)
        };
        write().map_err(|source| WasmError::Sandbox {
            path: path.clone(),
            source,
        })?;
    }
    Ok(ExecOutcome::Succeeded {
        outputs: BTreeMap::new(),
        metrics,
        details,
    })
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
