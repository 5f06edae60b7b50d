#!/usr/bin/env bash
# Measures lumen-host's resident memory before, during and after a burst of large requests
# (issue 13, D16: memory must come back to within 20 % of idle once the load is over).
#
# Usage: scripts/bench-memory.sh [CONCURRENCY (16)] [REQUESTS_PER_CLIENT (8)] [BODY_MIB (3.5)]
#   SKIP_BUILD=1      reuse the binaries already in target/release
#   LUMEN_BIN_DIR=DIR take lumen-host and lumen-mock from DIR
#   HOST_ARGS="..."   extra `lumen-host up` flags
#   SMAPS=1           also list the largest resident mappings at the end
# Starts lumen-mock and lumen-host on ephemeral loopback ports, creates a key, then:
#   idle   RSS after 20 small warm-up requests (every component instantiated at least once),
#   warm   RSS after CONCURRENCY small requests held open together (300 ms upstream): each slot of
#          the instance pool they used keeps up to --instance-keep-kib of its memory (128 KiB
#          by default) zeroed for the next request: a reserve bounded by the peak concurrency,
#   load   CONCURRENCY clients each send REQUESTS_PER_CLIENT chat requests of BODY_MIB MiB
#          (and one 5 MiB body each, refused with 413), peak = VmHWM,
#   after  RSS 2 s, 10 s and 35 s after the last answer (pooled upstream connections close
#          after 30 s idle).
# Prints one line per measurement and a verdict; exits 1 when the 35 s figure exceeds 1.20 x idle
# plus the pool's warm-reserve bound: CONCURRENCY x 6 memories x the keep size x 2 (a zeroed
# page kept, and the component's data-image page beside it, shared page cache that RSS counts
# once per slot). Memory that grew with the bodies must come back. HOST_ARGS="--instance-keep-kib
# 0" keeps nothing: the bound is then 1.20 x idle.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BIN="${LUMEN_BIN_DIR:-$ROOT/target/release}"
CONC="${1:-16}"
PER="${2:-8}"
MIB="${3:-3.5}"
UPSTREAM_KEY="bench"

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  scripts/build.sh
fi
for bin in lumen-mock lumen-host; do
  [[ -x "$BIN/$bin" ]] || { echo "bench-memory: $BIN/$bin is missing; build first" >&2; exit 1; }
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

wait_serving() {
  local name=$1 pid=$2 deadline=$((SECONDS + $3)) line
  while ((SECONDS < deadline)); do
    if [[ -s "$tmp/$name.out" ]]; then
      line="$(head -n 1 "$tmp/$name.out")"
      if [[ "$line" == "Serving http://"* ]]; then
        echo "${line#Serving http://}"
        return 0
      fi
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "bench-memory: $name exited before serving; stderr:" >&2
      tail -n 30 "$tmp/$name.err" >&2 || true
      return 1
    fi
    sleep 0.1
  done
  echo "bench-memory: $name did not start within $3 s" >&2
  return 1
}

"$BIN/lumen-mock" --listen 127.0.0.1:0 --api-key "$UPSTREAM_KEY" >"$tmp/lumen-mock.out" 2>"$tmp/lumen-mock.err" &
pids+=("$!")
mock_addr="$(wait_serving lumen-mock "${pids[-1]}" 30)"

admin_token="adm_$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
# shellcheck disable=SC2086
SPIN_VARIABLE_ADMIN_TOKEN="$admin_token" \
SPIN_VARIABLE_OPENAI_BASE_URL="http://$mock_addr/v1" \
SPIN_VARIABLE_OPENAI_ALLOWED_HOST="http://$mock_addr" \
SPIN_VARIABLE_OPENAI_API_KEY="$UPSTREAM_KEY" \
  "$BIN/lumen-host" up --listen 127.0.0.1:0 --manifest "$ROOT/spin.toml" --state-dir "$tmp/state" \
  ${HOST_ARGS:-} >"$tmp/lumen-host.out" 2>"$tmp/lumen-host.err" &
host_pid=$!
pids+=("$host_pid")
host_addr="$(wait_serving lumen-host "$host_pid" 180)"
# The host's keep size (KiB per freed memory slot), for the warm-reserve bound.
keep_kib="${LUMEN_INSTANCE_KEEP_KIB:-128}"
if [[ " ${HOST_ARGS:-} " =~ --instance-keep-kib[=\ ]+([0-9]+) ]]; then keep_kib="${BASH_REMATCH[1]}"; fi

python3 - "$host_addr" "$admin_token" "$host_pid" "$CONC" "$PER" "$MIB" "$keep_kib" <<'PY'
import http.client, json, os, sys, threading, time

addr, admin, pid, conc, per, mib = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
keep_kib = int(sys.argv[7])
host, port = addr.rsplit(":", 1)

