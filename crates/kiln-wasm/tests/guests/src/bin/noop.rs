//! Does nothing: the per-run overhead of the executor.
fn main() {}
