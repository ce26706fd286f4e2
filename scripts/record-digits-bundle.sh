#!/usr/bin/env bash
# Records the digits example afresh and exports it to tests/replay/digits.kiln, the bundle
# that `cargo test` replays (crates/kiln-cli/tests/replay.rs). Run it after bumping
# DETERMINISM_VERSION, when kiln's runtime legitimately changes what steps write; see
# docs/replay.md.
set -euo pipefail
cd "$(dirname "$0")/.."

state="$(mktemp -d)"
trap 'rm -rf "$state"' EXIT

kiln() { cargo run --release --locked --quiet -p kiln-cli -- "$@"; }
kiln run examples/digits/pipeline.yaml --state "$state"
kiln export latest --state "$state" --level 19 -o tests/replay/digits.kiln
kiln replay tests/replay/digits.kiln
