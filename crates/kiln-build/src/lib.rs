//! Pinning: the stage between a [`Plan`] and the engine that turns every wasm component
//! reference into the digest of a component in the store. It runs on the client — the
//! laptop that holds the sources — and never on a server or inside the engine, which only
//! ever sees digests.
//!
//! A [`Resolver`] resolves one reference; [`LocalResolver`] handles what a laptop has: a
//! `.wasm` file, a source folder built with its recipe ([`ComponentBuilder`], cached by the
//! digest of its sources), and a `blake3:` digest already in the store. A registry name
//! (`name@version`, or `name@tag` pinned to the version the tag names) is resolved in a kiln
//! server's registry ([`registry`]) and downloaded into the store when it is not there. [`pin`] resolves every wasm step of a plan, each
//! component once, and reports every problem at once.
//!
//! It does not schedule or run steps.

mod build;
mod declared;
pub mod external;
pub mod registry;
pub mod upload;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_cas::{BlobStore, Digest, StatCache};
use kiln_plan::{ComponentSource, Plan, StepKind};
use kiln_record::StateDir;

pub use build::{
    BuildEntry, BuildFailure, BuildProgress, BuildRecipe, BuiltComponent, ComponentBuilder,
    build_key, builds_dir, sources_digest,
};
pub use declared::{Inspected, declaration_of, declarations, inspect, is_step_world};

/// Resolves what a plan names by place to digests of what is in the store: components, and
/// the workspace files and folders steps read.
#[async_trait::async_trait]
pub trait Resolver: Send {
    /// The digest of `step`'s component (`step` is the step's name, for messages), stored.
    async fn resolve(&mut self, step: &str, source: &ComponentSource) -> Result<Digest, String>;

    /// The digest of a workspace file or folder (`path` as the plan gives it, relative to the
    /// pipeline's folder), stored.
    async fn workspace_input(&mut self, path: &str) -> Result<Digest, String>;

    /// The digest of the object at `url` (`s3://...`, `https://...`), fetched and stored.
    async fn external_input(&mut self, url: &str) -> Result<Digest, String>;
}

/// A registry reference as it was pinned: `validate@stable` was `1.2.0`, `blake3:...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryPin {
    /// The reference as the pipeline gives it (`name@version` or `name@tag`).
    pub reference: String,
    /// The version it named.
    pub version: String,
    /// The component's digest.
    pub digest: Digest,
}

/// Called with `(step, command)` when a component starts building from source.
type OnBuild<'a> = Box<dyn FnMut(&str, &str) + Send + Sync + 'a>;
/// Called as external inputs are fetched.
type OnFetch<'a> = Box<dyn FnMut(external::FetchProgress) + Send + Sync + 'a>;

/// Resolves references the way a laptop can: files relative to the pipeline's folder, source
/// folders built here, digests already in the store.
pub struct LocalResolver<'a> {
    base_dir: PathBuf,
    store: Arc<dyn BlobStore>,
    builder: ComponentBuilder,
    on_build: OnBuild<'a>,
    on_fetch: OnFetch<'a>,
    fetcher: external::Fetcher,
    /// Component files already kept, by path: a fan-out of a thousand steps of one
    /// component hashes it once.
    kept: std::collections::HashMap<PathBuf, Digest>,
    /// The registry `name@version` references are resolved in, if any.
    registry: Option<registry::RegistryClient>,
    /// Registry references resolved so far, by reference: each is asked once per run, so a
    /// tag that moves meanwhile cannot give two steps two versions.
    registry_pins: BTreeMap<String, RegistryPin>,
    /// Where the stat cache of workspace inputs is kept.
    stat_cache_path: PathBuf,
    /// The stat cache, read at the first workspace input.
    stat_cache: Option<Arc<StatCache>>,
}

impl<'a> LocalResolver<'a> {
    /// A resolver for `plan`, whose paths are relative to `base_dir`; builds are cached in
    /// `state` and every component is kept in `store`.
    pub fn new(state: &StateDir, base_dir: &Path, plan: &Plan, store: Arc<dyn BlobStore>) -> Self {
        let base_dir = std::path::absolute(base_dir).unwrap_or_else(|_| base_dir.to_owned());
        Self {
            builder: ComponentBuilder::for_plan(state.clone(), &base_dir, plan),
            base_dir,
            fetcher: external::Fetcher::new(state.root().join("external"), store.clone()),
            store,
            on_build: Box::new(|_, _| {}),
            on_fetch: Box::new(|_| {}),
            kept: std::collections::HashMap::new(),
            registry: None,
            registry_pins: BTreeMap::new(),
            stat_cache_path: state.stat_cache_path(),
            stat_cache: None,
        }
    }

