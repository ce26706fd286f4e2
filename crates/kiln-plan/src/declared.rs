//! Params a step-world component declares, and the check of a step's `with:` against them.
//!
//! A component says which params it reads in a custom section named [`SECTION`] that the
//! SDKs write from the step's code (the Rust SDK's `export!(Step, params = [...])`, the Python
//! SDK's `component(run, params=[...])`). Its content is JSON:
//!
//! ```json
//! {"version": 1, "params": [
//!   {"name": "min_accuracy", "type": "float", "default": "0.9", "description": "..."}
//! ]}
//! ```
//!
//! `type` is a pipeline param type (`string`, `int`, `float`, `bool`, `list[...]`); `default`
//! is a JSON value of that type, or its text form as `kiln run -p` takes it (`"0.9"`); without
//! a default the param is required. Pinning reads the declaration once per component, and
//! [`check_with`] checks every `with:` against it before anything runs: unknown names (with a
//! suggestion), missing required params, and values of the wrong type, each located in the
//! pipeline file. [`apply_defaults`] then gives each step its declared defaults, so that a
//! step sees the same params whichever SDK wrote it, and they are part of its cache key.
//!
//! A component without the section declares nothing and is not checked.

use std::collections::BTreeMap;

use kiln_spec::suggest::did_you_mean;
use kiln_spec::{Diagnostic, ParamType, Pipeline, Value};
use serde::{Deserialize, Serialize};

use crate::{Plan, StepKind};

/// The custom section's name.
pub const SECTION: &str = "kiln:params";

/// The declaration format's version, the `version` field.
pub const DECLARATION_VERSION: u32 = 1;

/// What a component declares.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Declaration {
    /// The params, in the order declared.
    pub params: Vec<DeclaredParam>,
}

/// One declared param.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeclaredParam {
    /// Its name in `with:`.
    pub name: String,
    /// Its type.
    #[serde(rename = "type")]
    pub ty: ParamType,
    /// The value a step gets when its `with:` does not set it; `None`: required.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    /// What it means, for people.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    version: u32,
    params: Vec<WireParam>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireParam {
    name: String,
    #[serde(rename = "type")]
    ty: String,
    #[serde(default)]
    default: Option<serde_json::Value>,
    #[serde(default)]
    description: Option<String>,
}

