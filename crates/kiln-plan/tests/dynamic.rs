//! Fan-out over a list a step writes: a planned template expanded with the items the engine
//! read, as `kiln_plan::dynamic` does it in a run and for a replay.

mod golden;

use kiln_plan::dynamic::{check_items, instantiate};
use kiln_plan::{InputSource, Plan, StepKind};
use kiln_spec::Value;
use serde_json::json;

/// The golden pipeline `tests/ui/valid/dynamic-fan-out.yaml`, planned.
fn plan() -> Plan {
    golden::plan("dynamic-fan-out")
}

fn shards() -> Vec<serde_json::Value> {
    vec![
        json!({"path": "a.csv", "rows": 3}),
        json!({"path": "b.csv", "rows": 40}),
    ]
}

#[test]
fn instances_take_fields_of_the_items_with_their_types() {
    let mut plan = plan();
    let ids = plan.expand("work", &shards()).expect("expands");
    assert_eq!(ids, ["work[0]", "work[1]"]);
    let order: Vec<&str> = plan.steps.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(
        order,
        ["list", "work", "work[0]", "work[1]", "score", "merge"]
    );
    let second = plan.step("work[1]").expect("instance 1");
    assert_eq!(second.params["shard"], Value::String("b.csv".into()));
    assert_eq!(second.params["rows"], Value::Int(40));
    assert_eq!(second.cache_key.params["rows"], Value::Int(40));
    assert_eq!(second.instance.as_ref().map(|i| i.index), Some(1));
    assert!(second.for_each.is_none());
    assert_eq!(second.depends_on, ["list"]);
    // Instances of the same template differ only by what comes from the item.
    let first = plan.step("work[0]").expect("instance 0");
    assert_ne!(first.cache_key, second.cache_key);
}

#[test]
fn a_collecting_step_waits_for_and_reads_every_instance() {
    let mut plan = plan();
    plan.expand("work", &shards()).expect("expands");
    let merge = plan.step("merge").expect("merge");
    match &merge.inputs["parts"] {
        InputSource::Collect { instances, .. } => assert_eq!(instances, &["work[0]", "work[1]"]),
        other => panic!("merge reads {other:?}"),
    }
    assert!(merge.depends_on.iter().any(|d| d == "work[1]"));
    // `score` (paired with `work`) still reads the template until it is expanded itself.
    let score = plan.step("score").expect("score");
    assert!(matches!(&score.inputs["part"], InputSource::Step { step, .. } if step == "work"));
}

#[test]
fn a_paired_template_reads_the_instance_of_its_own_index() {
    let mut plan = plan();
    plan.expand("work", &shards()).expect("expands");
    plan.expand("score", &shards()).expect("expands");
    let score = plan.step("score[1]").expect("instance 1");
    assert!(
        matches!(&score.inputs["part"], InputSource::Step { step, .. } if step == "work[1]"),
        "{:?}",
        score.inputs
    );
    assert!(score.depends_on.iter().any(|d| d == "work[1]"));
    assert!(!score.depends_on.iter().any(|d| d == "work[0]"));
    let StepKind::Container(container) = &score.kind else {
        panic!("a container step")
    };
    assert_eq!(container.args, ["--name=b.csv"]);
    // Labelled by an item's name where it has one, else by the id.
    assert_eq!(score.label(), "score[1]");
    let merge = plan.step("merge").expect("merge");
    match &merge.inputs["sizes"] {
        InputSource::Collect { instances, .. } => {
            assert_eq!(instances, &["score[0]", "score[1]"])
        }
        other => panic!("merge reads {other:?}"),
    }
}

#[test]
fn a_missing_field_names_the_item_and_its_fields() {
    let plan = plan();
    let work = plan.step("work").expect("work");
    let items = [json!({"path": "a.csv"})];
    let e = instantiate(work, &items, |id| plan.step(id)).expect_err("no field `rows`");
    assert!(
        e.contains("item 0 has no field `rows` (its fields: path)"),
        "{e}"
    );
    let e = instantiate(work, &[json!("a.csv")], |id| plan.step(id)).expect_err("not an object");
    assert!(
        e.contains("item 0 is a string (`a.csv`), not an object"),
        "{e}"
    );
}

