#!/usr/bin/env bash
# Build and run Lumen locally on 127.0.0.1:3000 with the embedded SQLite KV (.spin/).
#
#   scripts/up.sh                         # bundled mock upstream (no OpenAI key needed)
#   SPIN_VARIABLE_OPENAI_API_KEY=sk-... scripts/up.sh            # the real OpenAI API
#   SPIN_VARIABLE_OPENAI_BASE_URL=http://127.0.0.1:9000/v1 scripts/up.sh   # any OpenAI-compatible server
#   scripts/up.sh --listen 127.0.0.1:8080 # extra arguments go to `lumen-host up`
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/build.sh

listen=127.0.0.1:3000
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[$i]}" in
    --listen) listen="${args[$((i + 1))]:-$listen}" ;;
    --listen=*) listen="${args[$i]#--listen=}" ;;
  esac
done
has_listen=0
for a in "$@"; do [[ "$a" == --listen || "$a" == --listen=* ]] && has_listen=1; done
[[ $has_listen == 1 ]] || args=(--listen "$listen" "${args[@]}")

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ -z "${SPIN_VARIABLE_OPENAI_BASE_URL:-}" && -z "${SPIN_VARIABLE_OPENAI_API_KEY:-}" ]]; then
  # No upstream configured: start the bundled OpenAI-compatible mock so the gateway works offline.
  mock_log=$(mktemp)
  target/release/lumen-mock --listen 127.0.0.1:0 --token-delay-ms 20 >"$mock_log" &
  pids+=($!)
  for _ in $(seq 100); do grep -q '^Serving ' "$mock_log" && break; sleep 0.05; done
  mock_addr=$(sed -n 's#^Serving http://##p' "$mock_log" | head -1)
  [[ -n "$mock_addr" ]] || { echo "lumen-mock did not start" >&2; exit 1; }
  export SPIN_VARIABLE_OPENAI_BASE_URL="http://$mock_addr/v1"
  # The mock speaks every dialect of the catalog on its own routes.
  for p in AZURE:"" ANTHROPIC:/v1 GEMINI:/v1beta VLLM:/v1 RUNPOD:/v2/qwen; do
    name=${p%%:*}; path=${p#*:}
    export "SPIN_VARIABLE_${name}_BASE_URL=http://$mock_addr$path" "SPIN_VARIABLE_${name}_ALLOWED_HOST=http://$mock_addr"
  done
  echo "No upstream configured: using the bundled mock at $SPIN_VARIABLE_OPENAI_BASE_URL"
  echo "(set SPIN_VARIABLE_OPENAI_API_KEY for OpenAI, or SPIN_VARIABLE_OPENAI_BASE_URL for another server)"
fi
for name in OPENAI AZURE ANTHROPIC GEMINI VLLM RUNPOD; do
  base_var="SPIN_VARIABLE_${name}_BASE_URL"; host_var="SPIN_VARIABLE_${name}_ALLOWED_HOST"
  if [[ -n "${!base_var:-}" && -z "${!host_var:-}" ]]; then
    # Spin's allowed_outbound_hosts takes scheme://host[:port] only: derive it from the base URL.
    export "$host_var=$(printf '%s' "${!base_var}" | sed -E 's#^([a-zA-Z]+://[^/]+).*#\1#')"
  fi
done
if [[ -z "${SPIN_VARIABLE_ADMIN_TOKEN:-}" ]]; then
  SPIN_VARIABLE_ADMIN_TOKEN="adm_$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  export SPIN_VARIABLE_ADMIN_TOKEN
  echo "Generated an admin token for this run (set SPIN_VARIABLE_ADMIN_TOKEN to choose one)."
fi
cat <<MSG

Make an API key, then call the gateway:
  curl -s http://$listen/admin/keys -H "Authorization: Bearer $SPIN_VARIABLE_ADMIN_TOKEN" \\
       -H 'content-type: application/json' -d '{"name":"me","rpm_limit":600}'
  curl -s http://$listen/v1/chat/completions -H "Authorization: Bearer <key from above>" \\
       -H 'content-type: application/json' -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'

MSG
target/release/lumen-host up "${args[@]}" &
pids+=($!)
wait "${pids[-1]}"
