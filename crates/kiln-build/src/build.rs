//! Wasm components built from source (`wasm: {source, command, artifact}`), cached by the
//! digest of their sources and recipe.
//!
//! A build's key is blake3 over a versioned domain string, the command, the artifact path and
//! the source folder's files (relative path, kind, content digest; sorted by path). The walk
//! skips what git would ignore (`.gitignore` files are honoured even outside a repository),
//! every `target/` folder, Python's bytecode (`__pycache__/`, `*.pyc`: componentize-py and
//! every Python import write it into the source folder, so counting it would make the second
//! build of a fresh Python step a miss), hidden folders other than `.cargo/`, the artifact
//! itself and the state folder. The toolchain and the environment are not in the key: after upgrading a
//! compiler, `kiln build --force` rebuilds.
//!
//! A built artifact is stored in the CAS and materialised, read-only, at
//! `components/<digest>.wasm` in the state folder; that copy is what runs, so a later build
//! that rewrites `target/` (or a `cargo clean`) cannot change a component under a run, and a
//! cache hit needs nothing from `target/`. Entries are `builds/<key>.json`, written atomically,
//! and only after a build succeeded.

use std::collections::HashMap;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kiln_cas::{CasError, Digest, LocalStore};
use kiln_plan::{ComponentSource, Plan, StepKind};
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use kiln_record::{StateDir, now_ms};

/// Domain of a build key; bump the version when anything about what it covers changes.
const BUILD_KEY_DOMAIN: &str = "kiln build key v1";
/// Domain of a source-tree digest.
const SOURCES_DOMAIN: &str = "kiln build sources v1";
/// Lines of a failed build's log shown in its error.
const LOG_TAIL_LINES: usize = 15;

/// How to build one component: a command run in a source folder, and the file it writes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BuildRecipe {
    /// Source folder, relative to the pipeline file.
    pub source: String,
    /// Shell command run in the source folder.
    pub command: String,
    /// The built `.wasm`, relative to the source folder.
    pub artifact: String,
    /// Other files and folders the build reads, relative to the source folder.
    pub watch: Vec<String>,
}

impl BuildRecipe {
    /// The recipe of a component given by source, `None` for any other component.
    pub fn of(component: &ComponentSource) -> Option<Self> {
        match component {
            ComponentSource::Build {
                source,
                command,
                artifact,
                watch,
                ..
            } => Some(Self {
                source: source.clone(),
                command: command.clone(),
                artifact: artifact.clone(),
                watch: watch.clone(),
            }),
            _ => None,
        }
    }
}

/// A component ready to run.
#[derive(Debug, Clone, PartialEq)]
pub struct BuiltComponent {
    /// The kiln-owned copy of the artifact, `components/<digest>.wasm` in the state folder.
    pub path: PathBuf,
    /// The artifact's digest.
    pub digest: Digest,
    /// The build key.
    pub key: Digest,
    /// Whether it came from the build cache (no command ran for it).
    pub cached: bool,
    /// Hashing the sources, and building when it was not cached.
    pub duration: Duration,
}

/// Why a component could not be built. A failing build is an outcome the caller reports
/// with the step's name, so this is a message and the end of the build's log, not a crash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildFailure {
    /// What went wrong, on one line.
    pub message: String,
    /// The last lines of the build's log, when a command ran and failed.
    pub log_tail: Vec<String>,
    /// The build's log, when a command ran.
    pub log: Option<PathBuf>,
}

impl BuildFailure {
    fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            log_tail: Vec::new(),
            log: None,
        }
    }
}

impl fmt::Display for BuildFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if !self.log_tail.is_empty() {
            write!(f, ":\n{}", self.log_tail.join("\n"))?;
        }
        Ok(())
    }
}

/// What a builder reports while it works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildProgress {
    /// The build command started (it does not when the component is up to date).
    Started {
        /// The command.
        command: String,
        /// Where its output goes.
        log: PathBuf,
    },
}

/// A build cache entry: which artifact a key produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildEntry {
    /// The build key.
    pub key: Digest,
    /// The artifact's digest (a blob in the store).
    pub artifact_digest: Digest,
    /// The recipe's source folder (for people; the key covers its content, not its name).
    pub source: String,
    /// The recipe's command.
    pub command: String,
    /// The recipe's artifact path.
    pub artifact: String,
    /// When it was built, in milliseconds since the Unix epoch.
    pub built_at_ms: u64,
    /// How long the command took.
    pub build_ms: u64,
}

