#!/usr/bin/env bash
# Drill: one of three Cassandra nodes (RF 3, LOCAL_QUORUM; LWTs at SERIAL)
# is killed with SIGKILL mid-run and started again later. Every write and
# every Paxos round still finds two replicas of three.
# Runs 60 s of traffic: the node stays down for 30 s, long enough for the
# others' failure detector to convict it (about 19 s on a loaded 2-core
# machine), and comes back while the traffic still runs.
#   runbooks/drills/cql-node-loss.sh [NODE [SECS [BACK]]]
#   NODE 1..3 (3), killed SECS into the traffic (10), restarted BACK s later (30)
source "$(dirname "$0")/lib.sh"
NODE="${1:-3}"
AT="${2:-10}"
BACK="${3:-30}"
HEROLD_DRILL_DURATION="${HEROLD_DRILL_DURATION:-60}"
[ "$CQL_MODE" = cluster ] || die "the CQL node-loss drill needs HEROLD_DRILL_CQL=cluster"
drill_extra_cleanup() {
    # Leave the cluster whole for the next drill.
    "$ROOT/scripts/cassandra.sh" start-node "$NODE" >/dev/null 2>&1 || true
}
drill_begin cql-node-loss
start_backends
start_relays
start_loadtest
at_offset "$AT"
fault "SIGKILL cassandra node $NODE (127.0.0.$NODE)"
kill_ms=$(now_ms)
"$ROOT/scripts/cassandra.sh" kill-node "$NODE"
at_offset $((AT + BACK))
fault "restart cassandra node $NODE"
"$ROOT/scripts/cassandra.sh" start-node "$NODE"
FAULTS+=("$(now_ms) node $NODE has rejoined")
log "node $NODE back"
wait_loadtest
# When did the other nodes notice? Their gossip logs "is now DOWN" / "UP".
notes=""
for n in 1 2 3; do
    [ "$n" = "$NODE" ] && continue
    f="${HEROLD_CASSANDRA_CLUSTER_STATE:-${HEROLD_CACHE:-$HOME/.cache/herold}/cassandra-cluster}/node$n/logs/system.log"
    down="$(grep "127.0.0.$NODE:.* is now DOWN" "$f" | tail -1 | awk '{print $3" "$4}' | tr , .)"
    up="$(grep "127.0.0.$NODE:.* is now UP" "$f" | tail -1 | awk '{print $4}' | cut -d, -f1)"
    down_ms=-1
    [ -n "$down" ] && down_ms=$(( $(date -d "$down" +%s%3N) - kill_ms ))
    if [ "$down_ms" -ge 0 ]; then
        notes="$notes node $n marked it DOWN after ${down_ms} ms (UP again at $up"
        hints="$(awk -v t="$(date -d "@$((kill_ms / 1000))" '+%Y-%m-%d %H:%M:%S')" \
            '$3" "$4 >= t && /Finished hinted handoff.*127.0.0.'"$NODE"'/' "$f" | wc -l)"
        notes="$notes, hint deliveries finished: $hints);"
    else
        notes="$notes node $n logged no DOWN;"
    fi
    cp "$f" "$WORK/cassandra-node$n-system.log" 2>/dev/null || true
done
log "$notes"
drill_end "node $NODE killed -9 at ${AT}s, restarted at $((AT + BACK))s;$notes"
