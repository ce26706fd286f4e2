//! Limits too big for a golden file: a pipeline of many megabytes, a fan-out of 100,001 items.

use kiln_plan::{PlanOptions, compile};

fn codes(text: &str, overrides: &[(&str, String)]) -> Vec<&'static str> {
    let pipeline = match kiln_spec::parse(text) {
        Ok(p) => p,
        Err(d) => return vec![d.code],
    };
    let compiled = compile(
        &pipeline,
        &PlanOptions {
            base_dir: ".".into(),
            overrides: overrides
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
        },
    );
    compiled.diagnostics.iter().map(|d| d.code).collect()
}

const HEAD: &str = "apiVersion: kiln/v1\nname: big\n";

#[test]
fn a_literal_fan_out_of_100_001_items_is_refused() {
    let items = vec!["1"; 100_001].join(", ");
    let text = format!(
        "{HEAD}steps:\n  train:\n    wasm: train@1.0.0\n    for_each: [{items}]\n    with: {{x: \"{{{{item}}}}\"}}\n"
    );
    assert_eq!(codes(&text, &[]), vec!["kiln::plan::fan-out-too-large"]);
}

#[test]
fn a_fan_out_of_100_001_items_from_the_command_line_is_refused() {
    let text = format!(
        "{HEAD}params:\n  xs:\n    type: list[int]\n    default: [1]\n    description: items\nsteps:\n  train:\n    wasm: train@1.0.0\n    for_each: \"{{{{params.xs}}}}\"\n"
    );
    assert!(codes(&text, &[]).is_empty());
    let many = vec!["1"; 100_001].join(",");
    assert_eq!(
        codes(&text, &[("xs", many)]),
        vec!["kiln::plan::fan-out-too-large"]
    );
}

#[test]
fn a_pipeline_of_too_many_values_is_refused_by_the_parser() {
    let items = vec!["1"; 2_100_000].join(",");
    let text = format!("{HEAD}steps:\n  train:\n    wasm: train@1.0.0\n    for_each: [{items}]\n");
    assert_eq!(codes(&text, &[]), vec!["kiln::spec::budget"]);
}

#[test]
fn a_file_over_16_mib_is_refused_before_parsing() {
    let text = format!(
        "{HEAD}description: \"{}\"\nsteps: {{}}\n",
        "x".repeat(kiln_spec::MAX_SOURCE_BYTES)
    );
    assert_eq!(codes(&text, &[]), vec!["kiln::spec::too-large"]);
}
