//! `exit3` imports `wasi:cli/exit.exit-with-code`: tell the component linker its type.

fn main() {
    let wit = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("wit/exit-with-code.wit");
    println!("cargo:rerun-if-changed={}", wit.display());
    if std::env::var("TARGET").is_ok_and(|t| t == "wasm32-wasip2") {
        println!(
            "cargo:rustc-link-arg-bin=exit3=--component-type={}",
            wit.display()
        );
    }
}
