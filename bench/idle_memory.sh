#!/usr/bin/env bash
# Memory per idle connection of `sockeye serve --echo`: server RSS delta / connections.
# Usage: bench/idle_memory.sh [CONNECTIONS]   (default 10000). Loopback only; stops by itself.
# SERVE_FLAGS: more flags for the server. SETTLE: seconds to wait once the clients are
# connected before reading the server's RSS (default 1); with SERVE_FLAGS="--ping-interval 2"
# SETTLE=7 measures connections that have been through keepalive pings.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-10000}
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
cargo build --release -q -p sockeye-cli
cargo build --release -q -p sockeye --example idle_clients
target=${CARGO_TARGET_DIR:-target}/release
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$target/sockeye" serve --echo "127.0.0.1:$port" ${SERVE_FLAGS:-} 2>/dev/null &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
rss() { awk '/^VmRSS/ {print $2}' /proc/$server/status; }
sleep 0.5
before=$(rss)
fifo=$(mktemp -u); mkfifo "$fifo"
"$target/examples/idle_clients" "ws://127.0.0.1:$port/" "$n" < "$fifo" > /tmp/idle_clients.out &
client=$!
exec 4>"$fifo"
for _ in $(seq 600); do grep -q ready /tmp/idle_clients.out 2>/dev/null && break; sleep 0.1; done
sleep "${SETTLE:-1}"
after=$(rss)
exec 4>&-
wait $client || true
rm -f "$fifo"
echo "connections: $n"
echo "server RSS before: ${before} KiB, with connections: ${after} KiB"
awk -v a="$after" -v b="$before" -v n="$n" 'BEGIN { printf "memory per idle connection: %.0f bytes\n", (a-b)*1024/n }'
