# Shared by the failover drills (runbooks/DRILLS.md); sourced, not run.
#
# A drill: Redis with Sentinel (scripts/redis.sh, on ports of its own), the
# CQL store (three Cassandra nodes, scripts/cassandra.sh start-cluster), three
# relay processes from the release binaries on loopback, and herold-loadtest
# with runbooks/drills/drill.toml against all three. The drill script injects
# its fault at an offset into the traffic; the report's verification decides.
#
# Environment (all optional):
#   HEROLD_DRILL_BIN      herold-relay and herold-loadtest; default the
#                         release dir of $CARGO_TARGET_DIR, else target/release
#   HEROLD_DRILL_DIR      work dirs, logs, reports, results; default /tmp/herold-drills
#   HEROLD_DRILL_CQL      cluster (default: 3 nodes, simple:3, LOCAL_QUORUM) or
#                         single (scripts/cassandra.sh start, simple:1, LOCAL_ONE)
#   HEROLD_DRILL_RELAYS   relay processes, default 3
#   HEROLD_DRILL_DURATION seconds of traffic, default the scenario's (40)
#   HEROLD_DRILL_RATE_SCALE  traffic multiplier (herold-loadtest --rate-scale), default 1
#   HEROLD_DRILL_PORT     first relay's QUIC port, default 17300 (relay i uses
#                         PORT+10*i: QUIC, +1 admin, +2 metrics)
#   HEROLD_DRILL_CLIENT_IDLE  seconds a device gives a silent relay, default 5
#   HEROLD_DRILL_REDIS_BASE   scripts/redis.sh port base, default 16390 (so the
#                         drill's Sentinel master, 16391, is not the test suite's)

set -euo pipefail

DRILLS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$DRILLS/../.." && pwd)"
if [ -z "${HEROLD_DRILL_BIN:-}" ]; then
    if [ -n "${CARGO_TARGET_DIR:-}" ]; then
        HEROLD_DRILL_BIN="$CARGO_TARGET_DIR/release"
    else
        HEROLD_DRILL_BIN="$ROOT/target/release"
    fi
fi
BIN="$HEROLD_DRILL_BIN"
BASE_DIR="${HEROLD_DRILL_DIR:-/tmp/herold-drills}"
CQL_MODE="${HEROLD_DRILL_CQL:-cluster}"
RELAYS="${HEROLD_DRILL_RELAYS:-3}"
PORT0="${HEROLD_DRILL_PORT:-17300}"
CLIENT_IDLE="${HEROLD_DRILL_CLIENT_IDLE:-5}"
RESULTS_MD="$BASE_DIR/results.md"
RESULTS_JSONL="$BASE_DIR/results.jsonl"

export HEROLD_REDIS_PORT_BASE="${HEROLD_DRILL_REDIS_BASE:-16390}"
export HEROLD_REDIS_DIR="$BASE_DIR/redis"
SENTINEL_MASTER_PORT=$((HEROLD_REDIS_PORT_BASE + 1))
SENTINEL_REPLICA_PORT=$((HEROLD_REDIS_PORT_BASE + 2))
SENTINEL_PORTS=($((HEROLD_REDIS_PORT_BASE + 20001)) $((HEROLD_REDIS_PORT_BASE + 20002)) $((HEROLD_REDIS_PORT_BASE + 20003)))
REDIS_URL="sentinel://herold@127.0.0.1:${SENTINEL_PORTS[0]},127.0.0.1:${SENTINEL_PORTS[1]},127.0.0.1:${SENTINEL_PORTS[2]}"

if [ "$CQL_MODE" = cluster ]; then
    CQL_PORT="${HEROLD_CASSANDRA_CLUSTER_CQL_PORT:-9142}"
    CQL_CONTACT="127.0.0.1:$CQL_PORT,127.0.0.2:$CQL_PORT,127.0.0.3:$CQL_PORT"
    CQL_REPLICATION=simple:3
    CQL_CONSISTENCY=LOCAL_QUORUM
    CQL_KEYSPACE=herold_drill3
else
    CQL_CONTACT="127.0.0.1:${HEROLD_CQL_PORT:-9042}"
    CQL_REPLICATION=simple:1
    CQL_CONSISTENCY=LOCAL_ONE
    CQL_KEYSPACE=herold_drill1
