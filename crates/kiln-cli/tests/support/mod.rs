//! What several test files share: the `kiln` binary with the environment the tests run it
//! in, and building the guests of `crates/kiln-wasm/tests/guests`.

// Each test file uses what it needs of this module.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The `kiln` binary as every test runs it: compiled components kept in the tests' own cache
/// folder (under cargo's target folder, so kept between test runs), never the user's; no
/// colour; no state folder, server or log filter from the environment of whoever runs the
/// tests.
pub fn kiln() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kiln"));
    command
        .env("KILN_CACHE_DIR", compiled_cache())
        .env("NO_COLOR", "1")
        .env_remove("KILN_HOME")
        .env_remove("KILN_SERVER")
        .env_remove("KILN_REGISTRY")
        .env_remove("KILN_TOKEN")
        .env_remove("KILN_SERVER_TOKENS")
        .env_remove("RUST_LOG");
    command
}

/// The repository's root, as an absolute path.
pub fn repo() -> PathBuf {
    std::fs::canonicalize(Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")).unwrap()
}

/// [`kiln`] with `args`, run in `dir`, to its end.
pub fn run_in(dir: &Path, args: &[&str]) -> std::process::Output {
    kiln()
        .args(args)
        .current_dir(dir)
        .output()
        .expect("kiln runs")
}

/// What a process printed, as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
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

/// Whether golden files are being rewritten (`KILN_BLESS=1`).
pub fn blessing() -> bool {
    std::env::var_os("KILN_BLESS").is_some_and(|v| !v.is_empty() && v != "0")
}

/// Compares golden file `dir/name` with the actual text, and says how they differ; with
/// `bless`, rewrites the file instead.
pub fn compare_golden(dir: &Path, name: &str, actual: &str, bless: bool) -> Option<String> {
    let golden = dir.join(name);
    let expected = std::fs::read_to_string(&golden).ok();
    match expected.as_deref() {
        Some(e) if e == actual => None,
        _ if bless => {
            std::fs::write(&golden, actual).expect("write a golden file");
            None
        }
        None => Some(format!("`{name}` is missing; the output is:\n{actual}")),
        Some(e) => Some(format!(
            "output differs from `{name}`:\n{}",
            similar::TextDiff::from_lines(e, actual)
                .unified_diff()
                .context_radius(3)
                .header(&format!("expected {name}"), "actual")
        )),
    }
}
