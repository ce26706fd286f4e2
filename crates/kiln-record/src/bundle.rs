//! Portable run bundles: one file holding what it takes to replay a recorded run elsewhere.
//!
//! A bundle is a tar archive in a single zstd frame (with zstd's content checksum). Its
//! entries, in this order:
//!
//! ```text
//! manifest.json      a BundleManifest: format, version, run, digests of the files below, objects
//! record.jsonl       the run record, byte for byte
//! plan.json          the run's compiled plan, byte for byte
//! objects/<hex>      every store object the run's steps read or wrote, and their wasm
//!                    components, once each, sorted by digest: a blob's bytes, or a tree's
//!                    encoded manifest
//! ```
//!
//! Exporting the same run twice at one level gives the same bytes: headers carry no times,
//! owners or modes of this host, and the manifest's time is the run's own start time.
//!
//! Importing verifies everything against the manifest before the run's files are written,
//! but it writes objects into the target store as they arrive; callers import into a fresh
//! state folder and delete it when the import fails. Components are imported as blobs:
//! putting them where a run looks for them is the caller's business, as is replaying.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

use kiln_cas::{BlobStore, CasError, Digest, ObjectKind, Tree};
use serde::{Deserialize, Serialize};

use crate::record::{RecordEvent, RunView};
use crate::state::StateDir;

/// The bundle layout this kiln writes, and the newest it reads.
pub const BUNDLE_FORMAT_VERSION: u32 = 1;

/// The `format` of every bundle's manifest.
const FORMAT: &str = "kiln-bundle";
/// Entry names.
const MANIFEST: &str = "manifest.json";
const RECORD: &str = "record.jsonl";
const PLAN: &str = "plan.json";
const OBJECTS: &str = "objects/";
/// What every zstd frame starts with (0xFD2FB528, little-endian).
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// The first entry of every bundle, `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleManifest {
    /// Always `kiln-bundle`.
    pub format: String,
    /// [`BUNDLE_FORMAT_VERSION`] of the kiln that wrote it.
    pub format_version: u32,
    /// The version of the kiln that wrote it.
    pub kiln_version: String,
    /// The runtime's determinism version, from the record's `run_started` event.
    pub determinism_version: u32,
    /// The run.
    pub run_id: String,
    /// The pipeline's name.
    pub pipeline: String,
    /// When the run started (Unix milliseconds), from its record.
    pub created_at_ms: u64,
    /// `record.jsonl` and `plan.json`: the digest of their bytes.
    pub files: BTreeMap<String, Digest>,
    /// Every store object in the bundle, sorted by digest.
    pub objects: Vec<BundleObject>,
}

/// One store object in a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleObject {
    /// The object's digest.
    pub digest: Digest,
    /// A blob (file content) or a tree (a folder's manifest).
    #[serde(with = "object_kind")]
    pub kind: ObjectKind,
    /// Its size in bytes: the blob's, or the encoded tree manifest's.
    pub size: u64,
}

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSummary {
    /// The bundle.
    pub path: PathBuf,
    /// Store objects in it.
    pub objects: usize,
    /// Bytes of its content before compression: manifest, record, plan and objects.
    pub raw_bytes: u64,
    /// Bytes of the bundle file.
    pub bundle_bytes: u64,
}

/// Progress of an export, for a progress bar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportProgress {
    /// An object was written.
    Object {
        /// Objects written so far.
        done: usize,
        /// Objects in the bundle.
        total: usize,
        /// Object bytes written so far, before compression.
        bytes: u64,
    },
}

