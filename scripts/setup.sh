#!/usr/bin/env bash
# Installs what kiln's build, example and tests need on a fresh Debian machine with rustup:
# the wasm32-wasip2 target (the example's wasm steps) and the Python packages of the example's
# training step, of its Python wasm step (componentize-py) and of the tests. Safe to run again: each step is skipped when already done.
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

if ! python3 -c 'import numpy, jsonschema, yaml' 2>/dev/null || ! command -v componentize-py >/dev/null \
  || [ "$(componentize-py --version 2>/dev/null)" != "componentize-py 0.25.1" ]; then
  log "installing Python packages (numpy for the training step, componentize-py for the Python" \
    "wasm step, jsonschema and pyyaml for tests)"
  python3 -m pip install --quiet --disable-pip-version-check -r scripts/requirements.txt
fi
# The S3 tests start a real S3-compatible server on 127.0.0.1: moto's, with boto3.
if [ "$(python3 -c 'import boto3, moto.server; print(moto.__version__)' 2>/dev/null)" != "5.2.5" ]; then
  log "installing moto[server] (the S3-compatible server of the S3 tests)"
  python3 -m pip install --quiet --disable-pip-version-check -r scripts/requirements-s3.txt
fi
# The server's tests run a real PostgreSQL (Debian's), started by the tests themselves.
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  log "installing postgresql (the server's tests start their own PostgreSQL on 127.0.0.1)"
  as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    postgresql
fi
# Container steps: podman with runc and a tiny local busybox image for the podman tests.
scripts/setup-containers.sh
# `kiln report`'s test opens the page it writes in a headless browser: Debian's chromium.
if [ ! -x /usr/bin/chromium ]; then
  log "installing chromium (for the test of kiln report)"
  as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    chromium
fi
log "done"
