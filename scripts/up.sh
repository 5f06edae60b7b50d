#!/usr/bin/env bash
# Build Lumen, then serve it on 127.0.0.1:3000 with `lumen up` (embedded SQLite KV in .spin/).
#
#   scripts/up.sh                                  # every provider on the bundled mock: offline
#   SPIN_VARIABLE_OPENAI_API_KEY=sk-... scripts/up.sh                       # OpenAI for real, the rest on the mock
#   SPIN_VARIABLE_OPENAI_BASE_URL=http://127.0.0.1:9000/v1 scripts/up.sh   # any OpenAI-compatible server
#   scripts/up.sh --listen 127.0.0.1:8080          # extra arguments go to `lumen up`
#
# A provider whose key (SPIN_VARIABLE_<PROVIDER>_API_KEY) or base URL is not set is pointed at
# the bundled mock, so nothing is sent to a real provider unless you set its key. The admin
# token is SPIN_VARIABLE_ADMIN_TOKEN when set (never printed), else one generated for this run.
# The first build takes a while (README: "First run"); later runs only rebuild what changed,
# and `target/release/lumen up` starts without building at all.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/build.sh
exec target/release/lumen up "$@"