/// Builds components from source for one run or one `kiln build`: each source folder is
/// hashed once, each (source, command) runs at most once, and an up-to-date component comes
/// from the build cache.
#[derive(Debug)]
pub struct ComponentBuilder {
    state: StateDir,
    store: LocalStore,
    base_dir: PathBuf,
    log_dir: PathBuf,
    force: bool,
    artifacts: Vec<PathBuf>,
    sources: HashMap<PathBuf, Result<Digest, String>>,
    ran: HashMap<(PathBuf, String), Result<Duration, BuildFailure>>,
}

impl ComponentBuilder {
    /// A builder for recipes relative to `base_dir`, caching in `state`; build logs go to
    /// `builds/logs/` in the state folder unless [`ComponentBuilder::log_dir`] says otherwise.
    pub fn new(state: StateDir, base_dir: impl Into<PathBuf>) -> Self {
        // Build commands run in other folders, and the walk compares paths: make them absolute.
        let state = std::path::absolute(state.root()).map_or(state, StateDir::new);
        let base_dir = base_dir.into();
        let base_dir = std::path::absolute(&base_dir).unwrap_or(base_dir);
        Self {
            store: state.store(),
            log_dir: builds_dir(&state).join("logs"),
            state,
            base_dir,
            force: false,
            artifacts: Vec::new(),
            sources: HashMap::new(),
            ran: HashMap::new(),
        }
    }

    /// A builder for the steps of `plan` given by source.
    pub fn for_plan(state: StateDir, base_dir: impl Into<PathBuf>, plan: &Plan) -> Self {
        let mut builder = Self::new(state, base_dir);
        let recipes: Vec<BuildRecipe> = plan
            .steps
            .iter()
            .filter_map(|step| match &step.kind {
                StepKind::Wasm { component, .. } => BuildRecipe::of(component),
                StepKind::Container(_) => None,
            })
            .collect();
        builder.recipes(&recipes);
        builder
    }

