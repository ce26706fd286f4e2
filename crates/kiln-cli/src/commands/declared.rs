//! The params components declare, checked against the pipeline's `with:` once the plan is
//! pinned (`kiln run`, `kiln validate`): see [`kiln_plan::declared`].

use std::collections::BTreeMap;

use kiln_cas::{BlobStore, Digest};
use kiln_plan::Plan;
use kiln_spec::{Diagnostic, SourceFile};

/// Reads the declarations of `components` (digests by step name), checks every `with:` of
/// `plan` (planned from `source`) against them and, when all is well, gives the steps their
/// declared defaults. `Err` holds located diagnostics or, for unreadable components, plain
/// problems.
pub async fn check(
    source: &SourceFile,
    plan: &mut Plan,
    components: &BTreeMap<String, Digest>,
    store: &dyn BlobStore,
) -> Result<(), Problems> {
    let inspected = kiln_build::inspect(components, store)
        .await
        .map_err(Problems::Unreadable)?;
    let step_world: Vec<&str> = inspected
        .iter()
        .filter(|(_, i)| i.step_world)
        .map(|(step, _)| step.as_str())
        .collect();
    let declarations: BTreeMap<String, kiln_plan::declared::Declaration> = inspected
        .iter()
        .filter_map(|(step, i)| i.declaration.clone().map(|d| (step.clone(), d)))
        .collect();
    let uses_command_line = |step: &str| {
        plan.steps.iter().any(|s| {
            s.step == step
                && matches!(&s.kind, kiln_plan::StepKind::Wasm { command, .. }
                    if command.args.is_some() || command.stdin.is_some() || command.stdout.is_some())
        })
    };
    let misused: Vec<&str> = step_world
        .into_iter()
        .filter(|s| uses_command_line(s))
        .collect();
    if declarations.is_empty() && misused.is_empty() {
        return Ok(());
    }
    let pipeline = kiln_spec::parse_all(&source.text).map_err(Problems::Located)?;
    let mut diagnostics = kiln_plan::declared::check_with(&pipeline, plan, &declarations);
    for (name, step) in &pipeline.steps {
        if !misused.contains(&name.as_str()) {
            continue;
        }
        let fields = [
            step.args.as_ref().map(|a| ("args", a.span)),
            step.stdin.as_ref().map(|s| ("stdin", s.span)),
            step.stdout.as_ref().map(|s| ("stdout", s.span)),
        ];
        for (field, span) in fields.into_iter().flatten() {
            diagnostics.push(
                Diagnostic::error(
                    "kiln::plan::command-line-on-step-world",
                    format!(
                        "step `{name}` has `{field}`, but its component is of the kiln step \
                         world, which gets its inputs, outputs and params in its context"
                    ),
                )
                .at(span)
                .help(format!(
                    "remove `{field}`; it is for command programs (`wasi:cli/run`)"
                )),
            );
        }
    }
    if !diagnostics.is_empty() {
        return Err(Problems::Located(diagnostics));
    }
    kiln_plan::declared::apply_defaults(plan, &declarations);
    Ok(())
}

/// Why [`check`] refused a plan.
pub enum Problems {
    /// `with:` does not fit what the components declare.
    Located(Vec<Diagnostic>),
    /// A component's declaration cannot be read.
    Unreadable(Vec<String>),
}
