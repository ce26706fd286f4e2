//! The kiln pipeline format: the YAML a data scientist writes, parsed into typed values.
//!
//! Parsing is strict and safe: unknown fields are errors, names validate themselves while the
//! YAML is read, and budgets stop YAML bombs, deep nesting and huge documents. Every value that
//! a later check may complain about keeps its [`Span`], so the planner can point at it.
//!
//! This crate does no I/O beyond reading the text it is given and knows nothing of how steps
//! run: resolving references, fan-out and cycles belong to `kiln-plan`.

mod diag;
mod located;
mod names;
mod pipeline;
mod quantity;
pub mod template;
mod value;

pub use diag::{Diagnostic, LineCol, Severity, SourceFile};
pub use located::{Located, Span};
pub use names::{
    ArtifactName, MAX_NAME_LEN, ParamName, PipelineName, RESERVED_STEP_NAMES, StepName,
};
pub use pipeline::{
    API_VERSION, ApiVersion, BuildSpec, ContainerSpec, EnvName, ForEach, InputRef, ParamDecl,
    Pipeline, Resources, Step, WasmLimits, WasmRef,
};
pub use quantity::{Cpu, HumanDuration, Memory};
pub use value::{PARAM_TYPES, ParamType, ScalarType, Value};

use serde_saphyr::{Budget, DuplicateKeyPolicy, MessageFormatter, UserMessageFormatter};

/// The largest pipeline file kiln reads.
pub const MAX_SOURCE_BYTES: usize = 16 * 1024 * 1024;

/// Parses a pipeline from YAML text.
///
/// The error is a single diagnostic: YAML parsing stops at the first problem. Cross-checks
/// (references, cycles, types) are the planner's and are reported all at once.
pub fn parse(text: &str) -> Result<Pipeline, Diagnostic> {
    if text.len() > MAX_SOURCE_BYTES {
        return Err(Diagnostic::error(
            "kiln::spec::too-large",
            format!(
                "the pipeline file is {} bytes; the limit is {} bytes",
                text.len(),
                MAX_SOURCE_BYTES
            ),
        )
        .help("split the data out of the pipeline: large values belong in input files"));
    }
    if text.trim().is_empty() {
        return Err(
            Diagnostic::error("kiln::spec::empty", "the pipeline file is empty").help(format!(
                "a pipeline needs at least `apiVersion: {API_VERSION}`, `name` and `steps`"
            )),
        );
    }
    let mut budget = Budget::default();
    budget.max_depth = 32;
    budget.max_nodes = 2_000_000;
    budget.max_events = 4_000_000;
    budget.max_aliases = 1_000;
    budget.max_anchors = 1_000;
    budget.max_documents = 1;
    budget.max_total_scalar_bytes = MAX_SOURCE_BYTES;
    budget.max_recorded_anchor_bytes = 1024 * 1024;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options.duplicate_keys = DuplicateKeyPolicy::Error;
    serde_saphyr::from_str_with_options::<Pipeline>(text, options).map_err(|e| yaml_error(&e))
}

fn yaml_error(err: &serde_saphyr::Error) -> Diagnostic {
    let raw = UserMessageFormatter.format_message(err).into_owned();
    let (code, message, help) = classify(&raw);
    let span = err
        .location()
        .and_then(|loc| Span::from_location(&loc))
        .unwrap_or_default();
    let mut d = Diagnostic::error(code, message).at(span);
    if let Some(help) = help {
        d = d.help(help);
    }
    d
}

fn classify(raw: &str) -> (&'static str, String, Option<String>) {
    let first = raw.lines().next().unwrap_or(raw).trim().to_owned();
    if let Some(rest) = first.strip_prefix("duplicate mapping key: ") {
        let key = rest
            .split(", set DuplicateKeyPolicy")
            .next()
            .unwrap_or(rest);
        return (
            "kiln::spec::duplicate-key",
            format!("duplicate key `{key}`"),
            Some("each name may appear once in a mapping: rename or remove one".into()),
        );
    }
    if first.starts_with("unknown field") {
        return ("kiln::spec::unknown-field", first, None);
    }
    if first.starts_with("missing field") {
        return ("kiln::spec::missing-field", first, None);
    }
    if first.contains("too large or too complex")
        || first.contains("limit") && first.contains("exceed")
    {
        return (
            "kiln::spec::budget",
            first,
            Some("kiln refuses deeply nested, alias-heavy or huge YAML to protect itself".into()),
        );
    }
    if first.starts_with("invalid") || first.starts_with("unsupported") || first.starts_with('`') {
        return ("kiln::spec::invalid-value", first, None);
    }
    ("kiln::spec::syntax", first, None)
}
