#!/usr/bin/env bash
# Runs the Autobahn TestSuite (via kosoku, a native runner of the Autobahn case files) against
# sockeye, on 127.0.0.1 only.
#
#   autobahn/run.sh [server|client|all]      (default: all)
#
# server: `sockeye serve --echo` is the testee; kosoku (fuzzingclient) drives the whole suite.
# client: kosoku (fuzzingserver) serves the whole suite; examples/autobahn_client is the testee.
#
# Reports (Autobahn format, index.json + per-case JSON/HTML) go to autobahn/reports/{server,client}.
# Prints the failing cases and `SIDE: N passed, N failed` per side, and the wall time.
# Exit status: 0 when every case of every side run passed, 1 otherwise, 2 on a setup error.
#
# Environment:
#   KOSOKU          path of the kosoku command (default: install it into $KOSOKU_VENV)
#   KOSOKU_VENV     venv to install kosoku into when KOSOKU is unset (default: target/kosoku-venv)
#   KOSOKU_VERSION  version pinned for that install (default 0.1.0)
#   SIDE_TIMEOUT    seconds one side may take before it is stopped (default 1800)
#   PARALLELISM     kosoku -p for the server side (default 1)
#   CASE_TIMEOUT    seconds the client testee gives one case before abandoning it (default 30;
#                   the slowest case takes about 15 s)
#   FRONT           tokio (default), tasks, sync, reactor or reactor-async: which front end
#                   is the testee (tokio: `sockeye serve --echo`, async handlers on event
#                   loops, and examples/autobahn_client; tasks, a server only, the same with
#                   a tokio task per connection, `--tasks`; sync runs `sockeye serve --echo
#                   --sync` and examples/autobahn_client_sync; reactor, a server only,
#                   `sockeye serve --echo --reactor`, callbacks; reactor-async, a server
#                   only, the echo as an async handler through `reactor::ServerBuilder`,
#                   `--reactor --async`)
#   CARGO_TARGET_DIR  as usual (default: target/ of the workspace)
set -uo pipefail

MODE="${1:-all}"
case "$MODE" in
server | client | all) ;;
*)
    echo "usage: $0 [server|client|all]" >&2
    exit 2
    ;;
esac

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
REPORTS="$HERE/reports"
SIDE_TIMEOUT="${SIDE_TIMEOUT:-1800}"
PARALLELISM="${PARALLELISM:-1}"
CASE_TIMEOUT="${CASE_TIMEOUT:-30}"
KOSOKU_VERSION="${KOSOKU_VERSION:-0.1.0}"
TOTAL=517 # cases in kosoku 0.1.0's full suite; re-read from the package below

PIDS=()
cleanup() {
    # Only what this script started, by PID.
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "[autobahn] $*" >&2; }

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Waits until something listens on 127.0.0.1:$1, at most $2 seconds; fails if PID $3 died.
wait_port() {
    local port=$1 limit=$2 pid=$3 i
    for ((i = 0; i < limit * 10; i++)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            return 1
        fi
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}

now() { date +%s.%N; }
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(now)"; }

# --- kosoku -------------------------------------------------------------------------------
if [[ -z "${KOSOKU:-}" ]]; then
    VENV="${KOSOKU_VENV:-$TARGET/kosoku-venv}"
    KOSOKU="$VENV/bin/kosoku"
    if [[ ! -x "$KOSOKU" ]]; then
        log "installing kosoku $KOSOKU_VERSION into $VENV"
        python3 -m venv "$VENV" && "$VENV/bin/pip" install --quiet "kosoku==$KOSOKU_VERSION" || {
            log "cannot install kosoku"
            exit 2
        }
    fi
fi
KPY="$(dirname "$KOSOKU")/python"
if [[ -x "$KPY" ]]; then
    TOTAL="$("$KPY" -c 'import kosoku.cases as c; print(len(c.CASES))' 2>/dev/null || echo "$TOTAL")"
fi

# --- build --------------------------------------------------------------------------------
T0="$(now)"
log "building release binaries"
FRONT="${FRONT:-tokio}"
case "$FRONT" in
tokio) EXAMPLE=autobahn_client SERVE_FLAGS=() SUFFIX="" ;;
tasks) EXAMPLE="" SERVE_FLAGS=(--tasks) SUFFIX="-tasks" ;;
sync) EXAMPLE=autobahn_client_sync SERVE_FLAGS=(--sync) SUFFIX="-sync" ;;
# The event-loop front end is a server only: `all` runs its server side.
reactor) EXAMPLE="" SERVE_FLAGS=(--reactor) SUFFIX="-reactor" ;;
reactor-async) EXAMPLE="" SERVE_FLAGS=(--reactor --async) SUFFIX="-reactor-async" ;;
*)
    echo "FRONT must be tokio, tasks, sync, reactor or reactor-async" >&2
    exit 2
    ;;
