//! What an uploaded component is: checked with wasmparser (the parser wasmtime uses) before
//! anything is stored.

use serde::Serialize;
use utoipa::ToSchema;

/// The worlds a registry keeps components of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum World {
    /// The kiln step world (`kiln:step`): a `run` function export.
    KilnStep,
    /// A WASI command (`wasi:cli/command`): a `wasi:cli/run` instance export.
    WasiCommand,
}

impl World {
    /// Its name as the API gives it.
    pub fn name(self) -> &'static str {
        match self {
            Self::KilnStep => "kiln-step",
            Self::WasiCommand => "wasi-command",
        }
    }

    /// The world of a name [`World::name`] gave.
    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "kiln-step" => Some(Self::KilnStep),
            "wasi-command" => Some(Self::WasiCommand),
            _ => None,
        }
    }
}

/// A component that passed: its world and the names it imports and exports at its top level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    /// The world it is a component of.
    pub world: World,
    /// Its top-level import names (`wasi:filesystem/types@0.2.3`, ...).
    pub imports: Vec<String>,
    /// Its top-level export names.
    pub exports: Vec<String>,
}

/// Why bytes are not a component the registry keeps. Each is its own problem code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// Not WebAssembly at all (no `\0asm` header).
    NotWasm,
    /// A core WebAssembly module, not a component.
    CoreModule,
    /// A component that does not parse or validate (truncated, corrupt).
    Malformed(String),
    /// A valid component of a world kiln does not run.
    OtherWorld {
        /// What it exports instead.
        exports: Vec<String>,
    },
}

impl Rejection {
    /// The problem code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotWasm => "not-wasm",
            Self::CoreModule => "not-a-component",
            Self::Malformed(_) => "malformed-component",
            Self::OtherWorld { .. } => "unknown-world",
        }
    }

    /// What to tell the uploader.
    pub fn detail(&self) -> String {
        match self {
            Self::NotWasm => "the body is not WebAssembly (it does not start with `\\0asm`)".into(),
            Self::CoreModule => "the body is a core WebAssembly module, not a component: build \
                                 for wasm32-wasip2 (or run `wasm-tools component new`)"
                .into(),
            Self::Malformed(e) => format!("the component does not validate: {e}"),
            Self::OtherWorld { exports } => format!(
                "the component exports neither the kiln step world's `run` nor `wasi:cli/run`; \
                 it exports {}",
                if exports.is_empty() {
                    "nothing".to_owned()
                } else {
                    exports.join(", ")
                }
            ),
        }
    }
}

/// Checks that `bytes` are a valid component of the kiln step world or a WASI command.
pub fn inspect(bytes: &[u8]) -> Result<Inspection, Rejection> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(Rejection::NotWasm);
    }
    let mut imports = Vec::new();
    let mut exports = Vec::new();
    let mut step_run = false;
    let mut depth = 0usize;
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(|e| Rejection::Malformed(e.to_string()))?;
        match payload {
            wasmparser::Payload::Version {
                encoding: wasmparser::Encoding::Module,
                ..
            } if depth == 0 => return Err(Rejection::CoreModule),
            wasmparser::Payload::ModuleSection { .. }
            | wasmparser::Payload::ComponentSection { .. } => depth += 1,
            wasmparser::Payload::End(_) => depth = depth.saturating_sub(1),
            wasmparser::Payload::ComponentImportSection(section) if depth == 0 => {
                for import in section {
                    let import = import.map_err(|e| Rejection::Malformed(e.to_string()))?;
                    imports.push(import.name.name.to_owned());
                }
            }
            wasmparser::Payload::ComponentExportSection(section) if depth == 0 => {
                for export in section {
                    let export = export.map_err(|e| Rejection::Malformed(e.to_string()))?;
                    if export.name.name == "run"
                        && export.kind == wasmparser::ComponentExternalKind::Func
                    {
                        step_run = true;
                    }
                    exports.push(export.name.name.to_owned());
                }
            }
            _ => {}
        }
    }
    // Parsing reads the structure; validation checks every function body and type too.
    wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all())
        .validate_all(bytes)
        .map_err(|e| Rejection::Malformed(e.to_string()))?;
    let command = exports
        .iter()
        .any(|e| e.starts_with("wasi:cli/run@") || e == "wasi:cli/run");
    let world = if step_run {
        World::KilnStep
    } else if command {
        World::WasiCommand
    } else {
        return Err(Rejection::OtherWorld { exports });
    };
    Ok(Inspection {
        world,
        imports,
        exports,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_not_a_component_is_named() {
        assert_eq!(inspect(b"hello, world"), Err(Rejection::NotWasm));
        assert_eq!(inspect(b""), Err(Rejection::NotWasm));
        // The smallest core module: magic and version 1.
        assert_eq!(inspect(b"\0asm\x01\0\0\0"), Err(Rejection::CoreModule));
        // The smallest component: magic, version 0xd, layer 1. It exports nothing.
        assert_eq!(
            inspect(b"\0asm\x0d\0\x01\0"),
            Err(Rejection::OtherWorld { exports: vec![] })
        );
        // A component header and then a section that ends early.
        let truncated = inspect(b"\0asm\x0d\0\x01\0\x07\x10\x01");
        assert!(
            matches!(truncated, Err(Rejection::Malformed(_))),
            "{truncated:?}"
        );
    }
}
