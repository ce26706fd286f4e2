//! Sub-pipelines are inlined at plan time: a step inlined from `pipeline: ./FILE.yaml` has
//! exactly the cache key of the same step written by hand, so including a file changes
//! names, never what is cached.

use std::fs;

fn write(dir: &std::path::Path, name: &str, text: &str) {
    let path = dir.join(name);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

#[test]
fn inlined_steps_have_the_keys_of_the_same_steps_written_by_hand() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "data/x.csv", "1\n");
    write(
        dir.path(),
        "sub/train.yaml",
        r#"
apiVersion: kiln/v1
name: train
params:
  lr: {type: float, description: Learning rate.}
inputs: [data]
outputs: {model: fit.model}
steps:
  fit:
    container: {image: busybox, command: [sh, -c, "echo {{params.lr}} > {{outputs.model}}"]}
    inputs: {data: inputs.data}
    outputs: [model]
"#,
    );
    write(
        dir.path(),
        "included.yaml",
        r#"
apiVersion: kiln/v1
name: included
steps:
  train:
    pipeline: ./sub/train.yaml
    with: {lr: 0.5}
    inputs: {data: ./data/x.csv}
"#,
    );
    write(
        dir.path(),
        "by-hand.yaml",
        r#"
apiVersion: kiln/v1
name: by-hand
steps:
  fit:
    container: {image: busybox, command: [sh, -c, "echo 0.5 > {{outputs.model}}"]}
    inputs: {data: ./data/x.csv}
    outputs: [model]
"#,
    );
    let plan = |name: &str| {
        let (_, compiled) = kiln_plan::plan_file(&dir.path().join(name), &[]).unwrap();
        assert!(
            compiled.diagnostics.iter().all(|d| !d.is_error()),
            "{name}: {:?}",
            compiled.diagnostics
        );
        compiled.plan.unwrap()
    };
    let included = plan("included.yaml");
    let by_hand = plan("by-hand.yaml");
    let inlined = included.step("train/fit").expect("the inlined step");
    let written = by_hand.step("fit").unwrap();
    assert_eq!(inlined.cache_key, written.cache_key);
    assert_eq!(inlined.inputs, written.inputs);
    assert_eq!(inlined.kind, written.kind);
}