    /// Uses `cache` for workspace inputs instead of the state folder's stat cache (read at the
    /// first input otherwise); it is saved where it was opened.
    pub fn stat_cache_with(&mut self, cache: StatCache) -> &mut Self {
        self.stat_cache = Some(Arc::new(cache));
        self
    }

    /// The stat cache of workspace inputs, read from the state folder the first time.
    async fn stat_cache(&mut self) -> Arc<StatCache> {
        if let Some(cache) = &self.stat_cache {
            return cache.clone();
        }
        let file = self.stat_cache_path.clone();
        let cache = tokio::task::spawn_blocking(move || StatCache::open(file))
            .await
            .unwrap_or_else(|_| StatCache::in_memory());
        if let Some(reason) = cache.discarded() {
            tracing::debug!(%reason, "the stat cache is not usable; it is rebuilt");
        }
        let cache = Arc::new(cache);
        self.stat_cache = Some(cache.clone());
        cache
    }

    /// Files of workspace inputs found unchanged (not read) and hashed so far.
    pub fn stat_counts(&self) -> kiln_cas::StatCounts {
        self.stat_cache
            .as_ref()
            .map(|cache| cache.counts())
            .unwrap_or_default()
    }

    /// Calls `f(step, command)` when a component starts building from source.
    pub fn on_build(&mut self, f: impl FnMut(&str, &str) + Send + Sync + 'a) -> &mut Self {
        self.on_build = Box::new(f);
        self
    }

    /// Resolves `name@version` (and `name@tag`) references in this server's registry.
    pub fn with_registry(&mut self, client: registry::RegistryClient) -> &mut Self {
        self.registry = Some(client);
        self
    }

    /// The registry references resolved so far, each with the version and digest it was
    /// pinned to.
    pub fn registry_pins(&self) -> impl Iterator<Item = &RegistryPin> {
        self.registry_pins.values()
    }

    /// Calls `f` as external inputs are fetched (or found unchanged).
    pub fn on_fetch(
        &mut self,
        f: impl FnMut(external::FetchProgress) + Send + Sync + 'a,
    ) -> &mut Self {
        self.on_fetch = Box::new(f);
        self
    }

    /// Stores a component file (unless the store has it) and returns its digest.
    async fn keep(&mut self, step: &str, path: &Path) -> Result<Digest, String> {
        if let Some(digest) = self.kept.get(path) {
            return Ok(*digest);
        }
        let cannot = |e: &dyn std::fmt::Display| {
            format!(
                "step `{step}`: cannot store its component {}: {e}",
                path.display()
            )
        };
        let owned = path.to_owned();
        let digest = tokio::task::spawn_blocking(move || Digest::of_file(&owned))
            .await
            .map_err(|e| cannot(&e))?
            .map_err(|e| cannot(&e))?;
        if !self.store.contains(&digest).await.unwrap_or(false) {
            let stored = self.store.put_file(path).await.map_err(|e| cannot(&e))?;
            if stored != digest {
                return Err(format!(
                    "step `{step}`: component {} changed while it was read",
                    path.display()
                ));
            }
        }
        self.kept.insert(path.to_owned(), digest);
        Ok(digest)
    }
}

