//! Golden tests for the spec and the planner: what `kiln validate` prints for every pipeline
//! under `tests/ui/`.
//!
//! - `tests/ui/valid/NAME.yaml` must plan without errors; the plan is compared with
//!   `NAME.plan.json` and the warnings, if any, with `NAME.stderr`.
//! - `tests/ui/invalid/NAME.yaml` must have at least one error; every diagnostic is compared
//!   with `NAME.stderr`.
//!
//! A case may start with a comment line `# kiln-args: -p NAME=VALUE ...`: those params are
//! passed as overrides, as `kiln validate -p` would. Files a case reads (workspace inputs,
//! components, source folders) live in sub-folders beside it; only the top-level `*.yaml` files
//! are cases.
//!
//! Run `KILN_BLESS=1 cargo test -p kiln-plan --test ui` to rewrite the expected files, then
//! review the diff.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

const BLESS_HINT: &str = "to accept the new output, run `KILN_BLESS=1 cargo test -p kiln-plan --test ui` and review the diff";

fn ui_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/ui")
}

fn blessing() -> bool {
    std::env::var_os("KILN_BLESS").is_some_and(|v| !v.is_empty() && v != "0")
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Expect {
    Valid,
    Invalid,
}

impl Expect {
    fn folder(self) -> &'static str {
        match self {
            Expect::Valid => "valid",
            Expect::Invalid => "invalid",
        }
    }
}

/// What one case produced and the files it is compared with.
struct Outcome {
    /// `(golden file, actual text)`; an empty text means the file must not exist.
    files: Vec<(PathBuf, String)>,
    /// A problem that no golden file can fix (a valid case with errors, ...).
    broken: Option<String>,
}

#[test]
fn ui() {
    let root = ui_dir();
    let bless = blessing();
    let mut failures = Vec::new();
    let mut cases = 0;
    for expect in [Expect::Valid, Expect::Invalid] {
        let folder = root.join(expect.folder());
        let mut entries: Vec<PathBuf> = fs::read_dir(&folder)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", folder.display()))
            .map(|e| e.expect("a readable folder entry").path())
            .filter(|p| p.is_file())
            .collect();
        entries.sort();
        let mut stems = BTreeSet::new();
        for yaml in entries.iter().filter(|p| has_suffix(p, ".yaml")) {
            cases += 1;
            let stem = strip_suffix(yaml, ".yaml");
            stems.insert(stem.clone());
            let display = format!("{}/{stem}.yaml", expect.folder());
            let outcome = run_case(yaml, &display, expect);
            if let Some(problem) = &outcome.broken {
                failures.push(format!("{display}: {problem}"));
            }
            for (golden, actual) in &outcome.files {
                if let Some(failure) = compare(golden, actual, bless) {
                    failures.push(format!("{display}: {failure}"));
                }
            }
        }
        // Expected files whose pipeline was renamed or removed.
        for golden in &entries {
            let Some(stem) = [".plan.json", ".stderr"]
                .iter()
                .find(|s| has_suffix(golden, s))
                .map(|s| strip_suffix(golden, s))
            else {
                continue;
            };
            if stems.contains(&stem) {
                continue;
            }
            let shown = format!("{}/{}", expect.folder(), file_name(golden));
            if bless {
                fs::remove_file(golden).expect("remove a stale golden file");
                eprintln!("removed stale {shown}");
            } else {
                failures.push(format!(
                    "{shown}: stale golden file: there is no `{stem}.yaml` beside it; delete it, or run with KILN_BLESS=1 to delete it"
                ));
            }
        }
    }
    assert!(
        cases > 0,
        "no cases found under {}: the harness is looking in the wrong place",
        root.display()
    );
    if !failures.is_empty() {
        let mut report = format!("{} of the ui checks failed:\n\n", failures.len());
        for failure in &failures {
            report.push_str(failure);
            report.push_str("\n\n");
        }
        report.push_str(BLESS_HINT);
        panic!("{report}");
    }
}

fn run_case(yaml: &Path, display: &str, expect: Expect) -> Outcome {
    let text = fs::read_to_string(yaml).expect("read the case");
    let overrides = match kiln_args(&text) {
        Ok(o) => o,
        Err(e) => {
            return Outcome {
                files: Vec::new(),
                broken: Some(format!("bad `# kiln-args:` line: {e}")),
            };
        }
    };
    // Exactly what `kiln validate` does, but shown under a name without machine paths.
    let (mut source, compiled) = kiln_plan::plan_file(yaml, &overrides).expect("read the case");
    source.name = display.to_owned();
    let rendered = source.render(&compiled.diagnostics, false);
    let errors = compiled.diagnostics.iter().filter(|d| d.is_error()).count();
    let stderr = golden(yaml, ".stderr");
    let plan_json = golden(yaml, ".plan.json");
    let mut broken = None;
    let files = match expect {
        Expect::Valid => {
            if errors > 0 || compiled.plan.is_none() {
                broken = Some(format!(
                    "a valid case has {errors} error(s):\n{}",
                    indent(&rendered)
                ));
            }
            let plan = compiled
                .plan
                .as_ref()
                .map(|p| serde_json::to_string_pretty(p).expect("a plan is JSON") + "\n")
                .unwrap_or_default();
            vec![(plan_json, plan), (stderr, rendered)]
        }
        Expect::Invalid => {
            if errors == 0 {
                broken = Some(format!(
                    "an invalid case has no error{}",
                    if rendered.is_empty() {
                        String::new()
                    } else {
                        format!(":\n{}", indent(&rendered))
                    }
                ));
            }
            if compiled.plan.is_some() {
                broken = Some("an invalid case produced a plan".into());
            }
            // An invalid case never has a plan file.
            vec![(stderr, rendered), (plan_json, String::new())]
        }
    };
    let machine_path = ui_dir().display().to_string();
    for (_, actual) in &files {
        if actual.contains(&machine_path) || actual.contains(env!("CARGO_MANIFEST_DIR")) {
            broken = Some("the output names a path of this machine".into());
        }
    }
    Outcome { files, broken }
}

