//! Property tests: no input makes the parser or the planner panic, and every plan they return
//! is well formed.
//!
//! - any bytes or any string → `kiln_spec::parse` returns, and its diagnostic renders;
//! - pipelines built from a grammar of right and wrong pieces (names, references, templates,
//!   fan-out, conditions, quantities), written out as YAML → parse and `compile` return; a plan
//!   comes back only without errors, and its `depends_on` ids exist and come earlier;
//! - the golden pipelines under `tests/ui/valid`, with random edits → the same.
//!
//! `cargo test` runs the default number of cases (256 per property, a few seconds); set
//! `PROPTEST_CASES` for a longer run, e.g. `PROPTEST_CASES=20000 cargo test --release -p
//! kiln-plan --test no_panic`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use kiln_plan::{PlanOptions, compile};
use kiln_spec::{Diagnostic, SourceFile};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;

/// A folder with the few files the generated pipelines may name.
fn fixture() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("no-panic-fixture");
        std::fs::create_dir_all(dir.join("components")).expect("create the fixture");
        std::fs::create_dir_all(dir.join("data")).expect("create the fixture");
        std::fs::create_dir_all(dir.join("steps/prep")).expect("create the fixture");
        std::fs::write(dir.join("components/prep.wasm"), b"\0asm").expect("write the fixture");
        std::fs::write(dir.join("data/train.csv"), b"").expect("write the fixture");
        dir
    })
}

/// Checks everything that must hold of any text: no panic, a well-formed result.
fn check_text(text: &str, base_dir: &Path, overrides: &[(String, String)]) {
    let source = SourceFile::new("p.yaml", text);
    let diagnostics = match kiln_spec::parse(text) {
        Err(d) => {
            assert!(d.is_error(), "a parse failure must be an error: {d:?}");
            vec![d]
        }
        Ok(pipeline) => {
            let compiled = compile(
                &pipeline,
                &PlanOptions {
                    base_dir: base_dir.to_path_buf(),
                    overrides: overrides.to_vec(),
                },
            );
            let errors = compiled.diagnostics.iter().any(Diagnostic::is_error);
            match &compiled.plan {
                Some(plan) => {
                    assert!(
                        !errors,
                        "a plan came back with errors: {:?}",
                        compiled.diagnostics
                    );
                    let mut position = HashMap::new();
                    for (k, step) in plan.steps.iter().enumerate() {
                        assert!(
                            position.insert(step.id.as_str(), k).is_none(),
                            "planned step id `{}` appears twice",
                            step.id
                        );
                    }
                    for (k, step) in plan.steps.iter().enumerate() {
                        for dep in &step.depends_on {
                            let at = position.get(dep.as_str()).unwrap_or_else(|| {
                                panic!("`{}` depends on `{dep}`, which is not planned", step.id)
                            });
                            assert!(
                                *at < k,
                                "`{}` depends on `{dep}`, which comes later in the plan",
                                step.id
                            );
                        }
                    }
                    serde_json::to_string(plan).expect("a plan is JSON");
                }
                None => assert!(errors, "no plan and no error: {:?}", compiled.diagnostics),
            }
            // The pipeline's own diagnostics first, then each included file's; by position
            // within a file.
            let offsets: Vec<(Option<String>, usize)> = compiled
                .diagnostics
                .iter()
                .map(|d| {
                    (
                        d.origin.as_ref().map(|o| o.file.name.clone()),
                        d.span.map_or(0, |s| s.offset),
                    )
                })
                .collect();
            assert!(
                offsets.windows(2).all(|w| w[0] <= w[1]),
                "diagnostics are not sorted by file and position: {offsets:?}"
            );
            compiled.diagnostics
        }
    };
    for d in &diagnostics {
        assert!(
            !d.message.contains("CEL library failed"),
            "CEL panicked on a condition: {d:?}"
        );
        if let Some(span) = d.span {
            assert!(
                span.offset <= text.len(),
                "span {span:?} of {d:?} is past the end of the text"
            );
        }
    }
    let plain = source.render(&diagnostics, false);
    source.render(&diagnostics, true);
    source.to_json(&diagnostics);
    for d in &diagnostics {
        assert!(
            plain.contains(d.code),
            "diagnostic {} is missing from the rendered text:\n{plain}",
            d.code
        );
    }
}

// ---- (a) arbitrary input ------------------------------------------------------------------

