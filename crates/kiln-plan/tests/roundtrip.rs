//! A plan read back from its JSON (as `kiln replay` reads a run's `plan.json`) is the plan
//! that was written: every field survives, floats stay floats.

use std::path::Path;

#[test]
fn the_digits_plan_survives_its_json() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/digits/pipeline.yaml");
    let (_, compiled) = kiln_plan::plan_file(&file, &[]).expect("read the digits pipeline");
    let plan = compiled.plan.expect("the digits pipeline plans");
    let json = serde_json::to_value(&plan).unwrap();
    let back: kiln_plan::Plan = serde_json::from_value(json.clone()).expect("plan.json reads back");
    assert_eq!(serde_json::to_value(&back).unwrap(), json);
    assert_eq!(back.steps.len(), plan.steps.len());
    // `learning_rates: [0.01, 0.1, 1.0]`: 1.0 must come back as a float, not the int 1.
    let lr = &back
        .step("train[2]")
        .unwrap()
        .instance
        .as_ref()
        .unwrap()
        .item;
    assert_eq!(lr, &kiln_spec::Value::Float(1.0));
}
