//! Fails: a message on stderr, then exit code 3 through `wasi:cli/exit.exit-with-code`.

#[link(wasm_import_module = "wasi:cli/exit@0.2.12")]
unsafe extern "C" {
    #[link_name = "exit-with-code"]
    fn exit_with_code(status_code: i32) -> !;
}

fn main() {
    use std::io::Write as _;
    println!("about to fail");
    eprintln!("error: the data is bad (row 7)");
    let _ = std::io::stdout().flush();
    // SAFETY: the import is declared by wit/exit-with-code.wit and never returns.
    unsafe { exit_with_code(3) }
}
