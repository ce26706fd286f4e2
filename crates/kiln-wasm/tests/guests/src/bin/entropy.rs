//! Reads everything a guest could get nondeterminism from (clocks, random-seeded hashing,
//! file metadata of its own output) and writes it to output `seen`.
use std::fmt::Write as _;
use std::hash::{BuildHasher, RandomState};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

fn main() {
    let args = kiln_wasm_test_guests::args();
    let mut s = String::new();
    let wall1 = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let wall2 = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let mono1 = Instant::now();
    let mono2 = Instant::now();
    writeln!(s, "wall {} {}", wall1.as_nanos(), wall2.as_nanos()).unwrap();
    writeln!(s, "mono-delta {}", (mono2 - mono1).as_nanos()).unwrap();
    for _ in 0..3 {
        writeln!(s, "hash {}", RandomState::new().hash_one(42u64)).unwrap();
    }
    let sum: f64 = (1..1000).map(|i| (i as f64).sqrt() * 0.1f64.sin()).sum();
    // A NaN made at run time: its bits are canonical under kiln, whatever the CPU does.
    let nan = std::hint::black_box(f64::INFINITY) - std::hint::black_box(f64::INFINITY);
    let neg = std::hint::black_box(-1.0f64) * nan;
    writeln!(s, "float {sum:e} {:x} {:x}", nan.to_bits(), neg.to_bits()).unwrap();
    std::fs::write(&args.outputs["seen"], s).expect("write seen");
}
