#!/usr/bin/env bash
# Trains the router's scorer behind model "auto" (P(a cheaper model falls short of a stronger
# one)) on ../shared/data (MMLU-Pro outcomes, GSM8K) and writes config/router-weights.bin and
# bench/ROUTER-eval.md (per held-out group APGR/CPT vs random and prompt length, calibration).
# Deterministic: `scripts/train-router.sh --check` retrains and fails if the result differs from
# the committed files.
#
#   scripts/train-router.sh --feedback labels.jsonl [--prompts prompts.jsonl] [--feedback-weight 0.5]
# mixes exported feedback labels (format in tests/src/train/feedback.rs and bench/ROUTER.md; the
# gateway's GET /admin/feedback writes them without prompts, which --prompts joins by request_id)
# into training and appends a before/after table on the held-out groups to the report.
# Other args go to lumen-train (--data PATH, --gsm8k PATH, --out, --report; see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -j 2 -p lumen-tests --bin lumen-train
exec nice -n 10 target/release/lumen-train "$@"