/// Why a bundle could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The file is not a kiln bundle at all.
    #[error("`{path}` is not a kiln bundle: {reason}; check that this is the file you meant")]
    NotABundle {
        /// The file.
        path: PathBuf,
        /// What gave it away.
        reason: String,
    },
    /// The bundle ends early.
    #[error(
        "the bundle `{path}` is truncated: {reason}; it was cut short while it was written or copied: copy it again, or export it again"
    )]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Where it ends.
        reason: String,
    },
    /// The bundle's bytes are damaged or do not match its manifest.
    #[error(
        "the bundle `{path}` is corrupt: {reason}; it was damaged in storage or transfer: copy it again from the original, or export it again"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What does not match.
        reason: String,
    },
    /// The bundle was written in a newer format.
    #[error(
        "the bundle `{path}` was written by kiln {written_by} in bundle format version {found}, and this kiln ({ours}) reads versions up to {BUNDLE_FORMAT_VERSION}: upgrade kiln to import it",
        ours = env!("CARGO_PKG_VERSION")
    )]
    FormatVersion {
        /// The file.
        path: PathBuf,
        /// Its format version.
        found: u64,
        /// The kiln version its manifest names.
        written_by: String,
    },
    /// An object the run needs is in neither the store nor the components folder.
    #[error(
        "cannot export run `{run}`: step `{step}` (attempt {attempt}) {what} ({digest}) {reason}; was the store pruned? export from the state folder the run was made in, or run the pipeline again"
    )]
    MissingObject {
        /// The run.
        run: String,
        /// The step that read or wrote it.
        step: String,
        /// Its attempt (0 for a cache hit).
        attempt: u32,
        /// Which of the step's objects: ``input `data` ``, ``output `model`, file `a/b` ``,
        /// `component`.
        what: String,
        /// The missing digest (`blake3:<hex>`).
        digest: String,
        /// Where it was looked for.
        reason: String,
    },
    /// The run's record cannot be exported.
    #[error("cannot export run `{run}`: its record `{path}` {reason}")]
    Record {
        /// The run.
        run: String,
        /// The record.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The store failed while reading or writing an object.
    #[error(transparent)]
    Store(CasError),
    /// A file could not be read or written.
    #[error("cannot {action} `{path}`: {source}")]
    Io {
        /// What kiln was doing (`read`, `write`, `create a file in`...).
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
}

impl BundleError {
    /// A stable code for tests and scripts, such as `kiln::bundle::truncated`.
    pub fn code(&self) -> &'static str {
        match self {
            BundleError::NotABundle { .. } => "kiln::bundle::not-a-bundle",
            BundleError::Truncated { .. } => "kiln::bundle::truncated",
            BundleError::Corrupt { .. } => "kiln::bundle::corrupt",
            BundleError::FormatVersion { .. } => "kiln::bundle::format-version",
            BundleError::MissingObject { .. } => "kiln::bundle::missing-object",
            BundleError::Record { .. } => "kiln::bundle::record",
            BundleError::Store(_) => "kiln::bundle::store",
            BundleError::Io { .. } => "kiln::bundle::io",
        }
    }

    fn io(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Self {
        let path = path.to_owned();
        move |source| BundleError::Io {
            action,
            path,
            source,
        }
    }

    fn corrupt(path: &Path, reason: impl Into<String>) -> Self {
        BundleError::Corrupt {
            path: path.to_owned(),
            reason: reason.into(),
        }
    }

    fn truncated(path: &Path, reason: impl Into<String>) -> Self {
        BundleError::Truncated {
            path: path.to_owned(),
            reason: reason.into(),
        }
    }

    fn not_a_bundle(path: &Path, reason: impl Into<String>) -> Self {
        BundleError::NotABundle {
            path: path.to_owned(),
            reason: reason.into(),
        }
    }
}

/// A store error; file system failures keep their path and become [`BundleError::Io`].
fn store_error(e: CasError) -> BundleError {
    match e {
        CasError::Io {
            action,
            path,
            source,
        } => BundleError::Io {
            action,
            path,
            source,
        },
        e => BundleError::Store(e),
    }
}

/// Writes run `run_id` of `state` to a bundle at `dest`, compressed at zstd `level`, with
/// the run's objects read from `store` (the state folder's own, or any other holding them).
///
/// The bundle is assembled in a temporary file beside `dest` and renamed over it only when
/// complete: on error nothing is left at `dest`, and a file already there is untouched.
///
/// Blocking: call it from a plain thread or tokio's blocking pool, not from async code. A
/// local store's blobs are streamed from their files; any other store's are read one at a
/// time as they are packed.
pub fn export_run(
    state: &StateDir,
    store: &dyn BlobStore,
    run_id: &str,
    dest: &Path,
    level: i32,
    progress: &mut dyn FnMut(ExportProgress),
) -> Result<ExportSummary, BundleError> {
    let record_path = state.record_path(run_id);
    let record = fs::read(&record_path).map_err(BundleError::io("read", &record_path))?;
    let plan_path = state.run_dir(run_id).join(PLAN);
    let plan = fs::read(&plan_path).map_err(BundleError::io("read", &plan_path))?;
    let record_error = |reason: String| BundleError::Record {
        run: run_id.to_owned(),
        path: record_path.clone(),
        reason,
    };

    // The events come from the very bytes that go into the bundle: a record still being
    // written cannot gain an event, between reading and packing, whose objects are missing.
    let events = record_events(&record).map_err(record_error)?;
    let Some(RecordEvent::RunStarted {
        pipeline,
        determinism_version,
        at_ms,
        ..
    }) = RunView::from_events(&events).started
    else {
        return Err(record_error("has no `run_started` event".into()));
    };

    let waiter = Waiter::new().map_err(BundleError::io("start a runtime for", dest))?;
    let mut packer = Packer {
        store,
        waiter: &waiter,
        components: state.components_dir(),
        run: run_id,
        objects: BTreeMap::new(),
    };
    for event in &events {
        let RecordEvent::StepFinished(step) = event else {
            continue;
        };
        let at = StepAt {
            step: &step.step,
            attempt: step.attempt,
        };
        let named = |role: &str, map: &BTreeMap<String, Digest>| {
            map.iter()
                .map(|(name, digest)| (format!("{role} `{name}`"), *digest))
                .collect::<Vec<_>>()
        };
        for (what, digest) in named("input", &step.inputs)
            .into_iter()
            .chain(named("output", &step.outputs))
        {
            packer.add(digest, &at, &what, false)?;
        }
        // The component's digest is part of the key; executors also report it in details.
        let components: BTreeSet<&str> = [step.key.get("component"), step.details.get("component")]
            .into_iter()
            .flatten()
            .filter_map(serde_json::Value::as_str)
            .collect();
        for text in components {
            let digest = parse_recorded(text, &at, "component").map_err(record_error)?;
            packer.add(digest, &at, "component", true)?;
        }
    }

    let files = [(RECORD, &record), (PLAN, &plan)]
        .into_iter()
        .map(|(name, bytes)| (name.to_owned(), Digest::of_bytes(bytes)))
        .collect();
    let manifest = BundleManifest {
        format: FORMAT.to_owned(),
        format_version: BUNDLE_FORMAT_VERSION,
        kiln_version: env!("CARGO_PKG_VERSION").to_owned(),
        determinism_version,
        run_id: run_id.to_owned(),
        pipeline,
        created_at_ms: at_ms,
        files,
        objects: packer
            .objects
            .iter()
            .map(|(digest, object)| BundleObject {
                digest: *digest,
                kind: object.kind,
                size: object.size,
            })
            .collect(),
    };
    let mut manifest_json = serde_json::to_vec_pretty(&manifest).expect("manifests serialise");
    manifest_json.push(b'\n');

    let folder = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let temp = tempfile::NamedTempFile::new_in(folder)
        .map_err(BundleError::io("create a temporary file in", folder))?;
    let files = [(MANIFEST, &manifest_json), (RECORD, &record), (PLAN, &plan)];
    let object_bytes = pack(temp.as_file(), dest, level, files, &packer, progress)?;
    let bundle_bytes = temp
        .as_file()
        .metadata()
        .map_err(BundleError::io("inspect", temp.path()))?
        .len();
    // A temporary file is private (0600); a bundle is meant to be shared and committed.
    {
        use std::os::unix::fs::PermissionsExt as _;
        temp.as_file()
            .set_permissions(fs::Permissions::from_mode(0o644))
            .map_err(BundleError::io("set the permissions of", temp.path()))?;
    }
    temp.persist(dest)
        .map_err(|e| BundleError::io("rename a temporary file to", dest)(e.error))?;
    let file_bytes: usize = files.iter().map(|(_, bytes)| bytes.len()).sum();
    Ok(ExportSummary {
        path: dest.to_owned(),
        objects: packer.objects.len(),
        raw_bytes: file_bytes as u64 + object_bytes,
        bundle_bytes,
    })
}

/// Writes the bundle for `dest` into `out`: the files in order, then the objects. Returns
/// the objects' bytes.
fn pack(
    out: &File,
    dest: &Path,
    level: i32,
    files: [(&str, &Vec<u8>); 3],
    packer: &Packer<'_>,
    progress: &mut dyn FnMut(ExportProgress),
) -> Result<u64, BundleError> {
    let objects = &packer.objects;
    let write = |e| BundleError::io("write", dest)(e);
    let mut encoder = zstd::Encoder::new(out, level).map_err(write)?;
    encoder.include_checksum(true).map_err(write)?;
    let mut tar = tar::Builder::new(encoder);
    for (name, bytes) in files {
        tar.append_data(&mut header(bytes.len() as u64), name, bytes.as_slice())
            .map_err(write)?;
    }
    let mut object_bytes = 0;
    for (done, (digest, object)) in objects.iter().enumerate() {
        let name = format!("{OBJECTS}{}", digest.to_hex());
        let mut head = header(object.size);
        match &object.source {
            Source::Tree(bytes) => tar
                .append_data(&mut head, &name, bytes.as_slice())
                .map_err(write)?,
            Source::Store => {
                let bytes = packer
                    .waiter
                    .wait(packer.store.read_verified(digest))
                    .map_err(store_error)?;
                if bytes.len() as u64 != object.size {
                    return Err(write(io::Error::other(format!(
                        "blob {digest} holds {} bytes, and the store said {} when it was listed",
                        bytes.len(),
                        object.size
                    ))));
                }
                tar.append_data(&mut head, &name, &bytes[..])
                    .map_err(write)?
            }
            Source::File(path) => {
                let file = File::open(path).map_err(BundleError::io("open", path))?;
                // Verified while copied: the digest matching also proves the entry holds
                // exactly the `size` bytes its header announced.
                let location = path.display().to_string();
                let verified =
                    kiln_cas::VerifiedReader::new(file.take(object.size), *digest, location);
                let mut tap = Tap::new(verified);
                let written = tar.append_data(&mut head, &name, &mut tap);
                if let Some(e) = tap.error.take() {
                    return Err(read_error(e, path));
                }
                written.map_err(write)?;
            }
        }
        object_bytes += object.size;
        progress(ExportProgress::Object {
            done: done + 1,
            total: objects.len(),
            bytes: object_bytes,
        });
    }
    tar.into_inner()
        .and_then(|encoder| encoder.finish())
        .and_then(|file| file.sync_all())
        .map_err(write)?;
    Ok(object_bytes)
}

/// Reads the manifest of a bundle (only its first entry, so it is quick on any size).
pub fn read_manifest(bundle: &Path) -> Result<BundleManifest, BundleError> {
    let mut archive = tar::Archive::new(open_stream(bundle)?);
    let mut entries = archive
        .entries()
        .map_err(|e| stream_error(bundle, e, Stage::Manifest))?;
    first_entry(bundle, &mut entries)
}

/// Imports a bundle into the state folder `into`: every object into its store, verified by
/// digest, then the run's record and plan. Returns the bundle's manifest.
///
/// Objects go into `store` (`into`'s own, or any other the replay reads from). Blocking, like
/// [`export_run`]: a local store takes each blob streamed from the bundle, any other store
/// each blob read into memory first.
///
/// `into` should be a fresh folder: objects are stored as they arrive, so a bundle found
/// bad halfway leaves some behind (the run's files are written only once all checked out).
pub fn import_bundle(
    bundle: &Path,
    into: &StateDir,
    store: &dyn BlobStore,
) -> Result<BundleManifest, BundleError> {
    let waiter = Waiter::new().map_err(BundleError::io("start a runtime for", bundle))?;
    let mut archive = tar::Archive::new(open_stream(bundle)?);
    let mut entries = archive
        .entries()
        .map_err(|e| stream_error(bundle, e, Stage::Manifest))?;
    let manifest = first_entry(bundle, &mut entries)?;
    let mut listed = BTreeMap::new();
    for object in &manifest.objects {
        let digest = object.digest;
        if listed.insert(digest, object).is_some() {
            return Err(BundleError::corrupt(
                bundle,
                format!("manifest.json lists {digest} twice"),
            ));
        }
    }

    let mut files: BTreeMap<&str, Vec<u8>> = BTreeMap::new();
    let mut arrived = BTreeSet::new();
    for entry in &mut entries {
        let mut entry = entry.map_err(|e| stream_error(bundle, e, Stage::Header))?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        if entry.header().entry_type() != tar::EntryType::Regular {
            return Err(BundleError::corrupt(
                bundle,
                format!("entry `{name}` is not a regular file"),
            ));
        }
        let size = entry.size();
        if let Some(file) = [RECORD, PLAN].into_iter().find(|f| *f == name) {
            if files.contains_key(file) {
                return Err(BundleError::corrupt(
                    bundle,
                    format!("it holds two `{file}`"),
                ));
            }
            let bytes = read_entry(bundle, &mut entry, size, Stage::Entry(&name))?;
            let actual = Digest::of_bytes(&bytes);
            if manifest.files.get(file) != Some(&actual) {
                return Err(BundleError::corrupt(
                    bundle,
                    format!("`{file}` hashes to {actual}, not to the digest in manifest.json"),
                ));
            }
            files.insert(file, bytes);
            continue;
        }
        let Some(digest) = name
            .strip_prefix(OBJECTS)
            .and_then(|hex| format!("blake3:{hex}").parse::<Digest>().ok())
        else {
            return Err(BundleError::corrupt(
                bundle,
                format!("it holds an unexpected entry `{name}`"),
            ));
        };
        let Some(object) = listed.get(&digest) else {
            return Err(BundleError::corrupt(
                bundle,
                format!("it holds object {digest}, which manifest.json does not list"),
            ));
        };
        if !arrived.insert(digest) {
            return Err(BundleError::corrupt(
                bundle,
                format!("it holds object {digest} twice"),
            ));
        }
        if size != object.size {
            return Err(BundleError::corrupt(
                bundle,
                format!(
                    "object {digest} holds {size} bytes, and manifest.json says {}",
                    object.size
                ),
            ));
        }
        let stage = Stage::Entry(&name);
        let actual = match object.kind {
            ObjectKind::Blob => match store.local() {
                Some(local) => {
                    let mut tap = Tap::new(&mut entry);
                    let stored = local.put_reader(&mut tap);
                    if let Some(e) = tap.error.take() {
                        return Err(stream_error(bundle, e, stage));
                    }
                    let stored = stored.map_err(store_error)?;
                    if tap.count != size {
                        return Err(ended_early(bundle, stage));
                    }
                    stored
                }
                None => {
                    let bytes = read_entry(bundle, &mut entry, size, stage)?;
                    waiter
                        .wait(store.put_bytes(bytes.into()))
                        .map_err(store_error)?
                }
            },
            ObjectKind::Tree => {
                let bytes = read_entry(bundle, &mut entry, size, stage)?;
                let tree = Tree::decode(&bytes).map_err(|e| {
                    BundleError::corrupt(bundle, format!("object {digest} is not a tree: {e}"))
                })?;
                if tree.digest() != digest {
                    return Err(BundleError::corrupt(
                        bundle,
                        format!("object {digest} hashes to {}", tree.digest()),
                    ));
                }
                waiter
                    .wait(store.put_manifest(&tree))
                    .map_err(store_error)?
            }
        };
        if actual != digest {
            return Err(BundleError::corrupt(
                bundle,
                format!("object {digest} hashes to {actual}"),
            ));
        }
    }
    finish_stream(bundle, archive.into_inner())?;

    if let Some(file) = [RECORD, PLAN].into_iter().find(|f| !files.contains_key(f)) {
        return Err(BundleError::truncated(
            bundle,
            format!("`{file}` never came"),
        ));
    }
    let missing: Vec<&Digest> = listed.keys().filter(|d| !arrived.contains(d)).collect();
    if let Some(first) = missing.first() {
        return Err(BundleError::truncated(
            bundle,
            format!(
                "{} of the {} objects listed in manifest.json never came (the first is {first})",
                missing.len(),
                listed.len()
            ),
        ));
    }

    let run_dir = into.run_dir(&manifest.run_id);
    fs::create_dir_all(&run_dir).map_err(BundleError::io("create folder", &run_dir))?;
    for (path, file) in [
        (into.record_path(&manifest.run_id), RECORD),
        (run_dir.join(PLAN), PLAN),
    ] {
        File::create_new(&path)
            .and_then(|mut out| out.write_all(&files[file]))
            .map_err(BundleError::io("write", &path))?;
    }
    Ok(manifest)
}

/// The fixed header of every entry: nothing of this host (time, owner, mode) goes in.
fn header(size: u64) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(size);
    header.set_mode(0o444);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header
}

