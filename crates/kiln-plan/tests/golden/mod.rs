//! The valid golden pipelines of `tests/ui/valid/`, planned, for tests that look inside a plan.

use std::path::Path;

use kiln_plan::{Plan, PlanOptions, compile};

/// `tests/ui/valid/NAME.yaml`, planned with its defaults.
pub fn plan(name: &str) -> Plan {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/ui/valid");
    let text = std::fs::read_to_string(dir.join(format!("{name}.yaml"))).expect("the golden");
    let pipeline = kiln_spec::parse(&text).expect("it parses");
    let compiled = compile(
        &pipeline,
        &PlanOptions {
            base_dir: dir,
            overrides: Vec::new(),
        },
    );
    compiled.plan.expect("it plans")
}
