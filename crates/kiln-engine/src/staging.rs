//! Staging: what happens where a step really runs, around the step itself. Materialise its
//! inputs and component from the store, give it a scratch folder and a folder per output,
//! and afterwards publish what it wrote — refusing links and special files — to the store.
//!
//! The local executors call this in process (through [`crate::Executor::run`]'s default); a
//! runner on another machine or an agent in a Pod calls the same functions with its own
//! [`StagingArea`]. A scratch folder is removed when its attempt ends, however it ends, and
//! folders left behind by a process that was killed are swept by the next run
//! ([`ScratchLock`]).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kiln_cas::{BlobStore, Digest};
use kiln_record::FailureKind;

use crate::executor::{ExecOutcome, StagedTask, StepTask};

/// Where attempts are staged on this machine.
#[derive(Debug, Clone)]
pub struct StagingArea {
    /// The store inputs come from and outputs go to.
    pub store: Arc<dyn BlobStore>,
    /// The folder each attempt gets its scratch folder in (`<step>.<attempt>/`).
    pub scratch: PathBuf,
    /// Components kept as files, by digest (`<hex>.wasm`), shared by attempts and runs.
    pub components: PathBuf,
    /// The step's log file.
    pub log: PathBuf,
    /// Where a failed attempt's scratch folder is moved instead of removed, if anywhere.
    pub keep_failed: Option<PathBuf>,
}

/// A staged attempt; dropping it removes its scratch folder.
#[derive(Debug)]
pub struct Staged {
    task: StagedTask,
    _scratch: ScratchGuard,
}

impl Staged {
    /// The task with its host paths.
    pub fn task(&self) -> &StagedTask {
        &self.task
    }

    /// Keeps the scratch folder of a failed attempt: moves it to `kept/<step>.<attempt>`
    /// and returns where it now is.
    pub fn keep(mut self, kept: &Path) -> Result<PathBuf, String> {
        let from = std::mem::take(&mut self._scratch.0);
        let name = from.file_name().map(ToOwned::to_owned).unwrap_or_default();
        let to = kept.join(name);
        let moved = std::fs::create_dir_all(kept)
            .and_then(|()| {
                if to.exists() {
                    std::fs::remove_dir_all(&to)?;
                }
                std::fs::rename(&from, &to)
            })
            .map_err(|e| format!("cannot keep the scratch folder in {}: {e}", kept.display()));
        if moved.is_err() {
            remove_tree(&from);
        }
        moved.map(|()| to)
    }
}

fn failed(kind: FailureKind, message: String) -> ExecOutcome {
    ExecOutcome::failure(kind, message, None)
}

/// Stages an attempt in `area`: its scratch folder with `in/` (every input materialised,
/// read-only, verified) and `out/`, and its component as a file. A failure is an outcome.
pub async fn stage(task: &StepTask, area: &StagingArea) -> Result<Staged, ExecOutcome> {
    let workdir = area
        .scratch
        .join(format!("{}.{}", task.step.id.file_stem(), task.attempt));
    let guard = ScratchGuard(workdir.clone());
    let in_dir = workdir.join("in");
    let out_dir = workdir.join("out");
    // Metadata system calls (two `mkdir`s, one `stat`) are made in place: each costs less
    // than a trip to the blocking pool, which would add tens of microseconds to every step.
    // Copying, hashing and writing data go to the pool (through the store).
    let component_path = task
        .component
        .map(|digest| area.components.join(format!("{}.wasm", digest.to_hex())));
    for dir in [&in_dir, &out_dir] {
        std::fs::create_dir_all(dir).map_err(|e| {
            failed(
                FailureKind::Internal,
                format!("cannot create {}: {e}", dir.display()),
            )
        })?;
    }
    let component_staged = component_path.as_ref().is_some_and(|p| p.is_file());
    let mut inputs = BTreeMap::new();
    for (name, digest) in &task.inputs {
        let dest = in_dir.join(name);
        area.store.materialize(digest, &dest).await.map_err(|e| {
            failed(
                FailureKind::Input,
                format!("cannot materialise input `{name}`: {e}"),
            )
        })?;
        inputs.insert(name.clone(), dest);
    }
    let component = match (&task.component, component_path) {
        (Some(_), Some(path)) if component_staged => Some(path),
        (Some(digest), _) => Some(
            component_file(area, digest)
                .await
                .map_err(|e| failed(FailureKind::Component, e).deterministic())?,
        ),
        _ => None,
    };
    let outputs = task
        .outputs
        .iter()
        .map(|name| (name.clone(), out_dir.join(task.step.output_file(name))))
        .collect();
    Ok(Staged {
        task: StagedTask {
            run_id: task.run_id.clone(),
            step: task.step.clone(),
            attempt: task.attempt,
            cache_key: task.cache_key.to_string(),
            workdir,
            inputs,
            outputs,
            component,
            log: area.log.clone(),
            recorded: task.recorded.clone(),
        },
        _scratch: guard,
    })
}

