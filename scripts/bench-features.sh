#!/usr/bin/env bash
# Benchmarks the response cache, shadow traffic and fusion (issue 14) against the mock upstream.
#
# Usage: scripts/bench-features.sh [extra lumen-bench-features flags, e.g. --requests 100]
#   SKIP_BUILD=1      reuse the binaries already in target/release
#   BENCH_OUT=FILE    where results are appended (default bench/RESULTS.md)
#   RUNTIME=spin      run the gateway under real Spin ($SPIN, or ../shared/tools/get-spin.sh)
#                     instead of lumen-host
#   SPIN_RUNTIME_CONFIG=FILE  a runtime config for either (e.g. Redis, or an in-memory store)
# Starts lumen-mock and the gateway on loopback ports with the shipped configuration plus one
# shadow experiment (gpt-4o-mini mirrored 100 % to gpt-4o), creates an API key, runs
# lumen-bench-features and stops both on exit.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BIN="$ROOT/target/release"
OUT="${BENCH_OUT:-$ROOT/bench/RESULTS.md}"
UPSTREAM_KEY="bench"

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  scripts/build.sh
fi
for bin in lumen-mock lumen-host lumen-bench-features; do
  [[ -x "$BIN/$bin" ]] || { echo "bench-features: $BIN/$bin is missing; build first" >&2; exit 1; }
done

tmp="$(mktemp -d)"
app_cfg="" manifest=""
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$tmp" "$app_cfg" "$manifest"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The shipped configuration plus the benchmark's shadow experiment, and a spin.toml pointing
# at it (and back into the repository for everything else).
# Spin maps only files inside the application's directory: the manifest goes next to spin.toml
# (removed on exit) and the configuration under target/.
app_cfg="target/bench-features-config-$$"
manifest="$ROOT/.bench-features-$$.toml"
mkdir -p "$app_cfg"
cp -a config/. "$app_cfg/"
cat >>"$app_cfg/catalog.toml" <<'EOF'

[shadows.bench-shadow]
route = "gpt-4o-mini"
candidate = "gpt-4o"
share = 100
max_concurrent = 256
EOF
sed -e "s#source = \"config\"#source = \"$app_cfg\"#" spin.toml >"$manifest"

wait_for() { # NAME PID TIMEOUT_S PATTERN-FILE: prints the first http://ADDR the process logs
  local name=$1 pid=$2 deadline=$((SECONDS + $3)) addr
  while ((SECONDS < deadline)); do
    addr="$(grep -ho 'http://127\.0\.0\.1:[0-9]*' "$tmp/$name.out" "$tmp/$name.err" 2>/dev/null | head -n 1 || true)"
    if [[ -n "$addr" ]]; then echo "${addr#http://}"; return 0; fi
    kill -0 "$pid" 2>/dev/null || { echo "bench-features: $name exited:" >&2; tail -n 30 "$tmp/$name.err" >&2; return 1; }
    sleep 0.1
  done
  echo "bench-features: $name did not start within $3 s" >&2; tail -n 30 "$tmp/$name.err" >&2; return 1
}

"$BIN/lumen-mock" --listen 127.0.0.1:0 --api-key "$UPSTREAM_KEY" >"$tmp/mock.out" 2>"$tmp/mock.err" &
pids+=("$!")
mock="$(wait_for mock "${pids[-1]}" 30)"

admin="adm_$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
export SPIN_VARIABLE_ADMIN_TOKEN="$admin"
for p in openai vllm; do
  export "SPIN_VARIABLE_${p^^}_BASE_URL=http://$mock/v1"
done
export SPIN_VARIABLE_AZURE_BASE_URL="http://$mock"
export SPIN_VARIABLE_ANTHROPIC_BASE_URL="http://$mock/v1"
export SPIN_VARIABLE_GEMINI_BASE_URL="http://$mock/v1beta"
export SPIN_VARIABLE_RUNPOD_BASE_URL="http://$mock/v2/qwen"
export SPIN_VARIABLE_TOGETHER_BASE_URL="http://localhost:${mock#*:}/v1"
for p in openai azure anthropic gemini vllm runpod; do
  export "SPIN_VARIABLE_${p^^}_ALLOWED_HOST=http://$mock"
  export "SPIN_VARIABLE_${p^^}_API_KEY=$UPSTREAM_KEY"
done
export SPIN_VARIABLE_TOGETHER_ALLOWED_HOST="http://localhost:${mock#*:}"
export SPIN_VARIABLE_TOGETHER_API_KEY="$UPSTREAM_KEY"

port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
if [[ "${RUNTIME:-host}" == spin ]]; then
  SPIN="${SPIN:-$(../shared/tools/get-spin.sh)}"
  rc=()
  [[ -n "${SPIN_RUNTIME_CONFIG:-}" ]] && rc=(--runtime-config-file "$SPIN_RUNTIME_CONFIG")
  "$SPIN" up -f "$manifest" --listen "127.0.0.1:$port" --state-dir "$tmp/state" "${rc[@]}" \
    >"$tmp/gw.out" 2>"$tmp/gw.err" &
  runtime="spin ($("$SPIN" --version | head -n 1))"
else
  rc=()
  [[ -n "${SPIN_RUNTIME_CONFIG:-}" ]] && rc=(--runtime-config-file "$SPIN_RUNTIME_CONFIG")
  "$BIN/lumen-host" up --listen "127.0.0.1:$port" --manifest "$manifest" --state-dir "$tmp/state" "${rc[@]}" \
    >"$tmp/gw.out" 2>"$tmp/gw.err" &
  runtime="lumen-host"
fi
pids+=("$!")
for _ in $(seq 1800); do
  curl -s -o /dev/null "http://127.0.0.1:$port/v1/models" && break
  kill -0 "${pids[-1]}" 2>/dev/null || { tail -n 30 "$tmp/gw.err" >&2; exit 1; }
  sleep 0.1
done
echo "bench-features: mock on $mock, $runtime on 127.0.0.1:$port" >&2

key="$(curl -sS -X POST "http://127.0.0.1:$port/admin/keys" -H "Authorization: Bearer $admin" \
  -H 'content-type: application/json' -d '{"name":"bench","rpm_limit":1000000}' |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')"

mkdir -p "$(dirname "$OUT")"
"$BIN/lumen-bench-features" --gateway "http://127.0.0.1:$port" --direct "http://$mock" \
  --key "$key" --direct-key "$UPSTREAM_KEY" --admin-token "$admin" --out "$OUT" "$@"
echo "(runtime: $runtime)" | tee -a "$OUT"