/// Pieces of YAML that make the parser take its less-travelled paths.
const YAML_TOKENS: &[&str] = &[
    "apiVersion: kiln/v1\n",
    "name: p\n",
    "steps:\n",
    "  a:\n",
    "    wasm: a@1.0.0\n",
    "    inputs:\n",
    "      x: a.b\n",
    "params:\n",
    "\n",
    " ",
    "  ",
    "\t",
    "- ",
    ": ",
    ":",
    "? ",
    "[",
    "]",
    "{",
    "}",
    ",",
    "&a ",
    "*a",
    "&b ",
    "*b",
    "!!str ",
    "!!binary ",
    "!custom ",
    "<<: ",
    "\"",
    "'",
    "\\",
    "|\n",
    ">-\n",
    "#",
    "---\n",
    "...\n",
    "%YAML 1.2\n",
    "~",
    "null",
    "true",
    "yes",
    "0x1F",
    "1e999",
    ".nan",
    "-.inf",
    "99999999999999999999",
    "é",
    "\u{feff}",
    "\u{0}",
    "\r\n",
    "{{params.x}}",
    "steps.a.b.ok",
];

fn yaml_soup() -> impl Strategy<Value = String> {
    vec(select(YAML_TOKENS), 0..60).prop_map(|tokens| tokens.concat())
}

// ---- (b) pipelines from a grammar ---------------------------------------------------------

/// Step names: the first seven are valid.
const STEP_NAMES: &[&str] = &[
    "prep",
    "train",
    "eval",
    "tune",
    "a",
    "b-2",
    "c_3",
    "Train",
    "params",
    "item",
    "2x",
    "",
    "with space",
    "ünï",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
];
const OUTPUTS: &[&str] = &[
    "train", "test", "model", "metrics", "report", "x", "Bad", "", "a.b",
];
const PARAMS: &[&str] = &[
    "epochs",
    "lr",
    "rates",
    "flag",
    "label",
    "empty",
    "learning-rate",
    "_x",
    "",
];
const TYPES: &[&str] = &[
    "int",
    "float",
    "string",
    "bool",
    "list[int]",
    "list[float]",
    "list[string]",
    "list[bool]",
    "integer",
    "list",
    "",
];
const TEMPLATES: &[&str] = &[
    "{{params.epochs}}",
    "{{ params.rates }}",
    "{{params.rates}}",
    "{{params.lr}}",
    "{{params.label}}",
    "{{params.empty}}",
    "{{item}}",
    "{{ item }}",
    "{{inputs.data}}",
    "{{inputs.x}}",
    "{{outputs.model}}",
    "{{outputs.x}}",
    "{{params.}}",
    "{{params.nope}}",
    "{{",
    "}}",
    "{{}}",
    "{{param.x}}",
    "{{items}}",
    "--lr={{item}} --e {{params.epochs}}",
    "x{{params.lr}}y{{item}}z",
    "{{{{item}}}}",
    "é{{item}}",
    "plain",
    "",
];
const WHEN_ATOMS: &[&str] = &[
    "params.epochs > 1",
    "params.flag",
    "params.flag == true",
    "item == 1",
    "item > 0.5",
    "true",
    "false",
    "1",
    "\"text\"",
    "null",
    "params.rates[3] > 0.5",
    "size(params.rates) > 0",
    "params.epochs * 9223372036854775807 > 0",
    "params.epochs + 9223372036854775807 > 0",
    "-9223372036854775807 - params.epochs < 0",
    "1 / 0 == 1",
    "1 % 0 == 1",
    "params.lr / 0.0 > 1.0",
    "params",
    "steps",
    "foo",
    "params.label.size() > 2",
    "params.label.matches('[')",
    "[1, 2].exists(x, x == item)",
    "[1, 2].map(x, x * 2).size() == 2",
    "{'a': 1}.a == 1",
    "\"a\" + 1",
    "((((",
    ")",
    "params.epochs >",
    "&&",
    "has(params.lr)",
    "params.epochs in [1, 2]",
    "int(params.label) > 0",
    "double(params.epochs) > 0.5",
    "timestamp('x') > 0",
    "((((((((((((((((((((((((((((((((1 > 0))))))))))))))))))))))))))))))))",
    "(((((((((((((((((((((((((((((((((((((((((1)))))))))))))))))))))))))))))))))))))))))",
    "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]][0] == 1",
];
const WASM_REFS: &[&str] = &[
    "components/prep.wasm",
    "./components/../components/prep.wasm",
    "components/none.wasm",
    "../x.wasm",
    "/abs.wasm",
    ".wasm",
    "prep@1.0.0",
    "prep@latest",
    "Prep@1",
    "@1",
    "prep@",
    "blake3:af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262",
    "blake3:zz",
    "prep",
    "prep@1.0.0 outputs",
    "",
];
const INPUT_FILES: &[&str] = &[
    "./data/train.csv",
    "./data/missing.csv",
    "data/",
    "./",
    ".",
    "../escape.csv",
    "/abs",
    "train",
    "a.b.c",
    "params.",
    "",
    "./data/../../x",
];
const CPUS: &[&str] = &[
    "2",
    "0.5",
    "500m",
    "\"1500m\"",
    "0",
    "-1",
    "1e400",
    "0.0001",
    "two",
    "18446744073709551616m",
    "1000000000",
    "1e9",
    "\"\"",
    "[1]",
];
const MEMORIES: &[&str] = &[
    "16Gi",
    "1.5Gi",
    "512Mi",
    "16GB",
    "0",
    "1e30",
    "99999999999999999999Pi",
    "Mi",
    "1024",
    "0.1",
    "-5Mi",
    ".5Gi",
    "1..5Gi",
    "18446744073709551615",
    "\"\"",
];
const DURATIONS: &[&str] = &[
    "30s",
    "1h 30m",
    "0s",
    "soon",
    "99999999999999999999h",
    "584942417355y",
    "1ns",
    "10",
    "\"\"",
];
const NUMBERS: &[&str] = &[
    "0",
    "3",
    "-1",
    "1000",
    "4294967296",
    "18446744073709551616",
    "x",
    "1.5",
    "\"\"",
];
const OVERRIDE_VALUES: &[&str] = &[
    "3",
    "abc",
    "0.1,0.2",
    "[1, x]",
    "[]",
    "",
    "true",
    "1e999",
    "9223372036854775808",
    "[0.1, 0.2]",
    " , ",
];

