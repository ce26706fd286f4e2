//! Param values and param types.

use std::fmt;

use schemars::JsonSchema;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

/// A small typed value: a param's default, an override, or a `with:` entry.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Value {
    /// A boolean.
    Bool(bool),
    /// A signed integer.
    Int(i64),
    /// A finite floating-point number.
    Float(f64),
    /// A string (it may hold templates such as `{{params.epochs}}`).
    String(String),
    /// A list of values.
    List(Vec<Value>),
}

impl Value {
    /// The name of this value's kind, as errors print it.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::String(_) => "string",
            Value::List(_) => "list",
        }
    }

    /// The value as it is substituted into a template.
    pub fn to_template_string(&self) -> String {
        match self {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => {
                if x.fract() == 0.0 && x.abs() < 1e15 {
                    write!(f, "{x:.1}")
                } else {
                    write!(f, "{x}")
                }
            }
            Value::String(s) => write!(f, "{s:?}"),
            Value::List(items) => {
                f.write_str("[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_str("]")
            }
        }
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string, number, bool or list")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        i64::try_from(v).map(Value::Int).map_err(|_| {
            E::custom(format!(
                "integer {v} is too large (the limit is {})",
                i64::MAX
            ))
        })
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        if v.is_finite() {
            Ok(Value::Float(v))
        } else {
            Err(E::custom(format!("`{v}` is not a finite number")))
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Value>()? {
            items.push(item);
        }
        Ok(Value::List(items))
    }

    fn visit_map<A: de::MapAccess<'de>>(self, _map: A) -> Result<Value, A::Error> {
        Err(de::Error::custom(
            "a mapping is not a param value: use a string, number, bool or list",
        ))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Err(E::custom(
            "an empty value is not a param value: write a string, number, bool or list",
        ))
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ValueVisitor)
    }
}

impl JsonSchema for Value {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Value".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A string, number, bool, or a list of these.",
            "anyOf": [
                {"type": ["string", "number", "boolean"]},
                {"type": "array", "items": {"type": ["string", "number", "boolean"]}}
            ]
        })
    }
}

/// The type of a scalar param.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScalarType {
    /// Text.
    String,
    /// A signed 64-bit integer.
    Int,
    /// A floating-point number (an integer is accepted).
    Float,
    /// `true` or `false`.
    Bool,
}

/// The declared type of a pipeline param.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParamType {
    /// One scalar.
    Scalar(ScalarType),
    /// A list of scalars of one type.
    List(ScalarType),
}

/// Every spelling of a param type, as the schema lists them.
pub const PARAM_TYPES: &[&str] = &[
    "string",
    "int",
    "float",
    "bool",
    "list[string]",
    "list[int]",
    "list[float]",
    "list[bool]",
];

impl ScalarType {
    fn name(self) -> &'static str {
        match self {
            ScalarType::String => "string",
            ScalarType::Int => "int",
            ScalarType::Float => "float",
            ScalarType::Bool => "bool",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "string" => ScalarType::String,
            "int" => ScalarType::Int,
            "float" => ScalarType::Float,
            "bool" => ScalarType::Bool,
            _ => return None,
        })
    }

    /// Checks a value against this type; an int becomes a float where a float is asked for.
    pub fn check(self, value: &Value) -> Result<Value, String> {
        match (self, value) {
            (ScalarType::String, Value::String(_))
            | (ScalarType::Int, Value::Int(_))
            | (ScalarType::Float, Value::Float(_))
            | (ScalarType::Bool, Value::Bool(_)) => Ok(value.clone()),
            (ScalarType::Float, Value::Int(i)) => Ok(Value::Float(*i as f64)),
            _ => Err(format!(
                "expected {}, found {} `{value}`",
                self.name(),
                value.kind()
            )),
        }
    }

    /// Parses a value given on the command line (`-p lr=0.1`).
    pub fn parse_text(self, text: &str) -> Result<Value, String> {
        let text = text.trim();
        match self {
            ScalarType::String => Ok(Value::String(text.to_owned())),
            ScalarType::Int => text
                .parse::<i64>()
                .map(Value::Int)
                .map_err(|_| format!("`{text}` is not an int")),
            ScalarType::Float => match text.parse::<f64>() {
                Ok(x) if x.is_finite() => Ok(Value::Float(x)),
                _ => Err(format!("`{text}` is not a finite float")),
            },
            ScalarType::Bool => match text {
                "true" => Ok(Value::Bool(true)),
                "false" => Ok(Value::Bool(false)),
                _ => Err(format!("`{text}` is not a bool (use `true` or `false`)")),
            },
        }
    }
}

