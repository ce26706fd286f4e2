//! Precompiled components on disk: `<cache>/wasmtime-<engine hash>/<component digest>.cwasm`.
//!
//! The engine hash is blake3 over wasmtime's `precompile_compatibility_hash` (wasmtime's
//! version and every setting that changes generated code), so a kiln built with another
//! wasmtime or other settings compiles into a folder of its own. Files are written to a
//! temporary name and renamed into place, so a reader never sees half a file.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use wasmtime::Engine;
use wasmtime::component::Component;

use crate::WasmError;

/// A component's identity: blake3 of its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ComponentDigest(pub [u8; 32]);

impl ComponentDigest {
    /// The digest of these component bytes.
    pub fn of(bytes: &[u8]) -> Self {
        Self(*blake3::hash(bytes).as_bytes())
    }

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }
}

impl std::fmt::Display for ComponentDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "blake3:{}", self.to_hex())
    }
}

/// How a component was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadSource {
    /// Compiled now and written to the cache.
    Compiled,
    /// Deserialised from the cache.
    Cached,
}

/// The folder of precompiled components for one engine configuration.
#[derive(Debug, Clone)]
pub(crate) struct PrecompiledCache {
    dir: PathBuf,
}

/// Feeds a `Hash` into blake3, so the value is stable across Rust releases (unlike
/// `DefaultHasher`).
struct Blake3Hasher(blake3::Hasher);

impl Hasher for Blake3Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        let hash = self.0.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&hash.as_bytes()[..8]);
        u64::from_le_bytes(first)
    }
}

impl PrecompiledCache {
    /// The cache under `root` for this engine; creates the folder.
    pub(crate) fn new(root: &Path, engine: &Engine) -> Result<Self, WasmError> {
        let mut hasher = Blake3Hasher(blake3::Hasher::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_hash = hasher.0.finalize().to_hex();
        let dir = root.join(format!("wasmtime-{}", &engine_hash[..16]));
        std::fs::create_dir_all(&dir).map_err(|source| WasmError::Cache {
            path: dir.clone(),
            source,
        })?;
        Ok(Self { dir })
    }

    /// The folder the artifacts of this engine live in.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    fn path_of(&self, digest: &ComponentDigest) -> PathBuf {
        self.dir.join(format!("{}.cwasm", digest.to_hex()))
    }

    /// The component with these bytes: from the cache when kiln compiled it before,
    /// otherwise compiled, stored, and loaded from the stored file. Blocking (compiling a
    /// large component takes seconds): call it off the async threads.
    pub(crate) fn load_or_compile(
        &self,
        engine: &Engine,
        digest: &ComponentDigest,
        bytes: &[u8],
        source: &Path,
        on_compile: &dyn Fn(),
    ) -> Result<(Component, LoadSource), WasmError> {
        let path = self.path_of(digest);
        if path.is_file() {
            match deserialize(engine, &path) {
                Ok(component) => return Ok((component, LoadSource::Cached)),
                Err(e) => tracing::warn!(
                    path = %path.display(),
                    error = %e,
                    "precompiled component unusable, compiling it again"
                ),
            }
        }
        on_compile();
        let compiled = engine
            .precompile_component(bytes)
            .map_err(|e| WasmError::Compile {
                path: source.to_owned(),
                message: format!("{e:#}"),
            })?;
        let cache_err = |source| WasmError::Cache {
            path: path.clone(),
            source,
        };
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir).map_err(cache_err)?;
        std::io::Write::write_all(&mut tmp, &compiled).map_err(cache_err)?;
        tmp.persist(&path).map_err(|e| cache_err(e.error))?;
        let component = deserialize(engine, &path).map_err(|e| WasmError::Compile {
            path: source.to_owned(),
            message: format!("cannot load the precompiled form: {e:#}"),
        })?;
        Ok((component, LoadSource::Compiled))
    }
}

fn deserialize(engine: &Engine, path: &Path) -> wasmtime::Result<Component> {
    // SAFETY: `deserialize_file` trusts the file to be wasmtime's own output for a compatible
    // engine. kiln only deserialises files it compiled itself: they live in its private cache
    // folder, named by the digest of the component they were compiled from and written
    // atomically by `load_or_compile`; bytes from users are always compiled, never
    // deserialised. wasmtime still checks the header and the engine compatibility.
    #[allow(unsafe_code)]
    unsafe {
        Component::deserialize_file(engine, path)
    }
}
