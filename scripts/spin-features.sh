#!/usr/bin/env bash
# End-to-end checks of the response cache, shadow traffic and fusion (issue 14) under real Spin,
# on its SQLite store and, with REDIS=1, on Redis (a redis-server this script starts on a unix
# socket). Each check prints PASS or FAIL; the exit status is 1 when any failed.
#
# Usage: scripts/spin-features.sh            # SQLite
#        REDIS=1 scripts/spin-features.sh    # Redis
#   SPIN=path   the Spin binary (default: ../shared/tools/get-spin.sh)
#   SKIP_BUILD=1
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BIN="$ROOT/target/release"
SPIN="${SPIN:-$(../shared/tools/get-spin.sh)}"
[[ "${SKIP_BUILD:-0}" == 1 ]] || scripts/build.sh

tmp="$(mktemp -d)"
app_cfg="" manifest=""
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$tmp" "$app_cfg" "$manifest"
}
trap cleanup EXIT

# Spin maps only files inside the application's directory: the manifest goes next to spin.toml
# (removed on exit) and the configuration under target/.
app_cfg="target/spin-features-config-$$"
manifest="$ROOT/.spin-features-$$.toml"
mkdir -p "$app_cfg"
cp -a config/. "$app_cfg/"
cat >>"$app_cfg/catalog.toml" <<'EOF'

[shadows.spin-shadow]
route = "gpt-4o-mini"
candidate = "gpt-4o"
share = 100
max_concurrent = 64
EOF
sed -e "s#source = \"config\"#source = \"$app_cfg\"#" spin.toml >"$manifest"

"$BIN/lumen-mock" --listen 127.0.0.1:0 --api-key up >"$tmp/mock.out" 2>"$tmp/mock.err" &
pids+=("$!")
for _ in $(seq 100); do grep -q 'http://' "$tmp/mock.out" 2>/dev/null && break; sleep 0.1; done
mock="$(grep -o 'http://[0-9.:]*' "$tmp/mock.out" | head -n 1)"
mock="${mock#http://}"

rc=()
store="SQLite"
if [[ "${REDIS:-0}" == 1 ]]; then
  redis-server --port 0 --unixsocket "$tmp/redis.sock" --save '' --appendonly no >"$tmp/redis.log" 2>&1 &
  pids+=("$!")
  for _ in $(seq 50); do [[ -S "$tmp/redis.sock" ]] && break; sleep 0.1; done
  printf '[key_value_store.default]\ntype = "redis"\nurl = "redis+unix://%s"\n' "$tmp/redis.sock" >"$tmp/rc.toml"
  rc=(--runtime-config-file "$tmp/rc.toml")
  store="Redis"
fi

admin=adm_spin_features
export SPIN_VARIABLE_ADMIN_TOKEN="$admin"
export SPIN_VARIABLE_OPENAI_BASE_URL="http://$mock/v1"
export SPIN_VARIABLE_ANTHROPIC_BASE_URL="http://$mock/v1"
export SPIN_VARIABLE_GEMINI_BASE_URL="http://$mock/v1beta"
export SPIN_VARIABLE_AZURE_BASE_URL="http://$mock"
for p in openai azure anthropic gemini; do
  export "SPIN_VARIABLE_${p^^}_ALLOWED_HOST=http://$mock"
  export "SPIN_VARIABLE_${p^^}_API_KEY=up"
done
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
"$SPIN" up -f "$manifest" --listen "127.0.0.1:$port" --state-dir "$tmp/state" "${rc[@]}" \
  >"$tmp/spin.out" 2>"$tmp/spin.err" &
pids+=("$!")
for _ in $(seq 1800); do
  curl -s -o /dev/null "http://127.0.0.1:$port/v1/models" && break
  kill -0 "${pids[-1]}" 2>/dev/null || { tail -n 30 "$tmp/spin.err" >&2; exit 1; }
  sleep 0.1
done
echo "spin-features: $("$SPIN" --version | head -n 1), $store store, mock on $mock, gateway on 127.0.0.1:$port"

GW="http://127.0.0.1:$port" ADMIN="$admin" python3 - <<'PY'
import json, os, sys, time, urllib.request

gw, admin = os.environ["GW"], os.environ["ADMIN"]
failed = []

def call(method, path, token, body=None, headers=()):
    req = urllib.request.Request(gw + path, method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"authorization": f"Bearer {token}", "content-type": "application/json", **dict(headers)})
    t = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            data, status, hs = r.read(), r.status, dict(r.headers.items())
    except urllib.error.HTTPError as e:
        data, status, hs = e.read(), e.code, dict(e.headers.items())
    return status, {k.lower(): v for k, v in hs.items()}, data, (time.monotonic() - t) * 1000

def check(name, ok, detail=""):
    print(("PASS " if ok else "FAIL ") + name + ("" if ok else f": {detail}"))
    if not ok:
        failed.append(name)

s, _, b, _ = call("POST", "/admin/keys", admin, {"name": "spin", "rpm_limit": 100000})
key = json.loads(b)["key"]

