#!/usr/bin/env bash
# Runs the sockeye-proto micro-benchmarks (crates/sockeye-proto/benches/proto.rs).
#
#   bench/micro.sh                   # everything, a few minutes
#   bench/micro.sh mask              # one group: frame_decode, frame_encode, mask, utf8,
#                                    # handshake, deflate
#   bench/micro.sh 'utf8/ascii' --measurement-time 5
#
# Arguments go to criterion. The benchmark is built first on all CPUs, then run pinned to
# CPU 1 with taskset when available, for steadier numbers. Reports: target/criterion/.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo bench -p sockeye-proto --bench proto --no-run
cmd=(cargo bench -p sockeye-proto --bench proto -- "$@")
if command -v taskset >/dev/null 2>&1 && taskset -c 1 true 2>/dev/null; then
    exec taskset -c 1 "${cmd[@]}"
else
    echo "taskset unavailable or no CPU 1: running unpinned" >&2
    exec "${cmd[@]}"
fi
