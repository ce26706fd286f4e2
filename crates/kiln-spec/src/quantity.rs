//! Resource quantities and durations written the way users write them.

use std::fmt;
use std::time::Duration;

use schemars::JsonSchema;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

/// Something written as a YAML number or string, before it is parsed as a quantity.
enum NumberOrText {
    Int(i64),
    Float(f64),
    Text(String),
}

struct NumberOrTextVisitor(&'static str);

impl Visitor<'_> for NumberOrTextVisitor {
    type Value = NumberOrText;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<NumberOrText, E> {
        Ok(NumberOrText::Int(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<NumberOrText, E> {
        i64::try_from(v)
            .map(NumberOrText::Int)
            .map_err(|_| E::custom(format!("{v} is too large")))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<NumberOrText, E> {
        Ok(NumberOrText::Float(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<NumberOrText, E> {
        Ok(NumberOrText::Text(v.to_owned()))
    }
}

fn number_or_text<'de, D: Deserializer<'de>>(
    deserializer: D,
    expecting: &'static str,
) -> Result<String, D::Error> {
    Ok(
        match deserializer.deserialize_any(NumberOrTextVisitor(expecting))? {
            NumberOrText::Int(i) => i.to_string(),
            NumberOrText::Float(x) => x.to_string(),
            NumberOrText::Text(s) => s,
        },
    )
}

/// CPU, in thousandths of a core: `cpu: 2`, `cpu: 0.5` or `cpu: 500m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cpu {
    /// Thousandths of a core.
    pub millis: u64,
}

impl std::str::FromStr for Cpu {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let bad = || {
            format!(
                "invalid cpu quantity `{s}`: write whole or fractional cores (`2`, `0.5`) or millicores (`500m`)"
            )
        };
        let millis = if let Some(m) = t.strip_suffix('m') {
            m.parse::<u64>().map_err(|_| bad())?
        } else {
            let cores: f64 = t.parse().map_err(|_| bad())?;
            if !cores.is_finite() || !(0.0..=1e9).contains(&cores) {
                return Err(bad());
            }
            let millis = cores * 1000.0;
            if millis.fract() != 0.0 {
                return Err(format!(
                    "invalid cpu quantity `{s}`: the smallest unit is a millicore (`1m` = 0.001)"
                ));
            }
            millis as u64
        };
        if millis == 0 {
            return Err(format!(
                "invalid cpu quantity `{s}`: a step needs more than zero cpu"
            ));
        }
        Ok(Cpu { millis })
    }
}

impl fmt::Display for Cpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.millis.is_multiple_of(1000) {
            write!(f, "{}", self.millis / 1000)
        } else {
            write!(f, "{}m", self.millis)
        }
    }
}

/// An amount of memory in bytes: `memory: 16Gi`, `512Mi`, `1G` or a plain byte count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Memory {
    /// Bytes.
    pub bytes: u64,
}

const MEMORY_SUFFIXES: &[(&str, u64)] = &[
    ("Ki", 1 << 10),
    ("Mi", 1 << 20),
    ("Gi", 1 << 30),
    ("Ti", 1 << 40),
    ("Pi", 1 << 50),
    ("k", 1_000),
    ("K", 1_000),
    ("M", 1_000_000),
    ("G", 1_000_000_000),
    ("T", 1_000_000_000_000),
    ("P", 1_000_000_000_000_000),
];

impl std::str::FromStr for Memory {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (number, suffix) = t.split_at(split);
        let hint = match suffix {
            "GB" | "gb" | "Gb" | "gi" => format!(" (did you mean `{number}Gi`?)"),
            "MB" | "mb" | "Mb" | "mi" => format!(" (did you mean `{number}Mi`?)"),
            "KB" | "kb" | "Kb" | "ki" => format!(" (did you mean `{number}Ki`?)"),
            "TB" | "tb" => format!(" (did you mean `{number}Ti`?)"),
            _ => String::new(),
        };
        let bad = || {
            format!(
                "invalid memory quantity `{s}`{hint}: write a number with a suffix such as `512Mi`, `16Gi` or `1G`"
            )
        };
        let unit = if suffix.is_empty() {
            1
        } else {
            MEMORY_SUFFIXES
                .iter()
                .find(|(name, _)| *name == suffix)
                .map(|(_, unit)| *unit)
                .ok_or_else(bad)?
        };
        let value: f64 = number.parse().map_err(|_| bad())?;
        let bytes = value * unit as f64;
        if !bytes.is_finite() || bytes >= u64::MAX as f64 {
            return Err(format!("invalid memory quantity `{s}`: it is too large"));
        }
        if bytes < 1.0 {
            return Err(format!(
                "invalid memory quantity `{s}`: it must be more than zero"
            ));
        }
        Ok(Memory {
            bytes: bytes.round() as u64,
        })
    }
}

impl fmt::Display for Memory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, unit) in MEMORY_SUFFIXES.iter().take(5).rev() {
            if self.bytes >= *unit && self.bytes.is_multiple_of(*unit) {
                return write!(f, "{}{name}", self.bytes / unit);
            }
        }
        write!(f, "{}", self.bytes)
    }
}

