#!/usr/bin/env bash
# What one delivery costs the relay in CPU, for one or more relay binaries,
# interleaved run by run so that they share the machine's noise: each run
# starts a fresh relay on the embedded default pinned to CPU 0, drives the
# throughput scenario at a fixed rate from the load generator pinned to
# CPU 1, and reads the relay's CPU time (user + system, /proc/<pid>/stat)
# over the whole run. Prints one line per run and the median per binary.
#
#   loadtest/cpu-per-delivery.sh [-n runs] [-r rate-scale] RELAY_BIN [RELAY_BIN...]
#
# The load generator is ${HEROLD_LOADTEST_BIN:-target/release/herold-loadtest}.
# Reports are kept under ${HEROLD_CPU_DIR:-/tmp/herold-cpu}/<run>/.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=3
rate=1
while getopts "n:r:" o; do
  case $o in
    n) runs=$OPTARG ;;
    r) rate=$OPTARG ;;
    *) echo "usage: $0 [-n runs] [-r rate-scale] RELAY_BIN..." >&2; exit 64 ;;
  esac
done
shift $((OPTIND - 1))
[ "$#" -gt 0 ] || { echo "usage: $0 [-n runs] [-r rate-scale] RELAY_BIN..." >&2; exit 64; }
loadtest=${HEROLD_LOADTEST_BIN:-${CARGO_TARGET_DIR:-target}/release/herold-loadtest}
out=${HEROLD_CPU_DIR:-/tmp/herold-cpu}
tick=$(getconf CLK_TCK)
declare -A results
printf '| run | relay | deliveries | relay CPU s | µs CPU per delivery | delivered p50 / p99 | UDP drops relay / load tester |\n|---|---|---|---|---|---|---|\n'
for ((i = 1; i <= runs; i++)); do
  for bin in "$@"; do
    dir="$out/$i-$(basename "$(dirname "$bin")")"
    rm -rf "$dir"; mkdir -p "$dir"
    ops=()
    # Relays from before the operations listener have no --metrics-listen.
    if "$bin" --help | grep -q -- --metrics-listen; then ops=(--metrics-listen 127.0.0.1:7392); fi
    taskset -c 0 "$bin" --dev --data-dir "$dir/data" --listen 127.0.0.1:7390 \
      --admin-listen 127.0.0.1:7391 "${ops[@]}" >"$dir/relay.log" 2>&1 &
    relay=$!
    for _ in $(seq 1 200); do
      [ -s "$dir/data/tls/cert.sha256" ] && grep -q "admin" "$dir/relay.log" && break
      sleep 0.05
    done
    cpu() { awk '{print $14 + $15}' "/proc/$relay/stat"; }
    before=$(cpu)
    taskset -c 1 "$loadtest" loadtest/scenarios/throughput.toml --rate-scale "$rate" \
      --relay 127.0.0.1:7390 --admin http://127.0.0.1:7391 --data-dir "$dir/data" \
      --relay-metrics http://127.0.0.1:7392/metrics --quiet --out "$dir/report" \
      >"$dir/loadtest.log" 2>&1 || true
    after=$(cpu)
    kill "$relay"; wait "$relay" 2>/dev/null || true
    line=$(python3 - "$dir/report" "$i" "$bin" "$before" "$after" "$tick" <<'PY'
import json, sys, glob
d, run, binary, before, after, tick = sys.argv[1:]
files = glob.glob(d + "/*.json")
if not files:
    print(f"| {run} | {binary} | (no report) | | | | |"); sys.exit()
r = json.load(open(files[0]))
n = r["verification"]["delivered"]
cpu = (int(after) - int(before)) / int(tick)
u = r.get("udp", {})
lat = r["submit_to_delivered"]
print(f"| {run} | {binary} | {n:,} | {cpu:.2f} | {cpu * 1e6 / max(n, 1):.1f} | "
      f"{lat['p50_ms']:.1f} ms / {lat['p99_ms']:.1f} ms | "
      f"{(u.get('relay') or {}).get('drops', '?')} / {u.get('loadtest_drops', '?')} |")
PY
)
    echo "$line"
    per=$(echo "$line" | awk -F'|' '{print $6}' | tr -d ' ')
    results[$bin]="${results[$bin]:-} $per"
  done
done
echo
for bin in "$@"; do
  # shellcheck disable=SC2086
  median=$(printf '%s\n' ${results[$bin]} | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  echo "median µs CPU per delivery: $median  ($bin)"
done