/// A run's step and attempt, to name it in errors.
struct StepAt<'a> {
    step: &'a str,
    attempt: u32,
}

fn parse_recorded(text: &str, at: &StepAt<'_>, what: &str) -> Result<Digest, String> {
    text.parse()
        .map_err(|e| format!("names a bad digest for step `{}` {what}: {e}", at.step))
}

/// Waits for the async store from the blocking code that writes and reads bundles: on the
/// runtime the caller is in (from its blocking pool), or on a small one of its own.
struct Waiter(Option<tokio::runtime::Runtime>);

impl Waiter {
    fn new() -> io::Result<Self> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Ok(Self(None));
        }
        let runtime = tokio::runtime::Builder::new_current_thread().build()?;
        Ok(Self(Some(runtime)))
    }

    fn wait<F: std::future::Future>(&self, work: F) -> F::Output {
        match &self.0 {
            Some(runtime) => runtime.block_on(work),
            None => tokio::runtime::Handle::current().block_on(work),
        }
    }
}

/// Where an object's bytes come from when it is packed.
enum Source {
    /// A blob in a local store, or a component file.
    File(PathBuf),
    /// A blob in a store that is not a local folder, read when it is packed.
    Store,
    /// A tree's encoded manifest.
    Tree(Vec<u8>),
}

