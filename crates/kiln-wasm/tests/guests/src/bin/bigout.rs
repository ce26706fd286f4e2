//! Writes 10 GiB of ones, 1 MiB at a time, to stdout (`--param to=stdout`) or to output
//! `big` (the default): a file, or with `--param files=N` a folder of N files written in turn.
//! It prints a line every 64 MiB and exits 0 if nothing stopped it.
use std::io::Write;

const TOTAL: u64 = 10 << 30;
const CHUNK: usize = 1 << 20;

fn main() {
    let args = kiln_wasm_test_guests::args();
    let chunk = vec![1u8; CHUNK];
    if args.params.get("to").map(String::as_str) == Some("stdout") {
        let mut out = std::io::stdout().lock();
        for _ in 0..TOTAL / CHUNK as u64 {
            out.write_all(&chunk).expect("stdout");
        }
        return;
    }
    let big = &args.outputs["big"];
    let mut files: Vec<std::fs::File> = match args.params.get("files") {
        None => vec![std::fs::File::create(big).expect("create big")],
        Some(n) => {
            std::fs::create_dir(big).expect("create big/");
            (0..n.parse::<usize>().expect("files=N"))
                .map(|i| std::fs::File::create(format!("{big}/part-{i}")).expect("create part"))
                .collect()
        }
    };
    let count = files.len();
    for i in 0..TOTAL / CHUNK as u64 {
        files[i as usize % count]
            .write_all(&chunk)
            .expect("write big");
        if (i + 1) % 64 == 0 {
            println!("wrote {} MiB", i + 1);
        }
    }
    println!("wrote all 10 GiB");
}
