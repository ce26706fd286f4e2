//! Host side of the kiln step world (`wit/step.wit`): bindings, the logger import, and the
//! conversions between kiln's values and the world's.

use std::collections::BTreeMap;

use kiln_spec::Value;

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "kiln:step/step",
    imports: { default: async },
    exports: { default: async },
});

pub(crate) use self::kiln::step::log::Level;
pub(crate) use self::kiln::step::types::{Artifact, ErrorKind, Value as WitValue};

/// The world's value for a param.
pub(crate) fn wit_value(value: &Value) -> WitValue {
    match value {
        Value::Bool(b) => WitValue::Boolean(*b),
        Value::Int(i) => WitValue::Integer(*i),
        Value::Float(f) => WitValue::Number(*f),
        Value::String(s) => WitValue::Text(s.clone()),
        Value::List(items) => list_value(items),
    }
}

fn list_value(items: &[Value]) -> WitValue {
    if items.iter().all(|v| matches!(v, Value::Bool(_))) && !items.is_empty() {
        return WitValue::Booleans(
            items
                .iter()
                .filter_map(|v| match v {
                    Value::Bool(b) => Some(*b),
                    _ => None,
                })
                .collect(),
        );
    }
    if items.iter().all(|v| matches!(v, Value::Int(_))) && !items.is_empty() {
        return WitValue::Integers(
            items
                .iter()
                .filter_map(|v| match v {
                    Value::Int(i) => Some(*i),
                    _ => None,
                })
                .collect(),
        );
    }
    if items
        .iter()
        .all(|v| matches!(v, Value::Int(_) | Value::Float(_)))
        && !items.is_empty()
    {
        return WitValue::Numbers(
            items
                .iter()
                .filter_map(|v| match v {
                    Value::Int(i) => Some(*i as f64),
                    Value::Float(f) => Some(*f),
                    _ => None,
                })
                .collect(),
        );
    }
    WitValue::Texts(
        items
            .iter()
            .map(|v| match v {
                Value::List(inner) => inner
                    .iter()
                    .map(Value::to_template_string)
                    .collect::<Vec<_>>()
                    .join(","),
                other => other.to_template_string(),
            })
            .collect(),
    )
}

/// The context of one attempt.
pub(crate) fn context(
    step: &str,
    params: &BTreeMap<String, Value>,
    inputs: &[(String, String)],
    outputs: &[(String, String)],
) -> Context {
    let artifacts = |list: &[(String, String)]| {
        list.iter()
            .map(|(name, path)| Artifact {
                name: name.clone(),
                path: path.clone(),
            })
            .collect()
    };
    Context {
        step: step.to_owned(),
        params: params
            .iter()
            .map(|(name, value)| (name.clone(), wit_value(value)))
            .collect(),
        inputs: artifacts(inputs),
        outputs: artifacts(outputs),
    }
}

/// How a step's own error reads in kiln's messages.
pub(crate) fn error_kind_text(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::InvalidParams => "invalid params",
        ErrorKind::InvalidInput => "invalid input",
        ErrorKind::Failed => "failed",
    }
}

/// How a log level is written in the log.
pub(crate) fn level_text(level: Level) -> &'static str {
    match level {
        Level::Debug => "DEBUG",
        Level::Info => "INFO",
        Level::Warn => "WARN",
        Level::Error => "ERROR",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_become_homogeneous_world_lists() {
        let v = |items: Vec<Value>| wit_value(&Value::List(items));
        assert!(matches!(
            v(vec![Value::Float(0.5), Value::Int(1)]),
            WitValue::Numbers(n) if n == [0.5, 1.0]
        ));
        assert!(matches!(
            v(vec![Value::Int(2), Value::Int(3)]),
            WitValue::Integers(n) if n == [2, 3]
        ));
        assert!(matches!(
            v(vec![Value::Bool(true)]),
            WitValue::Booleans(b) if b == [true]
        ));
        assert!(matches!(
            v(vec![Value::String("a".into()), Value::Int(1)]),
            WitValue::Texts(t) if t == ["a", "1"]
        ));
        assert!(matches!(v(vec![]), WitValue::Texts(t) if t.is_empty()));
    }
}