# Cache: miss, then a hit at cost 0 with the same content, whole and streamed.
body = {"model": "gpt-4o", "temperature": 0, "messages": [{"role": "user", "content": "spin cache [mock tokens=4]"}]}
s1, h1, b1, _ = call("POST", "/v1/chat/completions", key, body)
time.sleep(0.3)
s2, h2, b2, _ = call("POST", "/v1/chat/completions", key, body)
v1, v2 = json.loads(b1), json.loads(b2)
check("cache: miss then hit", (h1.get("x-lumen-cache"), h2.get("x-lumen-cache")) == ("miss", "hit"), f"{h1.get('x-lumen-cache')} {h2.get('x-lumen-cache')}")
check("cache: same content, cost 0, saved > 0", v1["choices"] == v2["choices"] and v2["lumen"]["cost"] == 0 and v2["lumen"]["cache"]["saved"] > 0, json.dumps(v2.get("lumen")))
sb = dict(body, stream=True, messages=[{"role": "user", "content": "spin stream cache [mock tokens=4]"}])
_, _, sb1, _ = call("POST", "/v1/chat/completions", key, sb)
time.sleep(0.3)
_, sh2, sb2, _ = call("POST", "/v1/chat/completions", key, sb)
ev = lambda b: [l for l in b.decode().split("\n\n") if l.startswith("data:")]
check("cache: stream hit replays the same number of events", sh2.get("x-lumen-cache") == "hit" and len(ev(sb1)) == len(ev(sb2)), f"{sh2.get('x-lumen-cache')} {len(ev(sb1))} vs {len(ev(sb2))}")
s, h, _, _ = call("POST", "/v1/chat/completions", key, body, [("cache-control", "no-store")])
check("cache: no-store bypasses", h.get("x-lumen-cache") == "bypass", h.get("x-lumen-cache"))

# Shadow: the candidate answers after 2 s; the client does not wait for it (against the same
# call on a route without a shadow).
base = []
for i in range(20):
    base.append(call("POST", "/v1/chat/completions", key, {"model": "gpt-4o", "messages": [{"role": "user", "content": f"spin base {i} [mock tokens=4]"}]})[3])
base.sort()
lat = []
for i in range(20):
    s, h, b, ms = call("POST", "/v1/chat/completions", key, {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"spin shadow {i} [mock tokens=4 ttft_ms=2000 only=gpt-4o]"}]})
    lat.append(ms)
lat.sort()
check(f"shadow: client p50 {lat[10]:.1f} ms (no shadow: {base[10]:.1f} ms), max {lat[-1]:.1f} ms: the response ended before the shadow call", lat[10] < 1000 and lat[-1] < 1900, str(lat))
for _ in range(60):
    s, _, b, _ = call("GET", "/admin/shadow/spin-shadow", admin)
    if s == 200 and json.loads(b)["samples"] >= 20:
        break
    time.sleep(0.5)
r = json.loads(b) if s == 200 else {}
check("shadow: /admin/shadow reports both sides", r.get("samples") == 20 and r["candidate"]["ttft_ms"]["p50"] >= 2000 and r["primary"]["models"] == ["gpt-4o-mini"], json.dumps(r)[:400])
print("       verdict:", r.get("verdict"))
s, _, _, _ = call("POST", "/v1/chat/completions", key, {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "spin shadow fails [mock tokens=2 status=500 only=gpt-4o]"}]})
check("shadow: a failing candidate never surfaces", s == 200, s)

# Fusion: streamed, one member failing and named.
fb = {"model": "lumen/fusion", "stream": True, "messages": [{"role": "user", "content": "spin fusion [mock tokens=6 status=500 only=anthropic]"}]}
s, h, b, ms = call("POST", "/v1/chat/completions", key, fb)
data = [json.loads(l[6:]) for l in ev(b) if l != "data: [DONE]"]
fusion = next((d["lumen"]["fusion"] for d in data if "lumen" in d), {})
check("fusion: streamed answer names the dropped member", s == 200 and len(data) > 3 and any("claude-3-5-haiku" in x for x in fusion.get("dropped", [])), json.dumps(fusion)[:400])
print(f"       fusion panel {fusion.get('panel_ms')} ms of {ms:.0f} ms; members", [(m["model"], m["ok"], m["latency_ms"]) for m in fusion.get("panel", [])])
call("PUT", "/admin/tenants/tiny", admin, {"monthly_budget_usd": 0.002})
s, _, b, _ = call("POST", "/admin/keys", admin, {"name": "tiny", "tenant": "tiny"})
tiny = json.loads(b)["key"]
s, _, b, _ = call("POST", "/v1/chat/completions", tiny, dict(fb, max_tokens=1000, stream=False))
check("fusion: a budget too small for the panel is 402", s == 402, s)

# Every leg and every hit metered; the audit chain verifies.
s, _, b, _ = call("GET", "/v1/usage", key)
u = json.loads(b)["total"]
check("metering: hits in /v1/usage", u.get("cache_hits", 0) >= 2, json.dumps(u))
s, _, b, _ = call("GET", "/admin/audit/verify", admin)
check("audit: chain verifies", json.loads(b).get("ok") is True, b[:200])
sys.exit(1 if failed else 0)
PY
