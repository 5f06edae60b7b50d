#!/usr/bin/env bash
# Benchmarks the latency Lumen adds: the mock upstream called directly vs. through lumen-host.
#
# Usage: scripts/bench.sh [extra lumen-bench flags, e.g. --duration-s 2 --requests 100]
#        scripts/bench.sh --failover 1000   # one of two providers hard down (see lumen-bench)
#   SKIP_BUILD=1      reuse the binaries already in target/release
#   LUMEN_BIN_DIR=DIR take lumen-host, lumen-mock and lumen-bench from DIR
#   BENCH_OUT=FILE    where results are appended (default bench/RESULTS.md)
# Starts lumen-mock and lumen-host on ephemeral loopback ports, creates an API key with a high
# rpm limit through the admin API, runs lumen-bench (bounded to about two minutes) and stops both
# servers on exit.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BIN="${LUMEN_BIN_DIR:-$ROOT/target/release}"
OUT="${BENCH_OUT:-$ROOT/bench/RESULTS.md}"
UPSTREAM_KEY="bench"
RPM_LIMIT="${BENCH_RPM_LIMIT:-1000000}"

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  scripts/build.sh  # the components, lumen-host, lumen-mock and lumen-bench
fi
for bin in lumen-mock lumen-host lumen-bench; do
  [[ -x "$BIN/$bin" ]] || { echo "bench: $BIN/$bin is missing; build first" >&2; exit 1; }
done

tmp="$(mktemp -d)"
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_serving NAME PID TIMEOUT_S: prints ADDR once NAME's first stdout line is "Serving http://ADDR".
wait_serving() {
  local name=$1 pid=$2 deadline=$((SECONDS + $3)) line
  while ((SECONDS < deadline)); do
    if [[ -s "$tmp/$name.out" ]] && (($(wc -l <"$tmp/$name.out") >= 1)); then
      line="$(head -n 1 "$tmp/$name.out")"
      if [[ "$line" == "Serving http://"* ]]; then
        echo "${line#Serving http://}"
        return 0
      fi
      echo "bench: unexpected first line from $name: $line" >&2
      return 1
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "bench: $name exited before serving; stderr:" >&2
      tail -n 30 "$tmp/$name.err" >&2 || true
      return 1
    fi
    sleep 0.1
  done
  echo "bench: $name did not print 'Serving http://ADDR' within $3s; stderr:" >&2
  tail -n 30 "$tmp/$name.err" >&2 || true
  return 1
}

"$BIN/lumen-mock" --listen 127.0.0.1:0 --api-key "$UPSTREAM_KEY" >"$tmp/lumen-mock.out" 2>"$tmp/lumen-mock.err" &
mock_pid=$!
pids+=("$mock_pid")
mock_addr="$(wait_serving lumen-mock "$mock_pid" 30)"

admin_token="adm_$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
SPIN_VARIABLE_ADMIN_TOKEN="$admin_token" \
SPIN_VARIABLE_OPENAI_BASE_URL="http://$mock_addr/v1" \
SPIN_VARIABLE_OPENAI_ALLOWED_HOST="http://$mock_addr" \
SPIN_VARIABLE_OPENAI_API_KEY="$UPSTREAM_KEY" \
SPIN_VARIABLE_AZURE_BASE_URL="http://$mock_addr" \
SPIN_VARIABLE_AZURE_ALLOWED_HOST="http://$mock_addr" \
SPIN_VARIABLE_AZURE_API_KEY="$UPSTREAM_KEY" \
  "$BIN/lumen-host" up --listen 127.0.0.1:0 --manifest "$ROOT/spin.toml" --state-dir "$tmp/state" \
  >"$tmp/lumen-host.out" 2>"$tmp/lumen-host.err" &
host_pid=$!
pids+=("$host_pid")
host_addr="$(wait_serving lumen-host "$host_pid" 180)"
echo "bench: mock on $mock_addr, lumen-host (pid $host_pid) on $host_addr" >&2

key_json="$(curl -sS --max-time 30 -X POST "http://$host_addr/admin/keys" \
  -H "Authorization: Bearer $admin_token" -H 'Content-Type: application/json' \
  -d "{\"name\":\"bench\",\"rpm_limit\":$RPM_LIMIT,\"allowed_models\":[]}")"
key="$(printf '%s' "$key_json" | grep -o '"key"[[:space:]]*:[[:space:]]*"[^"]*"' | head -n 1 | sed 's/.*"\([^"]*\)"$/\1/' || true)"
if [[ -z "$key" ]]; then
  echo "bench: could not create an API key; admin API answered: $key_json" >&2
  exit 1
fi

mkdir -p "$(dirname "$OUT")"
"$BIN/lumen-bench" \
  --gateway "http://$host_addr/v1" \
  --direct "http://$mock_addr/v1" \
  --key "$key" \
  --direct-key "$UPSTREAM_KEY" \
  --host-pid "$host_pid" \
  --out "$OUT" \
  "$@"
