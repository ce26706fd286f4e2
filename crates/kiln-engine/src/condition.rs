//! `when:` conditions evaluated when a step is ready.

use std::collections::BTreeMap;

use cel::{Context, Program};
use kiln_spec::Value;

/// Evaluates a step's condition with the params, the small JSON outputs of its upstream
/// steps (`steps.STEP.OUTPUT`, a list for a fan-out step) and the fan-out item.
pub fn evaluate(
    source: &str,
    params: &BTreeMap<String, Value>,
    steps: &BTreeMap<String, BTreeMap<String, serde_json::Value>>,
    item: Option<&Value>,
) -> Result<bool, String> {
    let program = Program::compile(source).map_err(|e| format!("`when` does not parse: {e}"))?;
    let mut context = Context::default();
    context.add_variable_from_value("params", to_cel(params)?);
    context.add_variable_from_value("steps", to_cel(steps)?);
    if let Some(item) = item {
        context.add_variable_from_value("item", to_cel(item)?);
    }
    match program.execute(&context) {
        Ok(cel::Value::Bool(b)) => Ok(b),
        Ok(other) => Err(format!("`when` gave {:?}, not a bool", other.type_of())),
        Err(e) => Err(format!("`when` failed: {e}")),
    }
}

fn to_cel<T: serde::Serialize>(value: &T) -> Result<cel::Value, String> {
    cel::to_value(value).map_err(|e| format!("cannot pass a value to CEL: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_params_steps_and_item() {
        let params = BTreeMap::from([("epochs".to_owned(), Value::Int(3))]);
        let steps = BTreeMap::from([(
            "validate".to_owned(),
            BTreeMap::from([(
                "report".to_owned(),
                serde_json::json!({"ok": true, "rows": 10}),
            )]),
        )]);
        assert_eq!(
            evaluate(
                "params.epochs > 2 && steps.validate.report.ok",
                &params,
                &steps,
                None
            ),
            Ok(true)
        );
        assert_eq!(
            evaluate("steps.validate.report.rows > 100", &params, &steps, None),
            Ok(false)
        );
        assert_eq!(
            evaluate("item > 0.5", &params, &steps, Some(&Value::Float(0.1))),
            Ok(false)
        );
        assert!(evaluate("params.epochs", &params, &steps, None).is_err());
    }
}