    /// Every recipe this builder may be asked for: their artifacts are outputs, never
    /// sources, of any folder they lie in (an artifact outside `target/` would otherwise
    /// make the other steps built there stale).
    pub fn recipes<'a>(&mut self, all: impl IntoIterator<Item = &'a BuildRecipe>) -> &mut Self {
        for recipe in all {
            let path = self.base_dir.join(&recipe.source).join(&recipe.artifact);
            if !self.artifacts.contains(&path) {
                self.artifacts.push(path);
            }
        }
        self
    }

    /// Where build logs go, as `build-<step>.log`.
    pub fn log_dir(&mut self, dir: impl Into<PathBuf>) -> &mut Self {
        self.log_dir = dir.into();
        self
    }

    /// Rebuild even when the cache has an entry for the key.
    pub fn force(&mut self, force: bool) -> &mut Self {
        self.force = force;
        self
    }

    /// The component of `step`: from the cache when its key has an entry whose artifact is
    /// still in the store, built otherwise.
    pub async fn build(
        &mut self,
        step: &str,
        recipe: &BuildRecipe,
        progress: &mut impl FnMut(BuildProgress),
    ) -> Result<BuiltComponent, BuildFailure> {
        let started = Instant::now();
        let source_dir = self.base_dir.join(&recipe.source);
        let artifact_path = source_dir.join(&recipe.artifact);
        let mut sources = vec![self.source_digest(&source_dir, &artifact_path).await?];
        for watched in &recipe.watch {
            let path = source_dir.join(watched);
            let digest = if path.is_file() {
                Digest::of_file(&path).map_err(|e| {
                    BuildFailure::new(format!("cannot read watched file {}: {e}", path.display()))
                })?
            } else {
                self.source_digest(&path, &artifact_path).await?
            };
            sources.push(digest);
        }
        let key = build_key(&sources, &recipe.command, &recipe.artifact);

        if !self.force
            && let Some(entry) = self.entry(&key)
        {
            match self.component_path(&entry.artifact_digest) {
                Ok(path) => {
                    debug!(step, key = %key, "component up to date");
                    return Ok(BuiltComponent {
                        path,
                        digest: entry.artifact_digest,
                        key,
                        cached: true,
                        duration: started.elapsed(),
                    });
                }
                // The artifact left the store (or cannot be copied out): build it again.
                Err(e) => debug!(step, key = %key, error = %e, "build cache entry unusable"),
            }
        }

        let ran_key = (source_dir.clone(), recipe.command.clone());
        if !self.ran.contains_key(&ran_key) {
            let log = self.log_dir.join(format!("build-{step}.log"));
            progress(BuildProgress::Started {
                command: recipe.command.clone(),
                log: log.clone(),
            });
            let took = Instant::now();
            let result = run_build_command(&source_dir, &recipe.command, &log)
                .await
                .map(|()| took.elapsed());
            self.ran.insert(ran_key.clone(), result);
        }
        let build_time = self.ran[&ran_key].clone()?;
        if !artifact_path.is_file() {
            return Err(BuildFailure::new(format!(
                "`{}` ran but did not write `{}/{}`",
                recipe.command, recipe.source, recipe.artifact
            )));
        }
        let digest = self.store.put_file(&artifact_path).map_err(|e| {
            BuildFailure::new(format!("cannot store {}: {e}", artifact_path.display()))
        })?;
        let path = self.component_path(&digest).map_err(BuildFailure::new)?;
        let entry = BuildEntry {
            key,
            artifact_digest: digest,
            source: recipe.source.clone(),
            command: recipe.command.clone(),
            artifact: recipe.artifact.clone(),
            built_at_ms: now_ms(),
            build_ms: build_time.as_millis() as u64,
        };
        // The component is good even if remembering it fails: the next run builds again.
        if let Err(e) = self.put_entry(&entry) {
            warn!(step, key = %key, error = %e, "cannot write the build cache entry");
        }
        Ok(BuiltComponent {
            path,
            digest,
            key,
            cached: false,
            duration: started.elapsed(),
        })
    }

    /// The digest of a source folder, hashed once per builder.
    async fn source_digest(
        &mut self,
        source_dir: &Path,
        artifact_path: &Path,
    ) -> Result<Digest, BuildFailure> {
        if let Some(found) = self.sources.get(source_dir) {
            return found.clone().map_err(BuildFailure::new);
        }
        let result = if source_dir.is_dir() {
            let dir = source_dir.to_owned();
            // Artifacts are outputs: one that lives outside `target/` must not make the next
            // build stale, nor another step's build in the same folder.
            let mut exclude = vec![self.state.root().to_owned(), artifact_path.to_owned()];
            exclude.extend(self.artifacts.iter().cloned());
            tokio::task::spawn_blocking(move || sources_digest(&dir, &exclude))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()))
                .map_err(|e| format!("cannot hash the sources in {}: {e}", source_dir.display()))
        } else {
            Err(format!(
                "source folder {} does not exist",
                source_dir.display()
            ))
        };
        self.sources.insert(source_dir.to_owned(), result.clone());
        result.map_err(BuildFailure::new)
    }

    fn entry_path(&self, key: &Digest) -> PathBuf {
        builds_dir(&self.state).join(format!("{}.json", key.to_hex()))
    }

    /// The entry for a key, if there is a readable one.
    fn entry(&self, key: &Digest) -> Option<BuildEntry> {
        let bytes = std::fs::read(self.entry_path(key)).ok()?;
        serde_json::from_slice::<BuildEntry>(&bytes)
            .ok()
            .filter(|entry| entry.key == *key)
    }

    /// Writes an entry atomically (a temporary file, then a rename).
    fn put_entry(&self, entry: &BuildEntry) -> std::io::Result<()> {
        let path = self.entry_path(&entry.key);
        let dir = builds_dir(&self.state);
        std::fs::create_dir_all(&dir)?;
        let tmp = dir.join(format!(
            ".{}.{}.tmp",
            entry.key.to_hex(),
            std::process::id()
        ));
        let bytes = serde_json::to_vec_pretty(entry).expect("entries serialise");
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, &path).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
    }

    /// `components/<digest>.wasm`, copied out of the store unless an intact copy is there.
    fn component_path(&self, digest: &Digest) -> Result<PathBuf, String> {
        let dir = self.state.components_dir();
        let path = dir.join(format!("{}.wasm", digest.to_hex()));
        match Digest::of_file(&path) {
            Ok(found) if found == *digest => return Ok(path),
            // Damaged: the store still has the original.
            Ok(_) => {
                let _ = std::fs::remove_file(&path);
            }
            Err(_) => {}
        }
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        match self.store.materialize(digest, &path) {
            // Another kiln materialised it in the meantime.
            Ok(_) | Err(CasError::DestinationExists { .. }) => Ok(path),
            Err(e) => Err(format!("cannot copy {digest} out of the store: {e}")),
        }
    }
}

