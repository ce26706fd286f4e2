//! Reading the params a component declares (the `kiln:params` custom section, see
//! [`kiln_plan::declared`]) from the components a plan was pinned to.

use std::collections::BTreeMap;

use kiln_cas::BlobStore;
use kiln_plan::declared::{Declaration, SECTION};

/// The declaration in a component's bytes, wherever it is: at the top of the component (the
/// Python SDK appends it there) or in a core module inside it (a Rust static in a
/// `link_section` lands in the step's module). `None` when the component declares nothing,
/// and also when the bytes do not parse as wasm: running such a file reports what is wrong
/// with it, in the step's own words.
pub fn declaration_of(component: &[u8]) -> Result<Option<Declaration>, String> {
    let mut found: Option<&[u8]> = None;
    for payload in wasmparser::Parser::new(0).parse_all(component) {
        let Ok(payload) = payload else {
            return Ok(None);
        };
        if let wasmparser::Payload::CustomSection(section) = payload
            && section.name() == SECTION
        {
            if found.is_some() {
                return Err(format!("it has two `{SECTION}` sections"));
            }
            found = Some(section.data());
        }
    }
    found
        .map(|bytes| {
            Declaration::from_json(bytes).map_err(|e| format!("its `{SECTION}` section: {e}"))
        })
        .transpose()
}

/// Whether a component is of the kiln step world: its top level exports a function `run`
/// (a command exports the `wasi:cli/run` instance instead). `false` for bytes that do not
/// parse.
pub fn is_step_world(component: &[u8]) -> bool {
    let mut depth = 0usize;
    for payload in wasmparser::Parser::new(0).parse_all(component) {
        match payload {
            Err(_) => return false,
            Ok(wasmparser::Payload::ModuleSection { .. })
            | Ok(wasmparser::Payload::ComponentSection { .. }) => depth += 1,
            Ok(wasmparser::Payload::End(_)) => depth = depth.saturating_sub(1),
            Ok(wasmparser::Payload::ComponentExportSection(exports)) if depth == 0 => {
                for export in exports.into_iter().flatten() {
                    if export.name.name == "run"
                        && export.kind == wasmparser::ComponentExternalKind::Func
                    {
                        return true;
                    }
                }
            }
            Ok(_) => {}
        }
    }
    false
}

/// What kiln reads from a pinned component before it runs.
#[derive(Debug, Clone, Default)]
pub struct Inspected {
    /// The params it declares, if it declares any.
    pub declaration: Option<Declaration>,
    /// Whether it is of the kiln step world (else a command, or not a component).
    pub step_world: bool,
}

/// [`Inspected`] for every pinned component (`components`: digests by step name, as
/// [`crate::Pinned::components`]), by step name; every unreadable one at once. Each distinct
/// component is read once.
pub async fn inspect(
    components: &BTreeMap<String, kiln_cas::Digest>,
    store: &dyn BlobStore,
) -> Result<BTreeMap<String, Inspected>, Vec<String>> {
    let mut found = BTreeMap::new();
    let mut problems = Vec::new();
    let mut by_digest: BTreeMap<kiln_cas::Digest, Inspected> = BTreeMap::new();
    for (step, digest) in components {
        if !by_digest.contains_key(digest) {
            let read = match store.read_verified(digest).await {
                Ok(bytes) => declaration_of(&bytes).map(|declaration| Inspected {
                    declaration,
                    step_world: is_step_world(&bytes),
                }),
                Err(e) => Err(format!("cannot read it from the store: {e}")),
            };
            match read {
                Ok(inspected) => {
                    by_digest.insert(*digest, inspected);
                }
                Err(e) => {
                    problems.push(format!("step `{step}`: its component {digest}: {e}"));
                    continue;
                }
            }
        }
        if let Some(inspected) = by_digest.get(digest) {
            found.insert(step.clone(), inspected.clone());
        }
    }
    if problems.is_empty() {
        Ok(found)
    } else {
        Err(problems)
    }
}

/// The declarations of every pinned component that has one, by step name (see [`inspect`]).
pub async fn declarations(
    components: &BTreeMap<String, kiln_cas::Digest>,
    store: &dyn BlobStore,
) -> Result<BTreeMap<String, Declaration>, Vec<String>> {
    Ok(inspect(components, store)
        .await?
        .into_iter()
        .filter_map(|(step, i)| i.declaration.map(|d| (step, d)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A custom section: id 0, size, name, content.
    fn section(name: &str, data: &[u8]) -> Vec<u8> {
        let mut body = vec![name.len() as u8];
        body.extend_from_slice(name.as_bytes());
        body.extend_from_slice(data);
        let mut out = vec![0u8, body.len() as u8];
        out.extend(body);
        out
    }

    const MODULE: &[u8] = b"\0asm\x01\0\0\0";
    const COMPONENT: &[u8] = b"\0asm\x0d\0\x01\0";

    #[test]
    fn finds_the_section_at_the_top_or_in_a_nested_module() {
        let json = br#"{"version":1,"params":[{"name":"x","type":"int"}]}"#;
        let mut top = COMPONENT.to_vec();
        top.extend(section(SECTION, json));
        assert_eq!(declaration_of(&top).unwrap().unwrap().params[0].name, "x");

        // A component holding one core module (section id 1) that holds the section.
        let mut module = MODULE.to_vec();
        module.extend(section(SECTION, json));
        let mut nested = COMPONENT.to_vec();
        nested.push(1);
        nested.push(module.len() as u8);
        nested.extend(&module);
        assert_eq!(
            declaration_of(&nested).unwrap().unwrap().params[0].name,
            "x"
        );

        let mut other = COMPONENT.to_vec();
        other.extend(section("name", b"\0"));
        assert_eq!(declaration_of(&other).unwrap(), None);
    }

    #[test]
    fn a_broken_section_or_file_is_an_error() {
        let mut bad = COMPONENT.to_vec();
        bad.extend(section(SECTION, b"{"));
        assert!(declaration_of(&bad).unwrap_err().contains("kiln:params"));
        assert_eq!(declaration_of(b"not wasm").unwrap(), None);
        let mut twice = COMPONENT.to_vec();
        let json = br#"{"version":1,"params":[]}"#;
        twice.extend(section(SECTION, json));
        twice.extend(section(SECTION, json));
        assert!(declaration_of(&twice).unwrap_err().contains("two"));
    }
}
