#!/usr/bin/env bash
# Benchmarks Lumen side by side with its peers, in one run against one mock upstream (the bundled
# lumen-mock): the mock called directly (the floor), Lumen on lumen-host, Lumen under real Spin
# (`spin up`, SQLite key-value store: as Spin creates it, and prepared in WAL mode by
# `lumen spin-kv`), the Spin floor (bench/floor: a warm chat's key-value round trips and upstream
# call with none of Lumen's logic, under the same Spin and WAL store), Portkey's gateway from npm
# (pinned; its broken streams mended by scripts/portkey-stream-headers.mjs, which leaves
# everything else as shipped), and with --litellm LiteLLM's proxy from PyPI (pinned). Per
# system: 16-concurrent non-stream and stream req/s, the system's CPU ms per non-stream request
# (/proc), the latency it adds at 10 req/s (p50/p90/p99; stream first-token p50, stream end
# p50/p90) and warm (p50 of 300 sequential requests right after the warm-up), its memory;
# ratios vs Portkey, lumen-host and the Spin floor. Then the key-value round trips of a warm
# chat, a stream, a 401 and a 429 (lumen-host's LUMEN_HOST_KV_LOG).
# Appends a dated section (machine, versions, tables) to bench/RESULTS.md.
#
# Usage: scripts/bench.sh [--quick] [--litellm] [--spin-nosync] [extra lumen-bench flags, e.g. --runs 3]
#        scripts/bench.sh --failover 1000   # lumen-host only, one of two providers hard down
#   --quick           one short round (about 2 minutes; the default is 2 rounds, about 8)
#   --litellm         also LiteLLM (installs litellm[proxy] into the cache on first use)
#   --spin-nosync     diagnostic: also Lumen under Spin and the Spin floor on the WAL store with
#                     fsync and fdatasync made no-ops by LD_PRELOAD (needs a C compiler): what
#                     SQLite's synchronous=NORMAL would spare each commit; not durable, not a
#                     setting users have
#   SKIP_BUILD=1      reuse the binaries already in target/release
#   LUMEN_BIN_DIR=DIR take lumen-host, lumen-mock and lumen-bench from DIR
#   BENCH_OUT=FILE    where results are appended (default bench/RESULTS.md; /dev/null: nowhere)
#   BENCH_CACHE=DIR   where peers are installed (default ~/.cache/lumen-bench)
#   SPIN_BIN=PATH     the Spin CLI (default: spin on PATH, else ../shared/tools/get-spin.sh)
#   BENCH_NO_PORTKEY=1 / BENCH_NO_SPIN=1   leave a system out
# Every server binds 127.0.0.1 (ephemeral ports; Spin's and Portkey's are picked free here) and
# is stopped on exit. Client, systems and mock share the machine's cores.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# The systems run as their users run them, without Rust backtraces: where the environment sets
# RUST_BACKTRACE=1 (this machine's does), Spin captures backtraces on its request path (libgcc's
# unwinder: 2 % of its samples under load on 2026-12-04, none without it; no throughput
# difference beyond noise in an interleaved A/B).
unset RUST_BACKTRACE RUST_LIB_BACKTRACE
BIN="${LUMEN_BIN_DIR:-$ROOT/target/release}"
OUT="${BENCH_OUT:-$ROOT/bench/RESULTS.md}"
CACHE="${BENCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lumen-bench}"
UPSTREAM_KEY="bench"
RPM_LIMIT="${BENCH_RPM_LIMIT:-1000000}"
PORTKEY_VERSION="1.15.2"
LITELLM_VERSION="1.79.1"

quick=0
litellm=0
nosync=0
failover=0
extra=()
for arg in "$@"; do
  case "$arg" in
    --quick) quick=1 ;;
    --litellm) litellm=1 ;;
    --spin-nosync) nosync=1 ;;
    --failover|--failover=*) failover=1; extra+=("$arg") ;;
    *) extra+=("$arg") ;;
  esac
done

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  scripts/build.sh  # the components, lumen-host, lumen-mock and lumen-bench
fi
for bin in lumen-mock lumen-host lumen-bench lumen; do
  [[ -x "$BIN/$bin" ]] || { echo "bench: $BIN/$bin is missing; build first" >&2; exit 1; }
done

