#!/usr/bin/env bash
# Drill: a rolling restart. Each relay in turn gets SIGTERM (it drains: its
# devices are told to reconnect elsewhere, spread over 2 s), the script waits
# for it to exit, starts it again and waits for /readyz, then the next.
# Runs 60 s of traffic so that all three restarts fall inside it.
#   runbooks/drills/rolling-restart.sh [SECS]   first SIGTERM SECS into the traffic (5)
source "$(dirname "$0")/lib.sh"
AT="${1:-5}"
HEROLD_DRILL_DURATION="${HEROLD_DRILL_DURATION:-60}"
drill_begin rolling-restart
start_backends
start_relays
start_loadtest
at_offset "$AT"
for i in $(seq 0 $((RELAYS - 1))); do
    fault "SIGTERM relay d$((i + 1)) (pid ${RELAY_PID[$i]})"
    t0=$(now_ms)
    stop_relay "$i" TERM
    log "relay d$((i + 1)) exited after $(( $(now_ms) - t0 )) ms"
    start_relay "$i"
done
log "rolling restart complete"
wait_loadtest
drill_end "SIGTERM, wait for exit, start, wait ready; relay by relay from ${AT}s"
