//! [`WasmExecutor`]: the engine's [`Executor`] for wasm steps.

use async_trait::async_trait;
use kiln_engine::{ExecOutcome, Executor, ExecutorError, StagedTask};
use kiln_plan::{PlannedStep, StepKind};

use crate::command::GuestLayout;
use crate::determinism::{ClockStart, Seed};
use crate::facts::WasmFacts;
use crate::runtime::{GuestRun, MAX_MEMORY_BYTES, WasmRuntime};
use crate::{WasmError, limits};

/// Runs wasm steps (plain `wasi:cli/command` components) on a shared [`WasmRuntime`].
#[derive(Debug, Clone)]
pub struct WasmExecutor {
    runtime: WasmRuntime,
}

impl WasmExecutor {
    /// An executor running on `runtime`.
    pub fn new(runtime: WasmRuntime) -> Self {
        Self { runtime }
    }

    /// The runtime it runs on.
    pub fn runtime(&self) -> &WasmRuntime {
        &self.runtime
    }

    /// The run a task asks for: the calling convention's layout, the step's limits, and its
    /// seed (derived from the step's cache key).
    pub fn guest_run(task: &StagedTask) -> Result<GuestRun, WasmError> {
        let StepKind::Wasm {
            memory_bytes, fuel, ..
        } = &task.step.kind
        else {
            return Err(WasmError::NotWasm {
                step: task.step.id.to_string(),
            });
        };
        // A replay gives the limits and clock starts the recorded attempt ran with.
        let recorded =
            WasmFacts::from_details(&task.recorded).map_err(|message| WasmError::Recorded {
                step: task.step.id.to_string(),
                message,
            })?;
        let clock_start = recorded.as_ref().map(|facts| ClockStart {
            wall_ns: facts.clock_wall_start_ns,
            monotonic_ns: facts.clock_monotonic_start_ns,
        });
        Ok(GuestRun {
            layout: GuestLayout::for_task(task)?,
            log: task.log.clone(),
            memory_bytes: recorded
                .as_ref()
                .map(|f| f.memory_limit_bytes)
                .or(*memory_bytes),
            fuel: recorded.as_ref().map(|f| f.fuel_limit).or(*fuel),
            seed: Seed::from_cache_key(&task.cache_key),
            clock_start,
        })
    }
}

#[async_trait]
impl Executor for WasmExecutor {
    fn name(&self) -> &str {
        "wasm"
    }

    /// A guest sees `in/` through a read-only preopen: it can neither write, truncate, move,
    /// link nor touch what is there.
    fn reads_inputs_read_only(&self) -> bool {
        true
    }

    async fn preflight(&self, steps: &[&PlannedStep]) -> Result<(), Vec<String>> {
        let problems: Vec<String> = steps
            .iter()
            .filter_map(|step| match &step.kind {
                StepKind::Wasm {
                    memory_bytes: Some(bytes),
                    ..
                } if *bytes > MAX_MEMORY_BYTES => Some(format!(
                    "step `{}`: memory limit {bytes} bytes is above what the wasm runner \
                     allows ({MAX_MEMORY_BYTES} bytes, 4 GiB)",
                    step.id
                )),
                StepKind::Wasm {
                    memory_bytes: Some(bytes),
                    ..
                } if *bytes < limits::WASM_PAGE => Some(format!(
                    "step `{}`: memory limit {bytes} bytes is below one wasm page (64 KiB)",
                    step.id
                )),
                StepKind::Wasm { .. } => None,
                StepKind::Container(_) => Some(format!(
                    "step `{}` is a container step, not a wasm step",
                    step.id
                )),
            })
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    async fn run_staged(&self, task: &StagedTask) -> Result<ExecOutcome, ExecutorError> {
        let run = Self::guest_run(task)?;
        let path = task
            .component
            .as_deref()
            .ok_or_else(|| WasmError::NoComponent {
                step: task.step.id.to_string(),
            })?;
        let component = self.runtime.load(path).await?;
        tracing::debug!(step = %task.step.id, component = %component.digest(), "wasm step started");
        Ok(self.runtime.run_guest_shared(component, run).await?)
    }
}