struct Packed {
    kind: ObjectKind,
    size: u64,
    source: Source,
}

/// Gathers the objects of a run, each once, with its trees' contents.
struct Packer<'a> {
    store: &'a dyn BlobStore,
    waiter: &'a Waiter,
    components: PathBuf,
    run: &'a str,
    objects: BTreeMap<Digest, Packed>,
}

impl Packer<'_> {
    /// Adds `digest` (and, for a tree, everything in it); `what` names it in errors.
    fn add(
        &mut self,
        digest: Digest,
        at: &StepAt<'_>,
        what: &str,
        component: bool,
    ) -> Result<(), BundleError> {
        if self.objects.contains_key(&digest) {
            return Ok(());
        }
        let kind = self.waiter.wait(self.store.kind(&digest));
        let packed = match kind.map_err(store_error)? {
            Some(ObjectKind::Blob) => match self.store.local() {
                Some(local) => {
                    let path = local.blob_path(&digest);
                    Packed {
                        kind: ObjectKind::Blob,
                        size: file_size(&path)?,
                        source: Source::File(path),
                    }
                }
                None => {
                    let size = self.waiter.wait(self.store.blob_size(&digest));
                    let Some(size) = size.map_err(store_error)? else {
                        return Err(self.missing(digest, at, what, "went missing".into()));
                    };
                    Packed {
                        kind: ObjectKind::Blob,
                        size,
                        source: Source::Store,
                    }
                }
            },
            Some(ObjectKind::Tree) => {
                let tree = self.waiter.wait(self.store.get_tree(&digest));
                let tree = tree.map_err(store_error)?;
                let bytes = tree.encode();
                self.objects.insert(
                    digest,
                    Packed {
                        kind: ObjectKind::Tree,
                        size: bytes.len() as u64,
                        source: Source::Tree(bytes),
                    },
                );
                for entry in tree.entries() {
                    let inner = format!("{what}, entry `{}`", entry.name);
                    self.add(entry.digest, at, &inner, false)?;
                }
                return Ok(());
            }
            None if component => self.component_file(digest, at)?,
            None => return Err(self.missing(digest, at, what, "is not in the store".into())),
        };
        self.objects.insert(digest, packed);
        Ok(())
    }

    /// A component that is not in the store: runs of a `.wasm` path or a build recipe keep
    /// it in the components folder only.
    fn component_file(&self, digest: Digest, at: &StepAt<'_>) -> Result<Packed, BundleError> {
        let path = self.components.join(format!("{}.wasm", digest.to_hex()));
        let reason = match Digest::of_file(&path) {
            Ok(actual) if actual == digest => {
                return Ok(Packed {
                    kind: ObjectKind::Blob,
                    size: file_size(&path)?,
                    source: Source::File(path),
                });
            }
            Ok(actual) => format!(
                "is not in the store, and `{}` hashes to {actual}",
                path.display()
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => format!(
                "is neither in the store nor in `{}`",
                self.components.display()
            ),
            Err(e) => return Err(BundleError::io("read", &path)(e)),
        };
        Err(self.missing(digest, at, "component", reason))
    }

    fn missing(&self, digest: Digest, at: &StepAt<'_>, what: &str, reason: String) -> BundleError {
        BundleError::MissingObject {
            run: self.run.to_owned(),
            step: at.step.to_owned(),
            attempt: at.attempt,
            what: what.to_owned(),
            digest: digest.to_string(),
            reason,
        }
    }
}

fn file_size(path: &Path) -> Result<u64, BundleError> {
    Ok(fs::metadata(path)
        .map_err(BundleError::io("inspect", path))?
        .len())
}

/// The events of a record's bytes, read as [`crate::read_record`] reads a file: a torn last
/// line (the run was writing it) is left out.
fn record_events(bytes: &[u8]) -> Result<Vec<RecordEvent>, String> {
    let lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
    let mut events = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        if line.trim_ascii().is_empty() {
            continue;
        }
        match serde_json::from_slice(line) {
            Ok(event) => events.push(event),
            Err(_) if i + 1 == lines.len() => break,
            Err(e) => {
                return Err(format!(
                    "has line {} that is not a record event: {e}",
                    i + 1
                ));
            }
        }
    }
    Ok(events)
}

/// A read error of a file being packed: a store object that does not match its digest is
/// a damaged store, anything else an I/O error.
fn read_error(e: io::Error, path: &Path) -> BundleError {
    if e.get_ref().is_some_and(|inner| inner.is::<CasError>()) {
        let inner = e.into_inner().expect("checked above");
        return BundleError::Store(*inner.downcast::<CasError>().expect("checked above"));
    }
    BundleError::io("read", path)(e)
}

/// The decompressed stream of a bundle, after checking that it is zstd at all.
fn open_stream(bundle: &Path) -> Result<zstd::Decoder<'static, io::BufReader<File>>, BundleError> {
    let mut file = File::open(bundle).map_err(BundleError::io("open", bundle))?;
    let mut magic = [0; 4];
    match file.read_exact(&mut magic) {
        Ok(()) if magic == ZSTD_MAGIC => {}
        Ok(()) => {
            return Err(BundleError::not_a_bundle(
                bundle,
                "it is not zstd-compressed",
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            return Err(BundleError::not_a_bundle(
                bundle,
                "it is shorter than a zstd header",
            ));
        }
        Err(e) => return Err(BundleError::io("read", bundle)(e)),
    }
    file.rewind().map_err(BundleError::io("read", bundle))?;
    zstd::Decoder::new(file).map_err(BundleError::io("read", bundle))
}

/// Where in a bundle a read failed, to say so.
#[derive(Clone, Copy)]
enum Stage<'a> {
    /// The first entry: a failure here means the file is no bundle at all.
    Manifest,
    /// The header of an entry after the manifest.
    Header,
    /// The content of a named entry.
    Entry(&'a str),
    /// What follows the last entry (the end of the tar archive and of the zstd frame).
    End,
}

impl std::fmt::Display for Stage<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stage::Manifest => f.write_str("manifest.json"),
            Stage::Header => f.write_str("an entry header"),
            Stage::Entry(name) => write!(f, "`{name}`"),
            Stage::End => f.write_str("the end of the archive"),
        }
    }
}

