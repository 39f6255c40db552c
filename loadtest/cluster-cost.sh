#!/usr/bin/env bash
# What crossing relays costs: one scenario against 1 relay, then against
# several, all on the same Redis and the same CQL store, with the same
# population and rates. Per run, over the traffic only (from the load
# tester's start of traffic until it has settled, before its devices
# disconnect): the relays' CPU per delivery
# (all relay processes, /proc/<pid>/stat), the Redis commands and bytes
# per accepted message (INFO commandstats and INFO stats), the CQL store
# operations per accepted message (the relays' herold_store_operation_seconds),
# delivered p50/p99, and the UDP drops of both sides.
#
#   loadtest/cluster-cost.sh [scenario] [relay counts...]
#   default: loadtest/scenarios/channel-7000.toml 1 3
#
# Needs Redis (scripts/redis.sh start single; HEROLD_COST_REDIS, default
# redis://127.0.0.1:6390, or a Redis Cluster as cluster://host:port,... whose
# masters' counters are summed) and Cassandra (scripts/cassandra.sh
# start; HEROLD_COST_CQL, default 127.0.0.1:9042; keyspace herold_cost).
# Every relay is pinned to CPU HEROLD_RELAY_CPU (0), the load generator to
# HEROLD_LOAD_CPU (1); Redis and Cassandra are not pinned. A relay count
# may be repeated (medians of several runs). Builds the release binaries
# unless HEROLD_BIN_DIR names a folder with herold-relay and
# herold-loadtest. Reports under ${HEROLD_COST_DIR:-/tmp/herold-cost}; each
# run's figures are also appended to runs.jsonl there, which
# `herold-plan --cost-runs` reads (docs/capacity.md).
set -euo pipefail
cd "$(dirname "$0")/.."
scenario=${1:-loadtest/scenarios/channel-7000.toml}
shift || true
counts=("$@")
[ "${#counts[@]}" -gt 0 ] || counts=(1 3)
out=${HEROLD_COST_DIR:-/tmp/herold-cost}
redis_url=${HEROLD_COST_REDIS:-redis://127.0.0.1:6390}
case $redis_url in
  cluster://*) IFS=, read -r -a redis_seeds <<<"${redis_url#cluster://}" ;;
  *) redis_seeds=("${redis_url#redis://}") ;;
esac
cql=${HEROLD_COST_CQL:-127.0.0.1:9042}
relay_cpu=${HEROLD_RELAY_CPU:-0}
load_cpu=${HEROLD_LOAD_CPU:-1}
if [ -n "${HEROLD_BIN_DIR:-}" ]; then
  bin=$HEROLD_BIN_DIR
else
  cargo build --release -q -p herold-relay -p herold-loadtest
  bin=${CARGO_TARGET_DIR:-target}/release
fi
command -v redis-cli >/dev/null || { echo "cluster-cost: redis-cli is needed" >&2; exit 2; }
command -v curl >/dev/null || { echo "cluster-cost: curl is needed" >&2; exit 2; }
rcli() { local hp=$1; shift; redis-cli -h "${hp%:*}" -p "${hp##*:}" "$@"; }
rcli "${redis_seeds[0]}" ping >/dev/null ||
  { echo "cluster-cost: no Redis at $redis_url (scripts/redis.sh start single)" >&2; exit 2; }
