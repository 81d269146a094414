#!/usr/bin/env bash
# Side-by-side benchmark of sockeye against peer WebSocket servers (issue 7).
#
#   bench/run.sh            # every case, every server, 3 rounds (~20 min on 2 cores)
#   bench/run.sh --quick    # 1 round, short runs, fewer connections: a smoke check
#
# Each server runs pinned to CPU 0 (taskset -c 0), the load (`sockeye bench`, or
# examples/idle_clients for memory) pinned to CPU 1. Rounds are interleaved: round 1 runs
# every case on every server, then round 2, ... Raw results: one JSON line per run in
# bench/results/run-DATE.jsonl, copied to bench/results/latest.jsonl; then bench_report
# (bench/peers) writes docs/bench.svg and the tables between the markers
# <!-- bench:begin --> / <!-- bench:end --> of docs/benchmarks.md.
#
# Environment:
#   CASES="echo-20-32 echo-20-1 echo-16k echo-1m deflate idle broadcast handshake"
#   SERVERS="sockeye sockeye-tasks sockeye-reactor fastwebsockets tokio-tungstenite tokio-websockets yawc python-websockets node-ws"
#   ROUNDS=3 DURATION=5 WARMUP=1 IDLE_N=10000 BROADCAST_N=10000
#   WAIT_QUIET=1     wait (up to 20 min, polling every 30 s) for a 1-minute load < 0.7
#   NO_REPORT=1      only measure (no docs update)
#   CARGO_TARGET_DIR main workspace's target dir (default: target/)
#
# Not part of the default build or of CI. Loopback only; every run is bounded by timeout;
# servers are stopped by their PID.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

quick=0
for a in "$@"; do
    case "$a" in
    --quick) quick=1 ;;
    -h | --help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "unknown argument: $a" >&2; exit 2 ;;
    esac
done

ALL_CASES="echo-20-32 echo-20-1 echo-16k echo-1m deflate idle broadcast handshake"
ALL_SERVERS="sockeye sockeye-tasks sockeye-reactor fastwebsockets tokio-tungstenite tokio-websockets yawc python-websockets node-ws"
CASES=${CASES:-$ALL_CASES}
SERVERS=${SERVERS:-$ALL_SERVERS}
if [ "$quick" = 1 ]; then
    ROUNDS=${ROUNDS:-1} DURATION=${DURATION:-1} WARMUP=${WARMUP:-0.5}
    IDLE_N=${IDLE_N:-2000} BROADCAST_N=${BROADCAST_N:-1000}
else
    ROUNDS=${ROUNDS:-3} DURATION=${DURATION:-5} WARMUP=${WARMUP:-1}
    IDLE_N=${IDLE_N:-10000} BROADCAST_N=${BROADCAST_N:-10000}
fi
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"

# ---- build and install -------------------------------------------------------------
main_target=${CARGO_TARGET_DIR:-$root/target}
peers_target=$root/bench/peers/target
echo "building (release)..." >&2
cargo build --release -q -p sockeye-cli
cargo build --release -q -p sockeye --example idle_clients
CARGO_TARGET_DIR=$peers_target cargo build --release -q --manifest-path bench/peers/Cargo.toml
SOCKEYE=$main_target/release/sockeye
IDLE_CLIENTS=$main_target/release/examples/idle_clients
PEERS=$peers_target/release
venv=$root/bench/peers/.venv
if ! "$venv/bin/python" -c 'import websockets' 2>/dev/null; then
    echo "installing python websockets into bench/peers/.venv..." >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q 'websockets==17.4'
fi
if [ ! -d bench/peers/node/node_modules/ws ]; then
    echo "installing ws into bench/peers/node/node_modules..." >&2
    (cd bench/peers/node && npm ci --no-audit --no-fund --silent)
fi
PYTHON_VERSION=$("$venv/bin/python" -c 'import websockets; print(websockets.__version__)')
WS_VERSION=$(node -p 'require("./bench/peers/node/node_modules/ws/package.json").version')

