#!/usr/bin/env bash
# What an idle connection of `sockeye serve --echo` keeps on the heap, by allocation site:
# the server runs under heaptrack (Debian `heaptrack`), N idle clients connect, and the
# server is killed (SIGKILL) while they are idle, so that what heaptrack reports as leaked
# is what was live. Per connection, by the innermost sockeye/tokio frame of each stack.
# Usage: bench/idle_heap.sh [CONNECTIONS] [SERVE FLAGS...]   (default 2000). Loopback only.
# WAIT: seconds idle before the kill (default 3; with --ping-interval 2, 9 shows the state
# after keepalive pings).
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-2000}
shift || true
command -v heaptrack >/dev/null || { echo "heaptrack not found (apt-get install heaptrack)" >&2; exit 1; }
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
cargo build --release -q -p sockeye-cli
cargo build --release -q -p sockeye --example idle_clients
target=${CARGO_TARGET_DIR:-target}/release
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
out=$(mktemp -d)
RUST_LOG=${RUST_LOG:-info} heaptrack -o "$out/heap" "$target/sockeye" serve --echo "127.0.0.1:$port" "$@" > "$out/server.log" 2>&1 &
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
server=$(pgrep -f "^$target/sockeye serve --echo 127.0.0.1:$port" | head -1)
fifo="$out/fifo"; mkfifo "$fifo"
"$target/examples/idle_clients" "ws://127.0.0.1:$port/" "$n" < "$fifo" > "$out/clients.out" &
client=$!
exec 4>"$fifo"
for _ in $(seq 600); do grep -q ready "$out/clients.out" 2>/dev/null && break; sleep 0.1; done
sleep "${WAIT:-3}"
kill -9 "$server"
sleep 1
exec 4>&-
wait "$client" || true
for _ in $(seq 100); do [ -s "$out/heap.zst" ] && ! pgrep -f "heaptrack.*$out" >/dev/null && break; sleep 0.2; done
heaptrack_print "$out/heap.zst" -F "$out/stacks.txt" --flamegraph-cost-type leaked > /dev/null 2>&1
python3 - "$n" "$out/stacks.txt" <<'PY'
import collections, sys
n, path = int(sys.argv[1]), sys.argv[2]
by_site = collections.Counter()
for line in open(path):
    stack, cost = line.rsplit(' ', 1)
    frames = stack.split(';')
    site = next((f for f in reversed(frames) if any(k in f for k in ('sockeye', 'tokio', 'hashbrown'))), frames[-1])
    by_site[site[:120]] += int(cost)
print(f"connections: {n}")
print(f"live heap per connection: {sum(by_site.values()) / n:.0f} bytes (fixed costs included)")
for site, cost in by_site.most_common(20):
    print(f"{cost / n:8.1f}  {site}")
PY
rm -rf "$out"