/// Where build cache entries live in a state folder.
pub fn builds_dir(state: &StateDir) -> PathBuf {
    state.builds_dir()
}

/// A build key: the sources' digest, the command and the artifact path, in a versioned,
/// unambiguous encoding (every field is length-prefixed).
pub fn build_key(sources: &[Digest], command: &str, artifact: &str) -> Digest {
    let mut buf = Vec::new();
    push_field(&mut buf, BUILD_KEY_DOMAIN.as_bytes());
    push_field(&mut buf, command.as_bytes());
    push_field(&mut buf, artifact.as_bytes());
    // The source folder's digest first, then each watched path's, in the recipe's order.
    for sources in sources {
        push_field(&mut buf, sources.as_bytes());
    }
    Digest::of_bytes(&buf)
}

/// The digest of the files a build reads in `dir`: every file and symlink, by relative path,
/// kind (file, executable, symlink) and content digest (a symlink's is its target's path),
/// sorted by path.
///
/// Skipped: what `.gitignore`, `.git/info/exclude` and `.ignore` files exclude (in `dir`, in
/// its subfolders and in the folders above it, whether or not this is a git repository; the
/// user's global excludes are not read, so that the key does not depend on the machine),
/// every `target/` folder, Python's bytecode (`__pycache__/` folders, `*.pyc` and `*.pyo`
/// files, written by whatever imports the sources, a build included), hidden folders except
/// `.cargo/` (cargo reads its configuration there), and the paths in `exclude`.
pub fn sources_digest(dir: &Path, exclude: &[PathBuf]) -> std::io::Result<Digest> {
    let root = lexical(&std::path::absolute(dir)?);
    let exclude: Vec<PathBuf> = exclude
        .iter()
        .filter_map(|p| std::path::absolute(p).ok())
        .map(|p| lexical(&p))
        .collect();
    let walk = ignore::WalkBuilder::new(&root)
        .hidden(false)
        .parents(true)
        .ignore(true)
        .git_ignore(true)
        .git_exclude(true)
        .git_global(false)
        .require_git(false)
        .follow_links(false)
        .filter_entry(move |entry| {
            if entry.depth() == 0 {
                return true;
            }
            if exclude.iter().any(|p| p == entry.path()) {
                return false;
            }
            let is_dir = entry.file_type().is_some_and(|t| t.is_dir());
            let name = entry.file_name().as_bytes();
            if is_dir {
                !(name == b"target"
                    || name == b"__pycache__"
                    || (name.starts_with(b".") && name != b".cargo"))
            } else {
                !(name.ends_with(b".pyc") || name.ends_with(b".pyo"))
            }
        })
        .build();

    let mut files: Vec<(Vec<u8>, u8, Digest)> = Vec::new();
    for entry in walk {
        let entry = entry.map_err(std::io::Error::other)?;
        let Some(file_type) = entry.file_type() else {
            continue;
        };
        let path = entry.path();
        let (kind, digest) = if file_type.is_symlink() {
            let target = std::fs::read_link(path)?;
            (b'l', Digest::of_bytes(target.as_os_str().as_bytes()))
        } else if file_type.is_file() {
            // Read, not memory-mapped: a user's file may be truncated while it is hashed.
            let file = std::fs::File::open(path)?;
            let executable = file.metadata()?.permissions().mode() & 0o111 != 0;
            (
                if executable { b'x' } else { b'f' },
                Digest::of_reader(file)?,
            )
        } else {
            // Folders are implied by their files; sockets and fifos are not sources.
            continue;
        };
        let relative = path.strip_prefix(&root).map_err(std::io::Error::other)?;
        files.push((relative.as_os_str().as_bytes().to_vec(), kind, digest));
    }
    files.sort_unstable_by(|a, b| a.0.cmp(&b.0));

    let mut buf = Vec::with_capacity(files.len() * 96);
    push_field(&mut buf, SOURCES_DOMAIN.as_bytes());
    for (path, kind, digest) in &files {
        buf.push(*kind);
        push_field(&mut buf, path);
        buf.extend_from_slice(digest.as_bytes());
    }
    Ok(Digest::of_bytes(&buf))
}

