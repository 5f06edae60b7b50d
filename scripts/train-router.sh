#!/usr/bin/env bash
# Trains the difficulty scorer behind model "auto" and writes config/router-weights.bin and
# bench/ROUTER-eval.md. Deterministic: `scripts/train-router.sh --check` retrains and fails if the
# result differs from the committed files. Extra args go to lumen-train (e.g. --data PATH).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -j 2 -p lumen-tests --bin lumen-train
exec target/release/lumen-train "$@"
