#!/usr/bin/env bash
# The test command of the README: every test of the workspace.
#
# Unit and integration tests run under cargo-nextest when it is installed (faster, one
# process per test), else under cargo test. nextest does not run doctests, so they run
# separately with cargo test --doc either way.
#
# Extra arguments go to the test runner, e.g. scripts/test.sh -p sockeye-proto.
set -euo pipefail
cd "$(dirname "$0")/.."

# Real components: redis-server (cross-process pub/sub, tests start their own on a free
# loopback port) and Debian's chromium (the demo page, driven by playwright-core from npm).
apt_missing=()
command -v redis-server >/dev/null 2>&1 || apt_missing+=(redis-server)
[ -x "${CHROMIUM:-/usr/bin/chromium}" ] || apt_missing+=(chromium)
if [ "${#apt_missing[@]}" -gt 0 ]; then
    echo "installing ${apt_missing[*]} (Debian packages)" >&2
    sudo=()
    [ "$(id -u)" = 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${apt_missing[@]}" >/dev/null
fi
BROWSER_TESTS=crates/sockeye-cli/tests/browser
if [ ! -d "$BROWSER_TESTS/node_modules/playwright-core" ]; then
    (cd "$BROWSER_TESTS" && npm ci --no-audit --no-fund --loglevel=error)
fi

# Independent peers for the interop tests: python-websockets (PyPI) in a local venv.
PY_PEERS="websockets==17.4"
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import websockets' 2>/dev/null; then
    python3 -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check $PY_PEERS
fi
export SOCKEYE_PYTHON="$PWD/.venv/bin/python"

if cargo nextest --version >/dev/null 2>&1; then
    profile=()
    # CI: retry a failed test once (reported as FLAKY) and run them all (.config/nextest.toml).
    [ -n "${CI:-}" ] && profile=(--profile ci)
    cargo nextest run "${profile[@]}" --workspace --all-features "$@"
else
    echo "cargo-nextest not found: using cargo test" >&2
    cargo test --workspace --all-features "$@"
fi
cargo test --workspace --all-features --doc
