//! `parse_all` reports a mistake in every param and step, each where it is written; `parse`
//! reports the first of them.

use kiln_spec::{Diagnostic, SourceFile, parse, parse_all};

/// `(line, code)` of each diagnostic, in the order reported.
fn lines(text: &str) -> Vec<(usize, &'static str)> {
    let source = SourceFile::new("p.yaml", text);
    parse_all(text)
        .map(|_| Vec::new())
        .unwrap_or_else(|ds| ds.iter().map(|d| (line(&source, d), d.code)).collect())
}

fn line(source: &SourceFile, d: &Diagnostic) -> usize {
    d.span.map_or(0, |s| source.line_col(s.offset).line)
}

const HEAD: &str = "apiVersion: kiln/v1\nname: p\n";

#[test]
fn a_mistake_in_each_of_two_steps_is_reported_twice() {
    let text = format!(
        "{HEAD}steps:\n  a:\n    wasm: a@1.0.0\n    timeout: 30\n  b:\n    wasm: b@1.0.0\n    retries: yes\n"
    );
    assert_eq!(
        lines(&text),
        [
            (6, "kiln::spec::invalid-value"),
            (9, "kiln::spec::invalid-value")
        ]
    );
    // `parse` keeps its single diagnostic: the first in the file.
    assert_eq!(parse(&text).unwrap_err(), parse_all(&text).unwrap_err()[0]);
}

#[test]
fn top_level_params_and_steps_are_read_on_their_own() {
    let text = "apiVersion: kiln/v9\nname: Bad Name\nextra: 1\nparams:\n  n:\n    type: number\n    description: x\n  m:\n    type: int\n    descripton: y\nsteps:\n  Upper:\n    wasm: a@1.0.0\n  b:\n    wasm: b@1.0.0\n    cache: maybe\n  c:\n    wasm: c@1.0.0\n";
    assert_eq!(
        lines(text),
        [
            (1, "kiln::spec::invalid-value"),
            (2, "kiln::spec::invalid-value"),
            (3, "kiln::spec::unknown-field"),
            (6, "kiln::spec::invalid-value"),
            (10, "kiln::spec::unknown-field"),
            (12, "kiln::spec::invalid-value"),
            (16, "kiln::spec::invalid-value"),
        ]
    );
}

#[test]
fn every_missing_top_level_field_is_reported() {
    let text = "description: nothing else\n";
    let ds = parse_all(text).unwrap_err();
    let messages: Vec<&str> = ds.iter().map(|d| d.message.as_str()).collect();
    assert_eq!(
        messages,
        [
            "the pipeline has no `apiVersion`",
            "the pipeline has no `name`",
            "the pipeline has no `steps`"
        ]
    );
}

#[test]
fn a_syntax_error_stops_the_reading_but_keeps_what_came_before() {
    let text = format!(
        "{HEAD}steps:\n  a:\n    wasm: a@1.0.0\n    retries: -1\n  b:\n\twasm: b@1.0.0\n  c:\n    wasm: c@1.0.0\n    retries: x\n"
    );
    let found = lines(&text);
    assert_eq!(found[0], (6, "kiln::spec::invalid-value"), "{found:?}");
    assert!(
        found[1..]
            .iter()
            .all(|(_, code)| *code == "kiln::spec::syntax"),
        "{found:?}"
    );
    assert!(
        !found.contains(&(12, "kiln::spec::invalid-value")),
        "{found:?}"
    );
}

#[test]
fn a_duplicate_step_is_reported_once() {
    let text =
        format!("{HEAD}steps:\n  a:\n    wasm: a@1.0.0\n    retries: x\n  a:\n    wasm: a@2.0.0\n");
    assert_eq!(
        lines(&text),
        [
            (6, "kiln::spec::invalid-value"),
            (7, "kiln::spec::duplicate-key")
        ]
    );
}

#[test]
fn anchors_and_aliases_reach_across_steps() {
    let text = format!(
        "{HEAD}steps:\n  a:\n    wasm: a@1.0.0\n    with: &shared {{x: 1}}\n  b:\n    wasm: b@1.0.0\n    with: *shared\n    retries: no\n  c:\n    wasm: c@1.0.0\n    with: *shared\n"
    );
    assert_eq!(lines(&text), [(10, "kiln::spec::invalid-value")]);
    let fixed = text.replace("retries: no", "retries: 1");
    let pipeline = parse_all(&fixed).expect("valid");
    assert_eq!(pipeline.steps.len(), 3);
    assert_eq!(pipeline.steps["c"].with.len(), 1);
}

#[test]
fn reading_stops_after_a_hundred_bad_steps() {
    let mut text = format!("{HEAD}steps:\n");
    for i in 0..150 {
        text.push_str(&format!("  s{i}:\n    wasm: s@1.0.0\n    retries: x\n"));
    }
    let ds = parse_all(&text).unwrap_err();
    assert_eq!(ds.len(), 101);
    assert_eq!(ds[100].code, "kiln::spec::too-many-errors");
    assert!(
        ds[..100]
            .iter()
            .all(|d| d.code == "kiln::spec::invalid-value")
    );
}

#[test]
fn a_valid_pipeline_reads_the_same_either_way() {
    let text = format!(
        "{HEAD}description: d\nparams:\n  n:\n    type: int\n    default: 1\n    description: n\nsteps:\n  a:\n    wasm: a@1.0.0\n    outputs: [x]\n  b:\n    container: {{image: i, args: [\"{{{{inputs.x}}}}\"]}}\n    inputs: {{x: a.x}}\n"
    );
    let one = parse(&text).expect("valid");
    let all = parse_all(&text).expect("valid");
    assert_eq!(
        serde_json::to_string(&one).unwrap(),
        serde_json::to_string(&all).unwrap()
    );
    assert_eq!(all.description.as_deref(), Some("d"));
    assert_eq!(all.params["n"].span, one.params["n"].span);
}