# ---- servers -------------------------------------------------------------------------
# server_cmd SERVER MODE ADDR -> the command line, MODE: echo | deflate | broadcast.
# Prints nothing when SERVER has no such mode.
server_cmd() {
    local s=$1 mode=$2 addr=$3 flag=
    case "$mode" in deflate) flag=--deflate ;; broadcast) flag=--broadcast ;; esac
    case "$s:$mode" in
    sockeye:broadcast) echo "$SOCKEYE serve $addr" ;;            # the relay
    sockeye:*) echo "$SOCKEYE serve --echo $addr" ;;             # deflate: negotiated by default
    # sockeye::serve's handlers on tokio tasks instead of the event loops.
    sockeye-tasks:broadcast) echo "$SOCKEYE serve --tasks $addr" ;;
    sockeye-tasks:*) echo "$SOCKEYE serve --echo --tasks $addr" ;;
    sockeye-reactor:broadcast) echo "$SOCKEYE serve --reactor $addr" ;;  # its relay
    sockeye-reactor:*) echo "$SOCKEYE serve --echo --reactor $addr" ;;
    fastwebsockets:echo) echo "$PEERS/fastwebsockets_echo $addr" ;;
    tokio-tungstenite:echo | tokio-tungstenite:broadcast) echo "$PEERS/tungstenite_echo $addr $flag" ;;
    tokio-websockets:echo | tokio-websockets:broadcast) echo "$PEERS/tokio_websockets_echo $addr $flag" ;;
    yawc:echo | yawc:deflate) echo "$PEERS/yawc_echo $addr $flag" ;;
    python-websockets:*) echo "$venv/bin/python bench/peers/python_echo.py $addr $flag" ;;
    node-ws:*) echo "node bench/peers/node_echo.mjs $addr $flag" ;;
    esac
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

server_pid=
start_server() { # CMD PORT: starts it on CPU 0, waits until it accepts
    # shellcheck disable=SC2086
    RUST_LOG=error taskset -c 0 $1 >/dev/null 2>&1 &
    server_pid=$!
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null && { sleep 0.2; return 0; }
        kill -0 "$server_pid" 2>/dev/null || break
        sleep 0.1
    done
    echo "server did not start: $1" >&2
    stop_server
    return 1
}
stop_server() {
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        for _ in $(seq 30); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=
    fi
}
trap stop_server EXIT

# ---- cases -----------------------------------------------------------------------------
case_mode() { case "$1" in deflate) echo deflate ;; broadcast) echo broadcast ;; *) echo echo ;; esac; }
case_args() { # CASE -> sockeye bench arguments
    case "$1" in
    echo-20-32) echo "-c 100 -s 20 -f 32" ;;
    echo-20-1) echo "-c 100 -s 20 -f 1" ;;
    echo-16k) echo "-c 100 -s 16384 -f 1 --binary" ;;
    echo-1m) echo "-c 10 -s 1048576 -f 1 --binary" ;;
    deflate) echo "-c 100 -s 1024 -f 4 --text --compression" ;;
    broadcast) echo "--mode broadcast -c $BROADCAST_N -s 20 -f 1" ;;
    handshake) echo "--mode handshake -c 10" ;;
    esac
}

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

# idle_run PORT -> {"connections":N,"rss_before_kib":..,"rss_after_kib":..,"bytes_per_connection":..}
idle_run() {
    local port=$1 before after fifo out client
    sleep 0.5
    before=$(rss_kib "$server_pid")
    fifo=$(mktemp -u); mkfifo "$fifo"; out=$(mktemp)
    timeout 180 taskset -c 1 "$IDLE_CLIENTS" "ws://127.0.0.1:$port/" "$IDLE_N" <"$fifo" >"$out" 2>&1 &
    client=$!
    exec 4>"$fifo"
    for _ in $(seq 1200); do
        grep -q ready "$out" 2>/dev/null && break
        kill -0 "$client" 2>/dev/null || break
        sleep 0.1
    done
    local ok=0
    grep -q ready "$out" && ok=1
    sleep 1
    after=$(rss_kib "$server_pid")
    exec 4>&-
    wait "$client" 2>/dev/null || true
    rm -f "$fifo"
    if [ "$ok" = 1 ]; then
        awk -v a="$after" -v b="$before" -v n="$IDLE_N" 'BEGIN {
            printf "{\"connections\":%d,\"rss_before_kib\":%d,\"rss_after_kib\":%d,\"bytes_per_connection\":%.1f,\"errors\":0}", n, b, a, (a-b)*1024/n }'
    else
        printf '{"connections":%d,"errors":1,"first_error":"%s"}' "$IDLE_N" "$(head -c 200 "$out" | tr '"\n' "' ")"
    fi
    rm -f "$out"
}