/// The component as a file in `area.components`, copied out of the store once per machine
/// (written under a temporary name and renamed, so concurrent runs never see half a file).
async fn component_file(area: &StagingArea, digest: &Digest) -> Result<PathBuf, String> {
    let path = area.components.join(format!("{}.wasm", digest.to_hex()));
    tokio::fs::create_dir_all(&area.components)
        .await
        .map_err(|e| format!("{}: {e}", area.components.display()))?;
    let temp = area.components.join(format!(
        ".{}.{}.tmp",
        digest.to_hex(),
        kiln_record::new_run_id()
    ));
    area.store
        .materialize(digest, &temp)
        .await
        .map_err(|e| format!("cannot copy component {digest} out of the store: {e}"))?;
    let renamed = tokio::fs::rename(&temp, &path).await;
    if renamed.is_err() {
        let _ = tokio::fs::remove_file(&temp).await;
    }
    renamed.map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

/// Publishes a finished attempt's outputs to `store`: each must exist and be a plain file
/// or folder (following a link would publish whatever it points at, outside the step's
/// folder). Files are moved in where the store can (the scratch folder is going away).
pub async fn publish(
    task: &StagedTask,
    store: &dyn BlobStore,
) -> Result<BTreeMap<String, Digest>, ExecOutcome> {
    let mut published = BTreeMap::new();
    for (name, path) in &task.outputs {
        // One `lstat`, in place (see `stage`).
        let meta = match std::fs::symlink_metadata(path) {
            Ok(meta) => meta,
            Err(_) => {
                return Err(failed(
                    FailureKind::MissingOutput,
                    format!(
                        "the step succeeded but did not write its output `{name}` ({})",
                        what_was_written(task, name, path)
                    ),
                )
                .deterministic());
            }
        };
        if !meta.is_dir() && !meta.is_file() {
            return Err(failed(
                FailureKind::Sandbox,
                format!(
                    "output `{name}` is a symbolic link or a special file; outputs must be plain files or folders"
                ),
            )
            .deterministic());
        }
        let stored = if meta.is_dir() {
            store.put_tree_owned(path).await
        } else {
            store.put_file_owned(path).await
        };
        let digest = stored.map_err(|e| {
            failed(
                FailureKind::Output,
                format!("cannot store output `{name}`: {e}"),
            )
        })?;
        published.insert(name.clone(), digest);
    }
    Ok(published)
}

/// What a step wrote beside an output it did not write, for the error: a tool that adds an
/// extension (numpy's `savez`) leaves `model.npz` where `model` was expected.
fn what_was_written(task: &StagedTask, name: &str, path: &Path) -> String {
    const SHOWN: usize = 5;
    let Some(folder) = path.parent() else {
        return "its outputs folder is missing".into();
    };
    let expected: Vec<&Path> = task.outputs.values().map(PathBuf::as_path).collect();
    let mut found: Vec<String> = std::fs::read_dir(folder)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| !expected.contains(&e.path().as_path()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    if found.is_empty() {
        return format!(
            "nothing else is in its outputs folder: write it to the path `{{{{outputs.{name}}}}}` gives"
        );
    }
    let file = path
        .file_name()
        .map_or(name.into(), |f| f.to_string_lossy());
    let close = found.iter().find(|f| {
        f.strip_prefix(file.as_ref())
            .is_some_and(|rest| rest.starts_with('.'))
    });
    let mut listed: Vec<String> = found.iter().take(SHOWN).map(|f| format!("`{f}`")).collect();
    if found.len() > SHOWN {
        listed.push(format!("and {} more", found.len() - SHOWN));
    }
    match close {
        Some(f) => format!(
            "found {}; if the tool adds an extension, name the file: `outputs: {{{name}: {f}}}`",
            listed.join(", ")
        ),
        None => format!("found {}", listed.join(", ")),
    }
}

/// Removes a scratch folder when an attempt ends, however it ends.
#[derive(Debug)]
struct ScratchGuard(PathBuf);

impl Drop for ScratchGuard {
    fn drop(&mut self) {
        if !self.0.as_os_str().is_empty() {
            remove_tree(&self.0);
        }
    }
}

/// Removes a folder tree even where materialised inputs made parts of it read-only.
pub fn remove_tree(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if std::fs::remove_dir_all(path).is_ok() || !path.exists() {
        return;
    }
    fn make_writable(path: &Path) {
        if let Ok(meta) = std::fs::symlink_metadata(path)
            && meta.is_dir()
        {
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755));
            if let Ok(entries) = std::fs::read_dir(path) {
                for entry in entries.flatten() {
                    make_writable(&entry.path());
                }
            }
        }
    }
    make_writable(path);
    let _ = std::fs::remove_dir_all(path);
}