/// Explains a failure to read the decompressed stream.
fn stream_error(bundle: &Path, e: io::Error, stage: Stage<'_>) -> BundleError {
    let message = e.to_string();
    // zstd reports a frame cut short as an unexpected end; tar reports a complete frame
    // that ends inside a 512-byte block as a short block.
    let short_block = message.contains("failed to read entire block");
    if e.kind() == io::ErrorKind::UnexpectedEof {
        ended_early(bundle, stage)
    } else if message.contains("checksum") && !message.contains("header checksum") {
        BundleError::corrupt(
            bundle,
            format!("its content does not match its zstd checksum (while reading {stage})"),
        )
    } else if let Stage::Manifest = stage {
        BundleError::not_a_bundle(
            bundle,
            format!("its content is not a tar archive in a zstd frame ({message})"),
        )
    } else if short_block {
        ended_early(bundle, stage)
    } else if matches!(e.kind(), io::ErrorKind::Other | io::ErrorKind::InvalidData) {
        BundleError::corrupt(bundle, format!("cannot read {stage}: {message}"))
    } else {
        BundleError::io("read", bundle)(e)
    }
}

fn ended_early(bundle: &Path, stage: Stage<'_>) -> BundleError {
    let reason = match stage {
        Stage::End => "its last bytes are missing".to_owned(),
        stage => format!("it ends inside {stage}"),
    };
    BundleError::truncated(bundle, reason)
}

/// Reads a whole entry of a known size.
fn read_entry(
    bundle: &Path,
    entry: &mut impl Read,
    size: u64,
    stage: Stage<'_>,
) -> Result<Vec<u8>, BundleError> {
    let mut bytes = Vec::with_capacity(size.min(1 << 26) as usize);
    entry
        .read_to_end(&mut bytes)
        .map_err(|e| stream_error(bundle, e, stage))?;
    if bytes.len() as u64 != size {
        return Err(ended_early(bundle, stage));
    }
    Ok(bytes)
}

/// Reads and checks the first entry, which must be the manifest.
fn first_entry<R: Read>(
    bundle: &Path,
    entries: &mut tar::Entries<'_, R>,
) -> Result<BundleManifest, BundleError> {
    let mut entry = match entries.next() {
        Some(entry) => entry.map_err(|e| stream_error(bundle, e, Stage::Manifest))?,
        None => return Err(BundleError::not_a_bundle(bundle, "it holds no entries")),
    };
    let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
    if name != MANIFEST {
        return Err(BundleError::not_a_bundle(
            bundle,
            format!("its first entry is `{name}`, not `{MANIFEST}`"),
        ));
    }
    let size = entry.size();
    let bytes = read_entry(bundle, &mut entry, size, Stage::Manifest)?;
    parse_manifest(bundle, &bytes)
}

/// Parses a manifest, checking the format and its version before anything else, since a
/// newer version may have other fields.
fn parse_manifest(bundle: &Path, bytes: &[u8]) -> Result<BundleManifest, BundleError> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
        BundleError::not_a_bundle(bundle, format!("its manifest.json is not JSON: {e}"))
    })?;
    if value.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
        return Err(BundleError::not_a_bundle(
            bundle,
            format!("its manifest.json does not say `\"format\": \"{FORMAT}\"`"),
        ));
    }
    let Some(version) = value.get("format_version").and_then(|v| v.as_u64()) else {
        return Err(BundleError::corrupt(
            bundle,
            "manifest.json has no `format_version`",
        ));
    };
    if version > u64::from(BUNDLE_FORMAT_VERSION) {
        let written_by = value.get("kiln_version").and_then(|v| v.as_str());
        return Err(BundleError::FormatVersion {
            path: bundle.to_owned(),
            found: version,
            written_by: written_by.unwrap_or("(unknown version)").to_owned(),
        });
    }
    if version != u64::from(BUNDLE_FORMAT_VERSION) {
        return Err(BundleError::corrupt(
            bundle,
            format!("manifest.json names format version {version}, which no kiln wrote"),
        ));
    }
    let manifest: BundleManifest = serde_json::from_value(value)
        .map_err(|e| BundleError::corrupt(bundle, format!("manifest.json: {e}")))?;
    // The run id becomes a folder name in the importing state folder.
    let id = &manifest.run_id;
    let safe = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if id.is_empty() || id == "." || id == ".." || !id.chars().all(safe) {
        return Err(BundleError::corrupt(
            bundle,
            format!("manifest.json names the run `{id}`, which is not a run id"),
        ));
    }
    let names: Vec<&str> = manifest.files.keys().map(String::as_str).collect();
    if names != [PLAN, RECORD] {
        return Err(BundleError::corrupt(
            bundle,
            format!("manifest.json lists the files {names:?}, not `{RECORD}` and `{PLAN}`"),
        ));
    }
    Ok(manifest)
}

/// Reads the stream to its end, so that zstd checks its checksum and sees the frame whole;
/// only the zero padding of the tar archive may follow the last entry.
fn finish_stream(bundle: &Path, mut stream: impl Read) -> Result<(), BundleError> {
    let mut buf = vec![0; 64 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) if buf[..n].iter().all(|b| *b == 0) => {}
            Ok(_) => {
                return Err(BundleError::corrupt(
                    bundle,
                    "data follows the end of the archive",
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(stream_error(bundle, e, Stage::End)),
        }
    }
}

/// Passes reads through, counting bytes and keeping the first error, so that a failure
/// reported by a consumer (tar, the store) can be traced to this side or the other.
struct Tap<R> {
    inner: R,
    count: u64,
    error: Option<io::Error>,
}

impl<R> Tap<R> {
    fn new(inner: R) -> Self {
        Tap {
            inner,
            count: 0,
            error: None,
        }
    }
}

impl<R: Read> Read for Tap<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.count += n as u64;
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => {
                let copy = io::Error::new(e.kind(), e.to_string());
                self.error.get_or_insert(e);
                Err(copy)
            }
        }
    }
}

