//! Helpers shared by the integration tests.

#![allow(dead_code, missing_docs)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// `len` pseudo-random bytes, the same for the same seed.
pub fn data(seed: &str, len: usize) -> Vec<u8> {
    let mut out = vec![0; len];
    blake3::Hasher::new()
        .update(seed.as_bytes())
        .finalize_xof()
        .fill(&mut out);
    out
}

/// Every regular file under `dir` (none if it does not exist).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// Writes a file, creating its folder, and sets its permission bits.
pub fn write(path: &Path, content: &[u8], mode: u32) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, content).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// The permission bits of a path.
pub fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

/// A small project output: two equal files, an executable, a nested folder, an empty folder.
pub fn sample_folder(root: &Path) {
    write(&root.join("model.bin"), &data("model", 300_000), 0o644);
    write(
        &root.join("copy-of-model.bin"),
        &data("model", 300_000),
        0o600,
    );
    write(&root.join("run.sh"), b"#!/bin/sh\necho hi\n", 0o755);
    write(&root.join("metrics/eval.json"), br#"{"acc":0.9}"#, 0o644);
    write(&root.join("metrics/deep/empty.txt"), b"", 0o644);
    fs::create_dir_all(root.join("empty")).unwrap();
}
