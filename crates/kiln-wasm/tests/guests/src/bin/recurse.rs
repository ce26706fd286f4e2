//! Recurses without end: wasmtime's stack guard stops it, not the shadow stack in linear
//! memory (every frame lives in wasm locals, so only the native stack grows).

/// Not a tail call and not an accumulator LLVM could turn into a loop: the result of the
/// inner call is multiplied and then added to.
#[inline(never)]
fn descend(n: u64) -> u64 {
    if n == 0 {
        return 1;
    }
    descend(n.wrapping_add(1)).wrapping_mul(31).wrapping_add(n)
}

fn main() {
    // Starts at the argument count (at least 1), so the recursion never reaches 0.
    let start = std::env::args().count() as u64;
    println!("descending from {start}");
    println!("{}", descend(start));
}
