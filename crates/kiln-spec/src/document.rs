//! Reads a pipeline document so that every mistake in it is reported, not only the first.
//!
//! serde stops at the first error, and serde-saphyr cannot resume a document it has half read.
//! So the document is read in units (each top-level field, each param declaration, each step),
//! each deserialised on its own by serde-saphyr, exactly as a whole-document parse would. A unit
//! that fails is recorded with its own location and is read over (as `IgnoredAny`) in the next
//! pass, until a pass gets to the end; unknown and missing top-level fields are recorded without
//! stopping. A valid document is read once; a document with N bad units is read N + 1 times.
//!
//! Why not a tree of located YAML values replayed through a deserialiser of our own:
//! serde-saphyr 2 has no value type, and its scalars are typed by the target (a plain `30` is
//! text for a string field and a number for `retries`; `yes` stays a string under YAML 1.2
//! booleans; tags), with errors whose kind `yaml_error` turns into kiln's messages. A replaying
//! deserialiser would have to copy both, and would drift from them.
//!
//! What stops the reading: a YAML syntax error, a budget breach and anything else that is not
//! a value that one unit's types refuse; and an error in a unit that is being read over, which
//! is the unit's own mistake seen again. What was found before it is still reported.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::fmt;
use std::hash::Hash;
use std::marker::PhantomData;

use indexmap::IndexMap;
use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

use crate::diag::Diagnostic;
use crate::located::Located;
use crate::names::PipelineName;
use crate::pipeline::{ApiVersion, Pipeline};
use crate::yaml_error;

/// The top-level fields of [`Pipeline`], in the order the struct declares them.
pub(crate) const TOP_LEVEL_FIELDS: &[&str] = &[
    "apiVersion",
    "name",
    "description",
    "params",
    "steps",
    "concurrency",
    "inputs",
    "outputs",
    "timeout",
    "defaults",
    "exports",
];

/// The most units whose errors are collected (each costs a pass); what comes after the last
/// of them is not checked.
const MAX_FAILED_UNITS: usize = 100;

/// A part of the document that is deserialised on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Unit {
    /// The value of a top-level field, such as `apiVersion`.
    Field(&'static str),
    /// The n-th entry under `params`, its name included.
    Param(usize),
    /// The n-th entry under `steps`, its name included.
    Step(usize),
}

/// Parses a pipeline, reporting every error it finds, sorted by position.
pub(crate) fn parse_all(
    text: &str,
    options: &serde_saphyr::Options,
) -> Result<Pipeline, Vec<Diagnostic>> {
    let mut skip = HashSet::new();
    let mut errors = Vec::new();
    let last_pass = loop {
        let pass = Pass {
            skip: &skip,
            current: Cell::new(None),
            text,
            diagnostics: RefCell::new(Vec::new()),
        };
        let result =
            serde_saphyr::with_deserializer_from_str_with_options(text, options.clone(), |de| {
                (&pass).deserialize(de)
            });
        let found = pass.diagnostics.into_inner();
        match result {
            Ok(Some(pipeline)) if errors.is_empty() && found.is_empty() => return Ok(pipeline),
            Ok(_) => break found,
            Err(e) => {
                let unit = pass.current.get();
                // Reading over a unit that failed before can fail again, at the same mistake
                // seen from further on (an over-indented line is a bad value first and a syntax
                // error after it): that unit has its error already.
                if unit.is_some_and(|u| skip.contains(&u)) {
                    break found;
                }
                errors.push(yaml_error::diagnose(&e, text));
                match unit {
                    Some(unit) if yaml_error::can_read_past(&e) => {
                        skip.insert(unit);
                        if skip.len() >= MAX_FAILED_UNITS {
                            break found;
                        }
                    }
                    _ => break found,
                }
            }
        }
    };
    // Unknown and missing top-level fields are found again by every pass: keep the last one's.
    errors.extend(last_pass);
    if skip.len() >= MAX_FAILED_UNITS {
        errors.push(
            Diagnostic::error(
                "kiln::spec::too-many-errors",
                format!(
                    "kiln stopped reading the pipeline after {MAX_FAILED_UNITS} params and steps with mistakes"
                ),
            )
            .help("fix these and validate again to see the rest"),
        );
    }
    // Stable: diagnostics at one position keep the order they were found in; those without
    // a position come last.
    errors.sort_by_key(|d| (d.span.is_none(), d.span.map(|s| s.offset)));
    Err(errors)
}

/// One reading of the document: which units to read over, and where it is now.
struct Pass<'a> {
    /// Units that failed in an earlier pass.
    skip: &'a HashSet<Unit>,
    /// The unit being read, so that an error can be blamed on it.
    current: Cell<Option<Unit>>,
    text: &'a str,
    /// Problems this pass found without stopping: unknown and missing top-level fields.
    diagnostics: RefCell<Vec<Diagnostic>>,
}

impl<'de> DeserializeSeed<'de> for &Pass<'_> {
    /// The pipeline, when every part of it was read.
    type Value = Option<Pipeline>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        // `deserialize_struct`, as the derived `Deserialize` of `Pipeline` calls it.
        deserializer.deserialize_struct("Pipeline", TOP_LEVEL_FIELDS, TopLevel(self))
    }
}

