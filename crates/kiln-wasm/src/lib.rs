//! kiln's WebAssembly executor: runs wasm steps as sandboxed wasmtime components, with
//! deterministic clocks and randomness, memory, fuel and output limits, and a cache of
//! precompiled components, behind the engine's [`kiln_engine::Executor`] trait
//! ([`WasmExecutor`], name `wasm`). It deliberately does no scheduling, caching of step
//! results or retrying: the engine decides what runs when, and this crate runs one attempt
//! and says how it ended. One [`WasmRuntime`] (one wasmtime `Engine`) serves the whole
//! process; it runs as many guests at once as its instance pool was sized for and makes the
//! rest wait.
//!
//! # Two kinds of step
//!
//! A component exporting `run` is a step of the kiln step world (`wit/step.wit`, documented
//! in `wit/README.md`): it gets a typed context (params, input and output paths) and returns
//! metrics and inline outputs, or a typed error (failure kind `step-error`); its `log`
//! import writes to the step's log. Anything else must be a plain `wasi:cli/command`. Both
//! see the same sandbox, below.
//!
//! # Command steps: the calling convention
//!
//! A plain `wasi:cli/command` component (any program built for `wasm32-wasip2`) runs as a
//! step like this:
//!
//! * it sees exactly two folders: the attempt's `in` folder read-only at `/in` (the engine
//!   materialises input `NAME` at `/in/NAME`, a file or a folder) and its `out` folder
//!   read-write at `/out` (output `NAME` is to be written at `/out/NAME`);
//! * argv is `[STEP, "--in", "NAME=/in/NAME", ..., "--out", "NAME=/out/NAME", ...,
//!   "--param", "KEY=VALUE", ...]`, program name first (the step's name), then inputs,
//!   outputs and params each in name order. A param value is a string as it is, a number or
//!   bool in its plain form (`3`, `0.5`, `1.0`, `true`), a list comma-joined
//!   (`0.01,0.1,1.0`). A step with its own `args:` gets those instead, after the program
//!   name, with `{{inputs.NAME}}` and `{{outputs.NAME}}` as guest paths: any program,
//!   unchanged;
//! * the working directory is `/` (relative paths resolve nowhere: use the paths given);
//!   the environment is the step's `env:` and nothing else, stdin is empty unless
//!   `stdin: inputs.NAME` names a file input, and there is no network (TCP, UDP and name
//!   lookups are denied);
//! * stdout and stderr go, interleaved, to the step's log, at most 16 MiB together (the
//!   write past the cap stops the step, kind `log-limit`); with `stdout: outputs.NAME`
//!   stdout is that output instead (bounded like any output) and only stderr is logged;
//! * returning from `main` (exit code 0) is success; any other exit code is a failure of
//!   kind `exit` with that code and the end of stderr in the message. Rust's std on
//!   `wasm32-wasip2` reports every failing exit code as 1 unless the program calls
//!   `wasi:cli/exit.exit-with-code`, which kiln links.
//!
//! The digits example's step programs (`examples/digits/steps`) follow this convention.
//!
//! # Limits and failure kinds
//!
//! Each limit a guest hits is a failure with a stable [`kiln_engine::ExecOutcome`] `kind`:
//!
//! | kind | when |
//! |---|---|
//! | `exit` | the guest exited with a non-zero code (`exit_code` says which) |
//! | `out-of-fuel` | it used its fuel (the step's `fuel`, else [`DEFAULT_FUEL`]) |
//! | `memory` | a linear memory would grow past the step's `memory` (else 512 MiB) and the guest then failed |
//! | `stack-overflow` | the guest's call stack overflowed (unbounded recursion) |
//! | `log-limit` | stdout, stderr and log messages together went past the log cap |
//! | `output-limit` | the files under `/out` grew past the output cap (4 GiB by default, checked at every epoch tick) or past [`MAX_OUTPUT_ENTRIES`] entries |
//! | `step-error` | a step-world guest returned an error, or a result kiln refuses (a non-finite metric, an undeclared output) |
//! | `sandbox` | the guest left a symbolic link or special file in its outputs |
//! | `trap` | any other trap (the message names it and adds the end of stderr, where a Rust panic message is); a thread spawn fails in the guest (threads are off), and Rust panics |
//!
//! A run also may create at most 64 instances, 8 memories and 64 tables. Wall-clock time is
//! not limited here: the engine's timeout drops the run's future, and a running guest yields
//! at every epoch tick (10 ms), so dropping the future stops it promptly.
//!
//! # Determinism
//!
//! Guests see virtual wall and monotonic clocks that start at recorded values and move 1 µs
//! per read, random sources (`wasi:random/random`, `insecure`, `insecure-seed`) derived from
//! a seed, NaNs canonicalised, relaxed SIMD in its deterministic form, no threads. A
//! successful outcome's `details` record the component digest, fuel used, memory peak, the
//! seed and where the clocks started. File metadata is normalised (module `fsmeta`): every
//! file time reads as the clock's start, listings are sorted by name, link counts read 1 and
//! folder sizes 0, metadata hashes are handed out in order. Still host-dependent: real time
//! spent in `poll` sleeps (the virtual clocks do not jump).
//!
//! # Speed
//!
//! Components are compiled once and kept as precompiled files in a cache folder keyed by
//! component digest and wasmtime's engine compatibility hash; only those files are ever
//! deserialised. In memory, each component is linked once (`InstancePre`); instances come
//! from wasmtime's pooling allocator.