#[async_trait::async_trait]
impl Resolver for LocalResolver<'_> {
    async fn resolve(&mut self, step: &str, source: &ComponentSource) -> Result<Digest, String> {
        match source {
            ComponentSource::Path { path } => {
                let path = self.base_dir.join(path);
                self.keep(step, &path).await
            }
            ComponentSource::Build { .. } => {
                let recipe = BuildRecipe::of(source).expect("a build recipe");
                let on_build = &mut self.on_build;
                let mut progress =
                    |BuildProgress::Started { command, .. }| on_build(step, &command);
                let built = self
                    .builder
                    .build(step, &recipe, &mut progress)
                    .await
                    .map_err(|e| format!("step `{step}`: {e}"))?;
                // Built into the state folder's store; kept in the run's store too.
                self.kept.insert(built.path.clone(), built.digest);
                if !self.store.contains(&built.digest).await.unwrap_or(false) {
                    self.kept.remove(&built.path);
                    return self.keep(step, &built.path).await;
                }
                Ok(built.digest)
            }
            ComponentSource::Digest { digest } => match digest.parse::<Digest>() {
                Ok(d) if self.store.contains(&d).await.unwrap_or(false) => Ok(d),
                _ => Err(format!(
                    "step `{step}`: component {digest} is not in the local store"
                )),
            },
            ComponentSource::Registry { name, version } => {
                let reference = format!("{name}@{version}");
                if let Some(pin) = self.registry_pins.get(&reference) {
                    return Ok(pin.digest);
                }
                let Some(client) = &self.registry else {
                    return Err(format!(
                        "step `{step}`: `{reference}` is a component in a registry: name the kiln server that has it (`kiln run --registry URL` or KILN_REGISTRY to run here, `--server URL` to run there), or use a `.wasm` path or a build recipe"
                    ));
                };
                let (found, digest) = client
                    .fetch_into(&*self.store, name, version)
                    .await
                    .map_err(|e| {
                        format!("step `{step}`: {reference} from {}: {e}", client.url())
                    })?;
                self.registry_pins.insert(
                    reference.clone(),
                    RegistryPin {
                        reference,
                        version: found.version,
                        digest,
                    },
                );
                Ok(digest)
            }
        }
    }

    async fn workspace_input(&mut self, path: &str) -> Result<Digest, String> {
        let joined = self.base_dir.join(path);
        // The stat cache knows files by absolute path, without `.` components.
        let full = std::path::absolute(&joined).unwrap_or(joined);
        let is_dir = tokio::fs::metadata(&full).await.is_ok_and(|m| m.is_dir());
        let cannot = |e: &dyn std::fmt::Display| {
            format!(
                "workspace input {path}: cannot read {}: {e}",
                full.display()
            )
        };
        if let Some(store) = self.store.local().cloned() {
            let cache = self.stat_cache().await;
            let (owned, input) = (full.clone(), path.to_owned());
            return tokio::task::spawn_blocking(move || {
                store_cached(&store, &cache, &owned, is_dir, &input)
            })
            .await
            .map_err(|e| cannot(&e))?
            .map_err(|e| cannot(&e));
        }
        let stored = if is_dir {
            self.store.put_tree(&full).await
        } else {
            self.store.put_file(&full).await
        };
        stored.map_err(|e| cannot(&e))
    }

    async fn external_input(&mut self, url: &str) -> Result<Digest, String> {
        let on_fetch = &mut self.on_fetch;
        let mut progress = |p| on_fetch(p);
        self.fetcher.fetch(url, &mut progress).await
    }
}

/// Stores a workspace file or folder through the stat cache, then saves the cache: a cache
/// that cannot be written costs the next run some hashing, never this run its input.
fn store_cached(
    store: &kiln_cas::LocalStore,
    cache: &StatCache,
    full: &Path,
    is_dir: bool,
    input: &str,
) -> kiln_cas::Result<Digest> {
    let before = cache.counts();
    let digest = if is_dir {
        store.put_tree_cached(full, cache)?
    } else {
        store.put_file_cached(full, cache)?
    };
    let after = cache.counts();
    tracing::debug!(
        input,
        unchanged = after.unchanged - before.unchanged,
        hashed = after.hashed - before.hashed,
        "workspace input stored"
    );
    if let Err(e) = cache.save() {
        tracing::warn!(input, error = %e, "cannot write the stat cache; the next run hashes its inputs again");
    }
    Ok(digest)
}

/// What a plan names by place, as digests: what the engine is given.
///
/// External inputs are in `workspace` too, by URL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pinned {
    /// Every wasm step's component, by step name (fan-out instances share one).
    pub components: BTreeMap<String, Digest>,
    /// Every workspace input, by its path as the plan gives it.
    pub workspace: BTreeMap<String, Digest>,
}

