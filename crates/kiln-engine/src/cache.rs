//! Cache keys: what they cover, how they are hashed, and how two of them differ.

use std::collections::BTreeMap;

use kiln_cas::Digest;
use kiln_plan::CacheKeyMaterial;
use serde::{Deserialize, Serialize};

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
    /// What the executor that runs the step depends on ([`crate::Executor::key_pins`]): its
    /// backend (`process`, `podman`...) and, for container engines, the resolved image id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pins: BTreeMap<String, String>,
}

/// The layout version of [`KeyParts`]. 2: executors pin their backend and the image id, and a
/// container's image reference is no longer in the key by itself (the same image under
/// another tag is the same step; a tag moved to other content is not).
pub const KEY_VERSION: u32 = 2;

impl KeyParts {
    /// Gathers the parts of a key.
    ///
    /// A container's image reference is left out of the material: which image ran is what the
    /// executor pins (an engine its resolved id; the process backend never uses the image).
    pub fn new(
        material: &CacheKeyMaterial,
        component: Option<&Digest>,
        inputs: &BTreeMap<String, Digest>,
        pins: BTreeMap<String, String>,
    ) -> Self {
        let mut material = serde_json::to_value(material).expect("material serialises");
        if let Some(container) = material
            .get_mut("container")
            .and_then(|c| c.as_object_mut())
        {
            container.remove("image");
        }
        Self {
            key_version: KEY_VERSION,
            determinism_version: DETERMINISM_VERSION,
            material,
            component: component.map(|d| d.to_string()),
            inputs: inputs
                .iter()
                .map(|(k, v)| (k.clone(), v.to_string()))
                .collect(),
            pins,
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
    let pins: std::collections::BTreeSet<&String> =
        before.pins.keys().chain(after.pins.keys()).collect();
    for name in pins {
        let absent = || "none".to_owned();
        push(
            pin_label(name),
            before.pins.get(name).cloned().unwrap_or_else(absent),
            after.pins.get(name).cloned().unwrap_or_else(absent),
        );
    }
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

/// One item of a list in a key (a container's args) that differs between two keys.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemChange {
    /// Its position: in the earlier list, where the lists differ in length from there on.
    pub index: usize,
    /// The flag before it (`--epochs`), where that flag is the same in both lists.
    pub flag: Option<String>,
    /// The item in the earlier list (absent where the later one has more).
    pub before: Option<serde_json::Value>,
    /// The item in the later list (absent where the earlier one has more).
    pub after: Option<serde_json::Value>,
}

/// The items that differ between two versions of a list: position by position for lists of
/// one length, else the stretch between their common start and their common end, so that an
/// inserted flag shows as itself rather than as every item after it.
pub fn list_changes(before: &[serde_json::Value], after: &[serde_json::Value]) -> Vec<ItemChange> {
    let pairs: Vec<(
        usize,
        Option<&serde_json::Value>,
        Option<&serde_json::Value>,
    )> = if before.len() == after.len() {
        (0..before.len())
            .filter(|&i| before[i] != after[i])
            .map(|i| (i, Some(&before[i]), Some(&after[i])))
            .collect()
    } else {
        let start = before.iter().zip(after).take_while(|(b, a)| b == a).count();
        let most = before.len().min(after.len()) - start;
        let end = before
            .iter()
            .rev()
            .zip(after.iter().rev())
            .take(most)
            .take_while(|(b, a)| b == a)
            .count();
        let (b, a) = (
            &before[start..before.len() - end],
            &after[start..after.len() - end],
        );
        (0..b.len().max(a.len()))
            .map(|k| (start + k, b.get(k), a.get(k)))
            .filter(|(_, b, a)| b != a)
            .collect()
    };
    pairs
        .into_iter()
        .map(|(index, b, a)| ItemChange {
            index,
            flag: index
                .checked_sub(1)
                .and_then(|j| before.get(j).filter(|flag| after.get(j) == Some(*flag)))
                .and_then(|flag| flag.as_str())
                .filter(|flag| flag.starts_with('-'))
                .map(str::to_owned),
            before: b.cloned(),
            after: a.cloned(),
        })
        .collect()
}

/// How `kiln explain` names a pin: `backend`, `image id`.
fn pin_label(name: &str) -> String {
    match name {
        "backend" => "backend (how container steps run: --containers)".to_owned(),
        "image_id" => "image id (the image the reference named)".to_owned(),
        other => format!("executor `{other}`"),
    }
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
            pins: BTreeMap::new(),
        };
        let b = a.clone();
        assert!(diff_keys(&a, &b).is_empty());
        a.material = serde_json::json!({"params": {"lr": 0.2}, "kind": "wasm"});
        a.inputs.insert("data".into(), "blake3:22".into());
        let changes = diff_keys(&b, &a);
        let whats: Vec<&str> = changes.iter().map(|c| c.what.as_str()).collect();
        assert_eq!(whats, vec!["input `data`", "params.lr"]);
    }