#[test]
fn only_lists_of_plain_items_are_fanned_out_over() {
    assert!(
        check_items(&json!({"a": 1}))
            .unwrap_err()
            .contains("not a JSON list")
    );
    assert!(
        check_items(&json!([1, null]))
            .unwrap_err()
            .contains("item 1 is null")
    );
    assert!(
        check_items(&json!([[1]]))
            .unwrap_err()
            .contains("item 0 is a list")
    );
    assert_eq!(
        check_items(&json!([1, "a", {"x": [1, 2]}])).unwrap().len(),
        3
    );
}

#[test]
fn plain_items_label_their_instances() {
    let mut plan = plan();
    let named = [
        json!({"name": "p0", "path": "a", "rows": 1}),
        json!({"name": "p1", "path": "b", "rows": 2}),
    ];
    plan.expand("work", &named).expect("expands");
    assert_eq!(plan.step("work[1]").expect("instance").label(), "work[p1]");
    // A paired template over a list of another length cannot pair.
    let e = plan
        .expand(
            "score",
            &shards()[..1]
                .iter()
                .chain(&shards())
                .cloned()
                .collect::<Vec<_>>(),
        )
        .expect_err("three items, two instances");
    assert!(e.contains("lists of different lengths"), "{e}");
}

/// `tests/ui/valid/nested-fan-out.yaml`, planned.
fn nested_plan() -> Plan {
    golden::plan("nested-fan-out")
}

#[test]
fn a_nested_fan_out_runs_once_per_inner_element_and_pairs_with_its_like() {
    let mut plan = nested_plan();
    let configs = vec![
        json!({"name": "small", "seeds": [1, 2]}),
        json!({"name": "big", "seeds": [3]}),
    ];
    let train = plan.expand("train", &configs).expect("expands");
    assert_eq!(train, ["train[0]", "train[1]", "train[2]"]);
    let third = plan.step("train[2]").expect("instance 2");
    assert_eq!(
        third.instance.as_ref().and_then(|i| i.label.as_deref()),
        Some("train[big/3]")
    );
    let StepKind::Container(c) = &third.kind else {
        panic!("a container step")
    };
    assert!(c.command[2].contains("echo big 3 >"), "{:?}", c.command);
    // `check` has the same list and the same `nested`: instance k reads train[k].
    plan.expand("check", &configs).expect("expands");
    let check = plan.step("check[1]").expect("check[1]");
    assert_eq!(
        check.inputs["model"],
        InputSource::Step {
            step: "train[1]".into(),
            output: "model".into()
        }
    );
    // `summary` has the list without `nested`: two instances, each collecting all three.
    let summary = plan.expand("summary", &configs).expect("expands");
    assert_eq!(summary.len(), 2);
    let InputSource::Collect { instances, .. } = &plan.step("summary[0]").unwrap().inputs["models"]
    else {
        panic!("a collecting input")
    };
    assert_eq!(instances, &["train[0]", "train[1]", "train[2]"]);
}

#[test]
fn a_nested_list_that_is_not_one_is_refused_saying_which_item() {
    use kiln_plan::dynamic::flatten;
    let e = flatten(&[json!({"name": "a", "seeds": 3})], "seeds").unwrap_err();
    assert!(
        e.contains("item 0's `seeds` is a number, not a list"),
        "{e}"
    );
    let e = flatten(&[json!({"name": "a"})], "seeds").unwrap_err();
    assert!(e.contains("item 0 has no field `seeds`"), "{e}");
    let e = flatten(&[json!(4)], "seeds").unwrap_err();
    assert!(e.contains("not an object"), "{e}");
    let flat = flatten(&[json!({"seeds": []}), json!({"seeds": [7]})], "seeds").unwrap();
    assert_eq!(flat, [json!({"seeds": 7})]);
}
