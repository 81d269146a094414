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

# Independent peers for the interop tests: python-websockets (PyPI) in a local venv.
PY_PEERS="websockets==17.4"
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import websockets' 2>/dev/null; then
    python3 -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check $PY_PEERS
fi
export SOCKEYE_PYTHON="$PWD/.venv/bin/python"

if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace "$@"
else
    echo "cargo-nextest not found: using cargo test" >&2
    cargo test --workspace "$@"
fi
cargo test --workspace --doc
