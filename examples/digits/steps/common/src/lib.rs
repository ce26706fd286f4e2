//! Code shared by the step programs of kiln's digits example.
//!
//! Every step is a plain CLI program that runs natively and as a `wasi:cli/command`
//! WebAssembly component, with the same conventions:
//!
//! * [`args`]: `--in NAME=PATH`, `--out NAME=PATH`, `--param NAME=VALUE`; usage errors exit 2,
//!   failed checks exit 1 ([`StepError`], [`args::main_with`]);
//! * [`table`]: the CSV tables the steps pass to each other, read leniently and written
//!   canonically (fixed 6-decimal floats);
//! * [`json`]: a tiny JSON value for the reports, written deterministically;
//! * [`SplitMix64`]: the seeded PRNG behind the train/test shuffle.
//!
//! Nothing here reads the clock, the environment or an unseeded random source: the same
//! input bytes and params give the same output bytes, natively and under wasm.

pub mod args;
#[cfg(feature = "component")]
pub mod component;
pub mod json;
pub mod table;

pub use args::{Args, ParamSpec, StepSpec, main_with};
pub use json::Json;
pub use table::{NumTable, TextTable, digits_header, fmt_f6, fmt_num};

/// Pixels per image (8×8).
pub const N_PIXELS: usize = 64;
/// Classes (the digits 0..=9).
pub const N_CLASSES: usize = 10;
/// The largest pixel value in the raw data (pixels are counts of a 4×4 block: 0..=16).
pub const MAX_PIXEL: f64 = 16.0;

/// Why a step failed. The message goes to stderr; the kind decides the exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepError {
    /// Bad command line (unknown or missing argument, bad param value): exit code 2.
    Usage(String),
    /// A failed check or an I/O error: exit code 1.
    Failed(String),
}

impl StepError {
    /// A usage error (exit 2).
    pub fn usage(msg: impl Into<String>) -> StepError {
        StepError::Usage(msg.into())
    }

    /// A failed check or I/O error (exit 1).
    pub fn failed(msg: impl Into<String>) -> StepError {
        StepError::Failed(msg.into())
    }

    /// The message.
    pub fn message(&self) -> &str {
        match self {
            StepError::Usage(m) | StepError::Failed(m) => m,
        }
    }

    /// Whether this is a usage error.
    pub fn is_usage(&self) -> bool {
        matches!(self, StepError::Usage(_))
    }

    /// The process exit code: 2 for usage errors, 1 otherwise.
    ///
    /// Under `wasm32-wasip2` the host only sees success or failure (`wasi:cli/exit` carries
    /// no code), so there the stderr message is what tells the two apart.
    pub fn exit_code(&self) -> u8 {
        match self {
            StepError::Usage(_) => 2,
            StepError::Failed(_) => 1,
        }
    }
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for StepError {}

/// The SplitMix64 generator (Steele, Lea & Flood, 2014): tiny, fast, and fully determined by
/// its seed, on every platform.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..bound` (`bound > 0`), by Lemire's multiply-shift (bias below 2^-32
    /// for the sizes used here).
    pub fn below(&mut self, bound: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }

    /// Shuffles `items` in place (Fisher–Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_matches_the_reference() {
        // Reference values of splitmix64.c (Vigna) seeded with 0.
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(r.next_u64(), 0x6e78_9e6a_a1b9_65f4);
        assert_eq!(r.next_u64(), 0x06c4_5d18_8009_454f);
    }

    #[test]
    fn shuffle_is_a_seeded_permutation() {
        let mut a: Vec<u32> = (0..100).collect();
        let mut b = a.clone();
        SplitMix64::new(42).shuffle(&mut a);
        SplitMix64::new(42).shuffle(&mut b);
        assert_eq!(a, b, "same seed, same order");
        let mut c: Vec<u32> = (0..100).collect();
        SplitMix64::new(43).shuffle(&mut c);
        assert_ne!(a, c, "another seed, another order");
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<u32>>());
        assert_ne!(a, sorted);
    }

    #[test]
    fn below_stays_in_range() {
        let mut r = SplitMix64::new(7);
        for bound in 1..50 {
            for _ in 0..20 {
                assert!(r.below(bound) < bound);
            }
        }
    }

    #[test]
    fn exit_codes() {
        assert_eq!(StepError::usage("x").exit_code(), 2);
        assert_eq!(StepError::failed("x").exit_code(), 1);
        assert_eq!(StepError::failed("boom").to_string(), "boom");
    }
}
