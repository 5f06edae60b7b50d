#!/usr/bin/env bash
# Builds Lumen: the four Spin components (wasm32-wasip2) named in spin.toml, then the native host
# and the test/bench binaries. CARGO_BUILD_JOBS sets the parallelism (default 2).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

JOBS="${CARGO_BUILD_JOBS:-2}"

if ! rustup target list --installed | grep -q '^wasm32-wasip2$'; then
    rustup target add wasm32-wasip2
fi

cargo build --release -j "$JOBS" --target wasm32-wasip2 \
    -p lumen-auth -p lumen-router -p lumen-provider -p lumen-meter -p lumen-dashboard

cargo build --release -j "$JOBS" -p lumen-host -p lumen-tests --bins