/// Mostly the first `good` entries of a pool, sometimes any entry.
fn pick(pool: &'static [&'static str], good: usize) -> BoxedStrategy<&'static str> {
    prop_oneof![3 => select(&pool[..good]), 1 => select(pool)].boxed()
}

fn step_name() -> BoxedStrategy<&'static str> {
    pick(STEP_NAMES, 7)
}

fn output_name() -> BoxedStrategy<&'static str> {
    pick(OUTPUTS, 6)
}

fn param_name() -> BoxedStrategy<&'static str> {
    pick(PARAMS, 6)
}

/// A YAML scalar: a JSON string is always a valid double-quoted YAML scalar.
fn q(s: &str) -> String {
    serde_json::to_string(s).expect("a string is JSON")
}

#[derive(Debug, Clone)]
enum Val {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    Raw(&'static str),
    List(Vec<Val>),
}

impl Val {
    fn yaml(&self) -> String {
        match self {
            Val::Int(i) => i.to_string(),
            Val::Float(x) => format!("{x:?}"),
            Val::Bool(b) => b.to_string(),
            Val::Str(s) => q(s),
            Val::Raw(r) => (*r).to_owned(),
            Val::List(items) => {
                let items: Vec<String> = items.iter().map(Val::yaml).collect();
                format!("[{}]", items.join(", "))
            }
        }
    }
}

fn scalar() -> impl Strategy<Value = Val> {
    prop_oneof![
        any::<i64>().prop_map(Val::Int),
        select(&[0.0, -0.0, 0.5, 1e308, -1e-300, 0.1][..]).prop_map(Val::Float),
        any::<bool>().prop_map(Val::Bool),
        select(TEMPLATES).prop_map(|s| Val::Str(s.to_owned())),
        "[a-z0-9 ,.{}]{0,8}".prop_map(Val::Str),
        select(&["", "null", "{a: 1}", "yes", "no", "0x10", ".nan", "1e999"][..])
            .prop_map(Val::Raw),
    ]
}

fn value() -> impl Strategy<Value = Val> {
    scalar().prop_recursive(3, 12, 4, |inner| vec(inner, 0..4).prop_map(Val::List))
}

#[derive(Debug, Clone)]
struct Param {
    name: &'static str,
    ty: &'static str,
    default: Option<Val>,
}

#[derive(Debug, Clone)]
enum Kind {
    None,
    Wasm(&'static str),
    Build(&'static str, &'static str, &'static str),
    Container(Container),
    Both(&'static str, Container),
}

#[derive(Debug, Clone)]
struct Container {
    image: &'static str,
    command: Vec<&'static str>,
    args: Vec<&'static str>,
    env: Vec<(&'static str, &'static str)>,
    cpu: Option<&'static str>,
    memory: Option<&'static str>,
    gpu: Option<&'static str>,
}

#[derive(Debug, Clone)]
enum ForEachGen {
    Items(Vec<Val>),
    Text(String),
}

#[derive(Debug, Clone)]
struct StepGen {
    name: &'static str,
    kind: Kind,
    inputs: Vec<(&'static str, String)>,
    outputs: Vec<&'static str>,
    with: Vec<(&'static str, Val)>,
    after: Vec<&'static str>,
    for_each: Option<ForEachGen>,
    when: Option<String>,
    retries: Option<&'static str>,
    timeout: Option<&'static str>,
    cache: Option<&'static str>,
    limits: Option<(Option<&'static str>, Option<&'static str>)>,
}

#[derive(Debug, Clone)]
struct PipelineGen {
    params: Vec<Param>,
    steps: Vec<StepGen>,
    overrides: Vec<(&'static str, &'static str)>,
}

const GOOD_WASM: &[&str] = &[
    "components/prep.wasm",
    "./components/../components/prep.wasm",
    "prep@1.0.0",
    "blake3:af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262",
];

fn good_default(ty: &str) -> Val {
    match ty {
        "int" => Val::Int(3),
        "float" => Val::Float(0.5),
        "bool" => Val::Bool(true),
        "list[int]" => Val::List(vec![Val::Int(1), Val::Int(2)]),
        "list[float]" => Val::List(vec![Val::Float(0.1), Val::Int(1)]),
        "list[string]" => Val::List(vec![Val::Str("a".into()), Val::Str("b".into())]),
        "list[bool]" => Val::List(vec![Val::Bool(true)]),
        _ => Val::Str("s".into()),
    }
}

/// What a template may refer to in one step.
struct Scope<'a> {
    params: &'a [&'static str],
    item: bool,
    inputs: &'a [&'static str],
    outputs: &'a [&'static str],
    paths: bool,
}

impl Scope<'_> {
    fn allows(&self, text: &str) -> bool {
        use kiln_spec::template::{Segment, TemplateRef, parse};
        let Ok(segments) = parse(text) else {
            return false;
        };
        segments.iter().all(|s| match s {
            Segment::Text(_) => true,
            Segment::Ref { target, .. } => match target {
                TemplateRef::Param(p) => self.params.contains(&p.as_str()),
                TemplateRef::Item => self.item,
                TemplateRef::Input(n) => self.paths && self.inputs.contains(&n.as_str()),
                TemplateRef::Output(n) => self.paths && self.outputs.contains(&n.as_str()),
                // The generator's fan-outs are over written lists and params.
                TemplateRef::ItemField(_)
                | TemplateRef::StepOutput { .. }
                | TemplateRef::FirstOf { .. } => false,
            },
        })
    }
}

impl PipelineGen {
    /// Turns the random pieces into a pipeline that should plan: unique good names, references
    /// to earlier steps only, templates that name what exists. Half the cases go through this,
    /// so the planner's expansion runs as often as its checks.
    fn repaired(&self) -> PipelineGen {
        let mut params: Vec<Param> = Vec::new();
        for p in &self.params {
            if p.name.is_empty() || p.name.contains('-') || params.iter().any(|q| q.name == p.name)
            {
                continue;
            }
            let ty = if TYPES[..8].contains(&p.ty) {
                p.ty
            } else {
                "int"
            };
            params.push(Param {
                name: p.name,
                ty,
                default: Some(good_default(ty)),
            });
        }
        let names: Vec<&'static str> = params.iter().map(|p| p.name).collect();
        let lists: Vec<&'static str> = params
            .iter()
            .filter(|p| p.ty.starts_with("list"))
            .map(|p| p.name)
            .collect();
        let mut steps: Vec<StepGen> = Vec::new();
        for s in &self.steps {
            if kiln_spec::StepName::new(s.name).is_err() || steps.iter().any(|t| t.name == s.name) {
                continue;
            }
            let mut t = s.clone();
            t.for_each = match &s.for_each {
                Some(ForEachGen::Items(items)) => {
                    let mut items: Vec<Val> = items
                        .iter()
                        .filter(|v| !matches!(v, Val::List(_) | Val::Raw(_)))
                        .cloned()
                        .collect();
                    if items.is_empty() && s.name.len() % 2 == 0 {
                        items = vec![Val::Int(1), Val::Int(2)];
                    }
                    Some(ForEachGen::Items(items))
                }
                Some(ForEachGen::Text(_)) => lists
                    .get(s.name.len() % lists.len().max(1))
                    .map(|l| ForEachGen::Text(format!("{{{{ params.{l} }}}}"))),
                None => None,
            };
            let mut outputs: Vec<&'static str> = Vec::new();
            for o in &s.outputs {
                if kiln_spec::ArtifactName::new(*o).is_ok() && !outputs.contains(o) {
                    outputs.push(o);
                }
            }
            t.outputs = outputs;
            let mut inputs: Vec<(&'static str, String)> = Vec::new();
            for (k, v) in &s.inputs {
                if kiln_spec::ArtifactName::new(*k).is_err() || inputs.iter().any(|(j, _)| j == k) {
                    continue;
                }
                let good = match v.split_once('.') {
                    Some(("params", p)) => names.contains(&p),
                    Some((step, output)) => steps
                        .iter()
                        .any(|e| e.name == step && e.outputs.contains(&output)),
                    None => false,
                };
                let earlier: Vec<String> = steps
                    .iter()
                    .flat_map(|e| e.outputs.iter().map(move |o| format!("{}.{o}", e.name)))
                    .collect();
                let v = if good {
                    v.clone()
                } else if earlier.is_empty() {
                    "./data/train.csv".to_owned()
                } else {
                    earlier[v.len() % earlier.len()].clone()
                };
                inputs.push((k, v));
            }
            t.inputs = inputs;
            let input_names: Vec<&'static str> = t.inputs.iter().map(|(k, _)| *k).collect();
            let with_scope = Scope {
                params: &names,
                item: t.for_each.is_some(),
                inputs: &[],
                outputs: &[],
                paths: false,
            };
            let value_ok = |v: &Val| {
                fn strings<'v>(v: &'v Val, out: &mut Vec<&'v str>) -> bool {
                    match v {
                        Val::Str(s) => {
                            out.push(s);
                            true
                        }
                        Val::List(items) => items.iter().all(|i| strings(i, out)),
                        Val::Raw(_) => false,
                        _ => true,
                    }
                }
                let mut found = Vec::new();
                strings(v, &mut found) && found.iter().all(|s| with_scope.allows(s))
            };
            let mut with: Vec<(&'static str, Val)> = Vec::new();
            for (k, v) in &s.with {
                if kiln_spec::ParamName::new(*k).is_err() || with.iter().any(|(j, _)| j == k) {
                    continue;
                }
                with.push((k, if value_ok(v) { v.clone() } else { Val::Int(1) }));
            }
            t.with = with;
            t.after = s
                .after
                .iter()
                .copied()
                .filter(|a| steps.iter().any(|e| e.name == *a))
                .collect();
            let scope = Scope {
                params: &names,
                item: t.for_each.is_some(),
                inputs: &input_names,
                outputs: &t.outputs,
                paths: true,
            };
            let image_scope = Scope {
                paths: false,
                ..scope
            };
            let fix_container = |c: &Container| Container {
                image: if image_scope.allows(c.image) && !c.image.trim().is_empty() {
                    c.image
                } else {
                    "python:3.12"
                },
                command: c
                    .command
                    .iter()
                    .copied()
                    .filter(|x| scope.allows(x))
                    .collect(),
                args: c.args.iter().copied().filter(|x| scope.allows(x)).collect(),
                env: c
                    .env
                    .iter()
                    .copied()
                    .filter(|(k, v)| ["A", "_x"].contains(k) && scope.allows(v))
                    .fold(Vec::new(), |mut env, (k, v)| {
                        if !env.iter().any(|(j, _)| *j == k) {
                            env.push((k, v));
                        }
                        env
                    }),
                cpu: c
                    .cpu
                    .filter(|x| ["2", "0.5", "500m", "\"1500m\""].contains(x)),
                memory: c
                    .memory
                    .filter(|x| ["16Gi", "1.5Gi", "512Mi", "1024"].contains(x)),
                gpu: c.gpu.filter(|x| ["0", "3"].contains(x)),
            };
            t.kind = match &s.kind {
                Kind::Wasm(w) | Kind::Both(w, _) if GOOD_WASM.contains(w) => Kind::Wasm(w),
                Kind::Container(c) => Kind::Container(fix_container(c)),
                Kind::Build(..) => Kind::Build("steps/prep", "make", "out.wasm"),
                _ => Kind::Wasm("prep@1.0.0"),
            };
            let earlier: Vec<(&'static str, &'static str)> = steps
                .iter()
                .flat_map(|e| e.outputs.iter().map(move |o| (e.name, *o)))
                .collect();
            t.when = s
                .when
                .as_ref()
                .map(|w| match (w.len() % 3, earlier.first()) {
                    (0, Some((step, output))) => format!("steps.{step}.{output}.ok"),
                    (1, _) if t.for_each.is_some() => "item == 1 || true".to_owned(),
                    _ => "true".to_owned(),
                });
            t.retries = s.retries.filter(|r| ["0", "3"].contains(r));
            t.timeout = s.timeout.filter(|d| ["30s", "1h 30m", "1ns"].contains(d));
            t.cache = s.cache.filter(|c| ["true", "false"].contains(c));
            t.limits = match t.kind {
                Kind::Container(_) => None,
                _ => s.limits.map(|(m, f)| {
                    (
                        m.filter(|x| ["16Gi", "512Mi"].contains(x)),
                        f.filter(|x| ["0", "3", "1000", "4294967296"].contains(x)),
                    )
                }),
            };
            steps.push(t);
        }
        PipelineGen {
            params,
            steps,
            overrides: Vec::new(),
        }
    }
}

fn container() -> impl Strategy<Value = Container> {
    (
        select(
            &[
                "python:3.12",
                "",
                "{{params.label}}",
                "{{outputs.model}}",
                "{{item}}",
                "a:{{params.epochs}}",
            ][..],
        ),
        vec(select(TEMPLATES), 0..3),
        vec(select(TEMPLATES), 0..4),
        vec(
            (
                select(&["A", "2B", "_x", "with space", ""][..]),
                select(TEMPLATES),
            ),
            0..3,
        ),
        proptest::option::of(select(CPUS)),
        proptest::option::of(select(MEMORIES)),
        proptest::option::of(select(NUMBERS)),
    )
        .prop_map(|(image, command, args, env, cpu, memory, gpu)| Container {
            image,
            command,
            args,
            env,
            cpu,
            memory,
            gpu,
        })
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        1 => Just(Kind::None),
        6 => select(WASM_REFS).prop_map(Kind::Wasm),
        2 => (
            select(&["steps/prep", "nope", "../x", "/abs", ""][..]),
            select(&["make", "", "  "][..]),
            select(&["out.wasm", "out", "/abs.wasm", ""][..]),
        )
            .prop_map(|(s, c, a)| Kind::Build(s, c, a)),
        4 => container().prop_map(Kind::Container),
        1 => (select(WASM_REFS), container()).prop_map(|(w, c)| Kind::Both(w, c)),
    ]
}

fn input_ref() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (step_name(), output_name()).prop_map(|(s, o)| format!("{s}.{o}")),
        1 => param_name().prop_map(|p| format!("params.{p}")),
        2 => select(INPUT_FILES).prop_map(str::to_owned),
    ]
}

