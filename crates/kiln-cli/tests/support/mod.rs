//! What several test files share: the `kiln` binary with the environment the tests run it
//! in, and building the guests of `crates/kiln-wasm/tests/guests`.

// Each test file uses what it needs of this module.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The `kiln` binary as every test runs it: compiled components kept in the tests' own cache
/// folder (under cargo's target folder, so kept between test runs), never the user's; no
/// colour; no state folder or log filter from the environment of whoever runs the tests.
pub fn kiln() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kiln"));
    command
        .env("KILN_CACHE_DIR", compiled_cache())
        .env("NO_COLOR", "1")
        .env_remove("KILN_HOME")
        .env_remove("RUST_LOG");
    command
}

/// Where the binary run by [`kiln`] keeps compiled components.
pub fn compiled_cache() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("kiln-compiled")
}

/// Builds these guest binaries for `wasm32-wasip2` (cargo keeps the build) and returns the
/// folder their `.wasm` files are in.
pub fn build_guests(bins: &[&str]) -> PathBuf {
    let args: Vec<&str> = bins.iter().flat_map(|b| ["--bin", *b]).collect();
    kiln_test_support::build_wasm(&kiln_test_support::guests_dir(), &args)
}
