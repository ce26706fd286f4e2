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
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kiln-wasm/tests/guests");
    let target = dir.join("target");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(&dir)
        .args(["build", "--quiet", "--release", "--target", "wasm32-wasip2"]);
    for bin in bins {
        command.args(["--bin", bin]);
    }
    let status = command
        // The outer cargo's settings are not the guests' business.
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .status()
        .expect("run cargo for the test guests");
    assert!(
        status.success(),
        "building the test guests for wasm32-wasip2 failed (is the target installed? \
         `rustup target add wasm32-wasip2`)"
    );
    target.join("wasm32-wasip2/release")
}
