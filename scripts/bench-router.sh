#!/usr/bin/env bash
# Router benchmarks: (1) POST /v1/route with a batch of 10,000 prompts (MMLU-Pro questions)
# through an in-process lumen-host with the real components, reporting the batch's wall time and
# the scorer's own time inside the wasm router; (2) the scorer natively (criterion).
#
# Usage: scripts/bench-router.sh [lumen-route-bench flags, e.g. --count 1000]
#   SKIP_BUILD=1   reuse what is built; SKIP_CRITERION=1 skip the native benchmark
#   BENCH_OUT=FILE where results are appended (default bench/ROUTER-RESULTS.md)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${BENCH_OUT:-$ROOT/bench/ROUTER-RESULTS.md}"
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  scripts/build.sh
fi
tmp="$(mktemp)"
trap 'rm -f "$tmp"' EXIT
{
  echo
  echo "## $(date -u +%Y-%m-%dT%H:%MZ) on $(nproc) vCPU ($(uname -m))"
  echo
  echo "### POST /v1/route batch, through lumen-host (wasm router)"
  echo
  timeout 300 target/release/lumen-route-bench "$@"
  if [[ "${SKIP_CRITERION:-0}" != 1 ]]; then
    echo
    echo "### Scorer natively (criterion: low / median / high estimate)"
    echo
    echo '```'
    cargo bench -j 2 -p lumen-shared --bench scorer -- --warm-up-time 1 --measurement-time 3 2>/dev/null \
      | awk '/^[a-z_0-9]+/ {name=$1} /time:/ {sub(/.*time: */, ""); print name, $0}'
    echo '```'
  fi
} | tee "$tmp"
cat "$tmp" >> "$OUT"
echo "appended to $OUT"