impl Declaration {
    /// Reads the section's content; the error says what is wrong with it.
    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        let wire: Wire =
            serde_json::from_slice(bytes).map_err(|e| format!("not a params declaration: {e}"))?;
        if wire.version != DECLARATION_VERSION {
            return Err(format!(
                "declaration version {} (this kiln reads version {DECLARATION_VERSION})",
                wire.version
            ));
        }
        let mut params: Vec<DeclaredParam> = Vec::with_capacity(wire.params.len());
        for p in wire.params {
            if p.name.is_empty() {
                return Err("a param without a name".into());
            }
            if params.iter().any(|q| q.name == p.name) {
                return Err(format!("param `{}` is declared twice", p.name));
            }
            let ty: ParamType =
                p.ty.parse()
                    .map_err(|e| format!("param `{}`: {e}", p.name))?;
            let default = p
                .default
                .map(|d| default_value(ty, d))
                .transpose()
                .map_err(|e| format!("param `{}`: default: {e}", p.name))?;
            params.push(DeclaredParam {
                name: p.name,
                ty,
                default,
                description: p.description.filter(|d| !d.trim().is_empty()),
            });
        }
        Ok(Self { params })
    }

    /// Param `name`, if declared.
    pub fn get(&self, name: &str) -> Option<&DeclaredParam> {
        self.params.iter().find(|p| p.name == name)
    }

    /// `min_accuracy (float, default 0.9), title (string)`: for help texts.
    pub fn summary(&self) -> String {
        if self.params.is_empty() {
            return "none".into();
        }
        self.params
            .iter()
            .map(|p| match &p.default {
                Some(d) => format!("`{}` ({}, default {d})", p.name, p.ty),
                None => format!("`{}` ({}, required)", p.name, p.ty),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A default as JSON: a value of the type, or its text form.
fn default_value(ty: ParamType, json: serde_json::Value) -> Result<Value, String> {
    if let serde_json::Value::String(text) = &json
        && ty != ParamType::Scalar(kiln_spec::ScalarType::String)
    {
        return ty.parse_text(text);
    }
    let value: Value = serde_json::from_value(json).map_err(|e| e.to_string())?;
    ty.check(&value)
}

/// Checks every `with:` of the steps whose component declares its params; one located
/// diagnostic per problem. `declarations` is keyed by step name; `plan` is `pipeline`'s plan
/// (its values are the ones after templates are filled in).
pub fn check_with(
    pipeline: &Pipeline,
    plan: &Plan,
    declarations: &BTreeMap<String, Declaration>,
) -> Vec<Diagnostic> {
    let mut diagnostics = Vec::new();
    for (name, step) in &pipeline.steps {
        let Some(declaration) = declarations.get(name.as_str()) else {
            continue;
        };
        let fan_out = step.for_each.is_some();
        for (key, value) in &step.with {
            let key_name = key.as_str();
            let Some(declared) = declaration.get(key_name) else {
                let names = declaration.params.iter().map(|p| p.name.as_str());
                diagnostics.push(
                    Diagnostic::error(
                        "kiln::plan::unknown-param",
                        format!(
                            "step `{name}` has no param `{key_name}`{}",
                            did_you_mean(key_name, names)
                        ),
                    )
                    .at(key.span)
                    .label("its component does not declare it")
                    .help(format!("its component declares {}", declaration.summary())),
                );
                continue;
            };
            // The value each instance gets, after templates: the first that does not fit.
            let wrong = plan
                .steps
                .iter()
                .filter(|s| s.step == name.as_str())
                .filter_map(|s| s.params.get(key_name))
                .find_map(|v| declared.ty.check(v).err());
            if let Some(problem) = wrong {
                let mut d = Diagnostic::error(
                    "kiln::plan::param-type",
                    format!(
                        "param `{key_name}` of step `{name}` is {}: {problem}",
                        crate::compile::with_article(declared.ty)
                    ),
                )
                .at(value.span)
                .label(format!("not {}", crate::compile::with_article(declared.ty)));
                if let Some(about) = &declared.description {
                    d = d.help(format!("`{key_name}`: {about}"));
                }
                diagnostics.push(d);
            }
        }
        for declared in &declaration.params {
            let given = step.with.keys().any(|k| k.as_str() == declared.name);
            if given || declared.default.is_some() || (fan_out && declared.name == "item") {
                continue;
            }
            let about = declared
                .description
                .as_deref()
                .map(|d| format!(": {d}"))
                .unwrap_or_default();
            diagnostics.push(
                Diagnostic::error(
                    "kiln::plan::missing-param",
                    format!(
                        "step `{name}` needs param `{}` ({}){about}",
                        declared.name, declared.ty
                    ),
                )
                .at(name.span)
                .label("its component requires it and gives no default")
                .help(format!(
                    "add `{}: VALUE` to the step's `with:`",
                    declared.name
                )),
            );
        }
    }
    diagnostics.sort_by_key(|d| d.span.map(|s| s.offset));
    diagnostics
}

/// Gives every wasm step the declared defaults of the params its `with:` does not set, in
/// its params and its cache key. Returns how many values were added.
pub fn apply_defaults(plan: &mut Plan, declarations: &BTreeMap<String, Declaration>) -> usize {
    let mut added = 0;
    for step in &mut plan.steps {
        if !matches!(step.kind, StepKind::Wasm { .. }) {
            continue;
        }
        let Some(declaration) = declarations.get(&step.step) else {
            continue;
        };
        for declared in &declaration.params {
            let Some(default) = &declared.default else {
                continue;
            };
            if step.instance.is_some() && declared.name == "item" {
                continue;
            }
            if !step.params.contains_key(&declared.name) {
                step.params.insert(declared.name.clone(), default.clone());
                step.cache_key
                    .params
                    .insert(declared.name.clone(), default.clone());
                added += 1;
            }
        }
    }
    added
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decl(json: &str) -> Result<Declaration, String> {
        Declaration::from_json(json.as_bytes())
    }

    #[test]
    fn reads_types_defaults_in_both_forms_and_descriptions() {
        let d = decl(
            r#"{"version":1,"params":[
                {"name":"min_accuracy","type":"float","default":"0.9","description":"floor"},
                {"name":"epochs","type":"int","default":3},
                {"name":"layers","type":"list[int]","default":[1,2]},
                {"name":"title","type":"string","default":"0.9"},
                {"name":"strict","type":"bool","default":"true","description":" "},
                {"name":"label","type":"string"}]}"#,
        )
        .unwrap();
        assert_eq!(d.params.len(), 6);
        assert_eq!(
            d.get("min_accuracy").unwrap().default,
            Some(Value::Float(0.9))
        );
        assert_eq!(d.get("epochs").unwrap().default, Some(Value::Int(3)));
        assert_eq!(
            d.get("layers").unwrap().default,
            Some(Value::List(vec![Value::Int(1), Value::Int(2)]))
        );
        assert_eq!(
            d.get("title").unwrap().default,
            Some(Value::String("0.9".into()))
        );
        assert_eq!(d.get("strict").unwrap().default, Some(Value::Bool(true)));
        assert_eq!(d.get("strict").unwrap().description, None);
        assert_eq!(d.get("label").unwrap().default, None);
        assert_eq!(
            d.get("min_accuracy").unwrap().description.as_deref(),
            Some("floor")
        );
        assert!(d.summary().contains("`label` (string, required)"));
    }

    #[test]
    fn refuses_a_bad_declaration_with_the_reason() {
        let err = |json: &str| decl(json).unwrap_err();
        assert!(err("{").contains("not a params declaration"));
        assert!(err(r#"{"version":2,"params":[]}"#).contains("version 2"));
        assert!(err(r#"{"version":1,"params":[{"name":"x","type":"number"}]}"#).contains("`x`"));
        assert!(
            err(r#"{"version":1,"params":[{"name":"x","type":"int","default":"a"}]}"#)
                .contains("default")
        );
        assert!(
            err(r#"{"version":1,"params":[{"name":"x","type":"int"},{"name":"x","type":"int"}]}"#)
                .contains("twice")
        );
        assert!(
            err(r#"{"version":1,"params":[{"name":"x","type":"int","kind":1}]}"#).contains("kind")
        );
    }
}