/// Compares a golden file with the actual text; with `bless`, rewrites it instead.
fn compare(golden: &Path, actual: &str, bless: bool) -> Option<String> {
    let expected = fs::read_to_string(golden).ok();
    let name = file_name(golden);
    match (expected.as_deref(), actual.is_empty()) {
        (None, true) => None,
        (Some(e), false) if e == actual => None,
        _ if bless => {
            if actual.is_empty() {
                fs::remove_file(golden).expect("remove a golden file");
            } else {
                fs::write(golden, actual).expect("write a golden file");
            }
            None
        }
        (Some(_), true) => Some(format!(
            "`{name}` exists but nothing is printed now; delete it if that is right"
        )),
        (None, false) => Some(format!(
            "`{name}` is missing; the output is:\n{}",
            indent(actual)
        )),
        (Some(e), false) => {
            let diff = similar::TextDiff::from_lines(e, actual)
                .unified_diff()
                .context_radius(3)
                .header(&format!("expected {name}"), "actual")
                .to_string();
            Some(format!(
                "output differs from `{name}`:\n{}\n  the whole actual output:\n{}",
                indent(&diff),
                indent(actual)
            ))
        }
    }
}

/// Params from a first line `# kiln-args: -p NAME=VALUE -p 'NAME=A VALUE'`.
fn kiln_args(text: &str) -> Result<Vec<(String, String)>, String> {
    let Some(args) = text
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("# kiln-args:"))
    else {
        return Ok(Vec::new());
    };
    let words = split_words(args)?;
    let mut words = words.iter();
    let mut overrides = Vec::new();
    while let Some(word) = words.next() {
        let pair = match word.as_str() {
            "-p" | "--param" => words
                .next()
                .ok_or_else(|| format!("`{word}` needs NAME=VALUE after it"))?,
            other => return Err(format!("unknown argument `{other}`; only `-p NAME=VALUE`")),
        };
        // The same split as the CLI's `parse_param`.
        match pair.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                overrides.push((k.trim().to_owned(), v.to_owned()));
            }
            _ => return Err(format!("`{pair}` is not NAME=VALUE")),
        }
    }
    Ok(overrides)
}

/// Splits on whitespace, keeping what is inside single or double quotes together.
fn split_words(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = None::<String>;
    let mut quote = None;
    for c in s.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.get_or_insert_default().push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                word.get_or_insert_default();
            }
            (None, c) if c.is_whitespace() => words.extend(word.take()),
            (None, c) => word.get_or_insert_default().push(c),
        }
    }
    if quote.is_some() {
        return Err("unclosed quote".into());
    }
    words.extend(word);
    Ok(words)
}

fn golden(yaml: &Path, suffix: &str) -> PathBuf {
    yaml.with_file_name(format!("{}{suffix}", strip_suffix(yaml, ".yaml")))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .expect("a file name")
        .to_string_lossy()
        .into_owned()
}

fn has_suffix(path: &Path, suffix: &str) -> bool {
    file_name(path).ends_with(suffix)
}

fn strip_suffix(path: &Path, suffix: &str) -> String {
    let name = file_name(path);
    name.strip_suffix(suffix).unwrap_or(&name).to_owned()
}

fn indent(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let _ = writeln!(out, "    {line}");
    }
    out
}

#[test]
fn kiln_args_are_split_like_a_shell() {
    assert_eq!(
        kiln_args("# kiln-args: -p epochs=3 --param 'lrs=[0.1, 0.2]' -p x=\n").unwrap(),
        vec![
            ("epochs".to_owned(), "3".to_owned()),
            ("lrs".to_owned(), "[0.1, 0.2]".to_owned()),
            ("x".to_owned(), String::new()),
        ]
    );
    assert_eq!(kiln_args("apiVersion: kiln/v1\n").unwrap(), Vec::new());
    assert!(kiln_args("# kiln-args: -p\n").is_err());
    assert!(kiln_args("# kiln-args: -p noequals\n").is_err());
}
