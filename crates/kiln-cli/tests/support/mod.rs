//! What several test files share: building the guests of `crates/kiln-wasm/tests/guests`.

use std::path::{Path, PathBuf};
use std::process::Command;

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