# ---- wait for a quiet machine -------------------------------------------------------------
load1() { cut -d' ' -f1 /proc/loadavg; }
if [ "${WAIT_QUIET:-0}" = 1 ]; then
    for _ in $(seq 40); do
        awk -v l="$(load1)" 'BEGIN { exit !(l < 0.7) }' && break
        echo "load average $(load1): waiting for < 0.7..." >&2
        sleep 30
    done
fi

# ---- run ------------------------------------------------------------------------------------
mkdir -p bench/results
stamp=$(date -u +%Y%m%dT%H%M%SZ)
results=bench/results/run-$stamp.jsonl
: >"$results"
start_load=$(cat /proc/loadavg)
printf '{"meta":{"date":"%s","quick":%s,"rounds":%s,"duration":%s,"warmup":%s,"idle_n":%s,"broadcast_n":%s,"loadavg_start":"%s","cpu":"%s","python_websockets":"%s","node_ws":"%s","node":"%s","commit":"%s"}}\n' \
    "$stamp" "$([ $quick = 1 ] && echo true || echo false)" "$ROUNDS" "$DURATION" "$WARMUP" \
    "$IDLE_N" "$BROADCAST_N" "$start_load" \
    "$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)" "$PYTHON_VERSION" "$WS_VERSION" \
    "$(node --version)" "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" >>"$results"

for round in $(seq "$ROUNDS"); do
    for c in $CASES; do
        mode=$(case_mode "$c")
        for s in $SERVERS; do
            port=$(free_port)
            cmd=$(server_cmd "$s" "$mode" "127.0.0.1:$port")
            [ -n "$cmd" ] || continue
            load=$(load1)
            echo "round $round/$ROUNDS  $c  $s  (load $load)" >&2
            start_server "$cmd" "$port" || {
                printf '{"case":"%s","server":"%s","round":%d,"load1":%s,"result":null,"error":"server did not start"}\n' \
                    "$c" "$s" "$round" "$load" >>"$results"
                continue
            }
            if [ "$c" = idle ]; then
                result=$(idle_run "$port")
            else
                path=/
                [ "$c" = broadcast ] && path=/bench
                # shellcheck disable=SC2046
                result=$(timeout 120 taskset -c 1 "$SOCKEYE" bench "ws://127.0.0.1:$port$path" \
                    $(case_args "$c") -d "$DURATION" --warmup "$WARMUP" \
                    --server-pid "$server_pid" --json 2>/dev/null | tail -n 1) || true
            fi
            alive=true
            kill -0 "$server_pid" 2>/dev/null || alive=false
            stop_server
            [ -n "$result" ] || result=null
            printf '{"case":"%s","server":"%s","round":%d,"load1":%s,"server_survived":%s,"result":%s}\n' \
                "$c" "$s" "$round" "$load" "$alive" "$result" >>"$results"
        done
    done
done
printf '{"meta_end":{"loadavg_end":"%s"}}\n' "$(cat /proc/loadavg)" >>"$results"
cp "$results" bench/results/latest.jsonl
echo "results: $results (and bench/results/latest.jsonl)" >&2

# ---- report ---------------------------------------------------------------------------------
[ "${NO_REPORT:-0}" = 1 ] && exit 0
table=$(mktemp)
"$PEERS/bench_report" bench/results/latest.jsonl docs/bench.svg >"$table"
python3 - "$table" docs/benchmarks.md <<'EOF'
import sys
table = open(sys.argv[1]).read().strip()
path = sys.argv[2]
doc = open(path).read()
begin, end = "<!-- bench:begin -->", "<!-- bench:end -->"
if begin in doc and end in doc:
    head, rest = doc.split(begin, 1)
    _, tail = rest.split(end, 1)
    doc = f"{head}{begin}\n{table}\n{end}{tail}"
else:
    doc = doc.rstrip("\n") + f"\n\n{begin}\n{table}\n{end}\n"
open(path, "w").write(doc)
EOF
rm -f "$table"
echo "wrote docs/bench.svg and the tables in docs/benchmarks.md" >&2