fn when_expr() -> impl Strategy<Value = String> {
    let atom = prop_oneof![
        4 => select(WHEN_ATOMS).prop_map(str::to_owned),
        3 => (step_name(), output_name(), select(&["ok", "size() > 1", "x.y"][..]))
            .prop_map(|(s, o, f)| format!("steps.{s}.{o}.{f}")),
        1 => "[ -~]{0,20}",
    ];
    vec((atom, select(&[" && ", " || ", " ? true : "][..])), 1..4).prop_map(|parts| {
        let mut out = String::new();
        for (k, (atom, op)) in parts.iter().enumerate() {
            if k > 0 {
                out.push_str(op);
            }
            out.push_str(atom);
        }
        out
    })
}

fn step() -> impl Strategy<Value = StepGen> {
    (
        (
            step_name(),
            kind(),
            vec(
                (select(&["data", "x", "model", "Bad", ""][..]), input_ref()),
                0..3,
            ),
            vec(output_name(), 0..3),
            vec((param_name(), value()), 0..3),
            vec(step_name(), 0..2),
        ),
        (
            proptest::option::of(prop_oneof![
                vec(scalar(), 0..4).prop_map(ForEachGen::Items),
                vec(value(), 0..3).prop_map(ForEachGen::Items),
                select(TEMPLATES).prop_map(|t| ForEachGen::Text(t.to_owned())),
            ]),
            proptest::option::of(when_expr()),
            proptest::option::of(select(NUMBERS)),
            proptest::option::of(select(DURATIONS)),
            proptest::option::of(select(&["true", "false", "yes", "1"][..])),
            proptest::option::of((
                proptest::option::of(select(MEMORIES)),
                proptest::option::of(select(NUMBERS)),
            )),
        ),
    )
        .prop_map(
            |(
                (name, kind, inputs, outputs, with, after),
                (for_each, when, retries, timeout, cache, limits),
            )| StepGen {
                name,
                kind,
                inputs,
                outputs,
                with,
                after,
                for_each,
                when,
                retries,
                timeout,
                cache,
                limits,
            },
        )
}

