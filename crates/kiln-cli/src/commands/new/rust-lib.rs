//! `@NAME@`: a kiln step in Rust, made by `kiln new step --rust`.
//!
//! It reads input `data` (a text file), returns output `summary` (one line: the label, the
//! number of lines and of bytes) and reports the line count as metric `lines`. Make it your
//! step: the inputs, outputs and params it uses must match the step's `inputs:`, `outputs:`
//! and `with:` in the pipeline, and the params it reads are declared in `export!` below, so
//! that `kiln validate` checks every `with:` against them.

use kiln_step::{Context, Param, Step, StepError, Success};

struct @TYPE@;

impl Step for @TYPE@ {
    fn run(ctx: Context) -> Result<Success, StepError> {
        // Inputs are read-only files or folders under /in.
        let path = ctx.input("data")?;
        let text = std::fs::read_to_string(path)
            .map_err(|e| StepError::invalid_input(format!("{path}: {e}")))?;
        // Declared defaults are filled in by kiln: `label` is always there.
        let label = ctx.param("label")?.to_text();
        let lines = text.lines().count();
        kiln_step::log::info(&format!("{label}: {lines} lines"));
        // A small output can be returned as bytes; a big one is written to
        // `ctx.output("summary")?`, a path under /out.
        let summary = format!("{label}: {lines} lines, {} bytes\n", text.len());
        Ok(Success::new()
            .metric("lines", lines as f64)
            .output("summary", summary))
    }
}

kiln_step::export!(@TYPE@, params = [
    Param::string("label")
        .default("data")
        .describe("a name for the input, kept in the summary"),
]);