/// A duration written as `30s`, `10m`, `1h 30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HumanDuration(pub Duration);

impl std::str::FromStr for HumanDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let d = humantime::parse_duration(s.trim()).map_err(|e| {
            format!("invalid duration `{s}` ({e}): write it like `30s`, `10m` or `1h 30m`")
        })?;
        if d.is_zero() {
            return Err(format!(
                "invalid duration `{s}`: it must be longer than zero"
            ));
        }
        Ok(HumanDuration(d))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

macro_rules! quantity_serde {
    ($ty:ty, $expecting:literal, $schema:tt) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = number_or_text(deserializer, $expecting)?;
                text.parse().map_err(de::Error::custom)
            }
        }

        impl Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl JsonSchema for $ty {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($ty).into()
            }

            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!($schema)
            }
        }
    };
}

quantity_serde!(Cpu, "a cpu quantity such as 2, 0.5 or 500m", {
    "description": "CPU cores: `2`, `0.5` or millicores `500m`.",
    "anyOf": [{"type": "number", "exclusiveMinimum": 0}, {"type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?m?$"}]
});
quantity_serde!(Memory, "a memory quantity such as 512Mi or 16Gi", {
    "description": "Memory: bytes, or a number with a suffix `Ki`, `Mi`, `Gi`, `Ti`, `k`, `M`, `G`, `T`.",
    "anyOf": [{"type": "integer", "minimum": 1}, {"type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|k|K|M|G|T|P)?$"}]
});
quantity_serde!(HumanDuration, "a duration such as 30s or 10m", {
    "description": "A duration such as `30s`, `10m` or `1h 30m`.",
    "type": "string"
});

/// A quantity written as itself (`16Gi`) or as a template over params and the fan-out item
/// (`"{{params.mem}}"`), read once those are known: when the pipeline is planned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Templated<Q> {
    /// The quantity itself.
    Value(Q),
    /// A template, such as `"{{params.mem}}"`.
    Template(String),
}

impl<Q: std::str::FromStr<Err = String>> Templated<Q> {
    fn from_text(text: String) -> Result<Self, String> {
        if text.contains("{{") {
            Ok(Templated::Template(text))
        } else {
            text.parse().map(Templated::Value)
        }
    }

    /// The quantity, given how to fill in a template.
    pub fn resolve(&self, fill: impl FnOnce(&str) -> String) -> Result<Q, String>
    where
        Q: Clone,
    {
        match self {
            Templated::Value(q) => Ok(q.clone()),
            Templated::Template(text) => {
                let filled = fill(text);
                filled
                    .parse()
                    .map_err(|e: String| format!("`{text}` is `{filled}`: {e}"))
            }
        }
    }
}

impl<'de, Q: std::str::FromStr<Err = String>> Deserialize<'de> for Templated<Q> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = number_or_text(
            deserializer,
            "a quantity, or a template such as \"{{params.mem}}\"",
        )?;
        Templated::from_text(text).map_err(de::Error::custom)
    }
}

impl<Q: fmt::Display> Serialize for Templated<Q> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Templated::Value(q) => serializer.collect_str(q),
            Templated::Template(text) => serializer.serialize_str(text),
        }
    }
}