fi

DRILL=""          # name, set by drill_begin
WORK=""           # this run's directory
T_BEGIN=0
declare -a RELAY_PID=()
LOADTEST_PID=""
declare -a FAULTS=() # "unix_ms label" lines

log() { printf '%s drill %s: %s\n' "$(date +%H:%M:%S)" "${DRILL:-?}" "$*" >&2; }
die() { log "$*"; exit 2; }
now_ms() { date +%s%3N; }

relay_port() { echo $((PORT0 + 10 * $1)); }
admin_port() { echo $((PORT0 + 10 * $1 + 1)); }
metrics_port() { echo $((PORT0 + 10 * $1 + 2)); }

# drill_begin NAME: a fresh work dir, the cleanup trap, the binaries.
drill_begin() {
    DRILL="$1"
    T_BEGIN=$SECONDS
    WORK="$BASE_DIR/$DRILL-$(date +%Y%m%d-%H%M%S)"
    mkdir -p "$WORK"
    for b in herold-relay herold-loadtest; do
        [ -x "$BIN/$b" ] || die "$BIN/$b missing: cargo build --release -p herold-loadtest -p herold-relay (or set HEROLD_DRILL_BIN)"
    done
    command -v curl >/dev/null || die "curl is needed for /readyz"
    trap drill_cleanup EXIT
    log "work dir $WORK (CQL: $CQL_MODE, $CQL_CONTACT)"
}

# Stops what this drill started (by pid), and the drill's Redis.
drill_cleanup() {
    local rc=$? i
    if [ -n "$LOADTEST_PID" ] && kill -0 "$LOADTEST_PID" 2>/dev/null; then
        kill "$LOADTEST_PID" 2>/dev/null || true
    fi
    for i in "${!RELAY_PID[@]}"; do
        stop_relay "$i" TERM 2>/dev/null || true
    done
    if declare -F drill_extra_cleanup >/dev/null; then drill_extra_cleanup || true; fi
    "$ROOT/scripts/redis.sh" stop >/dev/null 2>&1 || true
    log "done in $((SECONDS - T_BEGIN)) s (exit $rc)"
    exit "$rc"
}

start_backends() {
    "$ROOT/scripts/redis.sh" start sentinel >&2
    if [ "$CQL_MODE" = cluster ]; then
        "$ROOT/scripts/cassandra.sh" start-cluster
    else
        "$ROOT/scripts/cassandra.sh" start
    fi
}

# start_relay I: relay I (0-based) in the background; waits for /readyz.
start_relay() {
    local i=$1 id="d$(( $1 + 1 ))" waited=0
    mkdir -p "$WORK/relay-data"
    HEROLD_LOG="${HEROLD_DRILL_RELAY_LOG:-info}" "$BIN/herold-relay" --dev \
        --data-dir "$WORK/relay-data" \
        --node-id "$id" \
        --listen "127.0.0.1:$(relay_port "$i")" \
        --admin-listen "127.0.0.1:$(admin_port "$i")" \
        --metrics-listen "127.0.0.1:$(metrics_port "$i")" \
        --cql-contact-points "$CQL_CONTACT" \
        --cql-keyspace "$CQL_KEYSPACE" \
        --cql-replication "$CQL_REPLICATION" \
        --cql-consistency "$CQL_CONSISTENCY" \
        --redis "$REDIS_URL" \
        --redis-prefix "$REDIS_PREFIX" \
        >>"$WORK/relay-$id.out" 2>>"$WORK/relay-$id.log" </dev/null &
    RELAY_PID[$i]=$!
    # Ready: /readyz answers 200 (store and router reachable).
    while [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$(metrics_port "$i")/readyz" 2>/dev/null)" != 200 ]; do
        kill -0 "${RELAY_PID[$i]}" 2>/dev/null || { tail -20 "$WORK/relay-$id.log" >&2; die "relay $id exited before it was ready"; }
        [ "$waited" -lt 1200 ] || die "relay $id not ready within 120 s; see $WORK/relay-$id.log"
        sleep 0.1
        waited=$((waited + 1))
    done
    log "relay $id ready (pid ${RELAY_PID[$i]}, quic 127.0.0.1:$(relay_port "$i"), after $((waited / 10)).$((waited % 10)) s)"
}

