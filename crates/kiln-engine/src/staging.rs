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
    /// Scratch folders handed from one attempt to the next, if any: an attempt then takes a
    /// cleared one (or makes one in the pool's folder) instead of `scratch/<step>.<attempt>`.
    pub pool: Option<Arc<ScratchPool>>,
}

/// Scratch folders reused by the attempts of a run: each holds an empty `in/` and `out/`
/// when it is handed out, and is cleared when its attempt ends.
///
/// Making and removing three folders per step was most of what a tiny step cost on ext4:
/// every new folder takes an inode and a block, every removed one gives them back (and, on
/// a disk mounted with `discard`, trims the block at once). A run keeps as many folders as
/// it runs attempts at once. A folder that cannot be cleared completely is removed and
/// never handed out again.
#[derive(Debug)]
pub struct ScratchPool {
    root: PathBuf,
    free: std::sync::Mutex<Vec<PathBuf>>,
    made: std::sync::atomic::AtomicUsize,
}

impl ScratchPool {
    /// A pool of folders in `root` (created when the first folder is).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            free: std::sync::Mutex::new(Vec::new()),
            made: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// A folder with an empty `in/` and `out/`: a cleared one, or a new one.
    fn take(&self) -> std::io::Result<PathBuf> {
        if let Some(dir) = self.free.lock().expect("pool lock").pop() {
            return Ok(dir);
        }
        let n = self.made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = self.root.join(format!("slot-{n}"));
        for sub in ["in", "out"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        Ok(dir)
    }

    /// Clears a folder an attempt is done with and keeps it for the next one; removes it if
    /// anything in it resists.
    fn give_back(&self, dir: PathBuf) {
        if clear_slot(&dir).is_ok() {
            self.free.lock().expect("pool lock").push(dir);
        } else {
            remove_tree(&dir);
        }
    }
}

/// Empties `in/` and `out/` of a scratch folder and removes everything else in it.
fn clear_slot(dir: &Path) -> std::io::Result<()> {
    let mut kept = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let is_dir = entry.file_type()?.is_dir();
        if is_dir && (entry.file_name() == "in" || entry.file_name() == "out") {
            for inner in std::fs::read_dir(&path)? {
                let inner = inner?;
                if inner.file_type()?.is_dir() {
                    remove_tree(&inner.path());
                } else {
                    std::fs::remove_file(inner.path())?;
                }
            }
            kept += 1;
        } else if is_dir {
            remove_tree(&path);
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    // Both must be there, and empty (a folder `remove_tree` could not remove is not).
    for sub in ["in", "out"] {
        if std::fs::read_dir(dir.join(sub))?.next().is_some() {
            return Err(std::io::Error::other("not empty"));
        }
    }
    if kept == 2 {
        Ok(())
    } else {
        Err(std::io::Error::other("in/ or out/ is missing"))
    }
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
        let from = std::mem::take(&mut self._scratch.path);
        let name = format!("{}.{}", self.task.step.id.file_stem(), self.task.attempt);
        let to = kept.join(name);
        // Inputs linked to the store's objects become copies: the kept folder is for people
        // to look into, with their tools, which could write.
        let moved = unshare(&from.join("in"))
            .and_then(|()| std::fs::create_dir_all(kept))
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

/// Stages an attempt in `area`: its scratch folder with `in/` and `out/`, and its component
/// as a file. A failure is an outcome.
///
/// Every input is materialised in `in/`: as read-only, verified copies, or — when `linked`,
/// for a step that cannot write to its inputs (see
/// [`crate::Executor::reads_inputs_read_only`]) — as links to the stored objects, which
/// copies nothing whatever their size.
pub async fn stage(
    task: &StepTask,
    area: &StagingArea,
    linked: bool,
) -> Result<Staged, ExecOutcome> {
    let (workdir, guard) = match &area.pool {
        Some(pool) => {
            let dir = pool.take().map_err(|e| {
                failed(
                    FailureKind::Internal,
                    format!(
                        "cannot make a scratch folder in {}: {e}",
                        pool.root.display()
                    ),
                )
            })?;
            let guard = ScratchGuard {
                path: dir.clone(),
                pool: Some(pool.clone()),
            };
            (dir, guard)
        }
        None => {
            let dir = area
                .scratch
                .join(format!("{}.{}", task.step.id.file_stem(), task.attempt));
            let guard = ScratchGuard {
                path: dir.clone(),
                pool: None,
            };
            (dir, guard)
        }
    };
    let in_dir = workdir.join("in");
    let out_dir = workdir.join("out");
    // Metadata system calls (two `mkdir`s, one `stat`) are made in place: each costs less
    // than a trip to the blocking pool, which would add tens of microseconds to every step.
    // Copying, hashing and writing data go to the pool (through the store).
    let component_path = task
        .component
        .map(|digest| area.components.join(format!("{}.wasm", digest.to_hex())));
    for dir in [&in_dir, &out_dir]
        .into_iter()
        .filter(|_| area.pool.is_none())
    {
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
        let staged = if linked {
            area.store.link_into(digest, &dest).await
        } else {
            area.store.materialize(digest, &dest).await
        };
        staged.map_err(|e| {
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

/// Removes a scratch folder when an attempt ends, however it ends, or clears it and gives it
/// back to its pool.
#[derive(Debug)]
struct ScratchGuard {
    path: PathBuf,
    pool: Option<Arc<ScratchPool>>,
}

impl Drop for ScratchGuard {
    fn drop(&mut self) {
        if self.path.as_os_str().is_empty() {
            return;
        }
        let path = std::mem::take(&mut self.path);
        match &self.pool {
            Some(pool) => pool.give_back(path),
            None => remove_tree(&path),
        }
    }
}

/// Replaces every file under `dir` that has other names (an input linked to the store's
/// object) with a copy of its own, read-only like the original.
fn unshare(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.is_dir() {
            unshare(&path)?;
        } else if meta.is_file() && meta.nlink() > 1 {
            let copy =
                path.with_file_name(format!(".{}.copy", entry.file_name().to_string_lossy()));
            std::fs::copy(&path, &copy)?;
            std::fs::set_permissions(&copy, meta.permissions())?;
            std::fs::rename(&copy, &path)?;
        }
    }
    Ok(())
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
        if kind.is_file()
            && let Some(run) = name.strip_suffix(".lock")
            && run != own
            && !scratch_root.join(run).exists()
        {
            remove_lone_lock(&entry.path());
            continue;
        }
        if !kind.is_dir() || name == own {
            continue;
        }
        let folder = entry.path();
        let lock_path = scratch_root.join(format!("{name}.lock"));
        // The lock file goes after the folder: a sweep killed in between leaves a lone lock
        // file, which the next sweep removes, never a folder without its lock (kept an hour).
        let mut held = None;
        let dead = match File::options().write(true).open(&lock_path) {
            Ok(file) => {
                let free =
                    rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
                        .is_ok();
                held = Some(file);
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
            if held.is_some() {
                let _ = std::fs::remove_file(&lock_path);
            }
        }
        drop(held);
    }
}

/// A lock file without a scratch folder: a run killed before its first attempt staged
/// anything. Removed when nobody holds it and it is not brand new (a run takes its lock a
/// moment after creating the file).
fn remove_lone_lock(path: &Path) {
    let Ok(file) = File::options().write(true).open(path) else {
        return;
    };
    let settled = file
        .metadata()
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age > LONE_LOCK_GRACE);
    if settled
        && rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_ok()
    {
        let _ = std::fs::remove_file(path);
    }
}

/// How old a lone lock file must be before it can be a dead run's.
const LONE_LOCK_GRACE: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use kiln_cas::LocalStore;

    /// A task of one step with input `data` (the stored `bytes`) and output `out`.
    fn task(store: &LocalStore, bytes: &[u8]) -> StepTask {
        let pipeline = kiln_spec::parse(
            "apiVersion: kiln/v1\nname: t\nsteps:\n  prep:\n    container: {image: x, command: [sh]}\n    outputs: [rows]\n  a:\n    container: {image: x, command: [sh]}\n    inputs: {data: prep.rows}\n    outputs: [out]\n",
        )
        .unwrap();
        let plan = kiln_plan::compile(&pipeline, &kiln_plan::PlanOptions::default())
            .plan
            .unwrap();
        StepTask {
            run_id: "r".into(),
            step: plan.steps.iter().find(|s| s.id == "a").unwrap().clone(),
            attempt: 1,
            cache_key: Digest::of_bytes(b"key"),
            inputs: BTreeMap::from([("data".to_owned(), store.put_bytes(bytes).unwrap())]),
            outputs: vec!["out".into()],
            component: None,
            recorded: BTreeMap::new(),
        }
    }

    fn area(root: &Path, store: &LocalStore, pool: bool) -> StagingArea {
        let scratch = root.join("scratch/r");
        StagingArea {
            store: Arc::new(store.clone()),
            pool: pool.then(|| Arc::new(ScratchPool::new(&scratch))),
            scratch,
            components: root.join("components"),
            log: root.join("a.log"),
            keep_failed: None,
        }
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn a_pooled_scratch_folder_is_cleared_and_handed_to_the_next_attempt() {
        let root = tempfile::tempdir().unwrap();
        let store = LocalStore::new(root.path().join("cas"));
        let task = task(&store, b"a,b\n1,2\n");
        let area = area(root.path(), &store, true);

        let first = stage(&task, &area, true).await.unwrap();
        let dir = first.task().workdir.clone();
        let input = first.task().inputs["data"].clone();
        let blob = store.blob_path(&task.inputs["data"]);
        assert_eq!(
            std::fs::metadata(&input).unwrap().ino(),
            std::fs::metadata(&blob).unwrap().ino(),
            "a linked input is the stored object"
        );
        // What a step may leave behind: files beside its outputs, folders, a read-only one.
        std::fs::write(dir.join("out/extra"), "x").unwrap();
        std::fs::create_dir_all(dir.join("out/sub/deeper")).unwrap();
        std::fs::write(dir.join("out/sub/deeper/file"), "x").unwrap();
        std::fs::set_permissions(dir.join("out/sub"), std::fs::Permissions::from_mode(0o555))
            .unwrap();
        std::fs::write(dir.join("stray"), "x").unwrap();
        drop(first);
        assert_eq!(names(&dir), ["in", "out"]);
        assert!(names(&dir.join("in")).is_empty() && names(&dir.join("out")).is_empty());

        // The next attempt gets the same folder, with copies this time.
        let second = stage(&task, &area, false).await.unwrap();
        assert_eq!(second.task().workdir, dir);
        assert_eq!(names(&dir.join("in")), ["data"]);
        assert_eq!(std::fs::metadata(&input).unwrap().nlink(), 1, "a copy");
        // Two at once: two folders.
        let third = stage(&task, &area, true).await.unwrap();
        assert_ne!(third.task().workdir, dir);
        drop((second, third));
        assert_eq!(std::fs::metadata(&blob).unwrap().nlink(), 1);
        assert_eq!(
            store.read_verified(&task.inputs["data"]).unwrap(),
            b"a,b\n1,2\n"
        );
    }

    #[tokio::test]
    async fn a_kept_scratch_folder_has_copies_of_linked_inputs() {
        let root = tempfile::tempdir().unwrap();
        let store = LocalStore::new(root.path().join("cas"));
        let task = task(&store, b"rows");
        for pool in [true, false] {
            let staged = stage(&task, &area(root.path(), &store, pool), true)
                .await
                .unwrap();
            let kept_dir = root.path().join(format!("kept-{pool}"));
            let kept = staged.keep(&kept_dir).unwrap();
            assert_eq!(kept, kept_dir.join("a.1"));
            let input = kept.join("in/data");
            let meta = std::fs::metadata(&input).unwrap();
            assert_eq!(meta.nlink(), 1, "the kept input is a copy");
            assert_eq!(meta.permissions().mode() & 0o777, 0o444);
            assert_eq!(std::fs::read(&input).unwrap(), b"rows");
            // Whoever looks into it may write; the store is not reached.
            std::fs::set_permissions(&input, std::fs::Permissions::from_mode(0o644)).unwrap();
            std::fs::write(&input, b"changed").unwrap();
            assert_eq!(store.read_verified(&task.inputs["data"]).unwrap(), b"rows");
        }
    }

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
        // A run killed before it staged anything: a lock file alone, nobody holding it.
        let lone = scratch.join("early.lock");
        std::fs::write(&lone, "").unwrap();
        let old = std::time::SystemTime::now() - Duration::from_secs(60);
        File::options()
            .write(true)
            .open(&lone)
            .unwrap()
            .set_modified(old)
            .unwrap();
        // One just created, whose run may be about to lock it: kept.
        std::fs::write(scratch.join("starting.lock"), "").unwrap();
        let _next = ScratchLock::take(scratch, "next").unwrap();
        assert!(
            !scratch.join("dead").exists(),
            "the dead run's scratch is left"
        );
        assert!(!scratch.join("dead.lock").exists());
        assert!(!lone.exists(), "a dead run's lone lock file is left");
        assert!(scratch.join("starting.lock").exists());
        assert!(
            scratch.join("live.lock").exists(),
            "a live run's lock was removed"
        );
        assert!(
            scratch.join("live/step.1/in").exists(),
            "a live run's scratch was swept"
        );
        assert!(scratch.join("recent").exists());
        drop(live);
        assert!(!scratch.join("live.lock").exists());
    }
}
