//! Small outputs of other steps in templates: the planned step lists what it reads, and is
//! filled with the values the engine read, as `kiln_plan::values` does it in a run and for a
//! replay.

mod golden;

use std::collections::BTreeMap;

use kiln_plan::values::{fill, read};
use kiln_plan::{Plan, StepKind};
use kiln_spec::Value;
use serde_json::json;

/// The golden pipeline `tests/ui/valid/output-values.yaml`, planned.
fn plan() -> Plan {
    golden::plan("output-values")
}

#[test]
fn a_join_waits_for_both_branches_and_may_do_without_either() {
    let plan = plan();
    let pick = plan.step("pick").expect("pick");
    assert_eq!(pick.depends_on, ["fast", "prep", "slow"]);
    // `prep` is read without a fallback: its skip skips `pick`; the branches' do not.
    assert_eq!(pick.optional, ["fast", "slow"]);
    let templates: Vec<&str> = pick.values.iter().map(|v| v.template.as_str()).collect();
    assert_eq!(
        templates,
        [
            "steps.fast.score ?? steps.slow.score",
            "steps.prep.rows",
            "steps.slow.score ?? \"nothing\""
        ]
    );
    assert_eq!(pick.values[2].default, Some(json!("nothing")));
    let report = plan.step("report").expect("report");
    assert!(report.optional.is_empty());
    assert_eq!(report.depends_on, ["prep"]);
}

#[test]
fn values_fill_args_env_and_typed_params_and_so_the_cache_key() {
    let plan = plan();
    let values = BTreeMap::from([
        (
            "steps.fast.score ?? steps.slow.score".to_owned(),
            json!(0.93),
        ),
        ("steps.prep.rows".to_owned(), json!(120)),
        (
            "steps.slow.score ?? \"nothing\"".to_owned(),
            json!("nothing"),
        ),
    ]);
    let pick = fill(plan.step("pick").expect("pick"), &values).expect("fills");
    assert!(pick.values.is_empty(), "a filled step reads nothing more");
    // One whole template under `with` keeps the value's type; text around it makes a string.
    assert_eq!(pick.params["score"], Value::Float(0.93));
    assert_eq!(pick.params["rows"], Value::Int(120));
    assert_eq!(
        pick.params["note"],
        Value::String("slow said nothing".into())
    );
    assert_eq!(pick.cache_key.params, pick.params);

    let report = fill(plan.step("report").expect("report"), &values).expect("fills");
    let StepKind::Container(c) = &report.kind else {
        panic!("a container step")
    };
    assert_eq!(c.args, ["--rows=120"]);
    assert_eq!(c.env["ROWS"], "120");
    let key = report.cache_key.container.as_ref().expect("container key");
    assert_eq!(key.args, ["--rows=120"]);
    // Another value is another key.
    let other = BTreeMap::from([("steps.prep.rows".to_owned(), json!(121))]);
    let report2 = fill(plan.step("report").expect("report"), &other).expect("fills");
    assert_ne!(report.cache_key, report2.cache_key);
}

#[test]
fn a_missing_value_is_an_error_not_a_template_left_in_place() {
    let plan = plan();
    let e = fill(plan.step("report").expect("report"), &BTreeMap::new()).unwrap_err();
    assert!(e.contains("no value for `{{steps.prep.rows}}`"), "{e}");
}

#[test]
fn an_output_reads_as_json_or_as_its_text() {
    assert_eq!(read(b"120\n").unwrap(), json!(120));
    assert_eq!(read(b"[1, 2]").unwrap(), json!([1, 2]));
    assert_eq!(read(b"train-v2\n").unwrap(), json!("train-v2"));
    assert_eq!(read(b"two words\r\n").unwrap(), json!("two words"));
    assert!(
        read(&[0xff, 0xfe])
            .unwrap_err()
            .contains("neither JSON nor text")
    );
}
