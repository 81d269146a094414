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

if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace "$@"
else
    echo "cargo-nextest not found: using cargo test" >&2
    cargo test --workspace "$@"
fi
cargo test --workspace --doc