esac
(cd "$ROOT" && cargo build --release --quiet -p sockeye-cli && { [ -z "$EXAMPLE" ] || cargo build --release --quiet -p sockeye --example "$EXAMPLE"; }) || {
    log "build failed"
    exit 2
}
SOCKEYE="$TARGET/release/sockeye"
CLIENT="$TARGET/release/examples/$EXAMPLE"
log "build: $(elapsed "$T0") s"

STATUS=0
SUMMARY=()

run_server_side() {
    local out="$REPORTS/server$SUFFIX" port spid t0 rc
    rm -rf "$out" && mkdir -p "$out"
    port="$(free_port)"
    "$SOCKEYE" serve --echo "${SERVE_FLAGS[@]}" --max-size 33554432 --max-fragments 1048576 --ping-interval 0 \
        "127.0.0.1:$port" 2>"$out/testee.log" &
    spid=$!
    PIDS+=("$spid")
    if ! wait_port "$port" 10 "$spid"; then
        log "server testee did not start (see $out/testee.log)"
        SUMMARY+=("server: 0 passed, $TOTAL failed (testee did not start)")
        STATUS=1
        return
    fi
    log "server side ($FRONT): kosoku -> sockeye serve --echo ${SERVE_FLAGS[*]} on 127.0.0.1:$port ($TOTAL cases)"
    t0="$(now)"
    timeout --kill-after=10 "$SIDE_TIMEOUT" "$KOSOKU" -p "$PARALLELISM" -o "$out" \
        "ws://127.0.0.1:$port" >"$out/kosoku.log" 2>&1 &
    local kpid=$!
    PIDS+=("$kpid")
    wait "$kpid" # in the background, so that a signal's trap runs at once
    rc=$?
    local wall
    wall="$(elapsed "$t0")"
    [[ $rc -eq 124 || $rc -eq 137 ]] && log "server side: kosoku timed out after $SIDE_TIMEOUT s"
    kill "$spid" 2>/dev/null
    wait "$spid" 2>/dev/null
    python3 "$HERE/summarize.py" "server$SUFFIX" "$out" "$TOTAL" | tee "$out/summary.txt"
    [[ ${PIPESTATUS[0]} -ne 0 || $rc -ne 0 ]] && STATUS=1
    SUMMARY+=("$(tail -n 1 "$out/summary.txt") (kosoku exit $rc, wall $wall s)")
}

run_client_side() {
    local out="$REPORTS/client$SUFFIX" port kpid t0 rc crc
    rm -rf "$out" && mkdir -p "$out"
    port="$(free_port)"
    timeout --kill-after=10 "$SIDE_TIMEOUT" "$KOSOKU" -m fuzzingserver -o "$out" \
        "127.0.0.1:$port" >"$out/kosoku.log" 2>&1 &
    kpid=$!
    PIDS+=("$kpid")
    if ! wait_port "$port" 30 "$kpid"; then
        log "kosoku fuzzingserver did not start (see $out/kosoku.log)"
        SUMMARY+=("client: 0 passed, $TOTAL failed (fuzzing server did not start)")
        STATUS=1
        return
    fi
    log "client side ($FRONT): $EXAMPLE -> kosoku fuzzingserver on 127.0.0.1:$port"
    t0="$(now)"
    AUTOBAHN_CASE_TIMEOUT="$CASE_TIMEOUT" timeout --kill-after=10 "$SIDE_TIMEOUT" \
        "$CLIENT" "ws://127.0.0.1:$port" sockeye >"$out/testee.log" 2>&1 &
    local cpid=$!
    PIDS+=("$cpid")
    wait "$cpid"
    crc=$?
    # The fuzzing server writes its reports and exits once updateReports was asked.
    local i
    for ((i = 0; i < 600; i++)); do
        kill -0 "$kpid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$kpid" 2>/dev/null; then
        log "client side: kosoku did not exit after updateReports; stopping it"
        kill "$kpid" 2>/dev/null
    fi
    wait "$kpid"
    rc=$?
    local wall
    wall="$(elapsed "$t0")"
    python3 "$HERE/summarize.py" "client$SUFFIX" "$out" "$TOTAL" | tee "$out/summary.txt"
    [[ ${PIPESTATUS[0]} -ne 0 || $rc -ne 0 || $crc -ne 0 ]] && STATUS=1
    SUMMARY+=("$(tail -n 1 "$out/summary.txt") (kosoku exit $rc, testee exit $crc, wall $wall s)")
}

[[ "$MODE" == server || "$MODE" == all ]] && run_server_side
if [[ "$MODE" == client || "$MODE" == all ]] && [ -n "$EXAMPLE" ]; then
    run_client_side
elif [[ "$MODE" == client ]]; then
    echo "the $FRONT front end has no client" >&2
    exit 2
fi

echo
for line in "${SUMMARY[@]}"; do
    echo "$line"
done
echo "total wall time: $(elapsed "$T0") s (build included)"
exit "$STATUS"
