#!/usr/bin/env bash
# The test command: kiln's workspace tests, then the tests of the step programs (the digits
# example's, the Rust SDK's and the z-score benchmark's), which are cargo workspaces of their own.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --locked
cargo test --locked --manifest-path examples/digits/steps/Cargo.toml
cargo test --locked --manifest-path sdk/rust/kiln-step/Cargo.toml
cargo test --locked --manifest-path bench/zscore/rust/Cargo.toml