/// An absolute path with `.` and `..` resolved by name (as the walk names what it finds).
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

fn push_field(buf: &mut Vec<u8>, field: &[u8]) {
    buf.extend_from_slice(&(field.len() as u64).to_le_bytes());
    buf.extend_from_slice(field);
}

/// Runs a build command in a source folder (`sh -c`), its output going to a log.
async fn run_build_command(source: &Path, command: &str, log: &Path) -> Result<(), BuildFailure> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| BuildFailure::new(format!("cannot create {}: {e}", dir.display())))?;
    }
    let log_file = std::fs::File::create(log)
        .map_err(|e| BuildFailure::new(format!("cannot create {}: {e}", log.display())))?;
    let err_file = log_file
        .try_clone()
        .map_err(|e| BuildFailure::new(e.to_string()))?;
    let status = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .current_dir(source)
        // The recipe names its artifact relative to the source folder; a cargo target folder
        // set in kiln's own environment (as CI does) would build it somewhere else.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET_DIR")
        .stdin(std::process::Stdio::null())
        .stdout(log_file)
        .stderr(err_file)
        .kill_on_drop(true)
        .status()
        .await
        .map_err(|e| BuildFailure::new(format!("cannot run `{command}`: {e}")))?;
    if status.success() {
        return Ok(());
    }
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut tail: Vec<String> = text
        .lines()
        .rev()
        .take(LOG_TAIL_LINES)
        .map(str::to_owned)
        .collect();
    tail.reverse();
    Err(BuildFailure {
        message: format!(
            "build `{command}` failed ({status}) in {}, log {}",
            source.display(),
            log.display()
        ),
        log_tail: tail,
        log: Some(log.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, path: &str, text: &str) {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn digest(dir: &Path) -> Digest {
        sources_digest(dir, &[]).unwrap()
    }

    /// A small crate-like source folder.
    fn sources() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "Cargo.toml", "[package]\nname = \"step\"\n");
        write(dir.path(), "src/main.rs", "fn main() {}\n");
        write(dir.path(), ".gitignore", "*.log\n/scratch/\n");
        write(dir.path(), "target/debug/step.wasm", "old build");
        dir
    }

    #[test]
    fn a_source_change_changes_the_key() {
        let dir = sources();
        let before = digest(dir.path());
        write(dir.path(), "src/main.rs", "fn main() { println!(); }\n");
        assert_ne!(before, digest(dir.path()));
    }

    #[test]
    fn new_renamed_and_executable_files_change_the_key() {
        let dir = sources();
        let before = digest(dir.path());
        write(dir.path(), "src/lib.rs", "");
        let added = digest(dir.path());
        assert_ne!(before, added);
        std::fs::rename(
            dir.path().join("src/lib.rs"),
            dir.path().join("src/util.rs"),
        )
        .unwrap();
        let renamed = digest(dir.path());
        assert_ne!(added, renamed);
        std::fs::set_permissions(
            dir.path().join("src/util.rs"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        assert_ne!(renamed, digest(dir.path()));
    }

    #[test]
    fn the_command_and_the_artifact_are_in_the_key() {
        let sources = [Digest::of_bytes(b"sources")];
        let key = build_key(&sources, "cargo build", "target/a.wasm");
        assert_ne!(
            key,
            build_key(&sources, "cargo build --release", "target/a.wasm")
        );
        assert_ne!(key, build_key(&sources, "cargo build", "target/b.wasm"));
        assert_ne!(
            key,
            build_key(
                &[Digest::of_bytes(b"other")],
                "cargo build",
                "target/a.wasm"
            )
        );
        // A watched folder's digest counts, in order.
        let watched = [sources[0], Digest::of_bytes(b"wit")];
        assert_ne!(key, build_key(&watched, "cargo build", "target/a.wasm"));
        let swapped = [watched[1], watched[0]];
        assert_ne!(
            build_key(&watched, "cargo build", "target/a.wasm"),
            build_key(&swapped, "cargo build", "target/a.wasm")
        );
        // Fields are length-prefixed: moving text from one to the other is a change.
        assert_ne!(
            build_key(&sources, "ab", "c"),
            build_key(&sources, "a", "bc")
        );
        assert_eq!(key, build_key(&sources, "cargo build", "target/a.wasm"));
    }

    #[test]
    fn build_outputs_and_ignored_files_are_not_sources() {
        let dir = sources();
        let before = digest(dir.path());
        write(dir.path(), "target/debug/step.wasm", "new build");
        write(dir.path(), "target/release/deps/x.rlib", "x");
        write(dir.path(), "nested/target/y", "y");
        write(dir.path(), "build.log", "ignored by *.log");
        write(dir.path(), "scratch/notes", "ignored by /scratch/");
        write(dir.path(), ".git/HEAD", "ref: refs/heads/main\n");
        write(dir.path(), ".kiln/cache/entry", "a state folder");
        assert_eq!(before, digest(dir.path()));
        // `.cargo/config.toml` changes how cargo builds: it is a source.
        write(dir.path(), ".cargo/config.toml", "[build]\n");
        assert_ne!(before, digest(dir.path()));
    }

    #[test]
    fn python_bytecode_is_not_a_source() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "report.py", "def run(): pass\n");
        let before = digest(dir.path());
        // No `.gitignore` here or above: Python's bytecode is left out all the same.
        write(dir.path(), "__pycache__/report.cpython-314.pyc", "bytecode");
        write(
            dir.path(),
            "lib/__pycache__/util.cpython-314.pyc",
            "bytecode",
        );
        write(dir.path(), "old.pyc", "python 2 bytecode");
        write(dir.path(), "old.pyo", "optimised bytecode");
        assert_eq!(before, digest(dir.path()));
        // The sources themselves still count, and so does a file that only looks alike.
        write(dir.path(), "report.py", "def run(): return 1\n");
        let changed = digest(dir.path());
        assert_ne!(before, changed);
        write(dir.path(), "notes.pyc.txt", "a text file");
        assert_ne!(changed, digest(dir.path()));
    }

    #[test]
    fn gitignore_files_above_the_source_folder_count() {
        let top = tempfile::tempdir().unwrap();
        write(top.path(), ".gitignore", "generated/\n");
        write(top.path(), "steps/src/main.rs", "fn main() {}\n");
        let steps = top.path().join("steps");
        let before = digest(&steps);
        write(top.path(), "steps/generated/out.txt", "x");
        assert_eq!(before, digest(&steps));
    }

    #[test]
    fn excluded_paths_are_skipped() {
        let dir = sources();
        let artifact = dir.path().join("out/step.wasm");
        let before = sources_digest(dir.path(), std::slice::from_ref(&artifact)).unwrap();
        write(dir.path(), "out/step.wasm", "built");
        assert_eq!(
            before,
            sources_digest(dir.path(), std::slice::from_ref(&artifact)).unwrap()
        );
        assert_ne!(before, digest(dir.path()));
    }

    #[test]
    fn the_digest_does_not_depend_on_creation_order() {
        let names = ["b.rs", "a/z.rs", "a.rs", "a/b/c.rs", "a-b.rs", "Z.rs"];
        let one = tempfile::tempdir().unwrap();
        let two = tempfile::tempdir().unwrap();
        for name in names {
            write(one.path(), name, name);
        }
        for name in names.iter().rev() {
            write(two.path(), name, name);
        }
        assert_eq!(digest(one.path()), digest(two.path()));
        // Same contents under swapped names are different sources.
        write(two.path(), "a.rs", "b.rs");
        write(two.path(), "b.rs", "a.rs");
        assert_ne!(digest(one.path()), digest(two.path()));
    }

    #[test]
    fn symlinks_are_hashed_by_target_not_followed() {
        let dir = sources();
        std::os::unix::fs::symlink("src/main.rs", dir.path().join("link")).unwrap();
        let before = digest(dir.path());
        std::fs::remove_file(dir.path().join("link")).unwrap();
        std::os::unix::fs::symlink("Cargo.toml", dir.path().join("link")).unwrap();
        assert_ne!(before, digest(dir.path()));
    }

    /// A recipe that copies a file into place and counts its runs in a file outside the
    /// source folder.
    fn counting_recipe(root: &Path, command_tail: &str) -> (BuildRecipe, PathBuf) {
        write(root, "src/component.txt", "pretend wasm");
        let counter = root.join("runs.txt");
        let recipe = BuildRecipe {
            source: "src".into(),
            command: format!(
                "echo run >> {}; mkdir -p out && cp component.txt out/c.wasm{command_tail}",
                counter.display()
            ),
            artifact: "out/c.wasm".into(),
            watch: Vec::new(),
        };
        (recipe, counter)
    }

    fn runs(counter: &Path) -> usize {
        std::fs::read_to_string(counter)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    }

    #[tokio::test]
    async fn a_second_build_is_a_cache_hit_that_survives_a_clean() {
        let root = tempfile::tempdir().unwrap();
        let (recipe, counter) = counting_recipe(root.path(), "");
        let state = StateDir::new(root.path().join("state"));
        let mut started = Vec::new();

        let first = ComponentBuilder::new(state.clone(), root.path())
            .build("s", &recipe, &mut |p| started.push(p))
            .await
            .unwrap();
        assert!(!first.cached);
        assert_eq!(started.len(), 1);
        assert_eq!(std::fs::read(&first.path).unwrap(), b"pretend wasm");
        assert_eq!(runs(&counter), 1);

        // The artifact is gone (a clean): the cached copy still serves.
        std::fs::remove_dir_all(root.path().join("src/out")).unwrap();
        let second = ComponentBuilder::new(state.clone(), root.path())
            .build("s", &recipe, &mut |p| started.push(p))
            .await
            .unwrap();
        assert!(second.cached);
        assert_eq!((second.key, second.digest), (first.key, first.digest));
        assert_eq!(runs(&counter), 1);

        let forced = ComponentBuilder::new(state.clone(), root.path())
            .force(true)
            .build("s", &recipe, &mut |_| {})
            .await
            .unwrap();
        assert!(!forced.cached);
        assert_eq!(runs(&counter), 2);
    }

    #[tokio::test]
    async fn a_failed_build_caches_nothing_and_keeps_its_log_tail() {
        let root = tempfile::tempdir().unwrap();
        let (recipe, counter) = counting_recipe(root.path(), "; echo broken >&2; exit 3");
        let state = StateDir::new(root.path().join("state"));
        for n in 1..=2 {
            let failure = ComponentBuilder::new(state.clone(), root.path())
                .build("s", &recipe, &mut |_| {})
                .await
                .unwrap_err();
            assert_eq!(failure.log_tail, vec!["broken".to_owned()]);
            assert!(failure.message.contains("exit status: 3"), "{failure}");
            assert_eq!(runs(&counter), n);
        }
        let entries = std::fs::read_dir(builds_dir(&state))
            .into_iter()
            .flatten()
            .filter(|e| e.as_ref().unwrap().path().extension() == Some("json".as_ref()))
            .count();
        assert_eq!(entries, 0, "a failed build left a cache entry");
    }

    #[tokio::test]
    async fn a_change_in_a_watched_folder_outside_the_source_rebuilds() {
        let root = tempfile::tempdir().unwrap();
        let (mut recipe, counter) = counting_recipe(root.path(), "");
        write(root.path(), "shared/lib.rs", "pub fn one() {}");
        write(root.path(), "unwatched/x.txt", "a");
        recipe.watch = vec!["../shared".into()];
        let state = StateDir::new(root.path().join("state"));
        let build = || async {
            ComponentBuilder::new(state.clone(), root.path())
                .build("s", &recipe, &mut |_| {})
                .await
                .unwrap()
        };
        assert!(!build().await.cached);
        write(root.path(), "unwatched/x.txt", "b");
        assert!(build().await.cached, "a file nobody watches changed");
        write(root.path(), "shared/lib.rs", "pub fn two() {}");
        assert!(!build().await.cached, "the watched folder changed");
        assert_eq!(runs(&counter), 2);
    }

    #[tokio::test]
    async fn one_command_for_two_artifacts_runs_once() {
        let root = tempfile::tempdir().unwrap();
        let (recipe, counter) = counting_recipe(root.path(), "; cp component.txt out/d.wasm");
        let other = BuildRecipe {
            artifact: "out/d.wasm".into(),
            ..recipe.clone()
        };
        let mut builder =
            ComponentBuilder::new(StateDir::new(root.path().join("state")), root.path());
        let a = builder.build("a", &recipe, &mut |_| {}).await.unwrap();
        let b = builder.build("b", &other, &mut |_| {}).await.unwrap();
        assert_ne!(a.key, b.key);
        assert_eq!(runs(&counter), 1);
    }
}
