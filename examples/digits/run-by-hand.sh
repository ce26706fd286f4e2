#!/usr/bin/env bash
# The digits pipeline, run by hand: what `pipeline.yaml` describes, without kiln.
#
#   ingest → validate → preprocess (scale + split) → train × N learning rates
#          → evaluate × N → pick the best
#
# Builds the step programs natively with cargo, runs the chain in a work folder and prints
# the winner. Needs cargo and python3 with numpy (PyTorch + a GPU optional).
#
#   examples/digits/run-by-hand.sh [WORK_DIR]      # default: a fresh temporary folder
#
# Environment (all optional):
#   LRS="0.01 0.1 1.0"   learning rates, one training instance each
#   EPOCHS=50            epochs per training instance
#   SEED=0               seed of the split and of the training
#   TEST_FRACTION=0.2    share of the rows held out for testing
#   DEVICE=auto          train.py --device: auto | cpu | cuda
#   PYTHON=python3       the Python that runs train.py
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LRS="${LRS:-0.01 0.1 1.0}"
EPOCHS="${EPOCHS:-50}"
SEED="${SEED:-0}"
TEST_FRACTION="${TEST_FRACTION:-0.2}"
DEVICE="${DEVICE:-auto}"
PYTHON="${PYTHON:-python3}"
WORK="${1:-$(mktemp -d "${TMPDIR:-/tmp}/digits-run.XXXXXX")}"
mkdir -p "$WORK"

echo "== building the step programs (native, release)"
cargo build --quiet --release --manifest-path "$HERE/steps/Cargo.toml"
BIN="$HERE/steps/target/release"

step() { echo "== $*"; "$@"; }

echo "work folder: $WORK"
step "$BIN/ingest" --in raw="$HERE/data/digits.csv" --out table="$WORK/table.csv"
step "$BIN/validate" --in table="$WORK/table.csv" --out report="$WORK/report.json" \
    --param min_rows=1000
cat "$WORK/report.json"
step "$BIN/preprocess" --in table="$WORK/table.csv" \
    --out train="$WORK/train.csv" --out test="$WORK/test.csv" \
    --param seed="$SEED" --param test_fraction="$TEST_FRACTION"

# Fan-out: one training instance per learning rate. Instance i writes its model to
# models/i and its metrics to candidates/i/metrics.json, the layout `pick` reads.
i=0
for lr in $LRS; do
    step "$PYTHON" "$HERE/train/train.py" --train "$WORK/train.csv" --lr "$lr" \
        --epochs "$EPOCHS" --seed "$SEED" --device "$DEVICE" --out "$WORK/models/$i"
    step "$BIN/evaluate" --in model="$WORK/models/$i" --in test="$WORK/test.csv" \
        --out metrics="$WORK/candidates/$i/metrics.json"
    i=$((i + 1))
done

step "$BIN/pick" --in candidates="$WORK/candidates" --out best="$WORK/best.json"

echo
echo "== results (test accuracy per instance)"
i=0
for lr in $LRS; do
    acc="$(sed -n 's/^{"accuracy":\([0-9.]*\),.*/\1/p' "$WORK/candidates/$i/metrics.json")"
    echo "instance $i  lr $lr  accuracy $acc"
    i=$((i + 1))
done
echo
echo "best model: $(cat "$WORK/best.json")"
echo "its weights: $WORK/models/$(sed -n 's/^{"instance":"\([0-9]*\)".*/\1/p' "$WORK/best.json")/weights.csv"
