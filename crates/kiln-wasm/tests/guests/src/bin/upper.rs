//! A new version of `copy`: copies input `src` to output `dst` in upper case. Replay tests
//! swap it in for `copy` to see the change go downstream.
fn main() {
    let args = kiln_wasm_test_guests::args();
    let bytes = std::fs::read(&args.inputs["src"]).expect("read src");
    std::fs::write(&args.outputs["dst"], bytes.to_ascii_uppercase()).expect("write dst");
    println!("copied {} bytes in upper case", bytes.len());
}
