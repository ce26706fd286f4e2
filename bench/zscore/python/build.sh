#!/usr/bin/env bash
# Builds the z-score step as a Python component of the kiln step world:
# bench/zscore/python/target/zscore.wasm, which the zscore bench picks up.
# Needs componentize-py (scripts/setup.sh installs it).
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p target
componentize-py -d ../../../wit -w kiln:step/step componentize app \
  -p . -p .. -p ../../../sdk/python -o target/zscore.wasm