/// `ObjectKind` as `blob` or `tree`: the store crate gives it no serde form of its own.
mod object_kind {
    use kiln_cas::ObjectKind;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(kind: &ObjectKind, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match kind {
            ObjectKind::Blob => "blob",
            ObjectKind::Tree => "tree",
        })
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectKind, D::Error> {
        match <std::borrow::Cow<'de, str>>::deserialize(d)?.as_ref() {
            "blob" => Ok(ObjectKind::Blob),
            "tree" => Ok(ObjectKind::Tree),
            other => Err(serde::de::Error::unknown_variant(other, &["blob", "tree"])),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use serde_json::json;

    use super::*;
    use crate::record::{AttemptStatus, RecordWriter, RunStatus, StepRecord};

    const RUN: &str = "20261123-120000-000-abcd";

    /// A state folder with one recorded run, built by hand, and what its bundle must hold.
    struct Fixture {
        _dir: tempfile::TempDir,
        state: StateDir,
        /// Every object the run needs, as the bundle must list it.
        objects: BTreeSet<Digest>,
        /// The blob used by two steps.
        shared: Digest,
        /// The component only in the components folder.
        loose_component: Digest,
    }

    fn step(
        name: &str,
        status: AttemptStatus,
        inputs: &[(&str, Digest)],
        outputs: &[(&str, Digest)],
        component: Option<Digest>,
    ) -> RecordEvent {
        let map = |pairs: &[(&str, Digest)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect::<BTreeMap<_, _>>()
        };
        let mut details = BTreeMap::new();
        if let Some(c) = component {
            details.insert("component".to_owned(), json!(c.to_string()));
        }
        RecordEvent::StepFinished(Box::new(StepRecord {
            step: name.into(),
            attempt: 1,
            status,
            cache_key: Digest::of_bytes(name.as_bytes()),
            key: json!({
                "key_version": 1,
                "determinism_version": 1,
                "material": {},
                "component": component.map(|c| c.to_string()),
                "inputs": map(inputs),
            }),
            executor: if component.is_some() {
                "wasm"
            } else {
                "process"
            }
            .into(),
            inputs: map(inputs),
            outputs: map(outputs),
            duration_ms: 5,
            message: (status == AttemptStatus::Failed).then(|| "exit 1".into()),
            failure_kind: (status == AttemptStatus::Failed).then_some(crate::FailureKind::Exit),
            exit_code: (status == AttemptStatus::Failed).then_some(1),
            metrics: BTreeMap::new(),
            details,
            reused_from: None,
            cache_miss: None,
        }))
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path().join("state"));
        let store = state.store();
        let data = store.put_bytes(b"x,y\n1,2\n3,4\n").unwrap();
        let params = store.put_bytes(b"{\"lr\": 0.1}").unwrap();
        let clean = store.put_bytes(b"x,y\n1,2\n").unwrap();
        let component = store.put_bytes(b"\0asm\x01\0\0\0 prep").unwrap();

        // A component of a `.wasm` path: in the components folder, not in the store.
        let loose = b"\0asm\x01\0\0\0 train";
        let loose_component = Digest::of_bytes(loose);
        fs::create_dir_all(state.components_dir()).unwrap();
        fs::write(
            state
                .components_dir()
                .join(format!("{}.wasm", loose_component.to_hex())),
            loose,
        )
        .unwrap();

        // The model folder holds a copy of `data`: stored once, like everything else.
        let model = dir.path().join("model");
        fs::create_dir_all(model.join("weights")).unwrap();
        fs::write(model.join("weights/w.bin"), [7u8; 3000]).unwrap();
        fs::write(model.join("data.csv"), b"x,y\n1,2\n3,4\n").unwrap();
        fs::write(model.join("run.sh"), b"#!/bin/sh\n").unwrap();
        fs::set_permissions(model.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        let tree = store.put_tree(&model).unwrap();
        let weights = store
            .get_tree(&tree)
            .unwrap()
            .get("weights")
            .unwrap()
            .digest;
        let w = Digest::of_bytes(&[7u8; 3000]);
        let script = Digest::of_bytes(b"#!/bin/sh\n");

        fs::create_dir_all(state.run_dir(RUN)).unwrap();
        let mut writer = RecordWriter::create(&state.record_path(RUN)).unwrap();
        for event in [
            RecordEvent::RunStarted {
                run_id: RUN.into(),
                pipeline: "demo".into(),
                pipeline_digest: Digest::of_bytes(b"pipeline").to_string(),
                params_digest: Digest::of_bytes(b"{}").to_string(),
                params: BTreeMap::new(),
                labels: BTreeMap::new(),
                pipeline_file: "kiln.yaml".into(),
                kiln_version: "0.1.0".into(),
                determinism_version: 1,
                at_ms: 1_790_000_000_000,
            },
            step(
                "prep",
                AttemptStatus::Succeeded,
                &[("data", data)],
                &[("clean", clean)],
                Some(component),
            ),
            step(
                "train",
                AttemptStatus::Succeeded,
                &[("clean", clean), ("params", params)],
                &[("model", tree)],
                Some(loose_component),
            ),
            step(
                "eval",
                AttemptStatus::Failed,
                &[("model", tree), ("data", data)],
                &[],
                None,
            ),
            RecordEvent::RunFinished {
                status: RunStatus::Failed,
                at_ms: 1_790_000_001_000,
                duration_ms: 1000,
            },
        ] {
            writer.append(&event).unwrap();
        }
        fs::write(
            state.run_dir(RUN).join(PLAN),
            br#"{"pipeline": "demo", "steps": []}"#,
        )
        .unwrap();

        let objects = [
            data,
            params,
            clean,
            component,
            loose_component,
            tree,
            weights,
            w,
            script,
        ]
        .into();
        Fixture {
            _dir: dir,
            state,
            objects,
            shared: data,
            loose_component,
        }
    }

    fn export(f: &Fixture, dest: &Path) -> Result<ExportSummary, BundleError> {
        export_run(&f.state, &f.state.store(), RUN, dest, 3, &mut |_| {})
    }

    /// An entry of a bundle written by hand: its name and bytes.
    type Entry<'a> = (&'a str, &'a [u8]);

    /// Writes a bundle by hand: `entries` in order, as a tar in a checksummed zstd frame.
    fn write_bundle(path: &Path, entries: &[Entry]) {
        let mut encoder = zstd::Encoder::new(File::create(path).unwrap(), 3).unwrap();
        encoder.include_checksum(true).unwrap();
        let mut tar = tar::Builder::new(encoder);
        for (name, bytes) in entries {
            tar.append_data(&mut header(bytes.len() as u64), name, *bytes)
                .unwrap();
        }
        tar.into_inner().unwrap().finish().unwrap();
    }

    /// A valid manifest for a bundle of `record`, `plan` and `objects` (blobs).
    fn manifest_for(record: &[u8], plan: &[u8], objects: &[&[u8]]) -> serde_json::Value {
        let mut objects: Vec<_> = objects
            .iter()
            .map(|bytes| {
                json!({"digest": Digest::of_bytes(bytes).to_string(), "kind": "blob", "size": bytes.len()})
            })
            .collect();
        objects.sort_by_key(|o| o["digest"].as_str().unwrap().to_owned());
        json!({
            "format": "kiln-bundle",
            "format_version": 1,
            "kiln_version": "0.1.0",
            "determinism_version": 1,
            "run_id": RUN,
            "pipeline": "demo",
            "created_at_ms": 0,
            "files": {
                "record.jsonl": Digest::of_bytes(record).to_string(),
                "plan.json": Digest::of_bytes(plan).to_string(),
            },
            "objects": objects,
        })
    }

    fn import_err(bundle: &Path) -> BundleError {
        let dir = tempfile::tempdir().unwrap();
        let into = StateDir::new(dir.path());
        let err = import_bundle(bundle, &into, &into.store()).unwrap_err();
        assert!(
            !into.record_path(RUN).exists(),
            "a failed import wrote the run"
        );
        err
    }

    #[test]
    fn round_trip_keeps_every_byte() {
        let f = fixture();
        let out = tempfile::tempdir().unwrap();
        let dest = out.path().join("run.kiln");
        let mut seen = Vec::new();
        let summary = export_run(&f.state, &f.state.store(), RUN, &dest, 3, &mut |p| {
            seen.push(p)
        })
        .unwrap();
        assert_eq!(summary.objects, f.objects.len());
        assert_eq!(summary.bundle_bytes, fs::metadata(&dest).unwrap().len());
        assert_eq!(seen.len(), f.objects.len());
        assert!(matches!(
            seen.last(),
            Some(ExportProgress::Object { done, total, .. }) if done == total
        ));

        let manifest = read_manifest(&dest).unwrap();
        assert_eq!(manifest.format, "kiln-bundle");
        assert_eq!(manifest.format_version, BUNDLE_FORMAT_VERSION);
        assert_eq!(manifest.run_id, RUN);
        assert_eq!(manifest.pipeline, "demo");
        assert_eq!(manifest.determinism_version, 1);
        assert_eq!(manifest.created_at_ms, 1_790_000_000_000);

        let target = tempfile::tempdir().unwrap();
        let into = StateDir::new(target.path().join("state"));
        assert_eq!(
            import_bundle(&dest, &into, &into.store()).unwrap(),
            manifest
        );
        let (from, to) = (f.state.store(), into.store());
        for digest in &f.objects {
            match to.kind(digest).unwrap() {
                Some(ObjectKind::Blob) => {
                    let expected = match from.kind(digest).unwrap() {
                        Some(_) => from.read_verified(digest).unwrap(),
                        None => fs::read(
                            f.state
                                .components_dir()
                                .join(format!("{}.wasm", digest.to_hex())),
                        )
                        .unwrap(),
                    };
                    assert_eq!(to.read_verified(digest).unwrap(), expected);
                }
                Some(ObjectKind::Tree) => {
                    assert_eq!(to.get_tree(digest).unwrap(), from.get_tree(digest).unwrap());
                }
                None => panic!("{digest} was not imported"),
            }
        }
        assert_eq!(to.kind(&f.loose_component).unwrap(), Some(ObjectKind::Blob));
        for file in [RECORD, PLAN] {
            assert_eq!(
                fs::read(into.run_dir(RUN).join(file)).unwrap(),
                fs::read(f.state.run_dir(RUN).join(file)).unwrap(),
                "{file}"
            );
        }
        // The caller decides where components go; the import does not.
        assert!(!into.components_dir().exists());
    }

    /// Copies `digest` (a tree with everything in it) from a local store to any store.
    async fn copy_object(from: &kiln_cas::LocalStore, to: &dyn BlobStore, digest: Digest) {
        match from.kind(&digest).unwrap() {
            Some(ObjectKind::Blob) => {
                let bytes = from.read_verified(&digest).unwrap();
                assert_eq!(to.put_bytes(bytes.into()).await.unwrap(), digest);
            }
            Some(ObjectKind::Tree) => {
                let tree = from.get_tree(&digest).unwrap();
                for entry in tree.entries() {
                    Box::pin(copy_object(from, to, entry.digest)).await;
                }
                assert_eq!(to.put_manifest(&tree).await.unwrap(), digest);
            }
            None => {} // the loose component, in the components folder only
        }
    }

    /// Gives the owner write permission on `dir` and every folder in it, so it can be removed.
    fn make_writable(dir: &Path) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                make_writable(&path);
            }
        }
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn a_run_in_an_object_store_exports_and_imports_like_a_local_one() {
        let f = fixture();
        let bucket =
            kiln_cas::BucketStore::new(std::sync::Arc::new(object_store::memory::InMemory::new()));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let local = f.state.store();
        runtime.block_on(async {
            for digest in &f.objects {
                copy_object(&local, &bucket, *digest).await;
            }
        });
        // What every object holds, read before the local store goes away.
        enum Held {
            Blob(Vec<u8>),
            Tree(Tree),
        }
        let held: BTreeMap<Digest, Held> = f
            .objects
            .iter()
            .map(|digest| {
                let held = match local.kind(digest).unwrap() {
                    Some(ObjectKind::Tree) => Held::Tree(local.get_tree(digest).unwrap()),
                    Some(ObjectKind::Blob) => Held::Blob(local.read_verified(digest).unwrap()),
                    None => Held::Blob(
                        fs::read(
                            f.state
                                .components_dir()
                                .join(format!("{}.wasm", digest.to_hex())),
                        )
                        .unwrap(),
                    ),
                };
                (*digest, held)
            })
            .collect();
        let out = tempfile::tempdir().unwrap();
        let (from_local, from_bucket) = (out.path().join("a.kiln"), out.path().join("b.kiln"));
        export(&f, &from_local).unwrap();
        // The bucket export cannot fall back on the local store: it is gone.
        make_writable(local.root());
        fs::remove_dir_all(local.root()).unwrap();
        // Called from the blocking pool of a runtime, as a server would.
        let summary = runtime
            .block_on(async {
                let (state, bucket, dest) = (f.state.clone(), bucket.clone(), from_bucket.clone());
                tokio::task::spawn_blocking(move || {
                    export_run(&state, &bucket, RUN, &dest, 3, &mut |_| {})
                })
                .await
            })
            .unwrap()
            .unwrap();
        assert_eq!(summary.objects, f.objects.len());
        assert_eq!(
            fs::read(&from_bucket).unwrap(),
            fs::read(&from_local).unwrap()
        );

        // And back into another object store, from a plain thread.
        let target = tempfile::tempdir().unwrap();
        let into = StateDir::new(target.path().join("state"));
        let other =
            kiln_cas::BucketStore::new(std::sync::Arc::new(object_store::memory::InMemory::new()));
        import_bundle(&from_bucket, &into, &other).unwrap();
        runtime.block_on(async {
            for (digest, held) in &held {
                match held {
                    Held::Tree(tree) => assert_eq!(&other.get_tree(digest).await.unwrap(), tree),
                    Held::Blob(bytes) => {
                        assert_eq!(&other.read_verified(digest).await.unwrap()[..], &bytes[..])
                    }
                }
            }
        });
        // The local store of the state folder got nothing: the objects went where asked.
        assert_eq!(into.store().kind(&f.shared).unwrap(), None);
    }

    #[test]
    fn the_same_run_gives_the_same_bytes() {
        let f = fixture();
        let out = tempfile::tempdir().unwrap();
        let (a, b) = (out.path().join("a.kiln"), out.path().join("b.kiln"));
        export(&f, &a).unwrap();
        export(&f, &b).unwrap();
        assert_eq!(fs::read(&a).unwrap(), fs::read(&b).unwrap());
        // Over an existing bundle, too.
        export(&f, &a).unwrap();
        assert_eq!(fs::read(&a).unwrap(), fs::read(&b).unwrap());
    }

    #[test]
    fn objects_are_stored_once_in_digest_order() {
        let f = fixture();
        let out = tempfile::tempdir().unwrap();
        let dest = out.path().join("run.kiln");
        export(&f, &dest).unwrap();
        let manifest = read_manifest(&dest).unwrap();
        let listed: Vec<Digest> = manifest.objects.iter().map(|o| o.digest).collect();
        // `data` is read by two steps and sits in the model folder: still one object.
        assert_eq!(listed.iter().filter(|d| **d == f.shared).count(), 1);
        assert_eq!(listed, f.objects.iter().copied().collect::<Vec<_>>());
        let trees = manifest
            .objects
            .iter()
            .filter(|o| o.kind == ObjectKind::Tree)
            .count();
        assert_eq!(trees, 2);

        let mut archive = tar::Archive::new(open_stream(&dest).unwrap());
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| String::from_utf8(e.unwrap().path_bytes().into_owned()).unwrap())
            .collect();
        let mut expected = vec![MANIFEST.to_owned(), RECORD.to_owned(), PLAN.to_owned()];
        expected.extend(f.objects.iter().map(|d| format!("objects/{}", d.to_hex())));
        assert_eq!(names, expected);
    }

    #[test]
    fn a_truncated_bundle_is_refused() {
        let f = fixture();
        let out = tempfile::tempdir().unwrap();
        let dest = out.path().join("run.kiln");
        export(&f, &dest).unwrap();
        let bytes = fs::read(&dest).unwrap();
        let cut = out.path().join("cut.kiln");
        for len in [10, bytes.len() / 2, bytes.len() - 1] {
            fs::write(&cut, &bytes[..len]).unwrap();
            let err = import_err(&cut);
            let allowed: &[&str] = if len == 10 {
                &["kiln::bundle::truncated", "kiln::bundle::not-a-bundle"]
            } else {
                &["kiln::bundle::truncated"]
            };
            assert!(allowed.contains(&err.code()), "cut at {len}: {err}");
            if err.code() == "kiln::bundle::truncated" {
                assert!(err.to_string().contains("export it again"), "{err}");
            }
        }
    }

    #[test]
    fn a_flipped_byte_is_refused() {
        let f = fixture();
        let out = tempfile::tempdir().unwrap();
        let dest = out.path().join("run.kiln");
        export(&f, &dest).unwrap();
        let bytes = fs::read(&dest).unwrap();
        for at in [bytes.len() / 3, bytes.len() / 2, bytes.len() - 2] {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x10;
            fs::write(&dest, &damaged).unwrap();
            let err = import_err(&dest);
            assert!(
                ["kiln::bundle::corrupt", "kiln::bundle::truncated"].contains(&err.code()),
                "flipped at {at}: {} {err}",
                err.code()
            );
            assert!(err.to_string().contains("again"), "{err}");
        }
    }

    #[test]
    fn a_newer_format_asks_for_an_upgrade() {
        let out = tempfile::tempdir().unwrap();
        let path = out.path().join("new.kiln");
        let mut manifest = manifest_for(b"", b"", &[]);
        manifest["format_version"] = json!(99);
        manifest["kiln_version"] = json!("9.9.9");
        manifest["something_new"] = json!(true);
        write_bundle(
            &path,
            &[(MANIFEST, &serde_json::to_vec(&manifest).unwrap())],
        );
        for err in [read_manifest(&path).unwrap_err(), import_err(&path)] {
            assert_eq!(err.code(), "kiln::bundle::format-version", "{err}");
            let text = err.to_string();
            assert!(text.contains("kiln 9.9.9"), "{text}");
            assert!(text.contains("version 99"), "{text}");
            assert!(text.contains("upgrade kiln"), "{text}");
        }
    }

    #[test]
    fn a_missing_object_fails_the_export_and_writes_nothing() {
        let f = fixture();
        let store = f.state.store();
        fs::remove_file(store.blob_path(&f.shared)).unwrap();
        let out = tempfile::tempdir().unwrap();
        let dest = out.path().join("run.kiln");
        let err = export(&f, &dest).unwrap_err();
        assert_eq!(err.code(), "kiln::bundle::missing-object", "{err}");
        let text = err.to_string();
        assert!(text.contains("step `prep`"), "{text}");
        assert!(text.contains("input `data`"), "{text}");
        assert!(text.contains(&f.shared.to_string()), "{text}");
        assert!(!dest.exists());

        // An older bundle at `dest` stays as it was.
        fs::write(&dest, b"older bundle").unwrap();
        export(&f, &dest).unwrap_err();
        assert_eq!(fs::read(&dest).unwrap(), b"older bundle");
        assert_eq!(
            fs::read_dir(out.path()).unwrap().count(),
            1,
            "a temporary file is left"
        );
    }

    #[test]
    fn a_missing_component_is_named() {
        let f = fixture();
        let path = f
            .state
            .components_dir()
            .join(format!("{}.wasm", f.loose_component.to_hex()));
        fs::write(&path, b"another component").unwrap();
        let out = tempfile::tempdir().unwrap();
        let err = export(&f, &out.path().join("run.kiln")).unwrap_err();
        assert_eq!(err.code(), "kiln::bundle::missing-object", "{err}");
        let text = err.to_string();
        assert!(text.contains("step `train`"), "{text}");
        assert!(text.contains("component"), "{text}");
        assert!(text.contains("hashes to"), "{text}");
    }

    #[test]
    fn other_files_are_not_bundles() {
        let out = tempfile::tempdir().unwrap();
        let text = out.path().join("notes.txt");
        fs::write(&text, "these are not the bytes you are looking for\n").unwrap();
        let empty = out.path().join("empty.kiln");
        fs::write(&empty, b"").unwrap();
        // zstd, but not a tar; a tar, but not starting with a manifest.
        let plain = out.path().join("plain.zst");
        fs::write(&plain, zstd::encode_all(&b"hello world"[..], 3).unwrap()).unwrap();
        let no_manifest = out.path().join("no-manifest.kiln");
        write_bundle(&no_manifest, &[(RECORD, b"{}")]);
        let not_json = out.path().join("not-json.kiln");
        write_bundle(&not_json, &[(MANIFEST, b"not json")]);
        for path in [&text, &empty, &plain, &no_manifest, &not_json] {
            for err in [read_manifest(path).unwrap_err(), import_err(path)] {
                assert_eq!(err.code(), "kiln::bundle::not-a-bundle", "{err}");
                assert!(err.to_string().contains("is not a kiln bundle"), "{err}");
            }
        }
    }

    #[test]
    fn bytes_that_do_not_match_the_manifest_are_corrupt() {
        let out = tempfile::tempdir().unwrap();
        let (record, plan, blob) = (&b"{}\n"[..], &b"{}"[..], &b"blob"[..]);
        let manifest = manifest_for(record, plan, &[blob]);
        let manifest = serde_json::to_vec(&manifest).unwrap();
        let object = format!("objects/{}", Digest::of_bytes(blob).to_hex());
        let good: Vec<Entry> = vec![
            (MANIFEST, &manifest),
            (RECORD, record),
            (PLAN, plan),
            (&object, blob),
        ];
        let path = out.path().join("good.kiln");
        write_bundle(&path, &good);
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        import_bundle(&path, &state, &state.store()).unwrap();

        let mut traversal = manifest_for(record, plan, &[blob]);
        traversal["run_id"] = json!("../escape");
        let traversal = serde_json::to_vec(&traversal).unwrap();
        let other = format!("objects/{}", Digest::of_bytes(b"bolb").to_hex());
        let cases: Vec<(&str, Vec<Entry>)> = vec![
            ("hashes to", {
                let mut c = good.clone();
                c[3].1 = b"bolb";
                c
            }),
            ("does not list", {
                let mut c = good.clone();
                c.push((&other, b"bolb"));
                c
            }),
            ("unexpected entry", {
                let mut c = good.clone();
                c.push(("logs/prep.log", b"hi"));
                c
            }),
            ("`record.jsonl` hashes to", {
                let mut c = good.clone();
                c[1].1 = b"{ }\n";
                c
            }),
            ("not a run id", {
                let mut c = good.clone();
                c[0].1 = &traversal;
                c
            }),
        ];
        for (reason, entries) in cases {
            write_bundle(&path, &entries);
            let err = import_err(&path);
            assert_eq!(err.code(), "kiln::bundle::corrupt", "{err}");
            assert!(err.to_string().contains(reason), "{reason}: {err}");
        }
        assert!(!out.path().join("escape").exists());

        // An object that never comes: the bundle was cut at an entry boundary.
        write_bundle(&path, &good[..3]);
        let err = import_err(&path);
        assert_eq!(err.code(), "kiln::bundle::truncated", "{err}");
        assert!(err.to_string().contains("never came"), "{err}");
    }
}