fn param() -> impl Strategy<Value = Param> {
    (param_name(), select(TYPES), proptest::option::of(value()))
        .prop_map(|(name, ty, default)| Param { name, ty, default })
}

fn pipeline() -> impl Strategy<Value = PipelineGen> {
    (
        vec(param(), 0..4),
        vec(step(), 1..8),
        vec((param_name(), select(OVERRIDE_VALUES)), 0..3),
        any::<bool>(),
    )
        .prop_map(|(params, steps, overrides, careful)| {
            let p = PipelineGen {
                params,
                steps,
                overrides,
            };
            if careful { p.repaired() } else { p }
        })
}

fn write_container(out: &mut String, c: &Container) {
    let _ = writeln!(out, "    container:\n      image: {}", q(c.image));
    let list = |items: &[&str]| {
        let items: Vec<String> = items.iter().map(|s| q(s)).collect();
        format!("[{}]", items.join(", "))
    };
    let _ = writeln!(out, "      command: {}", list(&c.command));
    let _ = writeln!(out, "      args: {}", list(&c.args));
    if !c.env.is_empty() {
        out.push_str("      env:\n");
        for (k, v) in &c.env {
            let _ = writeln!(out, "        {}: {}", q(k), q(v));
        }
    }
    if c.cpu.is_some() || c.memory.is_some() || c.gpu.is_some() {
        out.push_str("      resources:\n");
        for (key, value) in [("cpu", c.cpu), ("memory", c.memory), ("gpu", c.gpu)] {
            if let Some(v) = value {
                let _ = writeln!(out, "        {key}: {v}");
            }
        }
    }
}

