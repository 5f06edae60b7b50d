#!/usr/bin/env bash
# Deploy Lumen to Fermyon Cloud with every Spin variable set from an env file:
#
#   cp deploy/fermyon-cloud/variables.env.example ~/.config/lumen/cloud.env   # then fill it in
#   spin cloud login
#   deploy/fermyon-cloud/deploy.sh [ENV_FILE]        # default ~/.config/lumen/cloud.env
#
# Each NAME=VALUE line becomes `--variable NAME=VALUE`; later changes need no redeploy:
#   spin cloud variables set --app lumen openai_api_key=sk-…
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

env_file="${1:-${LUMEN_CLOUD_ENV:-$HOME/.config/lumen/cloud.env}}"
if [[ ! -f "$env_file" ]]; then
  echo "no variables file at $env_file: copy deploy/fermyon-cloud/variables.env.example there and fill it in" >&2
  exit 1
fi
args=()
while IFS= read -r line || [[ -n "$line" ]]; do
  [[ -z "${line//[[:space:]]/}" || "$line" == \#* ]] && continue
  [[ "$line" == *=* ]] || { echo "$env_file: not NAME=VALUE: $line" >&2; exit 1; }
  args+=(--variable "$line")
done <"$env_file"

spin build
spin cloud deploy "${args[@]}"
