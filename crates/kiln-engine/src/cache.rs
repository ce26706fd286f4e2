//! Cache keys and the cache index.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kiln_cas::Digest;
use kiln_plan::CacheKeyMaterial;
use serde::{Deserialize, Serialize};

use crate::EngineError;

/// The version of the runtime's observable behaviour. Every cache key includes it: bump it
/// whenever a change can make a step produce different bytes from the same inputs.
pub const DETERMINISM_VERSION: u32 = 1;

/// Everything a step's cache key covers, in the canonical form that is hashed.
///
/// Nothing identity-based goes in: not the step's name, the run, file names of workspace
/// inputs, or which step produced an input — only contents and what changes them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyParts {
    /// The layout of this structure.
    pub key_version: u32,
    /// [`DETERMINISM_VERSION`].
    pub determinism_version: u32,
    /// The planner's material: kind, container fields, params, input and output names.
    pub material: serde_json::Value,
    /// Digest of the wasm component's bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<String>,
    /// Digest of every input by input name.
    pub inputs: BTreeMap<String, String>,
}

impl KeyParts {
    /// Gathers the parts of a key.
    pub fn new(
        material: &CacheKeyMaterial,
        component: Option<&Digest>,
        inputs: &BTreeMap<String, Digest>,
    ) -> Self {
        Self {
            key_version: 1,
            determinism_version: DETERMINISM_VERSION,
            material: serde_json::to_value(material).expect("material serialises"),
            component: component.map(|d| d.to_string()),
            inputs: inputs
                .iter()
                .map(|(k, v)| (k.clone(), v.to_string()))
                .collect(),
        }
    }

    /// The key: blake3 of the canonical JSON (fields in a fixed order, maps sorted).
    pub fn digest(&self) -> Digest {
        let value = serde_json::to_value(self).expect("key parts serialise");
        Digest::of_bytes(canonical_json(&value).as_bytes())
    }
}

/// JSON with object keys sorted at every level and no whitespace.
pub fn canonical_json(value: &serde_json::Value) -> String {
    fn sort(value: &serde_json::Value) -> serde_json::Value {
        match value {
            serde_json::Value::Object(map) => {
                let sorted: BTreeMap<&String, serde_json::Value> =
                    map.iter().map(|(k, v)| (k, sort(v))).collect();
                serde_json::Value::Object(sorted.into_iter().map(|(k, v)| (k.clone(), v)).collect())
            }
            serde_json::Value::Array(items) => {
                serde_json::Value::Array(items.iter().map(sort).collect())
            }
            other => other.clone(),
        }
    }
    serde_json::to_string(&sort(value)).expect("json serialises")
}

/// A cache entry: the outputs a step produced for a key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheEntry {
    /// The key.
    pub key: String,
    /// Output digests by name.
    pub outputs: BTreeMap<String, String>,
    /// The run that produced them.
    pub run_id: String,
    /// The step that produced them (for people; not part of the key).
    pub step: String,
    /// The metrics the step reported with them, given again on a hit.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, f64>,
}

/// Cache entries stored as small JSON files by key.
#[derive(Debug, Clone)]
pub struct CacheIndex {
    dir: PathBuf,
}

impl CacheIndex {
    /// An index in `dir`.
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    fn path(&self, key: &Digest) -> PathBuf {
        let hex = key.to_hex();
        self.dir.join(&hex[..2]).join(format!("{hex}.json"))
    }

    /// The entry for a key, if there is a readable one.
    pub fn get(&self, key: &Digest) -> Option<CacheEntry> {
        let bytes = std::fs::read(self.path(key)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Stores an entry atomically (write a temporary file, then rename).
    pub fn put(&self, key: &Digest, entry: &CacheEntry) -> Result<(), EngineError> {
        let path = self.path(key);
        let parent = path.parent().expect("entry paths have a parent");
        std::fs::create_dir_all(parent).map_err(|e| EngineError::io(parent, e))?;
        let tmp = parent.join(format!(".{}.{}.tmp", key.to_hex(), std::process::id()));
        let bytes = serde_json::to_vec_pretty(entry).expect("entries serialise");
        std::fs::write(&tmp, bytes).map_err(|e| EngineError::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| EngineError::io(&path, e))
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// One difference between two keys, for `kiln explain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyChange {
    /// What changed: `params.lr`, `input data`, `component`, `container.image`...
    pub what: String,
    /// Before.
    pub before: String,
    /// After.
    pub after: String,
}

/// What differs between an earlier key and a later one.
pub fn diff_keys(before: &KeyParts, after: &KeyParts) -> Vec<KeyChange> {
    let mut changes = Vec::new();
    let mut push = |what: String, b: String, a: String| {
        if b != a {
            changes.push(KeyChange {
                what,
                before: b,
                after: a,
            });
        }
    };
    push(
        "determinism version".into(),
        before.determinism_version.to_string(),
        after.determinism_version.to_string(),
    );
    push(
        "component".into(),
        before.component.clone().unwrap_or_else(|| "none".into()),
        after.component.clone().unwrap_or_else(|| "none".into()),
    );
    let names: std::collections::BTreeSet<&String> =
        before.inputs.keys().chain(after.inputs.keys()).collect();
    for name in names {
        push(
            format!("input `{name}`"),
            before
                .inputs
                .get(name)
                .cloned()
                .unwrap_or_else(|| "absent".into()),
            after
                .inputs
                .get(name)
                .cloned()
                .unwrap_or_else(|| "absent".into()),
        );
    }
    diff_json("", &before.material, &after.material, &mut push);
    changes
}

fn diff_json(
    path: &str,
    before: &serde_json::Value,
    after: &serde_json::Value,
    push: &mut impl FnMut(String, String, String),
) {
    use serde_json::Value;
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => {
            let keys: std::collections::BTreeSet<&String> = b.keys().chain(a.keys()).collect();
            for key in keys {
                let sub = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                diff_json(
                    &sub,
                    b.get(key).unwrap_or(&Value::Null),
                    a.get(key).unwrap_or(&Value::Null),
                    push,
                );
            }
        }
        (b, a) if b != a => push(
            if path.is_empty() {
                "material".into()
            } else {
                path.to_owned()
            },
            b.to_string(),
            a.to_string(),
        ),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_keys() {
        let v: serde_json::Value =
            serde_json::from_str(r#"{"b":1,"a":{"d":[1,{"z":0,"y":1}],"c":2}}"#).unwrap();
        assert_eq!(
            canonical_json(&v),
            r#"{"a":{"c":2,"d":[1,{"y":1,"z":0}]},"b":1}"#
        );
    }

    #[test]
    fn diff_names_what_changed() {
        let mut a = KeyParts {
            key_version: 1,
            determinism_version: 1,
            material: serde_json::json!({"params": {"lr": 0.1}, "kind": "wasm"}),
            component: Some("blake3:aa".into()),
            inputs: BTreeMap::from([("data".into(), "blake3:11".into())]),
        };
        let b = a.clone();
        assert!(diff_keys(&a, &b).is_empty());
        a.material = serde_json::json!({"params": {"lr": 0.2}, "kind": "wasm"});
        a.inputs.insert("data".into(), "blake3:22".into());
        let changes = diff_keys(&b, &a);
        let whats: Vec<&str> = changes.iter().map(|c| c.what.as_str()).collect();
        assert_eq!(whats, vec!["input `data`", "params.lr"]);
    }
}