/// Resolves the component of every wasm step of `plan` and every workspace input, each once;
/// every problem at once.
pub async fn pin(plan: &Plan, resolver: &mut dyn Resolver) -> Result<Pinned, Vec<String>> {
    let mut problems = Vec::new();
    let components = match pin_components(plan, resolver).await {
        Ok(components) => components,
        Err(mut found) => {
            problems.append(&mut found);
            BTreeMap::new()
        }
    };
    let mut workspace = BTreeMap::new();
    for step in &plan.steps {
        for source in step.inputs.values() {
            let (place, external) = match source {
                kiln_plan::InputSource::Workspace { path } => (path, false),
                kiln_plan::InputSource::External { url } => (url, true),
                _ => continue,
            };
            if workspace.contains_key(place) {
                continue;
            }
            let resolved = if external {
                resolver.external_input(place).await
            } else {
                resolver.workspace_input(place).await
            };
            let path = place;
            match resolved {
                Ok(digest) => {
                    workspace.insert(path.clone(), digest);
                }
                Err(problem) => problems.push(format!("step `{}`: {problem}", step.id)),
            }
        }
    }
    if problems.is_empty() {
        Ok(Pinned {
            components,
            workspace,
        })
    } else {
        Err(problems)
    }
}

/// Resolves the component of every wasm step of `plan`, each once (what [`pin`] does first,
/// without the workspace inputs): digests by step name, or every problem at once.
pub async fn pin_components(
    plan: &Plan,
    resolver: &mut dyn Resolver,
) -> Result<BTreeMap<String, Digest>, Vec<String>> {
    let mut pinned = BTreeMap::new();
    let mut problems = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for step in &plan.steps {
        let StepKind::Wasm { component, .. } = &step.kind else {
            continue;
        };
        if !seen.insert(step.step.as_str()) {
            continue;
        }
        match resolver.resolve(&step.step, component).await {
            Ok(digest) => {
                pinned.insert(step.step.clone(), digest);
            }
            Err(problem) => problems.push(problem),
        }
    }
    if problems.is_empty() {
        Ok(pinned)
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;

    fn empty_plan() -> Plan {
        Plan {
            plan_version: kiln_plan::PLAN_VERSION,
            pipeline: "inputs".into(),
            params: BTreeMap::new(),
            steps: Vec::new(),
            concurrency: BTreeMap::new(),
            timeout_ms: None,
            exports: Vec::new(),
        }
    }

    /// The state folder's stat cache, with a clock an hour ahead: files written by the test
    /// are old enough to be recorded.
    fn settled(state: &StateDir) -> StatCache {
        let mut cache = StatCache::open(state.stat_cache_path());
        cache.set_clock(|| SystemTime::now() + Duration::from_secs(3600));
        cache
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unchanged_workspace_inputs_are_not_read_again() {
        let root = tempfile::tempdir().unwrap();
        let state = StateDir::new(root.path().join(".kiln"));
        let base = root.path().join("ws");
        std::fs::create_dir_all(base.join("data/sub")).unwrap();
        std::fs::write(base.join("big.bin"), vec![7; 300_000]).unwrap();
        for i in 0..20 {
            std::fs::write(base.join(format!("data/sub/f{i}")), i.to_string()).unwrap();
        }
        let store: Arc<dyn BlobStore> = Arc::new(state.store());
        let plan = empty_plan();
        let resolve = |cache: Option<StatCache>| {
            let (state, base, plan, store) = (&state, &base, &plan, store.clone());
            async move {
                let mut resolver = LocalResolver::new(state, base, plan, store);
                if let Some(cache) = cache {
                    resolver.stat_cache_with(cache);
                }
                let file = resolver.workspace_input("./big.bin").await.unwrap();
                let folder = resolver.workspace_input("data").await.unwrap();
                (file, folder, resolver.stat_counts())
            }
        };

        let (file, folder, first) = resolve(Some(settled(&state))).await;
        assert_eq!((first.unchanged, first.hashed), (0, 21));
        assert_eq!(file, state.store().put_file(&base.join("big.bin")).unwrap());
        assert_eq!(folder, state.store().put_tree(&base.join("data")).unwrap());

        let (file2, folder2, second) = resolve(Some(settled(&state))).await;
        assert_eq!((file2, folder2), (file, folder));
        assert_eq!((second.unchanged, second.hashed), (21, 0));

        // A damaged cache costs hashing, never the run; the state folder's own cache (the
        // real clock) is rebuilt from it.
        std::fs::write(state.stat_cache_path(), b"not a stat cache").unwrap();
        let (file3, folder3, third) = resolve(None).await;
        assert_eq!((file3, folder3), (file, folder));
        assert_eq!((third.unchanged, third.hashed), (0, 21));
        assert!(
            StatCache::open(state.stat_cache_path())
                .discarded()
                .is_none()
        );
    }
}
