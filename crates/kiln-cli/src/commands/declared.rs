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
    let declarations = kiln_build::declarations(components, store)
        .await
        .map_err(Problems::Unreadable)?;
    if declarations.is_empty() {
        return Ok(());
    }
    let pipeline = kiln_spec::parse_all(&source.text).map_err(Problems::Located)?;
    let diagnostics = kiln_plan::declared::check_with(&pipeline, plan, &declarations);
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
