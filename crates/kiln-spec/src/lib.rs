//! The kiln pipeline format: the YAML a data scientist writes, parsed into typed values.
//!
//! Parsing is strict and safe: unknown fields are errors, names validate themselves while the
//! YAML is read, and budgets stop YAML bombs, deep nesting and huge documents. Every value that
//! a later check may complain about keeps its [`Span`], so the planner can point at it. The top
//! level, each param and each step are read on their own, so [`parse_all`] reports a mistake in
//! every one of them at once.
//!
//! This crate does no I/O beyond reading the text it is given and knows nothing of how steps
//! run: resolving references, fan-out and cycles belong to `kiln-plan`.

mod diag;
mod document;
mod located;
mod names;
mod pipeline;
mod quantity;
mod step_id;
pub mod suggest;
pub mod template;
mod value;
mod yaml_error;

pub use diag::{Diagnostic, Inclusion, LineCol, Origin, Severity, SourceFile};
pub use located::{Located, Span};
pub use names::{
    ArtifactName, MAX_NAME_LEN, ParamName, PipelineName, RESERVED_STEP_NAMES, SecretName, StepName,
};
pub use pipeline::{
    API_VERSION, AfterOn, AfterRef, ApiVersion, BuildSpec, CachePolicy, CacheSpec, ContainerSpec,
    DEFAULT_FIELDS, EXPORT_SCHEMES, EXTERNAL_SCHEMES, EnvName, Export, ForEach, GpuRequest,
    InputRef, OutputFile, Outputs, ParamDecl, Pipeline, Resources, Retries, RetryPolicy, RunWhen,
    SecretAs, SecretUse, Step, StepDefaults, WasmLimits, WasmRef, check_component_name,
    check_component_tag, check_component_version, check_export_url,
};
pub use quantity::{Amount, Cpu, HumanDuration, Memory, Templated};
pub use step_id::StepId;
pub use value::{PARAM_TYPES, ParamType, ScalarType, Value};

use serde_saphyr::{Budget, DuplicateKeyPolicy};

/// The largest pipeline file kiln reads.
pub const MAX_SOURCE_BYTES: usize = 16 * 1024 * 1024;

/// Parses a pipeline from YAML text; the error is the first problem in the file.
///
/// [`parse_all`] reports every problem. Cross-checks (references, cycles, types) are the
/// planner's.
// A diagnostic is 128 bytes with its origin; this returns one, once per file read.
#[allow(clippy::result_large_err)]
pub fn parse(text: &str) -> Result<Pipeline, Diagnostic> {
    parse_all(text).map_err(|diagnostics| {
        diagnostics.into_iter().next().unwrap_or_else(|| {
            Diagnostic::error(
                "kiln::spec::invalid-value",
                "the pipeline could not be read",
            )
        })
    })
}

/// Parses a pipeline from YAML text, reporting every problem found, sorted by position (at
/// least one).
///
/// Each top-level field, param declaration and step is read on its own, so a mistake in one
/// does not hide a mistake in another; within one of them the first mistake is reported. A
/// YAML syntax error or a refused budget stops the reading, and what was found before it is
/// reported with it.
pub fn parse_all(text: &str) -> Result<Pipeline, Vec<Diagnostic>> {
    if text.len() > MAX_SOURCE_BYTES {
        return Err(vec![
            Diagnostic::error(
                "kiln::spec::too-large",
                format!(
                    "the pipeline file is {} bytes; the limit is {} bytes",
                    text.len(),
                    MAX_SOURCE_BYTES
                ),
            )
            .help("split the data out of the pipeline: large values belong in input files"),
        ]);
    }
    if is_blank(text) {
        return Err(vec![
            Diagnostic::error("kiln::spec::empty", "the pipeline file is empty").help(format!(
                "a pipeline needs at least `apiVersion: {API_VERSION}`, `name` and `steps`"
            )),
        ]);
    }
    document::parse_all(text, &options())
}

/// How serde-saphyr reads a pipeline: strict, and within budgets that stop YAML bombs.
fn options() -> serde_saphyr::Options {
    let mut budget = Budget::default();
    budget.max_depth = yaml_error::MAX_DEPTH;
    budget.max_nodes = yaml_error::MAX_NODES;
    budget.max_events = 4 * yaml_error::MAX_NODES;
    budget.max_aliases = yaml_error::MAX_ALIASES;
    budget.max_anchors = yaml_error::MAX_ALIASES;
    budget.max_documents = 1;
    budget.max_total_scalar_bytes = MAX_SOURCE_BYTES;
    // Anchors are for sharing a few small values; a bomb is refused in milliseconds.
    budget.max_recorded_anchor_events = 20_000;
    budget.max_recorded_anchor_bytes = 1024 * 1024;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options.alias_limits.max_total_replayed_events = 50_000;
    options.duplicate_keys = DuplicateKeyPolicy::Error;
    // YAML 1.2 booleans only: `country: no` stays a string (the "Norway problem").
    options.strict_booleans = true;
    options
}

/// Whether the text holds nothing but blank lines, comments and document markers.
fn is_blank(text: &str) -> bool {
    text.lines().all(|line| {
        let line = line.trim();
        line.is_empty() || line.starts_with('#') || line == "---" || line == "..."
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_files_are_empty() {
        for text in ["", "\n\n", "# only a comment\n", "---\n# x\n..."] {
            assert_eq!(
                parse(text).unwrap_err().code,
                "kiln::spec::empty",
                "{text:?}"
            );
        }
    }

    #[test]
    fn oversized_files_are_refused_before_parsing() {
        let text = format!("name: x\ndescription: {}\n", "a".repeat(MAX_SOURCE_BYTES));
        assert_eq!(parse(&text).unwrap_err().code, "kiln::spec::too-large");
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let text = "apiVersion: kiln/v1\nname: x\nsteps:\n  a:\n\twasm: a@1.0.0\n";
        let d = parse(text).unwrap_err();
        assert_eq!(d.code, "kiln::spec::syntax");
        assert!(d.span.is_some(), "{d:?}");
    }
}