# stop_relay I SIGNAL: sends SIGNAL (TERM, KILL) to relay I and waits until it is gone.
stop_relay() {
    local i=$1 sig=$2 pid="${RELAY_PID[$1]:-}"
    [ -n "$pid" ] || return 0
    kill -"$sig" "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    unset 'RELAY_PID[$i]'
}

start_relays() {
    REDIS_PREFIX="drill$(date +%s)"
    local i
    for i in $(seq 0 $((RELAYS - 1))); do start_relay "$i"; done
}

# fault LABEL: notes the time of a fault (Unix ms) for the results.
fault() {
    FAULTS+=("$(now_ms) $1")
    log "FAULT: $1"
}

# start_loadtest [extra herold-loadtest args...]: in the background; waits
# until its traffic has begun, then returns (LOADTEST_PID set).
start_loadtest() {
    local args=() i
    for i in $(seq 0 $((RELAYS - 1))); do
        args+=(--relay "127.0.0.1:$(relay_port "$i")" --relay-metrics "http://127.0.0.1:$(metrics_port "$i")/metrics")
    done
    [ -n "${HEROLD_DRILL_DURATION:-}" ] && args+=(--duration "$HEROLD_DRILL_DURATION")
    [ -n "${HEROLD_DRILL_RATE_SCALE:-}" ] && args+=(--rate-scale "$HEROLD_DRILL_RATE_SCALE")
    rm -f "$WORK/started"
    "$BIN/herold-loadtest" "$DRILLS/drill.toml" "${args[@]}" \
        --admin "http://127.0.0.1:$(admin_port 0)" \
        --data-dir "$WORK/relay-data" \
        --client-idle-timeout "$CLIENT_IDLE" \
        --endpoints 4 --concurrency 32 --quiet \
        --started-file "$WORK/started" \
        --out "$WORK/report" "$@" >"$WORK/loadtest.out" 2>"$WORK/loadtest.log" &
    LOADTEST_PID=$!
    local waited=0
    until [ -s "$WORK/started" ]; do
        kill -0 "$LOADTEST_PID" 2>/dev/null || { cat "$WORK/loadtest.log" >&2; die "herold-loadtest exited before its traffic began"; }
        [ "$waited" -lt 3000 ] || die "herold-loadtest did not begin its traffic within 300 s"
        sleep 0.1
        waited=$((waited + 1))
    done
    TRAFFIC_START_MS="$(cat "$WORK/started")"
    log "traffic started (provisioning and connecting took $((waited / 10)) s)"
}

# at_offset SECS: sleeps until SECS into the traffic (placing a fault).
at_offset() {
    local target=$((TRAFFIC_START_MS + $1 * 1000)) now
    now="$(now_ms)"
    if [ "$target" -gt "$now" ]; then
        sleep "$(awk -v d=$((target - now)) 'BEGIN { printf "%.3f", d / 1000 }')"
    fi
}

# wait_loadtest: waits for the load tester; its exit code in LOADTEST_RC.
wait_loadtest() {
    LOADTEST_RC=0
    wait "$LOADTEST_PID" || LOADTEST_RC=$?
    LOADTEST_PID=""
    log "herold-loadtest exited with $LOADTEST_RC"
}

# drill_end [NOTE]: figures from the report, printed and appended to the
# results files; exits 1 if an accepted message was lost (or the verdict
# is FAIL), 2 if there is no report.
drill_end() {
    local note="${1:-}" faults_file="$WORK/faults.txt" rc=0
    printf '%s\n' "${FAULTS[@]}" >"$faults_file"
    local report="$WORK/report/drill.json"
    if [ ! -s "$report" ]; then
        log "no report ($report); load tester log:"
        tail -30 "$WORK/loadtest.log" >&2 || true
        exit 2
    fi
    python3 "$DRILLS/results.py" --drill "$DRILL" --report "$report" --faults "$faults_file" \
        --cql "$CQL_MODE" --relays "$RELAYS" --work "$WORK" --note "$note" \
        --seconds $((SECONDS - T_BEGIN)) \
        --results-md "$RESULTS_MD" --results-jsonl "$RESULTS_JSONL" || rc=$?
    exit "$rc"
}