impl PipelineGen {
    fn yaml(&self) -> String {
        let mut out = String::from("apiVersion: kiln/v1\nname: generated\n");
        if !self.params.is_empty() {
            out.push_str("params:\n");
            for p in &self.params {
                let _ = writeln!(out, "  {}:\n    type: {}", q(p.name), q(p.ty));
                if let Some(d) = &p.default {
                    let _ = writeln!(out, "    default: {}", d.yaml());
                }
                out.push_str("    description: generated\n");
            }
        }
        out.push_str("steps:\n");
        if self.steps.is_empty() {
            out.push_str("  {}\n");
        }
        for s in &self.steps {
            let _ = writeln!(out, "  {}:", q(s.name));
            match &s.kind {
                Kind::None => out.push_str("    description: nothing to run\n"),
                Kind::Wasm(w) => {
                    let _ = writeln!(out, "    wasm: {}", q(w));
                }
                Kind::Build(source, command, artifact) => {
                    let _ = writeln!(
                        out,
                        "    wasm:\n      source: {}\n      command: {}\n      artifact: {}",
                        q(source),
                        q(command),
                        q(artifact)
                    );
                }
                Kind::Container(c) => write_container(&mut out, c),
                Kind::Both(w, c) => {
                    let _ = writeln!(out, "    wasm: {}", q(w));
                    write_container(&mut out, c);
                }
            }
            if !s.inputs.is_empty() {
                out.push_str("    inputs:\n");
                for (k, v) in &s.inputs {
                    let _ = writeln!(out, "      {}: {}", q(k), q(v));
                }
            }
            let outputs: Vec<String> = s.outputs.iter().map(|o| q(o)).collect();
            let _ = writeln!(out, "    outputs: [{}]", outputs.join(", "));
            if !s.with.is_empty() {
                out.push_str("    with:\n");
                for (k, v) in &s.with {
                    let _ = writeln!(out, "      {}: {}", q(k), v.yaml());
                }
            }
            let after: Vec<String> = s.after.iter().map(|a| q(a)).collect();
            let _ = writeln!(out, "    after: [{}]", after.join(", "));
            match &s.for_each {
                Some(ForEachGen::Items(items)) => {
                    let _ = writeln!(out, "    for_each: {}", Val::List(items.clone()).yaml());
                }
                Some(ForEachGen::Text(t)) => {
                    let _ = writeln!(out, "    for_each: {}", q(t));
                }
                None => {}
            }
            if let Some(w) = &s.when {
                let _ = writeln!(out, "    when: {}", q(w));
            }
            for (key, value) in [
                ("retries", s.retries),
                ("timeout", s.timeout),
                ("cache", s.cache),
            ] {
                if let Some(v) = value {
                    let _ = writeln!(out, "    {key}: {v}");
                }
            }
            if let Some((memory, fuel)) = &s.limits {
                out.push_str("    limits: {");
                if let Some(m) = memory {
                    let _ = write!(out, "memory: {m}, ");
                }
                if let Some(f) = fuel {
                    let _ = write!(out, "fuel: {f}");
                }
                out.push_str("}\n");
            }
        }
        out
    }

