//! Counts the bytes of input `src`, reading it in 64 KiB pieces, and writes the count to
//! output `n`: a step that reads an input of any size in constant memory.
use std::io::Read;

fn main() {
    let args = kiln_wasm_test_guests::args();
    let mut file = std::fs::File::open(&args.inputs["src"]).expect("open src");
    let mut buf = vec![0u8; 64 << 10];
    let mut total: u64 = 0;
    loop {
        match file.read(&mut buf).expect("read src") {
            0 => break,
            n => total += n as u64,
        }
    }
    std::fs::write(&args.outputs["n"], format!("{total}\n")).expect("write n");
}
