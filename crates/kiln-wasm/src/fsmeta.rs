//! File metadata a guest reads, made the same on every machine.
//!
//! wasmtime-wasi serves `wasi:filesystem` from the host's files as they are: times of the
//! files kiln materialised for this attempt, directory entries in the host file system's
//! order, link counts and folder sizes that depend on the file system, and metadata hashes
//! made of device and inode numbers. A guest that prints any of them would write different
//! bytes on each machine. kiln replaces the functions that return them with its own, which
//! call wasmtime-wasi's and then normalise the answer:
//!
//! * every time (access, modification, status change) reads as the run's virtual wall-clock
//!   start;
//! * link counts read 1, and a folder's size reads 0 (a file's size is its length);
//! * directory entries come in byte order of their names;
//! * metadata hashes are numbers handed out in the order the guest first asks about an
//!   object, so two descriptors of one file still hash the same.

use std::collections::{HashMap, VecDeque};

use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::filesystem::WasiFilesystemView as _;
use wasmtime_wasi::p2::FsResult;
use wasmtime_wasi::p2::bindings::clocks::wall_clock::Datetime;
use wasmtime_wasi::p2::bindings::filesystem::types::{
    Descriptor, DescriptorStat, DescriptorType, DirectoryEntry, DirectoryEntryStream, ErrorCode,
    Host as _, HostDescriptor as _, HostDirectoryEntryStream as _, MetadataHashValue, PathFlags,
};

use crate::runtime::GuestState;

/// The `wasi:filesystem/types` instance wasmtime-wasi links (guests asking for any 0.2.x
/// version are served by it).
const TYPES: &str = "wasi:filesystem/types@0.2.12";

/// What a guest's store keeps to normalise metadata.
#[derive(Debug)]
pub(crate) struct FsMeta {
    time: Datetime,
    /// Sorted entries of the directory streams the guest opened, by resource index.
    listings: HashMap<u32, VecDeque<FsResult<DirectoryEntry>>>,
    /// Metadata hash handed out for each host hash seen.
    hashes: HashMap<(u64, u64), u64>,
}

impl FsMeta {
    /// Every time the guest reads is `wall_ns` (the virtual wall clock's start).
    pub(crate) fn new(wall_ns: u64) -> Self {
        Self {
            time: Datetime {
                seconds: wall_ns / 1_000_000_000,
                nanoseconds: (wall_ns % 1_000_000_000) as u32,
            },
            listings: HashMap::new(),
            hashes: HashMap::new(),
        }
    }

    fn stat(&self, mut stat: DescriptorStat) -> DescriptorStat {
        stat.link_count = 1;
        if stat.type_ == DescriptorType::Directory {
            stat.size = 0;
        }
        stat.data_access_timestamp = Some(self.time);
        stat.data_modification_timestamp = Some(self.time);
        stat.status_change_timestamp = Some(self.time);
        stat
    }

    fn hash(&mut self, host: MetadataHashValue) -> MetadataHashValue {
        let next = self.hashes.len() as u64 + 1;
        let id = *self.hashes.entry((host.lower, host.upper)).or_insert(next);
        MetadataHashValue {
            lower: id,
            upper: 0,
        }
    }
}

/// An error as the guest receives it (or a trap, for errors that are not error codes).
fn code(state: &mut GuestState, e: wasmtime_wasi::p2::FsError) -> wasmtime::Result<ErrorCode> {
    state.filesystem().convert_error_code(e)
}

/// Replaces wasmtime-wasi's metadata functions with normalising ones. Call after
/// `wasmtime_wasi::p2::add_to_linker_async`.
pub(crate) fn add_to_linker(linker: &mut Linker<GuestState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut types = linker.instance(TYPES)?;

    types.func_wrap_async(
        "[method]descriptor.stat",
        |mut store, (fd,): (Resource<Descriptor>,)| {
            Box::new(async move {
                let state = store.data_mut();
                let found = state.filesystem().stat(fd).await;
                Ok((match found {
                    Ok(stat) => Ok(state.fsmeta.stat(stat)),
                    Err(e) => Err(code(state, e)?),
                },))
            })
        },
    )?;

    types.func_wrap_async(
        "[method]descriptor.stat-at",
        |mut store, (fd, flags, path): (Resource<Descriptor>, PathFlags, String)| {
            Box::new(async move {
                let state = store.data_mut();
                let found = state.filesystem().stat_at(fd, flags, path).await;
                Ok((match found {
                    Ok(stat) => Ok(state.fsmeta.stat(stat)),
                    Err(e) => Err(code(state, e)?),
                },))
            })
        },
    )?;

    types.func_wrap_async(
        "[method]descriptor.read-directory",
        |mut store, (fd,): (Resource<Descriptor>,)| {
            Box::new(async move {
                let state = store.data_mut();
                let stream = match state.filesystem().read_directory(fd).await {
                    Ok(stream) => stream,
                    Err(e) => return Ok((Err(code(state, e)?),)),
                };
                // Drain wasmtime-wasi's stream (it read the whole folder already) and keep
                // the entries sorted; the stream resource stays the guest's handle.
                let mut entries = Vec::new();
                let mut error = None;
                loop {
                    let borrowed = Resource::<DirectoryEntryStream>::new_borrow(stream.rep());
                    match state.filesystem().read_directory_entry(borrowed).await {
                        Ok(Some(entry)) => entries.push(entry),
                        Ok(None) => break,
                        Err(e) => {
                            error = Some(e);
                            break;
                        }
                    }
                }
                entries.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
                let mut listing: VecDeque<FsResult<DirectoryEntry>> =
                    entries.into_iter().map(Ok).collect();
                if let Some(e) = error {
                    listing.push_back(Err(e));
                }
                // A resource index is reused after its stream is dropped; a new listing
                // under the same index replaces the old one.
                state.fsmeta.listings.insert(stream.rep(), listing);
                Ok((Ok(stream),))
            })
        },
    )?;

    types.func_wrap_async(
        "[method]directory-entry-stream.read-directory-entry",
        |mut store, (stream,): (Resource<DirectoryEntryStream>,)| {
            Box::new(async move {
                let state = store.data_mut();
                let next = match state.fsmeta.listings.get_mut(&stream.rep()) {
                    Some(listing) => listing.pop_front().transpose(),
                    None => state.filesystem().read_directory_entry(stream).await,
                };
                Ok((match next {
                    Ok(entry) => Ok(entry),
                    Err(e) => Err(code(state, e)?),
                },))
            })
        },
    )?;

    types.func_wrap_async(
        "[method]descriptor.metadata-hash",
        |mut store, (fd,): (Resource<Descriptor>,)| {
            Box::new(async move {
                let state = store.data_mut();
                let found = state.filesystem().metadata_hash(fd).await;
                Ok((match found {
                    Ok(hash) => Ok(state.fsmeta.hash(hash)),
                    Err(e) => Err(code(state, e)?),
                },))
            })
        },
    )?;

    types.func_wrap_async(
        "[method]descriptor.metadata-hash-at",
        |mut store, (fd, flags, path): (Resource<Descriptor>, PathFlags, String)| {
            Box::new(async move {
                let state = store.data_mut();
                let found = state.filesystem().metadata_hash_at(fd, flags, path).await;
                Ok((match found {
                    Ok(hash) => Ok(state.fsmeta.hash(hash)),
                    Err(e) => Err(code(state, e)?),
                },))
            })
        },
    )?;

    linker.allow_shadowing(false);
    Ok(())
}