mod cache;
mod command;
mod determinism;
mod executor;
mod facts;
mod fsmeta;
mod limits;
mod log;
mod runtime;
mod world;

use std::path::PathBuf;

pub use cache::{ComponentDigest, LoadSource};
pub use command::{GUEST_IN, GUEST_OUT, GuestLayout, param_args};
pub use determinism::{
    CLOCK_TICK_NS, ClockStart, DEFAULT_WALL_START_NS, Seed, SeededRandom, VirtualMonotonicClock,
    VirtualWallClock,
};
pub use executor::WasmExecutor;
pub use facts::{FACTS_VERSION, WasmFacts};
pub use runtime::{
    CompileListener, CompileNotice, ComponentKind, DEFAULT_FUEL, DEFAULT_LOG_LIMIT_BYTES,
    DEFAULT_MEMORY_BYTES, DEFAULT_OUTPUT_LIMIT_BYTES, EPOCH_INTERVAL, GuestRun, LoadedComponent,
    MAX_MEMORY_BYTES, MAX_OUTPUT_ENTRIES, RuntimeOptions, WasmRuntime,
};

/// What stops kiln from running a wasm step at all (a guest failing is an outcome, not this).
#[derive(Debug, thiserror::Error)]
pub enum WasmError {
    /// wasmtime could not be set up.
    #[error("wasm runtime: {0}")]
    Engine(String),
    /// The precompiled cache could not be written.
    #[error("cannot write the precompiled component cache at `{path}`: {source}")]
    Cache {
        /// The file or folder.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The component file could not be read.
    #[error("cannot read component `{path}`: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The component file changed while it was loaded.
    #[error("component `{path}` changed while it was being loaded")]
    Changed {
        /// The file.
        path: PathBuf,
    },
    /// The file is not a valid WebAssembly component.
    #[error("`{path}` is not a valid WebAssembly component: {message}")]
    Compile {
        /// The file.
        path: PathBuf,
        /// What wasmtime said.
        message: String,
    },
    /// The component is valid but cannot run as a `wasi:cli/command`.
    #[error(
        "`{path}` cannot run as a command component (it must export `wasi:cli/run` and import \
         only WASI 0.2 interfaces): {message}"
    )]
    NotACommand {
        /// The file.
        path: PathBuf,
        /// What wasmtime said.
        message: String,
    },
    /// Instantiation failed for a reason other than the guest's memory limit.
    #[error("cannot instantiate the component: {message}")]
    Instantiate {
        /// What wasmtime said.
        message: String,
    },
    /// A folder or file of the sandbox could not be set up.
    #[error("cannot prepare `{path}` for the guest: {source}")]
    Sandbox {
        /// The file or folder.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// An input or output is not where the calling convention needs it.
    #[error(
        "step `{step}`: {what} is at `{path}`, outside `{dir}`; the wasm executor maps only \
         that folder into the guest"
    )]
    Layout {
        /// The step id.
        step: String,
        /// Which input or output.
        what: String,
        /// Where it is.
        path: PathBuf,
        /// Where it should be.
        dir: PathBuf,
    },
    /// The step's command line (`args`, `stdin`, `stdout`) cannot be used as written.
    #[error("step `{step}`: {message}")]
    CommandLine {
        /// The step id.
        step: String,
        /// What is wrong, and what to do.
        message: String,
    },
    /// The task has no component file.
    #[error("step `{step}` has no component file (the engine resolves it before running)")]
    NoComponent {
        /// The step id.
        step: String,
    },
    /// The task is not a wasm step.
    #[error("step `{step}` is not a wasm step")]
    NotWasm {
        /// The step id.
        step: String,
    },
    /// A replay handed facts of a recorded attempt that this kiln cannot use.
    #[error("step `{step}`: {message}")]
    Recorded {
        /// The step id.
        step: String,
        /// What is wrong with them.
        message: String,
    },
}

impl From<WasmError> for kiln_engine::ExecutorError {
    fn from(e: WasmError) -> Self {
        match e {
            WasmError::Read { .. }
            | WasmError::Changed { .. }
            | WasmError::Compile { .. }
            | WasmError::NotACommand { .. } => kiln_engine::ExecutorError::component(e.to_string()),
            _ => kiln_engine::ExecutorError::new(e.to_string()),
        }
    }
}
