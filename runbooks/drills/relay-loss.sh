#!/usr/bin/env bash
# Drill: one of three relays is killed with SIGKILL mid-run and stays dead.
# Its devices notice the silence after their idle timeout
# (HEROLD_DRILL_CLIENT_IDLE, 5 s), reconnect to the next relay of their list
# and sync from their cursors; its lease in Redis runs out (5 s), so the
# survivors stop publishing to it. Nothing accepted may be lost.
#   runbooks/drills/relay-loss.sh [SECS]   fault SECS into the traffic (15)
source "$(dirname "$0")/lib.sh"
AT="${1:-15}"
drill_begin relay-loss
start_backends
start_relays
start_loadtest
at_offset "$AT"
fault "SIGKILL relay d2 (pid ${RELAY_PID[1]})"
stop_relay 1 KILL
wait_loadtest
drill_end "relay d2 killed -9 at ${AT}s, not restarted"