    #[test]
    fn list_changes_name_the_items_that_differ() {
        let list = |items: &[&str]| -> Vec<serde_json::Value> {
            items.iter().map(|s| serde_json::json!(s)).collect()
        };
        let text = |changes: Vec<ItemChange>| -> Vec<String> {
            changes
                .iter()
                .map(|c| {
                    let side = |v: &Option<serde_json::Value>| {
                        v.as_ref().map_or("none".to_owned(), ToString::to_string)
                    };
                    format!(
                        "{} {:?}: {} → {}",
                        c.index,
                        c.flag,
                        side(&c.before),
                        side(&c.after)
                    )
                })
                .collect()
        };
        assert_eq!(
            text(list_changes(
                &list(&["--lr", "0.1", "--epochs", "20", "-v"]),
                &list(&["--lr", "0.1", "--epochs", "30", "-q"]),
            )),
            [
                r#"3 Some("--epochs"): "20" → "30""#,
                r#"4 None: "-v" → "-q""#
            ]
        );
        // An inserted item is itself, not every item after it.
        assert_eq!(
            text(list_changes(
                &list(&["--lr", "0.1", "--out", "x"]),
                &list(&["--lr", "0.1", "-v", "--out", "x"]),
            )),
            [r#"2 None: none → "-v""#]
        );
        assert_eq!(
            text(list_changes(&list(&["a", "b"]), &list(&["a"]))),
            [r#"1 None: "b" → none"#]
        );
    }

    #[test]
    fn a_cache_key_of_the_pipeline_is_in_the_key_and_absent_without_one() {
        let material = |key: Option<&str>| CacheKeyMaterial {
            version: 1,
            kind: "wasm".into(),
            container: None,
            params: BTreeMap::new(),
            inputs: vec![],
            outputs: vec!["out".into()],
            output_files: BTreeMap::new(),
            metrics: None,
            command: None,
            key: key.map(str::to_owned),
        };
        let parts = |key| KeyParts::new(&material(key), None, &BTreeMap::new(), BTreeMap::new());
        // Without one, the material is what it was before `cache.key` existed.
        assert_eq!(
            canonical_json(&parts(None).material),
            r#"{"inputs":[],"kind":"wasm","outputs":["out"],"params":{},"version":1}"#
        );
        assert_ne!(parts(None).digest(), parts(Some("v1")).digest());
        assert_ne!(parts(Some("v1")).digest(), parts(Some("v2")).digest());
        let whats: Vec<String> = diff_keys(&parts(Some("v1")), &parts(Some("v2")))
            .into_iter()
            .map(|c| format!("{}: {} → {}", c.what, c.before, c.after))
            .collect();
        assert_eq!(whats, [r#"key: "v1" → "v2""#]);
    }

    #[test]
    fn pins_are_in_the_key_and_the_image_reference_is_not() {
        let material = |image: &str| CacheKeyMaterial {
            version: 1,
            kind: "container".into(),
            container: Some(kiln_plan::ContainerKey {
                image: image.into(),
                command: vec!["sh".into()],
                args: vec![],
                env: BTreeMap::new(),
                secrets: BTreeMap::new(),
            }),
            params: BTreeMap::new(),
            inputs: vec![],
            outputs: vec!["out".into()],
            output_files: BTreeMap::new(),
            metrics: None,
            command: None,
            key: None,
        };
        let pins = |backend: &str, id: Option<&str>| {
            let mut pins = BTreeMap::from([("backend".to_owned(), backend.to_owned())]);
            if let Some(id) = id {
                pins.insert("image_id".to_owned(), id.to_owned());
            }
            pins
        };
        let key = |image: &str, backend: &str, id: Option<&str>| {
            KeyParts::new(&material(image), None, &BTreeMap::new(), pins(backend, id))
        };
        let process = key("busybox", "process", None);
        let podman = key("busybox", "podman", Some("sha256:aa"));
        assert_ne!(
            process.digest(),
            podman.digest(),
            "a backend switch is a miss"
        );
        assert_ne!(
            podman.digest(),
            key("busybox", "podman", Some("sha256:bb")).digest(),
            "a tag moved to other content is a miss"
        );
        assert_eq!(
            podman.digest(),
            key("localhost/other:tag", "podman", Some("sha256:aa")).digest(),
            "the same image under another tag is a hit"
        );
        let whats: Vec<String> = diff_keys(&process, &podman)
            .into_iter()
            .map(|c| c.what)
            .collect();
        assert!(whats[0].starts_with("backend"), "{whats:?}");
        assert!(whats[1].starts_with("image id"), "{whats:?}");
    }
}