impl<Q: JsonSchema> JsonSchema for Templated<Q> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        format!("Templated{}", Q::schema_name()).into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let value = generator.subschema_for::<Q>();
        schemars::json_schema!({
            "anyOf": [value, {"type": "string", "pattern": "\\{\\{", "description": "A template over params and the fan-out item, such as `{{params.mem}}`."}]
        })
    }
}

/// A resource amount: one value (`memory: 4Gi`, the limit, and the request too), or a request
/// and a limit (`cpu: {request: 1, limit: 4}`), each a quantity or a template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(untagged, bound(serialize = "Q: fmt::Display"))]
pub enum Amount<Q> {
    /// One value: the request and the limit.
    One(Templated<Q>),
    /// A request (what the step is guaranteed, what a scheduler places it by) and a limit
    /// (the most it may use).
    Range {
        /// What the step is guaranteed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request: Option<crate::Located<Templated<Q>>>,
        /// The most it may use.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<crate::Located<Templated<Q>>>,
    },
}

impl<'de, Q: std::str::FromStr<Err = String>> Deserialize<'de> for Amount<Q> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AmountVisitor<Q>(std::marker::PhantomData<Q>);

        #[derive(Deserialize)]
        #[serde(deny_unknown_fields, bound = "Q: std::str::FromStr<Err = String>")]
        struct Range<Q> {
            #[serde(default = "none")]
            request: Option<crate::Located<Templated<Q>>>,
            #[serde(default = "none")]
            limit: Option<crate::Located<Templated<Q>>>,
        }

        fn none<T>() -> Option<T> {
            None
        }

        impl<'de, Q: std::str::FromStr<Err = String>> Visitor<'de> for AmountVisitor<Q> {
            type Value = Amount<Q>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a quantity, or a map such as `{request: 1, limit: 4}`")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Amount<Q>, E> {
                Templated::from_text(v.to_string())
                    .map(Amount::One)
                    .map_err(E::custom)
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Amount<Q>, E> {
                Templated::from_text(v.to_string())
                    .map(Amount::One)
                    .map_err(E::custom)
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Amount<Q>, E> {
                Templated::from_text(v.to_string())
                    .map(Amount::One)
                    .map_err(E::custom)
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Amount<Q>, E> {
                Templated::from_text(v.to_owned())
                    .map(Amount::One)
                    .map_err(E::custom)
            }

            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Amount<Q>, A::Error> {
                let range = Range::<Q>::deserialize(de::value::MapAccessDeserializer::new(map))?;
                if range.request.is_none() && range.limit.is_none() {
                    return Err(de::Error::custom(
                        "give a `request`, a `limit` or both, such as `{request: 1, limit: 4}`",
                    ));
                }
                Ok(Amount::Range {
                    request: range.request,
                    limit: range.limit,
                })
            }
        }

        deserializer.deserialize_any(AmountVisitor(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu() {
        assert_eq!("2".parse::<Cpu>().unwrap().millis, 2000);
        assert_eq!("0.5".parse::<Cpu>().unwrap().millis, 500);
        assert_eq!("250m".parse::<Cpu>().unwrap().millis, 250);
        assert!("two".parse::<Cpu>().is_err());
        assert!("0".parse::<Cpu>().is_err());
        assert!("0.0001".parse::<Cpu>().is_err());
        assert_eq!("1500m".parse::<Cpu>().unwrap().to_string(), "1500m");
    }

    #[test]
    fn memory() {
        assert_eq!("16Gi".parse::<Memory>().unwrap().bytes, 16 << 30);
        assert_eq!("1G".parse::<Memory>().unwrap().bytes, 1_000_000_000);
        assert_eq!("1.5Gi".parse::<Memory>().unwrap().bytes, 3 << 29);
        assert_eq!("1024".parse::<Memory>().unwrap().bytes, 1024);
        assert!(
            "16GB"
                .parse::<Memory>()
                .unwrap_err()
                .contains("did you mean `16Gi`")
        );
        assert!("lots".parse::<Memory>().is_err());
        assert_eq!("512Mi".parse::<Memory>().unwrap().to_string(), "512Mi");
    }

    #[test]
    fn durations() {
        assert_eq!(
            "1h 30m".parse::<HumanDuration>().unwrap().0,
            Duration::from_secs(5400)
        );
        assert!("soon".parse::<HumanDuration>().is_err());
        assert!("0s".parse::<HumanDuration>().is_err());
    }
}
