//! Deliberately nondeterministic: for each of 20 rounds, subscribes a 1 ms
//! `wasi:clocks/monotonic-clock` timer, counts how many times `[method]pollable.ready`
//! answers false before it fires, and writes the counts, one per line, to output `counts`.
//!
//! kiln virtualises the clocks a guest reads and seeds its randomness, but a timer pollable
//! becomes ready after *real* time passes, so the counts depend on host speed and load. It
//! exists so the tests can show that kiln's replay catches a step like this as
//! nondeterministic instead of trusting its cached outputs.
//!
//! Unlike `exit3`, no wit file is passed to the component linker: std's own component type
//! already declares `wasi:clocks/monotonic-clock` and `wasi:io/poll` (0.2.x, semver
//! compatible with the 0.2.12 names below).
use std::fmt::Write as _;

#[link(wasm_import_module = "wasi:clocks/monotonic-clock@0.2.12")]
unsafe extern "C" {
    /// Returns the handle of a pollable that becomes ready `when` nanoseconds from now.
    #[link_name = "subscribe-duration"]
    fn subscribe_duration(when: u64) -> i32;
}

#[link(wasm_import_module = "wasi:io/poll@0.2.12")]
unsafe extern "C" {
    #[link_name = "[method]pollable.ready"]
    fn pollable_ready(handle: i32) -> i32;
    #[link_name = "[resource-drop]pollable"]
    fn pollable_drop(handle: i32);
}

const ROUNDS: usize = 20;
const TIMER_NS: u64 = 1_000_000;

/// Polls a fresh `TIMER_NS` timer until it fires; returns how many polls said not yet.
fn spin_once() -> u64 {
    // SAFETY: the imports have these canonical-ABI signatures; the handle is owned here,
    // used only while live, and dropped exactly once.
    unsafe {
        let timer = subscribe_duration(TIMER_NS);
        let mut misses = 0;
        while pollable_ready(timer) == 0 {
            misses += 1;
        }
        pollable_drop(timer);
        misses
    }
}

fn main() {
    let args = kiln_wasm_test_guests::args();
    let mut counts = String::new();
    for _ in 0..ROUNDS {
        writeln!(counts, "{}", spin_once()).unwrap();
    }
    print!("{counts}");
    std::fs::write(&args.outputs["counts"], counts).expect("write counts");
}