/// A run's claim on its scratch folder: an exclusive lock on `<scratch>/<run>.lock`, held
/// while the run goes. The next run that starts removes every scratch folder whose lock
/// nobody holds — what a killed process left behind — and leaves the others alone.
#[derive(Debug)]
pub struct ScratchLock {
    path: PathBuf,
    _file: File,
}

/// Scratch folders without a lock file are swept only when this old (a run creates its lock
/// before its folder, so this is for folders of an older kiln).
const UNLOCKED_GRACE: Duration = Duration::from_secs(3600);

impl ScratchLock {
    /// Takes the lock of run `run_id` in `scratch_root`, then sweeps what dead runs left.
    pub fn take(scratch_root: &Path, run_id: &str) -> std::io::Result<Self> {
        std::fs::create_dir_all(scratch_root)?;
        let path = scratch_root.join(format!("{run_id}.lock"));
        let file = File::create(&path)?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)?;
        let lock = Self { path, _file: file };
        sweep(scratch_root, run_id);
        Ok(lock)
    }
}

impl Drop for ScratchLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Removes the scratch folders (and lock files) of runs that are no longer alive.
fn sweep(scratch_root: &Path, own: &str) {
    let Ok(entries) = std::fs::read_dir(scratch_root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if !kind.is_dir() || name == own {
            continue;
        }
        let folder = entry.path();
        let lock_path = scratch_root.join(format!("{name}.lock"));
        let dead = match File::options().write(true).open(&lock_path) {
            Ok(file) => {
                let free =
                    rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
                        .is_ok();
                if free {
                    let _ = std::fs::remove_file(&lock_path);
                }
                free
            }
            Err(_) => entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > UNLOCKED_GRACE),
        };
        if dead {
            tracing::info!(folder = %folder.display(), "removing the scratch folder of a run that ended without cleaning up");
            remove_tree(&folder);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_runs_scratch_is_swept_and_a_live_one_kept() {
        let root = tempfile::tempdir().unwrap();
        let scratch = root.path();
        let live = ScratchLock::take(scratch, "live").unwrap();
        std::fs::create_dir_all(scratch.join("live/step.1/in")).unwrap();
        // A killed run: its folder and a lock file nobody holds.
        std::fs::create_dir_all(scratch.join("dead/step.1/in")).unwrap();
        std::fs::write(scratch.join("dead.lock"), "").unwrap();
        // An unlocked folder of an older kiln, just made: kept (within the grace period).
        std::fs::create_dir_all(scratch.join("recent")).unwrap();
        let _next = ScratchLock::take(scratch, "next").unwrap();
        assert!(
            !scratch.join("dead").exists(),
            "the dead run's scratch is left"
        );
        assert!(!scratch.join("dead.lock").exists());
        assert!(
            scratch.join("live/step.1/in").exists(),
            "a live run's scratch was swept"
        );
        assert!(scratch.join("recent").exists());
        drop(live);
        assert!(!scratch.join("live.lock").exists());
    }
}