tmp="$(mktemp -d)"
pids=()    # stopped with SIGTERM, then SIGKILL
groups=()  # process groups (spin up and its trigger child), stopped with SIGKILL
cleanup() {
  local pid
  for pid in "${groups[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}" "${groups[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_serving NAME PID TIMEOUT_S: prints ADDR once NAME prints a line "Serving http://ADDR"
# (Spin prints a blank line first).
wait_serving() {
  local name=$1 pid=$2 deadline=$((SECONDS + $3)) line
  while ((SECONDS < deadline)); do
    line="$(grep -m1 '^Serving http://' "$tmp/$name.out" 2>/dev/null || true)"
    if [[ -n "$line" ]]; then
      echo "${line#Serving http://}"
      return 0
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

# wait_port ADDR PID TIMEOUT_S: until ADDR accepts connections while PID lives.
wait_port() {
  local deadline=$((SECONDS + $3))
  while ((SECONDS < deadline)); do
    curl -s -o /dev/null --max-time 1 "http://$1/" && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# lumen_env MOCK_ADDR ADMIN_TOKEN: the SPIN_VARIABLE_* both Lumen runtimes get.
lumen_env() {
  echo "SPIN_VARIABLE_ADMIN_TOKEN=$2"
  echo "SPIN_VARIABLE_OPENAI_BASE_URL=http://$1/v1"
  echo "SPIN_VARIABLE_OPENAI_ALLOWED_HOST=http://$1"
  echo "SPIN_VARIABLE_OPENAI_API_KEY=$UPSTREAM_KEY"
  echo "SPIN_VARIABLE_AZURE_BASE_URL=http://$1"
  echo "SPIN_VARIABLE_AZURE_ALLOWED_HOST=http://$1"
  echo "SPIN_VARIABLE_AZURE_API_KEY=$UPSTREAM_KEY"
}

# create_key ADDR ADMIN_TOKEN: prints a new API key's secret.
create_key() {
  local json key
  json="$(curl -sS --max-time 30 -X POST "http://$1/admin/keys" \
    -H "Authorization: Bearer $2" -H 'Content-Type: application/json' \
    -d "{\"name\":\"bench\",\"rpm_limit\":$RPM_LIMIT,\"allowed_models\":[]}")"
  key="$(printf '%s' "$json" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("key",""))' 2>/dev/null || true)"
  [[ -n "$key" ]] || { echo "bench: could not create an API key on $1; admin API answered: $json" >&2; return 1; }
  echo "$key"
}

# start_host NAME ADMIN_TOKEN [ENV=VALUE...]: starts lumen-host; sets started_pid and
# started_addr.
start_host() {
  local name=$1 token=$2
  shift 2
  mkdir -p "$tmp/$name-state"
  env $(lumen_env "$mock_addr" "$token") "$@" \
    "$BIN/lumen-host" up --listen 127.0.0.1:0 --manifest "$ROOT/spin.toml" \
    --state-dir "$tmp/$name-state" --cache-dir "$ROOT/target/lumen-cache" \
    >"$tmp/$name.out" 2>"$tmp/$name.err" &
  started_pid=$!
  pids+=("$started_pid")
  started_addr="$(wait_serving "$name" "$started_pid" 300)"
}

"$BIN/lumen-mock" --listen 127.0.0.1:0 --api-key "$UPSTREAM_KEY" >"$tmp/lumen-mock.out" 2>"$tmp/lumen-mock.err" &
mock_pid=$!
pids+=("$mock_pid")
mock_addr="$(wait_serving lumen-mock "$mock_pid" 30)"
admin_token="adm_$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"

start_host lumen-host "$admin_token"
host_addr=$started_addr
host_pid=$started_pid
host_key="$(create_key "$host_addr" "$admin_token")"
echo "bench: mock on $mock_addr, lumen-host (pid $host_pid) on $host_addr" >&2

mkdir -p "$(dirname "$OUT")"
if ((failover)); then
  "$BIN/lumen-bench" --gateway "http://$host_addr/v1" --direct "http://$mock_addr/v1" \
    --key "$host_key" --direct-key "$UPSTREAM_KEY" --host-pid "$host_pid" --out "$OUT" "${extra[@]}"
  exit 0
fi

targets=(--target "name=direct,url=http://$mock_addr/v1,key=$UPSTREAM_KEY,pid=$mock_pid"
         --target "name=lumen-host,url=http://$host_addr/v1,key=$host_key,pid=$host_pid")
versions=("lumen $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet 2>/dev/null || echo '+changes')")
notes=()

# Lumen under real Spin, SQLite store (Spin's default).
spin=""
if [[ "${BENCH_NO_SPIN:-0}" == 1 ]]; then
  notes+=("spin-sqlite: left out (BENCH_NO_SPIN=1)")
elif [[ -n "${SPIN_BIN:-}" ]]; then spin="$SPIN_BIN"
elif command -v spin >/dev/null; then spin="$(command -v spin)"
elif [[ -x "$ROOT/../shared/tools/get-spin.sh" ]]; then spin="$("$ROOT/../shared/tools/get-spin.sh")"
else notes+=("spin-sqlite: skipped: no spin binary (SPIN_BIN, PATH, ../shared/tools/get-spin.sh)")
fi
# start_spin NAME [wal] [MANIFEST] [PRELOAD]: one `spin up` on its own state directory; with
# `wal`, the directory's SQLite file is first prepared by `lumen spin-kv` (WAL journal, the
# setup README recommends). MANIFEST defaults to Lumen's spin.toml; another (the floor's) gets
# no API key. PRELOAD: a shared object Spin runs with (LD_PRELOAD; --spin-nosync).
start_spin() {
  local name=$1 mode=${2:-} manifest=${3:-$ROOT/spin.toml} preload=${4:-} port state="$tmp/$1-state" up_pid pid addr key
  port="$(free_port)"
  mkdir -p "$state"
  if [[ "$mode" == wal ]]; then "$BIN/lumen" spin-kv --state-dir "$state" >&2; fi
  env $(lumen_env "$mock_addr" "$admin_token") ${preload:+LD_PRELOAD=$preload} setsid "$spin" up -f "$manifest" \
    --listen "127.0.0.1:$port" --state-dir "$state" >"$tmp/$name.out" 2>"$tmp/$name.err" &
  up_pid=$!
  # setsid made it a group leader (its trigger child stays in the group): stopped as a group.
  if [[ "$(ps -o pgid= -p "$up_pid" | tr -d ' ')" == "$up_pid" ]]; then
    groups+=("$up_pid")
  else
    pids+=("$up_pid")
  fi
  addr="$(wait_serving "$name" "$up_pid" 300)"
  wait_port "$addr" "$up_pid" 30
  # `spin up` serves from a child process (`spin trigger http`): that one's CPU and memory count.
  pid="$(pgrep -P "$up_pid" | head -n 1 || true)"
  pid="${pid:-$up_pid}"
  if [[ "$manifest" == "$ROOT/spin.toml" ]]; then
    key="$(create_key "$addr" "$admin_token")"
  else
    key=unused
  fi
  targets+=(--target "name=$name,url=http://$addr/v1,key=$key,pid=$pid")
  echo "bench: $name (pid $pid) on $addr" >&2
}
if [[ -n "$spin" ]]; then
  start_spin spin-sqlite
  start_spin spin-sqlite-wal wal
  # The Spin floor (bench/floor): a warm chat's key-value round trips and upstream call with
  # none of Lumen's logic, on the same WAL store: what Spin itself costs for that work.
  floor_wasm=target/wasm32-wasip2/release/lumen_spin_floor.wasm
  if [[ -f "$ROOT/$floor_wasm" ]]; then
    start_spin spin-floor wal "$ROOT/bench/floor/spin.toml"
  else
    notes+=("spin-floor: skipped: $floor_wasm is not built (scripts/build.sh builds it)")
  fi
  # --spin-nosync: the same two with every fsync a no-op, to show what Spin's syncs cost.
  if ((nosync)); then
    if ! command -v cc >/dev/null; then
      notes+=("spin-*-nosync: skipped: --spin-nosync needs a C compiler (cc)")
    else
      printf '%s\n' 'int fsync(int fd) { (void)fd; return 0; }' \
        'int fdatasync(int fd) { (void)fd; return 0; }' >"$tmp/nosync.c"
      cc -shared -fPIC -O2 -o "$tmp/nosync.so" "$tmp/nosync.c"
      start_spin spin-sqlite-wal-nosync wal "$ROOT/spin.toml" "$tmp/nosync.so"
      if [[ -f "$ROOT/$floor_wasm" ]]; then
        start_spin spin-floor-nosync wal "$ROOT/bench/floor/spin.toml" "$tmp/nosync.so"
      fi
      notes+=("spin-*-nosync: diagnostic (--spin-nosync): Spin with fsync and fdatasync made no-ops by LD_PRELOAD, what SQLite's synchronous=NORMAL would spare each commit; not durable, not a setting users have")
    fi
  fi
  versions+=("$("$spin" --version)")
fi

# Portkey's gateway from npm, pinned, installed once into the cache; upstream set per request.
if [[ "${BENCH_NO_PORTKEY:-0}" == 1 ]]; then
  notes+=("portkey: left out (BENCH_NO_PORTKEY=1)")
elif ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  notes+=("portkey: skipped: node and npm are needed")
else
  pk="$CACHE/portkey-$PORTKEY_VERSION"
  if [[ ! -f "$pk/node_modules/@portkey-ai/gateway/build/start-server.js" ]]; then
    mkdir -p "$pk"
    [[ -f "$pk/package.json" ]] || echo '{"private": true}' >"$pk/package.json"
    echo "bench: installing @portkey-ai/gateway@$PORTKEY_VERSION into $pk" >&2
    (cd "$pk" && npm install --no-audit --no-fund --loglevel=error "@portkey-ai/gateway@$PORTKEY_VERSION" >&2) \
      || notes+=("portkey: skipped: npm install @portkey-ai/gateway@$PORTKEY_VERSION failed")
  fi
  if [[ -f "$pk/node_modules/@portkey-ai/gateway/build/start-server.js" ]]; then
    port="$(free_port)"
    # As shipped its streams all answer 500; the preload mends that one bug (see the file).
    (cd "$pk" && exec node --import "$ROOT/scripts/portkey-stream-headers.mjs" \
      node_modules/@portkey-ai/gateway/build/start-server.js --port="$port" --headless) \
      >"$tmp/portkey.out" 2>"$tmp/portkey.err" &
    portkey_pid=$!
    pids+=("$portkey_pid")
    if wait_port "127.0.0.1:$port" "$portkey_pid" 60; then
      targets+=(--target "name=portkey,url=http://127.0.0.1:$port/v1,key=$UPSTREAM_KEY,pid=$portkey_pid,header=x-portkey-provider:openai,header=x-portkey-custom-host:http://$mock_addr/v1")
      versions+=("@portkey-ai/gateway $PORTKEY_VERSION on node $(node --version) (streams mended by scripts/portkey-stream-headers.mjs)")
      echo "bench: portkey (pid $portkey_pid) on 127.0.0.1:$port" >&2
    else
      notes+=("portkey: skipped: it did not listen within 60 s ($(tail -n 3 "$tmp/portkey.err" | tr '\n' ' '))")
    fi
  fi
fi

# LiteLLM's proxy from PyPI, pinned, in a venv in the cache (optional: --litellm).
if ((litellm)); then
  ll="$CACHE/litellm-$LITELLM_VERSION"
  if [[ ! -x "$ll/bin/litellm" ]]; then
    echo "bench: installing litellm[proxy]==$LITELLM_VERSION into $ll" >&2
    python3 -m venv "$ll" && "$ll/bin/pip" install --quiet --disable-pip-version-check "litellm[proxy]==$LITELLM_VERSION" >&2 \
      || notes+=("litellm: skipped: pip install litellm[proxy]==$LITELLM_VERSION failed")
  fi
  if [[ -x "$ll/bin/litellm" ]]; then
    port="$(free_port)"
    OPENAI_API_KEY="$UPSTREAM_KEY" LITELLM_LOG=ERROR "$ll/bin/litellm" --host 127.0.0.1 --port "$port" \
      --model openai/gpt-4o-mini --api_base "http://$mock_addr/v1" \
      >"$tmp/litellm.out" 2>"$tmp/litellm.err" &
    litellm_pid=$!
    pids+=("$litellm_pid")
    if wait_port "127.0.0.1:$port" "$litellm_pid" 180; then
      targets+=(--target "name=litellm,url=http://127.0.0.1:$port/v1,key=$UPSTREAM_KEY,pid=$litellm_pid")
      versions+=("litellm $LITELLM_VERSION")
    else
      notes+=("litellm: skipped: it did not listen within 180 s ($(tail -n 3 "$tmp/litellm.err" | tr '\n' ' '))")
    fi
  fi
fi

if ((quick)); then
  shape=(--runs 1 --latency-s 8 --duration-s 3 --warmup 10)
else
  shape=(--runs 2 --latency-s 20 --duration-s 6 --warmup 20)
fi
started=$SECONDS
"$BIN/lumen-bench" "${targets[@]}" "${shape[@]}" --rate 10 --concurrency 16 \
  --ratio-vs portkey,lumen-host,spin-floor --out "$tmp/table.md" "${extra[@]}" >&2

# Key-value round trips per request, from a lumen-host of its own (so the log costs the
# benchmarked one nothing).
start_host lumen-host-kv "$admin_token" LUMEN_HOST_KV_LOG="$tmp/kv.log"
"$BIN/lumen-bench" --kv-ops "$tmp/kv.log" --gateway "http://$started_addr/v1" --admin-token "$admin_token" \
  --out "$tmp/kv.md" >/dev/null

{
  echo
  echo "## Side by side, $(date -u '+%Y-%m-%d %H:%M UTC')$( ((quick)) && echo ' (--quick)')"
  echo
  echo "- Machine: $(nproc) CPUs × $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(uname -srm); client, systems and the mock share them"
  echo "- Versions: $(IFS=';'; echo "${versions[*]}" | sed 's/;/; /g')"
  for n in "${notes[@]}"; do echo "- $n"; done
  echo "- Command: \`scripts/bench.sh $*\` ($((SECONDS - started)) s of measurement)"
  echo
  cat "$tmp/table.md"
  echo
  echo "Key-value round trips per request (lumen-host, \`LUMEN_HOST_KV_LOG\`, one line per request):"
  echo
  cat "$tmp/kv.md"
} >"$tmp/section.md"
cat "$tmp/section.md"
if [[ "$OUT" != /dev/null ]]; then
  cat "$tmp/section.md" >>"$OUT"
  echo "bench: appended to $OUT" >&2
fi
