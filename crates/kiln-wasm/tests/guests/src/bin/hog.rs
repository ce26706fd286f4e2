//! Asks for 8 GiB of memory. `--param how=grow` (the default) asks in one `memory.grow` of
//! 8 GiB, more than a 32-bit memory can hold; `--param how=vec` allocates 1 GiB vectors
//! until it holds 8 GiB. Either way it panics when it is refused (and exits 0 if it is not).
fn main() {
    let args = kiln_wasm_test_guests::args();
    const PAGE: usize = 64 << 10;
    match args.params.get("how").map_or("grow", String::as_str) {
        "grow" => {
            let pages = (8u64 << 30) / PAGE as u64;
            println!("asking for 8 GiB in one memory.grow of {pages} pages");
            let before = core::arch::wasm32::memory_grow(0, pages as usize);
            if before == usize::MAX {
                panic!("memory.grow of 8 GiB was refused");
            }
            println!("memory grew from {before} pages");
        }
        "vec" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            for gib in 1..=8 {
                println!("asking for 1 GiB more ({gib} GiB in all)");
                // Zeroed and never touched: fresh wasm pages are zero, so this costs address
                // space, not host memory.
                hoard.push(vec![0u8; 1 << 30]);
                println!("holding {gib} GiB");
            }
        }
        other => panic!("unknown how={other}"),
    }
}
