//! What a guest could read from the host to behave differently on each run, replaced by
//! values fixed per run: virtual clocks and seeded random sources.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use wasmtime_wasi::{HostMonotonicClock, HostWallClock};

/// Where the virtual wall clock starts when nothing else is said: 2024-01-01T00:00:00Z, in
/// nanoseconds since the Unix epoch.
pub const DEFAULT_WALL_START_NS: u64 = 1_704_067_200_000_000_000;

/// How far both virtual clocks move on every read: 1 µs.
pub const CLOCK_TICK_NS: u64 = 1_000;

/// The starting points of a run's virtual clocks (recorded in the run record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockStart {
    /// Wall clock, nanoseconds since the Unix epoch.
    pub wall_ns: u64,
    /// Monotonic clock, nanoseconds.
    pub monotonic_ns: u64,
}

impl Default for ClockStart {
    fn default() -> Self {
        Self {
            wall_ns: DEFAULT_WALL_START_NS,
            monotonic_ns: 0,
        }
    }
}

/// A wall clock that starts at a given time and moves by [`CLOCK_TICK_NS`] per read.
#[derive(Debug)]
pub struct VirtualWallClock {
    next_ns: AtomicU64,
}

impl VirtualWallClock {
    /// A clock whose first read returns `start_ns` (nanoseconds since the Unix epoch).
    pub fn new(start_ns: u64) -> Self {
        Self {
            next_ns: AtomicU64::new(start_ns),
        }
    }
}

impl HostWallClock for VirtualWallClock {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(CLOCK_TICK_NS)
    }

    fn now(&self) -> Duration {
        Duration::from_nanos(self.next_ns.fetch_add(CLOCK_TICK_NS, Ordering::Relaxed))
    }
}

/// A monotonic clock that starts at a given value and moves by [`CLOCK_TICK_NS`] per read.
#[derive(Debug)]
pub struct VirtualMonotonicClock {
    next_ns: AtomicU64,
}

impl VirtualMonotonicClock {
    /// A clock whose first read returns `start_ns`.
    pub fn new(start_ns: u64) -> Self {
        Self {
            next_ns: AtomicU64::new(start_ns),
        }
    }
}

impl HostMonotonicClock for VirtualMonotonicClock {
    fn resolution(&self) -> u64 {
        CLOCK_TICK_NS
    }

    fn now(&self) -> u64 {
        self.next_ns.fetch_add(CLOCK_TICK_NS, Ordering::Relaxed)
    }
}

/// A run's random seed: 32 bytes, from which every random source of the guest is derived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seed(pub [u8; 32]);

impl Seed {
    /// The seed of a step attempt: derived from the step's cache key, which covers the
    /// component, params and input bytes, so the same inputs draw the same random bytes on
    /// every machine and in every replay.
    pub fn from_cache_key(key: &str) -> Self {
        let mut hasher =
            blake3::Hasher::new_derive_key("kiln-wasm 2026 step seed from cache key v1");
        hasher.update(key.as_bytes());
        Self(*hasher.finalize().as_bytes())
    }

    /// The seed as lowercase hex (how the run record shows it).
    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }

    /// A byte stream derived from this seed for one purpose (`context`).
    pub fn stream(&self, context: &str) -> SeededRandom {
        SeededRandom::new(self, context)
    }

    /// The value `wasi:random/insecure-seed` returns.
    pub fn insecure_seed(&self) -> u128 {
        let mut bytes = [0u8; 16];
        self.stream("insecure-seed").fill(&mut bytes);
        u128::from_le_bytes(bytes)
    }
}

/// A random source that replays the same bytes for the same seed: blake3 in extendable-output
/// mode, keyed by the seed. Its bytes are fixed by blake3's specification, so they do not
/// change with a `rand` upgrade.
pub struct SeededRandom {
    reader: blake3::OutputReader,
}

impl SeededRandom {
    fn new(seed: &Seed, context: &str) -> Self {
        let mut hasher = blake3::Hasher::new_keyed(&seed.0);
        hasher.update(context.as_bytes());
        Self {
            reader: hasher.finalize_xof(),
        }
    }

    fn fill(&mut self, buf: &mut [u8]) {
        self.reader.fill(buf);
    }
}

impl std::fmt::Debug for SeededRandom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SeededRandom")
    }
}

impl rand::TryRng for SeededRandom {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        let mut b = [0u8; 4];
        self.fill(&mut b);
        Ok(u32::from_le_bytes(b))
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        let mut b = [0u8; 8];
        self.fill(&mut b);
        Ok(u64::from_le_bytes(b))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        self.fill(dst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng as _;

    #[test]
    fn clocks_start_where_told_and_tick_per_read() {
        let wall = VirtualWallClock::new(5_000);
        assert_eq!(wall.now(), Duration::from_nanos(5_000));
        assert_eq!(wall.now(), Duration::from_nanos(5_000 + CLOCK_TICK_NS));
        let mono = VirtualMonotonicClock::new(0);
        assert_eq!(mono.now(), 0);
        assert_eq!(mono.now(), CLOCK_TICK_NS);
    }

    #[test]
    fn seeds_are_stable_and_depend_on_step_and_params() {
        let a = Seed::from_cache_key("blake3:aa");
        assert_eq!(a, Seed::from_cache_key("blake3:aa"));
        assert_ne!(a, Seed::from_cache_key("blake3:ab"));
        assert_eq!(a.to_hex().len(), 64);
    }

    #[test]
    fn random_streams_replay_and_differ_by_purpose() {
        let seed = Seed([7; 32]);
        let (mut x, mut y) = (seed.stream("random"), seed.stream("random"));
        assert_eq!(x.next_u64(), y.next_u64());
        let mut z = seed.stream("insecure");
        assert_ne!(x.next_u64(), z.next_u64());
        assert_eq!(seed.insecure_seed(), seed.insecure_seed());
    }
}
