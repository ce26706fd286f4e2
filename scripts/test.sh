#!/usr/bin/env bash
# The test command: kiln's workspace tests, then the digits example's step programs.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --locked
cargo test --locked --manifest-path examples/digits/steps/Cargo.toml