impl ParamType {
    /// Checks a value against this type, returning it normalised.
    pub fn check(self, value: &Value) -> Result<Value, String> {
        match (self, value) {
            (ParamType::Scalar(t), v) => t.check(v),
            (ParamType::List(t), Value::List(items)) => items
                .iter()
                .enumerate()
                .map(|(i, item)| t.check(item).map_err(|e| format!("item {i}: {e}")))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::List),
            (ParamType::List(_), other) => {
                Err(format!("expected {self}, found {} `{other}`", other.kind()))
            }
        }
    }

    /// Parses a value given on the command line; lists are comma-separated or `[a, b]`.
    pub fn parse_text(self, text: &str) -> Result<Value, String> {
        match self {
            ParamType::Scalar(t) => t.parse_text(text),
            ParamType::List(t) => {
                let inner = text.trim();
                let inner = inner
                    .strip_prefix('[')
                    .and_then(|s| s.strip_suffix(']'))
                    .unwrap_or(inner);
                if inner.trim().is_empty() {
                    return Ok(Value::List(Vec::new()));
                }
                inner
                    .split(',')
                    .map(|part| t.parse_text(part))
                    .collect::<Result<Vec<_>, _>>()
                    .map(Value::List)
            }
        }
    }

    /// Whether this is a list type.
    pub fn is_list(self) -> bool {
        matches!(self, ParamType::List(_))
    }
}

impl fmt::Display for ParamType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamType::Scalar(t) => f.write_str(t.name()),
            ParamType::List(t) => write!(f, "list[{}]", t.name()),
        }
    }
}

impl std::str::FromStr for ParamType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(t) = ScalarType::parse(s) {
            return Ok(ParamType::Scalar(t));
        }
        if let Some(inner) = s.strip_prefix("list[").and_then(|s| s.strip_suffix(']'))
            && let Some(t) = ScalarType::parse(inner)
        {
            return Ok(ParamType::List(t));
        }
        let hint = match s {
            "str" | "text" => " (did you mean `string`?)",
            "integer" | "number" => " (did you mean `int` or `float`?)",
            "double" => " (did you mean `float`?)",
            "boolean" => " (did you mean `bool`?)",
            "list" | "array" => " (say what the list holds, e.g. `list[float]`)",
            _ => "",
        };
        Err(format!(
            "unknown param type `{s}`{hint}; expected one of {}",
            PARAM_TYPES.join(", ")
        ))
    }
}

impl Serialize for ParamType {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ParamType {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(de::Error::custom)
    }
}

impl JsonSchema for ParamType {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ParamType".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "The type of the param.",
            "enum": PARAM_TYPES
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_types() {
        assert_eq!(
            "list[float]".parse::<ParamType>(),
            Ok(ParamType::List(ScalarType::Float))
        );
        assert!(
            "list"
                .parse::<ParamType>()
                .unwrap_err()
                .contains("list[float]")
        );
    }

    #[test]
    fn check_and_overrides() {
        let t = ParamType::List(ScalarType::Float);
        assert_eq!(
            t.check(&Value::List(vec![Value::Int(1), Value::Float(0.5)])),
            Ok(Value::List(vec![Value::Float(1.0), Value::Float(0.5)]))
        );
        assert_eq!(
            t.parse_text("[0.1, 0.2]"),
            Ok(Value::List(vec![Value::Float(0.1), Value::Float(0.2)]))
        );
        assert!(
            ParamType::Scalar(ScalarType::Int)
                .parse_text("1.5")
                .is_err()
        );
        assert!(
            ParamType::Scalar(ScalarType::Bool)
                .parse_text("yes")
                .is_err()
        );
    }
}
