#!/usr/bin/env bash
# Builds Lumen: the four Spin components (wasm32-wasip2), composed into the one component
# spin.toml runs (target/wasm32-wasip2/release/lumen_gateway.wasm; lumen-compose pre-initializes
# the router first), then the native host and the test/bench binaries. CARGO_BUILD_JOBS sets
# the parallelism (default 2).
#
# What runs requests is built with whole-program optimization (fat LTO, one codegen unit): the
# components through `--config` on their cargo invocations (only this script builds them, so
# their dependencies are never rebuilt without it), and `lumen`/`lumen-host` in Cargo.toml's
# `dist` profile (target/dist, copied into target/release where everything looks for them; the
# tests link the host library in the plain release profile and would otherwise rebuild its
# dependencies each time). Measured in bench/RESULTS.md (2026-12-05 09:30): 1.17-1.18x the
# chats per second at 0.81-0.85x the CPU per chat.
#
#   scripts/build.sh             # everything
#   scripts/build.sh components  # only the composed component (what `spin build` runs)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

JOBS="${CARGO_BUILD_JOBS:-2}"

if ! rustup target list --installed | grep -q '^wasm32-wasip2$'; then
    rustup target add wasm32-wasip2
fi

lto=(--config 'profile.release.lto="fat"' --config profile.release.codegen-units=1)

cargo build --release -j "$JOBS" --target wasm32-wasip2 "${lto[@]}" \
    -p lumen-auth -p lumen-router -p lumen-provider -p lumen-meter -p lumen-dashboard
cargo build --release -j "$JOBS" -p lumen-compose
wasm=target/wasm32-wasip2/release
target/release/lumen-compose "$wasm/lumen_gateway.wasm" "$wasm/lumen_auth.wasm" \
    "$wasm/lumen_router.wasm" "$wasm/lumen_provider.wasm" "$wasm/lumen_meter.wasm"

[[ "${1:-}" == components ]] && exit 0
# The benchmark's Spin floor (bench/floor; scripts/bench.sh), not part of the app.
cargo build --release -j "$JOBS" --target wasm32-wasip2 "${lto[@]}" -p lumen-spin-floor
cargo build --profile dist -j "$JOBS" -p lumen-host
for bin in lumen lumen-host; do
    # Unlinked first: a running copy of the old binary keeps its file.
    rm -f "target/release/$bin"
    cp -p "target/dist/$bin" "target/release/$bin"
done
cargo build --release -j "$JOBS" -p lumen-tests --bins
