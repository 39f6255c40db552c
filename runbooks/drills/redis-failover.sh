#!/usr/bin/env bash
# Drill: the Redis master behind Sentinel is killed with SIGKILL mid-run.
# The sentinels (down-after 1 s, quorum 2) promote the replica; the relays'
# routers ask the sentinels again, report a lag and resync their sessions
# from the store. Redis keeps nothing on disk and replication is
# asynchronous: inbox entries may be lost in the failover, never a message.
#   runbooks/drills/redis-failover.sh [SECS]   fault SECS into the traffic (15)
source "$(dirname "$0")/lib.sh"
AT="${1:-15}"
drill_begin redis-failover
start_backends
start_relays
start_loadtest
at_offset "$AT"
master_pid="$(cat "$HEROLD_REDIS_DIR/$SENTINEL_MASTER_PORT/pid")"
fault "SIGKILL redis master :$SENTINEL_MASTER_PORT (pid $master_pid)"
kill -9 "$master_pid"
t0=$(now_ms)
# How long until the sentinels name the replica as master.
until redis-cli -p "${SENTINEL_PORTS[0]}" sentinel get-master-addr-by-name herold 2>/dev/null | grep -qx "$SENTINEL_REPLICA_PORT"; do
    [ $(( $(now_ms) - t0 )) -lt 60000 ] || { log "no failover within 60 s"; break; }
    sleep 0.1
done
promoted_ms=$(( $(now_ms) - t0 ))
log "sentinels report the new master :$SENTINEL_REPLICA_PORT after $promoted_ms ms"
FAULTS+=("$(now_ms) sentinel failover complete (+${promoted_ms} ms)")
wait_loadtest
drill_end "master killed -9 at ${AT}s; Sentinel promoted the replica after ${promoted_ms} ms; old master left dead"
