//! Copies input `src` to output `dst`, prints what it did and echoes its argv to `args`.
fn main() {
    let args = kiln_wasm_test_guests::args();
    let bytes = std::fs::read(&args.inputs["src"]).expect("read src");
    std::fs::write(&args.outputs["dst"], &bytes).expect("write dst");
    if let Some(path) = args.outputs.get("args") {
        let argv: Vec<String> = std::env::args().collect();
        std::fs::write(path, argv.join("\n")).expect("write args");
    }
    println!("copied {} bytes", bytes.len());
    eprintln!("a line on stderr");
}
