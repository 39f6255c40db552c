#!/usr/bin/env bash
# Runs every failover drill one after another (runbooks/DRILLS.md) and
# prints the results table; exits non-zero if any drill failed.
#   runbooks/drills/run-all.sh          all four, against three Cassandra nodes
#   runbooks/drills/run-all.sh --fast   relay-loss only (for CI)
# Results accumulate in ${HEROLD_DRILL_DIR:-/tmp/herold-drills}/results.md.
set -uo pipefail
cd "$(dirname "$0")"
drills=(relay-loss rolling-restart redis-failover cql-node-loss)
[ "${1:-}" = "--fast" ] && drills=(relay-loss)
t0=$SECONDS
declare -A outcome
rc=0
for d in "${drills[@]}"; do
    if ./"$d".sh; then outcome[$d]=ok; else r=$?; outcome[$d]="FAILED (exit $r)"; rc=1; fi
done
echo
for d in "${drills[@]}"; do printf '%-16s %s\n' "$d" "${outcome[$d]}"; done
echo "run-all${1:+ $1}: $((SECONDS - t0)) s"
echo "results: ${HEROLD_DRILL_DIR:-/tmp/herold-drills}/results.md"
exit $rc
