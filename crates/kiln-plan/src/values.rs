//! Small outputs of other steps in a step's templates: `{{steps.prep.rows}}`, and
//! `{{steps.fast.score ?? steps.slow.score ?? 0}}` for a join after conditional branches.
//!
//! The plan keeps such templates as written, and lists them in [`PlannedStep::values`]. When
//! the step is ready the engine reads each value ([`read`]), records them, and asks [`fill`]
//! for the step with the values in its args, env, command and `with` (and so in its cache
//! key). A replay, `kiln show` and `kiln explain` fill the same values from the record
//! ([`Plan::fill_values`]).

use std::collections::BTreeMap;

use serde_json::Value as Json;

use crate::dynamic::{self, Resolve};
use crate::{Plan, PlannedStep};
use kiln_spec::template::TemplateRef;

/// The most bytes of an output read as a value.
pub const MAX_VALUE: u64 = 64 * 1024;

/// An output's bytes as a value: JSON when they are JSON (`42`, `"abc"`, `[1, 2]`), else the
/// text without its trailing newline (`heads`). The caller bounds the size.
pub fn read(bytes: &[u8]) -> Result<Json, String> {
    if let Ok(json) = serde_json::from_slice::<Json>(bytes) {
        return Ok(json);
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => Ok(Json::String(
            text.strip_suffix('\n')
                .map(|t| t.strip_suffix('\r').unwrap_or(t))
                .unwrap_or(text)
                .to_owned(),
        )),
        Err(_) => {
            let start: String = bytes
                .iter()
                .take(16)
                .flat_map(|b| std::ascii::escape_default(*b))
                .map(char::from)
                .collect();
            Err(format!("it is neither JSON nor text (it starts `{start}`)"))
        }
    }
}

/// `step` with `values` (by [`crate::OutputValue::template`]) in its templates; every value
/// it reads must be there. The result reads no values.
pub fn fill(step: &PlannedStep, values: &BTreeMap<String, Json>) -> Result<PlannedStep, String> {
    if let Some(missing) = step
        .values
        .iter()
        .find(|v| !values.contains_key(&v.template))
    {
        return Err(format!(
            "step `{}`: no value for `{{{{{}}}}}`",
            step.id, missing.template
        ));
    }
    let mut base = step.clone();
    base.values.clear();
    let mut json = serde_json::to_value(&base).expect("planned steps serialise");
    let resolve: &Resolve = &|target: &TemplateRef| match target {
        TemplateRef::StepOutput { .. } | TemplateRef::FirstOf { .. } => {
            Ok(values.get(&target.to_string()).cloned())
        }
        _ => Ok(None),
    };
    dynamic::fill(&mut json, resolve, false)?;
    serde_json::from_value(json).map_err(|e| format!("step `{}`: {e}", step.id))
}

impl Plan {
    /// Fills step `id`'s values as the engine did in the run.
    pub fn fill_values(&mut self, id: &str, values: &BTreeMap<String, Json>) -> Result<(), String> {
        let step = self
            .steps
            .iter_mut()
            .find(|s| s.id == id)
            .ok_or_else(|| format!("the plan has no step `{id}`"))?;
        *step = fill(step, values)?;
        Ok(())
    }
}
