//! Reads the CSV input `src` and writes output `dst`: its header and the row of param `i`
//! (counting from 0, wrapping around), with every param as a column. A tiny step whose
//! output differs from one fan-out instance to the next, as real steps' outputs do.
fn main() {
    let args = kiln_wasm_test_guests::args();
    let text = std::fs::read_to_string(&args.inputs["src"]).expect("read src");
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    let rows: Vec<&str> = lines.collect();
    let i: usize = args.params.get("i").and_then(|v| v.parse().ok()).unwrap_or(0);
    let row = rows.get(i % rows.len().max(1)).copied().unwrap_or_default();
    let names: Vec<&str> = args.params.keys().map(String::as_str).collect();
    let values: Vec<&str> = args.params.values().map(String::as_str).collect();
    std::fs::write(
        &args.outputs["dst"],
        format!("{header},{}\n{row},{}\n", names.join(","), values.join(",")),
    )
    .expect("write dst");
    println!("row {i} of {}", rows.len());
}
