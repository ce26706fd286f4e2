//! Tries to start a thread, which `wasm32-wasip2` cannot do, and panics with the error.
fn main() {
    match std::thread::Builder::new().spawn(|| 42) {
        Ok(handle) => println!("a thread ran and returned {:?}", handle.join()),
        Err(e) => panic!("cannot spawn a thread: {e}"),
    }
}