# The masters whose counters are summed: the one Redis, or the cluster's.
redis_masters() {
  if [ "${#redis_seeds[@]}" -gt 1 ] || [[ $redis_url == cluster://* ]]; then
    rcli "${redis_seeds[0]}" cluster nodes | awk '$3 ~ /master/ && $3 !~ /fail/ {split($2, a, "@"); print a[1]}'
  else
    echo "${redis_seeds[0]}"
  fi
}
mkdir -p "$out"
: >"$out/runs.jsonl"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# snapshot FILE RELAYS: Redis command and byte counters, the relays' CPU
# ticks and store operations, as JSON.
snapshot() {
  local file=$1 n=$2 i ticks=0 ops=0 t o
  for i in $(seq 0 $((n - 1))); do
    t=$(awk '{print $14 + $15}' "/proc/${pids[$i]}/stat")
    ticks=$((ticks + t))
    o=$(curl -s "http://127.0.0.1:$((7392 + 10 * i))/metrics" |
      awk '/^herold_store_operation_seconds_count/ {s += $NF} END {printf "%d", s}')
    ops=$((ops + o))
  done
  {
    echo "{\"t\": $(date +%s.%N), \"ticks\": $ticks, \"store_ops\": $ops, \"redis\": {"
    for m in $(redis_masters); do rcli "$m" info commandstats; done |
      awk -F'[:=,]' '/^cmdstat_/ {c[substr($1, 9)] += $3} END {for (k in c) {printf "%s\"%s\": %s", sep, k, c[k]; sep=", "}}'
    echo "}, \"net\": {"
    for m in $(redis_masters); do rcli "$m" info stats; done |
      awk -F: '/^total_net_(input|output)_bytes/ {gsub("\r", "", $2); n[$1] += $2} END {for (k in n) {printf "%s\"%s\": %s", sep, k, n[k]; sep=", "}}'
    echo "}}"
  } >"$file"
}

printf '| relays | accepted | deliveries | relay CPU per delivery | Redis commands per message | Redis bytes in / out per message | CQL operations per message | delivered p50 / p99 | lost / dup / reordered | UDP drops relays / load tester |\n'
printf '|---|---|---|---|---|---|---|---|---|---|\n'
run=0
for n in "${counts[@]}"; do
  run=$((run + 1))
  dir="$out/$run-$n"
  rm -rf "$dir"; mkdir -p "$dir"
  prefix="cost$(date +%s)r$run"
  pids=()
  relay_flags=() metrics_flags=()
  for i in $(seq 0 $((n - 1))); do
    port=$((7390 + 10 * i))
    # One data folder: the relays share the dev certificate (the store is CQL).
    taskset -c "$relay_cpu" "$bin/herold-relay" --dev --data-dir "$dir/data" --node-id "c$i" \
      --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$((port + 1))" \
      --metrics-listen "127.0.0.1:$((port + 2))" \
      --redis "$redis_url" --redis-prefix "$prefix" \
      --cql-contact-points "$cql" --cql-keyspace herold_cost \
      --cql-replication simple:1 --cql-consistency LOCAL_ONE \
      --submit-rate 100000 --conversation-submit-rate 1000000 \
      --max-unauthenticated-per-address 100000 --handshake-rate-per-address 1000000 \
      --auth-rate-per-account 100000 >"$dir/relay-$i.log" 2>&1 &
    pids+=($!)
    waited=0
    until [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$((port + 2))/readyz")" = 200 ]; do
      kill -0 "${pids[$i]}" 2>/dev/null || { tail -20 "$dir/relay-$i.log" >&2; exit 2; }
      [ "$waited" -lt 1200 ] || { echo "cluster-cost: relay $i not ready in 120 s" >&2; exit 2; }
      sleep 0.1; waited=$((waited + 1))
    done
    relay_flags+=(--relay "127.0.0.1:$port")
    metrics_flags+=(--relay-metrics "http://127.0.0.1:$((port + 2))/metrics")
  done
  # The cluster at rest, devices not yet connected: what Redis and the
  # store do per second without traffic (lease renewals, blocked inbox
  # reads, flushes) is taken out of the per-message figures marked "net".
  snapshot "$dir/idle0.json" "$n"
  sleep "${HEROLD_COST_IDLE_SECS:-10}"
  snapshot "$dir/idle1.json" "$n"
  rm -f "$dir/started"
  taskset -c "$load_cpu" "$bin/herold-loadtest" "$scenario" "${relay_flags[@]}" "${metrics_flags[@]}" \
    --admin http://127.0.0.1:7391 --data-dir "$dir/data" --quiet \
    --started-file "$dir/started" --settled-file "$dir/settled" \
    --out "$dir/report" >"$dir/loadtest.log" 2>&1 &
  load=$!
  until [ -s "$dir/started" ]; do
    kill -0 "$load" 2>/dev/null || break
    sleep 0.05
  done
  snapshot "$dir/before.json" "$n"
  until [ -s "$dir/settled" ]; do
    kill -0 "$load" 2>/dev/null || break
    sleep 0.05
  done
  snapshot "$dir/after.json" "$n"
  # The load tester keeps its devices connected until this is gone.
  rm -f "$dir/settled"
  wait "$load" || true
  cleanup
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  python3 - "$dir" "$n" "$(getconf CLK_TCK)" "$scenario" "$out/runs.jsonl" <<'PY'
import glob, json, sys, tomllib
d, n, hz = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
traffic = tomllib.load(open(sys.argv[4], "rb")).get("traffic", [])
rates = sum(t["rate"] for t in traffic) or 1
message_bytes = sum(t["rate"] * t["bytes"] for t in traffic) / rates
files = glob.glob(d + "/report/*.json")
if not files:
    print(f"| {n} | (no report: see {d}/loadtest.log) | | | | | | | | |"); sys.exit()
r = json.load(open(files[0]))
b, a = json.load(open(d + "/before.json")), json.load(open(d + "/after.json"))
i0, i1 = json.load(open(d + "/idle0.json")), json.load(open(d + "/idle1.json"))
idle = lambda x: x(i1) - x(i0)
idle_s, busy_s = max(i1["t"] - i0["t"], 1e-3), a["t"] - b["t"]
at_rest = lambda x: idle(x) / idle_s * busy_s
redis_cmds = lambda s: sum(s["redis"].values())
redis_in = lambda s: s["net"]["total_net_input_bytes"]
store_ops = lambda s: s["store_ops"]
v, dl, u = r["verification"], r["submit_to_delivered"], r.get("udp", {})
msgs = max(r["accepted"], 1)
deliveries = max(v["delivered"], 1)
cpu_us = (a["ticks"] - b["ticks"]) / hz * 1e6 / deliveries
cmds = sum(a["redis"].values()) - sum(b["redis"].get(k, 0) for k in a["redis"])
net_in = a["net"]["total_net_input_bytes"] - b["net"]["total_net_input_bytes"]
net_out = a["net"]["total_net_output_bytes"] - b["net"]["total_net_output_bytes"]
ops = a["store_ops"] - b["store_ops"]
cmds_net = cmds - at_rest(redis_cmds)
in_net = net_in - at_rest(redis_in)
ops_net = ops - at_rest(store_ops)
top = sorted(((a["redis"][k] - b["redis"].get(k, 0), k) for k in a["redis"]), reverse=True)[:4]
ms = lambda x: f"{x:.1f} ms" if x < 1000 else f"{x/1000:.2f} s"
print(f"| {n} | {r['accepted']:,} | {v['delivered']:,} | {cpu_us:.1f} µs | {cmds / msgs:.1f}, net {cmds_net / msgs:.1f} "
      f"({', '.join(f'{k} {c / msgs:.1f}' for c, k in top if c)}) | "
      f"{net_in / msgs:,.0f} B / {net_out / msgs:,.0f} B (in, net of rest: {in_net / msgs:,.0f} B) | "
      f"{ops / msgs:.1f} (net {ops_net / msgs:.1f}) | "
      f"{ms(dl['p50_ms'])} / {ms(dl['p99_ms'])} | {v['lost']} / {v['duplicated']} / {v['reordered']} | "
      f"{(u.get('relay') or {}).get('drops', '?')} / {u.get('loadtest_drops', '?')} |")
with open(sys.argv[5], "a") as f:
    f.write(json.dumps({
        "relays": n, "cpu_us_per_delivery": cpu_us, "redis_commands_per_message": cmds / msgs,
        "redis_bytes_in_per_message": net_in / msgs, "redis_bytes_out_per_message": net_out / msgs,
        "cql_ops_per_message": ops / msgs, "message_bytes": message_bytes,
        "redis_commands_per_message_net": cmds_net / msgs,
        "redis_bytes_in_per_message_net": in_net / msgs,
        "cql_ops_per_message_net": ops_net / msgs,
        "deliveries": v["delivered"], "accepted": r["accepted"],
        "lost": v["lost"], "duplicated": v["duplicated"], "reordered": v["reordered"],
        "p50_ms": dl["p50_ms"], "p99_ms": dl["p99_ms"],
        "udp_drops_relays": (u.get("relay") or {}).get("drops"), "udp_drops_loadtest": u.get("loadtest_drops"),
    }) + "\n")
PY
done
