//! Identifiers that validate themselves while the YAML is parsed.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

/// Words that cannot name a step because templates and conditions use them.
pub const RESERVED_STEP_NAMES: &[&str] = &["params", "inputs", "outputs", "item", "steps", "run"];

/// The longest name kiln accepts (it must fit in a Kubernetes label).
pub const MAX_NAME_LEN: usize = 63;

fn check_kebab(kind: &str, s: &str) -> Result<(), String> {
    let ok_start = s.chars().next().is_some_and(|c| c.is_ascii_lowercase());
    let ok_rest = s
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    check_length(kind, s)?;
    if !ok_start || !ok_rest {
        return Err(format!(
            "invalid {kind} name `{s}`{}: use lowercase letters, digits, `_` and `-`, \
             starting with a letter",
            suggestion(s, '-', |c| check_kebab(kind, c))
        ));
    }
    Ok(())
}

fn check_snake(kind: &str, s: &str) -> Result<(), String> {
    let ok_start = s
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let ok_rest = s
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    check_length(kind, s)?;
    if !ok_start || !ok_rest {
        return Err(format!(
            "invalid {kind} name `{s}`{}: use lowercase letters, digits and `_`, \
             starting with a letter or `_`",
            suggestion(s, '_', |c| check_snake(kind, c))
        ));
    }
    Ok(())
}

fn check_length(kind: &str, s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err(format!("a {kind} name cannot be empty"));
    }
    let n = s.chars().count();
    if n > MAX_NAME_LEN {
        return Err(format!(
            "{kind} name `{s}` is {n} characters long; the most is {MAX_NAME_LEN} \
             (names must fit in a Kubernetes label)"
        ));
    }
    Ok(())
}

/// ` (did you mean `x`?)` where lowercasing and replacing odd characters gives a valid name.
fn suggestion(s: &str, separator: char, valid: impl Fn(&str) -> Result<(), String>) -> String {
    let mut fixed = String::new();
    for c in s.trim().chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == separator {
            fixed.push(c);
        } else if !fixed.ends_with(separator) {
            fixed.push(separator);
        }
    }
    let fixed = fixed.trim_matches(separator);
    if fixed != s && valid(fixed).is_ok() {
        format!(" (did you mean `{fixed}`?)")
    } else {
        String::new()
    }
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $check:expr, $pattern:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Checks `s` and wraps it.
            pub fn new(s: impl Into<String>) -> Result<Self, String> {
                let s = s.into();
                ($check)(s.as_str())?;
                Ok(Self(s))
            }

            /// The name as written.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                Self::new(s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let s = String::deserialize(deserializer)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }

        impl JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }

            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({
                    "type": "string",
                    "pattern": $pattern,
                    "maxLength": MAX_NAME_LEN,
                    "description": concat!("The name of a ", $kind, ".")
                })
            }
        }
    };
}

name_type!(
    /// The name of a pipeline.
    PipelineName,
    "pipeline",
    |s| check_kebab("pipeline", s),
    "^[a-z][a-z0-9_-]*$"
);

name_type!(
    /// The name of a step: lowercase, usable in a Kubernetes label, not a reserved word.
    StepName,
    "step",
    |s: &str| {
        check_kebab("step", s)?;
        if RESERVED_STEP_NAMES.contains(&s) {
            return Err(format!(
                "`{s}` cannot name a step: it is reserved for templates and conditions \
                 (reserved: {})",
                RESERVED_STEP_NAMES.join(", ")
            ));
        }
        Ok(())
    },
    "^[a-z][a-z0-9_-]*$"
);

name_type!(
    /// The name of a step's input or output artifact.
    ArtifactName,
    "input or output",
    |s| check_kebab("artifact", s),
    "^[a-z][a-z0-9_-]*$"
);

name_type!(
    /// The name of a secret: what the user supplies a value for (`KILN_SECRET_<NAME>` or a
    /// `--secrets` file), never the value itself.
    SecretName,
    "secret",
    |s| check_kebab("secret", s),
    "^[a-z][a-z0-9_-]*$"
);

name_type!(
    /// The name of a pipeline or step param (an identifier in templates and CEL).
    ParamName,
    "param",
    |s| check_snake("param", s),
    "^[a-z_][a-z0-9_]*$"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_names() {
        assert!(StepName::new("train").is_ok());
        assert!(StepName::new("pre-process_2").is_ok());
        assert!(StepName::new("Train").is_err());
        assert!(StepName::new("2train").is_err());
        assert!(StepName::new("").is_err());
        assert!(StepName::new("params").is_err());
        assert!(StepName::new("a".repeat(64)).is_err());
        assert!(StepName::new("a".repeat(63)).is_ok());
    }

    #[test]
    fn messages_suggest_a_valid_name() {
        assert!(
            StepName::new("Prep")
                .unwrap_err()
                .contains("did you mean `prep`?")
        );
        assert!(
            ParamName::new("learning-rate")
                .unwrap_err()
                .contains("did you mean `learning_rate`?")
        );
        assert!(
            PipelineName::new("My Pipeline")
                .unwrap_err()
                .contains("did you mean `my-pipeline`?")
        );
        assert!(
            StepName::new("a".repeat(64))
                .unwrap_err()
                .contains("64 characters")
        );
        assert!(!StepName::new("2x").unwrap_err().contains("did you mean"));
    }

    #[test]
    fn param_names() {
        assert!(ParamName::new("learning_rate").is_ok());
        assert!(ParamName::new("_x").is_ok());
        assert!(ParamName::new("learning-rate").is_err());
    }
}
