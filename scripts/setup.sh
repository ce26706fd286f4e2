#!/usr/bin/env bash
# Installs what kiln's build, example and tests need on a fresh Debian machine with rustup:
# the wasm32-wasip2 target (the example's wasm steps) and the Python packages of the example's
# training step and of the tests. Safe to run again: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'setup: %s\n' "$*" >&2; }

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  log "adding the wasm32-wasip2 target"
  rustup target add wasm32-wasip2
fi
for component in rustfmt clippy; do
  if ! rustup component list --installed | grep -q "^$component"; then
    log "adding the $component component"
    rustup component add "$component"
  fi
done

if ! python3 -c 'import numpy, jsonschema, yaml' 2>/dev/null; then
  log "installing Python packages (numpy for the training step, jsonschema and pyyaml for tests)"
  python3 -m pip install --quiet --disable-pip-version-check -r scripts/requirements.txt
fi
# Container steps: podman with runc and a tiny local busybox image for the podman tests.
scripts/setup-containers.sh
log "done"