    fn overrides(&self) -> Vec<(String, String)> {
        self.overrides
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }
}

// ---- (c) the golden pipelines, edited at random -------------------------------------------

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/ui/valid")
}

fn golden_texts() -> &'static [String] {
    static TEXTS: OnceLock<Vec<String>> = OnceLock::new();
    TEXTS.get_or_init(|| {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(golden_dir())
            .expect("read tests/ui/valid")
            .map(|e| e.expect("an entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        paths.sort();
        paths
            .iter()
            .map(|p| std::fs::read_to_string(p).expect("read a golden pipeline"))
            .collect()
    })
}

#[derive(Debug, Clone)]
enum Edit {
    Delete(usize, usize),
    Insert(usize, &'static str),
    Duplicate(usize, usize),
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut s = text.to_owned();
    for edit in edits {
        let at = |i: usize, s: &str| {
            let mut i = i % (s.len() + 1);
            while !s.is_char_boundary(i) {
                i -= 1;
            }
            i
        };
        match edit {
            Edit::Delete(i, n) => {
                let a = at(*i, &s);
                let b = at(a + n, &s).max(a);
                s.replace_range(a..b, "");
            }
            Edit::Insert(i, piece) => {
                let a = at(*i, &s);
                s.insert_str(a, piece);
            }
            Edit::Duplicate(i, n) => {
                let a = at(*i, &s);
                let b = at(a + n, &s).max(a);
                let piece = s[a..b].to_owned();
                s.insert_str(b, &piece);
            }
        }
    }
    s
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), 1..20usize).prop_map(|(i, n)| Edit::Delete(i, n)),
        (any::<usize>(), select(YAML_TOKENS)).prop_map(|(i, t)| Edit::Insert(i, t)),
        (any::<usize>(), select(TEMPLATES)).prop_map(|(i, t)| Edit::Insert(i, t)),
        (any::<usize>(), 1..200usize).prop_map(|(i, n)| Edit::Duplicate(i, n)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::default())]

    #[test]
    fn any_bytes_parse_without_panic(bytes in vec(any::<u8>(), 0..400)) {
        check_text(&String::from_utf8_lossy(&bytes), fixture(), &[]);
    }

    #[test]
    fn any_string_parses_without_panic(text in any::<String>()) {
        check_text(&text, fixture(), &[]);
    }

    #[test]
    fn yaml_soup_parses_without_panic(text in yaml_soup()) {
        check_text(&text, fixture(), &[]);
    }

    #[test]
    fn generated_pipelines_plan_without_panic(p in pipeline()) {
        check_text(&p.yaml(), fixture(), &p.overrides());
    }

    #[test]
    fn edited_golden_pipelines_plan_without_panic(
        k in any::<usize>(),
        edits in vec(edit(), 1..6),
    ) {
        let texts = golden_texts();
        let text = apply(&texts[k % texts.len()], &edits);
        check_text(&text, &golden_dir(), &[]);
    }
}

/// The generator does produce pipelines that plan: otherwise the properties above would only
/// ever see errors.
#[test]
fn the_grammar_reaches_the_planner() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = pipeline();
    let mut planned = 0;
    let mut planned_steps = 0;
    for _ in 0..300 {
        let p = strategy
            .new_tree(&mut runner)
            .expect("a pipeline")
            .current();
        let Ok(spec) = kiln_spec::parse(&p.yaml()) else {
            continue;
        };
        let compiled = compile(
            &spec,
            &PlanOptions {
                base_dir: fixture().to_path_buf(),
                overrides: p.overrides(),
            },
        );
        if let Some(plan) = compiled.plan {
            planned += 1;
            planned_steps += plan.steps.len();
        }
    }
    assert!(
        planned >= 90 && planned_steps >= 300,
        "only {planned} of 300 generated pipelines planned ({planned_steps} steps)"
    );
}
