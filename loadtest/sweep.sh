#!/usr/bin/env bash
# The throughput-latency curve of one relay on the embedded default: for
# each rate scale, a fresh relay pinned to CPU 0 and the load generator
# pinned to CPU 1 (taskset), the throughput scenario, one line of figures.
#
#   loadtest/sweep.sh [scenario] [rate scales...]
#   default: loadtest/scenarios/throughput.toml 1 2 4 8 12 16 24
#
# Builds the release binaries first, unless HEROLD_BIN_DIR names a folder
# holding herold-relay and herold-loadtest (to measure another build);
# extra relay flags come from HEROLD_RELAY_ARGS. The relay's submit rate
# limits are lifted (a sweep measures what one relay carries, not the
# limits meant for a runaway script). Writes every report under
# ${HEROLD_SWEEP_DIR:-/tmp/herold-sweep}/<run>-<scale>/.
set -euo pipefail
cd "$(dirname "$0")/.."
scenario=${1:-loadtest/scenarios/throughput.toml}
shift || true
scales=("$@")
[ "${#scales[@]}" -gt 0 ] || scales=(1 2 4 8 12 16 24)
out=${HEROLD_SWEEP_DIR:-/tmp/herold-sweep}
if [ -n "${HEROLD_BIN_DIR:-}" ]; then
  bin=$HEROLD_BIN_DIR
else
  cargo build --release -q -p herold-relay -p herold-loadtest
  bin=${CARGO_TARGET_DIR:-target}/release
fi
read -r -a relay_args <<<"${HEROLD_RELAY_ARGS:-}"
relay_cpu=${HEROLD_RELAY_CPU:-0}
load_cpu=${HEROLD_LOAD_CPU:-1}
printf '| rate scale | accepted/s | deliveries/s (mean / peak) | accepted p50 / p99 | delivered p50 / p99 | lost / dup / reordered | UDP drops relay / load tester |\n'
printf '|---|---|---|---|---|---|---|\n'
run=0
for s in "${scales[@]}"; do
  # A scale may be repeated (medians of several runs): one folder per run.
  run=$((run + 1))
  dir="$out/$run-$s"
  rm -rf "$dir"; mkdir -p "$dir"
  taskset -c "$relay_cpu" "$bin/herold-relay" --dev --data-dir "$dir/data" \
    --listen 127.0.0.1:7390 --admin-listen 127.0.0.1:7391 --metrics-listen 127.0.0.1:7392 \
    --submit-rate 100000 --conversation-submit-rate 1000000 \
    --max-unauthenticated-per-address 100000 --handshake-rate-per-address 1000000 \
    --auth-rate-per-account 100000 "${relay_args[@]}" >"$dir/relay.log" 2>&1 &
  relay=$!
  for _ in $(seq 1 100); do
    [ -s "$dir/data/tls/cert.sha256" ] && grep -q "admin" "$dir/relay.log" && break
    sleep 0.1
  done
  taskset -c "$load_cpu" "$bin/herold-loadtest" "$scenario" --rate-scale "$s" \
    --relay 127.0.0.1:7390 --admin http://127.0.0.1:7391 --data-dir "$dir/data" \
    --relay-metrics http://127.0.0.1:7392/metrics \
    --quiet --out "$dir/report" >"$dir/loadtest.log" 2>&1 || true
  kill "$relay"; wait "$relay" 2>/dev/null || true
  python3 - "$dir/report" "$s" <<'PY'
import json, sys, glob
files = glob.glob(sys.argv[1] + "/*.json")
if not files:
    print(f"| {sys.argv[2]} | (no report: see the loadtest log) | | | | | |"); sys.exit()
r = json.load(open(files[0]))
a, d, v = r["submit_to_accepted"], r["submit_to_delivered"], r["verification"]
u = r.get("udp", {})
ms = lambda x: f"{x:.1f} ms" if x < 1000 else f"{x/1000:.2f} s"
print(f"| {r['rate_scale']:g} | {r['accepted_per_sec']:,.0f} | {r['delivered_per_sec']:,.0f} / {r['peak_delivered_per_sec']:,} | "
      f"{ms(a['p50_ms'])} / {ms(a['p99_ms'])} | {ms(d['p50_ms'])} / {ms(d['p99_ms'])} | "
      f"{v.get('lost', '?')} / {v.get('duplicated', '?')} / {v.get('reordered', '?')} | "
      f"{(u.get('relay') or {}).get('drops', '?')} / {u.get('loadtest_drops', '?')} |")
PY
done
