//! Per-store resource limits: linear memory size, table size and how many instances, memories
//! and tables one run may create. A refused growth is remembered, so a guest that fails after
//! it (most abort when an allocation fails) is reported as hitting the memory limit.

use wasmtime::ResourceLimiter;

/// The size of a wasm page, the smallest memory limit that makes sense.
pub(crate) const WASM_PAGE: u64 = 64 * 1024;
/// Instances one run may create (a Rust command component has a handful of core instances;
/// a componentize-py one a few dozen).
pub(crate) const MAX_INSTANCES: usize = 64;
/// Linear memories one run may create.
pub(crate) const MAX_MEMORIES: usize = 8;
/// Tables one run may create.
pub(crate) const MAX_TABLES: usize = 64;
/// Elements one table may hold.
pub(crate) const MAX_TABLE_ELEMENTS: usize = 1 << 20;

/// The limiter of one store.
#[derive(Debug)]
pub(crate) struct GuestLimiter {
    memory_bytes: usize,
    /// The largest size a memory asked for and was refused.
    pub(crate) memory_denied: Option<usize>,
    /// The largest size any memory reached.
    pub(crate) memory_peak: usize,
}

impl GuestLimiter {
    /// A limiter allowing each linear memory up to `memory_bytes`.
    pub(crate) fn new(memory_bytes: u64) -> Self {
        Self {
            memory_bytes: usize::try_from(memory_bytes).unwrap_or(usize::MAX),
            memory_denied: None,
            memory_peak: 0,
        }
    }
}

impl ResourceLimiter for GuestLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            self.memory_denied = Some(self.memory_denied.map_or(desired, |d| d.max(desired)));
            return Ok(false);
        }
        self.memory_peak = self.memory_peak.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_growth_past_the_limit_and_remembers_it() {
        let mut l = GuestLimiter::new(1 << 20);
        assert!(l.memory_growing(0, 65536, None).unwrap());
        assert!(!l.memory_growing(65536, 2 << 20, None).unwrap());
        assert_eq!(l.memory_denied, Some(2 << 20));
        assert_eq!(l.memory_peak, 65536);
        assert!(!l.table_growing(0, MAX_TABLE_ELEMENTS + 1, None).unwrap());
    }
}
