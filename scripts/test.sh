#!/usr/bin/env bash
# The whole test suite: format and lint checks, unit tests, end-to-end tests of the compiled
# components through lumen-host, and the official SDKs (openai and anthropic Python, openai Node)
# against the gateway; then the end-to-end and SDK suites again under real Spin, when a `spin`
# binary is found (SPIN_BIN, PATH, or ../shared/tools/get-spin.sh): `spin up` on its SQLite store
# (leg spin-sqlite) and two `spin up` processes sharing one Redis (leg spin-redis). The tests pick
# the runtime from LUMEN_TEST_RUNTIME (tests/README.md). Where no Spin is found, the Spin legs
# print "skipped" and why.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs="${CARGO_BUILD_JOBS:-2}"

# What the suite needs besides Rust: checked before the long build. As root with apt-get (CI,
# .ci/run) the missing Debian packages are installed; elsewhere the script says what to install.
echo "== prerequisites"
missing=()
command -v cargo >/dev/null && command -v rustup >/dev/null || {
  echo "missing: a Rust toolchain with rustup (https://rustup.rs), then re-run" >&2; exit 1; }
cargo fmt --version >/dev/null 2>&1 && cargo clippy --version >/dev/null 2>&1 || {
  echo "missing: rustfmt and clippy (rustup component add rustfmt clippy), then re-run" >&2; exit 1; }
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
command -v redis-server >/dev/null || missing+=(redis-server)   # the shared-KV (replica) tests
command -v node >/dev/null || missing+=(nodejs)                 # the openai Node SDK tests
command -v npm >/dev/null || missing+=(npm)
if [[ "${LUMEN_SKIP_BROWSER:-}" != 1 ]]; then                    # the dashboard's browser test
  [[ -x "${LUMEN_CHROMIUM:-/usr/bin/chromium}" ]] || missing+=(chromium)
  [[ -x "${LUMEN_CHROMEDRIVER:-/usr/bin/chromedriver}" ]] || missing+=(chromium-driver)
fi
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "installing ${missing[*]}"
    apt-get update -qq && apt-get install -y -qq "${missing[@]}"
  else
    echo "missing: ${missing[*]}" >&2
    echo "install them (Debian/Ubuntu: sudo apt-get install ${missing[*]}) and re-run; README.md, 'Tests', lists why each is needed" >&2
    exit 1
  fi
fi

scripts/build.sh

echo "== rustfmt"
cargo fmt --all -- --check
echo "== clippy (host and wasm targets)"
cargo clippy --release -j "$jobs" -p lumen-shared -p lumen-host -p lumen-tests --all-targets -- -D warnings
cargo clippy --release -j "$jobs" --target wasm32-wasip2 -p lumen-auth -p lumen-router -p lumen-provider -p lumen-meter -p lumen-dashboard -p lumen-spin -p lumen-spin-floor -- -D warnings

echo "== cargo test (unit, end-to-end through the host)"
cargo test --release -j "$jobs" -p lumen-shared -p lumen-host -p lumen-tests
echo "== component unit tests (native)"
cargo test --release -j "$jobs" -p lumen-spin -p lumen-auth -p lumen-router -p lumen-provider -p lumen-meter -p lumen-dashboard -p lumen-spin-floor

echo "== router training reproduces the shipped weights"
if [[ -f ../shared/data/mmlu-pro-outcomes.csv.gz ]]; then
  scripts/train-router.sh --check
else
  echo "skipped: ../shared/data/mmlu-pro-outcomes.csv.gz is not here"
fi

echo "== Python: the openai and anthropic SDKs, and the deploy/ manifests"
if [[ ! -x .venv/bin/python ]]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt \
  -c tests/python/constraints.txt
.venv/bin/python -m pytest tests/python -q -m "not browser"

echo "== dashboard in headless Chromium (screenshot: target/test-artifacts/dashboard.png)"
if [[ ! -x "${LUMEN_CHROMIUM:-/usr/bin/chromium}" || ! -x "${LUMEN_CHROMEDRIVER:-/usr/bin/chromedriver}" ]]; then
  echo "missing chromium or chromedriver: install Debian's chromium and chromium-driver" >&2
  echo "(sudo apt-get install chromium chromium-driver; .ci/run does), or set LUMEN_SKIP_BROWSER=1 to skip this step" >&2
  [[ "${LUMEN_SKIP_BROWSER:-}" == 1 ]] || exit 1
fi
.venv/bin/python -m pytest tests/python -q -m browser

echo "== OpenAI Node SDK"
(cd tests/node && npm ci --no-audit --no-fund --loglevel=error && node --test)

# The Spin legs: the same end-to-end test binaries (those that run the gateway) and SDK suites,
# with the gateway under real `spin up`. Not here: cli, first_run, lumen_cli, imports and
# router_probes test lumen-host's own binaries or need no runtime; hardening and attack test
# lumen-host's HTTP server; kv_ops reads lumen-host's per-request KV operation log.
spin=""
if [[ -n "${SPIN_BIN:-}" ]]; then
  spin="$SPIN_BIN"
  [[ -x "$spin" ]] || { echo "SPIN_BIN=$spin is not an executable" >&2; exit 1; }
elif command -v spin >/dev/null; then
  spin="$(command -v spin)"
elif [[ -x ../shared/tools/get-spin.sh ]]; then
  spin="$(../shared/tools/get-spin.sh)"
fi
e2e=()
for f in tests/tests/*.rs; do
  name="$(basename "$f" .rs)"
  case "$name" in cli|first_run|imports|router_probes|lumen_cli|hardening|attack|kv_ops) ;; *) e2e+=(--test "$name") ;; esac
done
for leg in spin-sqlite spin-redis; do
  if [[ -z "$spin" ]]; then
    echo "== $leg: skipped: no spin binary (SPIN_BIN is unset, no spin on PATH, no ../shared/tools/get-spin.sh)"
    continue
  fi
  started=$SECONDS
  echo "== $leg: end-to-end under real Spin ($("$spin" --version))"
  LUMEN_TEST_RUNTIME=$leg SPIN_BIN="$spin" cargo test --release -j "$jobs" -p lumen-tests "${e2e[@]}"
  echo "== $leg: Python SDKs and the dashboard"
  browser=(-m "not browser")
  [[ -x "${LUMEN_CHROMIUM:-/usr/bin/chromium}" && -x "${LUMEN_CHROMEDRIVER:-/usr/bin/chromedriver}" ]] && browser=()
  LUMEN_TEST_RUNTIME=$leg SPIN_BIN="$spin" .venv/bin/python -m pytest tests/python -q "${browser[@]}" --ignore tests/python/test_deploy.py
  echo "== $leg: OpenAI Node SDK"
  (cd tests/node && LUMEN_TEST_RUNTIME=$leg SPIN_BIN="$spin" node --test)
  echo "== $leg: passed in $((SECONDS - started)) s"
done
