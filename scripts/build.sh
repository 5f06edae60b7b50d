#!/usr/bin/env bash
# Builds Lumen: the four Spin components (wasm32-wasip2), composed into the one component
# spin.toml runs (target/wasm32-wasip2/release/lumen_gateway.wasm; lumen-compose pre-initializes
# the router first), then the native host and the test/bench binaries. CARGO_BUILD_JOBS sets
# the parallelism (default 2).
#
#   scripts/build.sh             # everything
#   scripts/build.sh components  # only the composed component (what `spin build` runs)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

JOBS="${CARGO_BUILD_JOBS:-2}"

if ! rustup target list --installed | grep -q '^wasm32-wasip2$'; then
    rustup target add wasm32-wasip2
fi

cargo build --release -j "$JOBS" --target wasm32-wasip2 \
    -p lumen-auth -p lumen-router -p lumen-provider -p lumen-meter -p lumen-dashboard
cargo build --release -j "$JOBS" -p lumen-compose
wasm=target/wasm32-wasip2/release
target/release/lumen-compose "$wasm/lumen_gateway.wasm" "$wasm/lumen_auth.wasm" \
    "$wasm/lumen_router.wasm" "$wasm/lumen_provider.wasm" "$wasm/lumen_meter.wasm"

[[ "${1:-}" == components ]] && exit 0
# The benchmark's Spin floor (bench/floor; scripts/bench.sh), not part of the app.
cargo build --release -j "$JOBS" --target wasm32-wasip2 -p lumen-spin-floor
cargo build --release -j "$JOBS" -p lumen-host -p lumen-tests --bins