struct TopLevel<'p, 'a>(&'p Pass<'a>);

impl<'de> Visitor<'de> for TopLevel<'_, '_> {
    type Value = Option<Pipeline>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("struct Pipeline")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let pass = self.0;
        let mut api_version = None;
        let mut name = None;
        let mut description = None;
        let mut params = None;
        let mut steps = None;
        let mut concurrency = None;
        let mut inputs = None;
        let mut outputs = None;
        let mut timeout = None;
        let mut defaults = None;
        let mut exports = None;
        let mut seen = HashSet::new();
        // Whether a unit was read over: then there is no pipeline to return, though every
        // field is there.
        let mut incomplete = false;
        loop {
            pass.current.set(None);
            let Some(key) = map.next_key::<Located<String>>()? else {
                break;
            };
            let Some(field) = TOP_LEVEL_FIELDS
                .iter()
                .copied()
                .find(|f| *f == key.as_str())
            else {
                pass.diagnostics
                    .borrow_mut()
                    .push(yaml_error::unknown_field(&key, TOP_LEVEL_FIELDS).at(key.span));
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            seen.insert(field);
            let unit = Unit::Field(field);
            pass.current.set(Some(unit));
            if pass.skip.contains(&unit) {
                map.next_value::<IgnoredAny>()?;
                incomplete = true;
                continue;
            }
            match field {
                "apiVersion" => api_version = Some(map.next_value::<Located<ApiVersion>>()?),
                "name" => name = Some(map.next_value::<Located<PipelineName>>()?),
                "description" => description = map.next_value::<Option<String>>()?,
                "concurrency" => concurrency = map.next_value()?,
                "inputs" => inputs = map.next_value()?,
                "outputs" => outputs = map.next_value()?,
                "timeout" => timeout = map.next_value()?,
                "defaults" => defaults = map.next_value()?,
                "exports" => exports = map.next_value()?,
                "params" => {
                    let entries = map.next_value_seed(Entries::new(pass, Unit::Param))?;
                    incomplete |= entries.is_none();
                    params = entries;
                }
                _ => {
                    let entries = map.next_value_seed(Entries::new(pass, Unit::Step))?;
                    incomplete |= entries.is_none();
                    steps = entries;
                }
            }
        }
        pass.current.set(None);
        for field in ["apiVersion", "name", "steps"] {
            if !seen.contains(field) {
                pass.diagnostics
                    .borrow_mut()
                    .push(yaml_error::missing_top_level_field(field, pass.text));
            }
        }
        if incomplete {
            return Ok(None);
        }
        let (Some(api_version), Some(name), Some(steps)) = (api_version, name, steps) else {
            return Ok(None);
        };
        Ok(Some(Pipeline {
            api_version,
            name,
            description,
            params: params.unwrap_or_default(),
            steps,
            concurrency: concurrency.unwrap_or_default(),
            inputs: inputs.unwrap_or_default(),
            outputs: outputs.unwrap_or_default(),
            timeout,
            defaults,
            exports: exports.unwrap_or_default(),
        }))
    }
}

/// The entries of `params` or `steps`, each entry a unit of its own.
struct Entries<'p, 'a, K, V> {
    pass: &'p Pass<'a>,
    unit: fn(usize) -> Unit,
    types: PhantomData<(K, V)>,
}

impl<'p, 'a, K, V> Entries<'p, 'a, K, V> {
    fn new(pass: &'p Pass<'a>, unit: fn(usize) -> Unit) -> Self {
        Self {
            pass,
            unit,
            types: PhantomData,
        }
    }
}

impl<'de, K, V> DeserializeSeed<'de> for Entries<'_, '_, K, V>
where
    K: Deserialize<'de> + Eq + Hash,
    V: Deserialize<'de>,
{
    /// The entries, when none was read over.
    type Value = Option<IndexMap<Located<K>, Located<V>>>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de, K, V> Visitor<'de> for Entries<'_, '_, K, V>
where
    K: Deserialize<'de> + Eq + Hash,
    V: Deserialize<'de>,
{
    type Value = Option<IndexMap<Located<K>, Located<V>>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut entries = IndexMap::new();
        let mut incomplete = false;
        for i in 0.. {
            let unit = (self.unit)(i);
            self.pass.current.set(Some(unit));
            if self.pass.skip.contains(&unit) {
                if map.next_key::<IgnoredAny>()?.is_none() {
                    break;
                }
                map.next_value::<IgnoredAny>()?;
                incomplete = true;
                continue;
            }
            let Some(key) = map.next_key::<Located<K>>()? else {
                break;
            };
            let value = map.next_value::<Located<V>>()?;
            entries.insert(key, value);
        }
        Ok((!incomplete).then_some(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_level_fields_are_those_of_the_pipeline() {
        let schema = schemars::schema_for!(Pipeline);
        let properties = schema
            .get("properties")
            .and_then(|p| p.as_object())
            .expect("the pipeline's schema has properties");
        let names: Vec<&str> = properties.keys().map(String::as_str).collect();
        let mut expected = TOP_LEVEL_FIELDS.to_vec();
        let mut names = names;
        expected.sort_unstable();
        names.sort_unstable();
        assert_eq!(names, expected);
    }
}