def status_kib(field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0

def pss_kib():
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0

def call(method, path, token, body=None):
    c = http.client.HTTPConnection(host, int(port), timeout=120)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    try:
        c.request(method, path, body=body, headers=headers)
        r = c.getresponse()
        data = r.read()
        return r.status, data
    except (ConnectionError, OSError) as e:
        return 0, str(e).encode()
    finally:
        c.close()

st, data = call("POST", "/admin/keys", admin, json.dumps({"name": "mem", "rpm_limit": 1000000}).encode())
assert st == 201, (st, data)
key = json.loads(data)["key"]

def chat(text):
    return json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}).encode()

for _ in range(20):
    st, data = call("POST", "/v1/chat/completions", key, chat("hello"))
    assert st == 200, (st, data[:300])
time.sleep(2)
idle = status_kib("VmRSS")
idle_anon, idle_file, idle_shmem = status_kib("RssAnon"), status_kib("RssFile"), status_kib("RssShmem")
idle_pss = pss_kib()
print(f"idle:  RSS {idle / 1024:.0f} MiB")

# The same concurrency with small requests, each held 300 ms upstream so that all of them run at
# once: the instance-pool slots the big load will use are then warm.
def small():
    st, data = call("POST", "/v1/chat/completions", key, chat("hello [mock ttft_ms=300]"))
    assert st == 200, (st, data[:300])
threads = [threading.Thread(target=small) for _ in range(conc)]
for t in threads: t.start()
for t in threads: t.join()
time.sleep(2)
warm = status_kib("VmRSS")
print(f"warm:  RSS {warm / 1024:.0f} MiB after {conc} small requests at once (the pool's warm reserve: {(warm - idle) / 1024:.0f} MiB)")

big = chat("word " * int(mib * 1024 * 1024 / 5))
huge = chat("word " * int(5 * 1024 * 1024 / 5))
counts = {}
lock = threading.Lock()

def client():
    for i in range(per + 1):
        st, _ = call("POST", "/v1/chat/completions", key, huge if i == 0 else big)
        with lock:
            counts[st] = counts.get(st, 0) + 1

t0 = time.time()
threads = [threading.Thread(target=client) for _ in range(conc)]
for t in threads: t.start()
peak_rss = 0
while any(t.is_alive() for t in threads):
    peak_rss = max(peak_rss, status_kib("VmRSS"))
    time.sleep(0.1)
print(f"load:  {conc} clients x {per} requests of {mib} MiB (+1 of 5 MiB each) in {time.time() - t0:.1f} s, statuses {dict(sorted(counts.items()))}")
print(f"peak:  RSS {peak_rss / 1024:.0f} MiB (sampled), VmHWM {status_kib('VmHWM') / 1024:.0f} MiB")
time.sleep(2)
a2 = status_kib("VmRSS")
print(f"after: RSS {a2 / 1024:.0f} MiB at 2 s")
time.sleep(8)
a10 = status_kib("VmRSS")
print(f"after: RSS {a10 / 1024:.0f} MiB at 10 s")
# Pooled keep-alive connections to the upstream (and their buffers) close after 30 s idle.
time.sleep(25)
a35 = status_kib("VmRSS")
print(f"after: RSS {a35 / 1024:.0f} MiB at 35 s")
# RssFile counts clean pages of the components' compiled code and data images mapped into each
# pool slot: page cache, shared with every other slot and process; RssAnon is the process's own.
print(f"after: RssAnon {status_kib('RssAnon') / 1024:.0f} MiB, RssFile {status_kib('RssFile') / 1024:.0f} MiB, RssShmem {status_kib('RssShmem') / 1024:.0f} MiB, Pss {pss_kib() / 1024:.0f} MiB (idle: {idle_anon / 1024:.0f} / {idle_file / 1024:.0f} / {idle_shmem / 1024:.0f} / {idle_pss / 1024:.0f})")
if os.environ.get("SMAPS"):
    # Where the resident memory is: the largest mappings by RSS.
    maps, cur = [], None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            parts = line.split()
            if "-" in parts[0] and not parts[0].endswith(":"):
                cur = [line.strip()[:110], 0]
                maps.append(cur)
            elif parts[0] == "Rss:":
                cur[1] = int(parts[1])
    for name, rss in sorted(maps, key=lambda m: -m[1])[:10]:
        print(f"  {rss / 1024:7.1f} MiB  {name}")
limit = 1.20 * idle + conc * 6 * keep_kib * 2
print(f"verdict: {a35 / 1024:.0f} MiB at 35 s = {a35 / idle:.2f} x idle; limit {limit / 1024:.0f} MiB (1.20 x idle + {conc} x 6 x {keep_kib} KiB x 2 warm reserve)")
sys.exit(0 if a35 <= limit else 1)
PY
