#!/usr/bin/env bash
# Times the bulk import of a generated roster (7,000 volunteers in 618
# polling stations, two channels) with the release CLI against a fresh
# release relay on the embedded store, then the re-run of the same roster
# (which must change nothing). Prints each run and the medians.
#
#   scripts/bench-import.sh            # 3 runs
#   RUNS=5 VOLUNTEERS=20000 STATIONS=1500 scripts/bench-import.sh
#   CQL=127.0.0.1:9042 scripts/bench-import.sh   # on the CQL store, a fresh keyspace per run
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-3}
volunteers=${VOLUNTEERS:-7000}
stations=${STATIONS:-618}
port=${ADMIN_PORT:-27461}
bin=${CARGO_TARGET_DIR:-target}/release
cargo build --release --locked -q -p herold-relay -p herold-client
work=$(mktemp -d)
relay=
cleanup() {
    if [ -n "$relay" ]; then kill "$relay" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT
"$bin/herold" roster generate --volunteers "$volunteers" --stations "$stations" \
    --out "$work/roster.csv"
herold() { "$bin/herold" --admin "http://127.0.0.1:$port" --json "$@"; }
import() {
    herold admin import "$work/roster.csv" --channel election-info \
        --channel election-urgent --quiet
}
stamp=$(date +%s)
for i in $(seq "$runs"); do
    store=()
    if [ -n "${CQL:-}" ]; then
        store=(--cql-contact-points "$CQL" --cql-keyspace "herold_import_${stamp}_$i")
    fi
    HEROLD_LOG=warn "$bin/herold-relay" --dev --data-dir "$work/data-$i" "${store[@]}" \
        --listen 127.0.0.1:0 --admin-listen "127.0.0.1:$port" --metrics-listen 127.0.0.1:0 >"$work/relay-$i.log" 2>&1 &
    relay=$!
    for _ in $(seq 150); do
        if ! kill -0 "$relay" 2>/dev/null; then
            echo "the relay exited:" >&2
            cat "$work/relay-$i.log" >&2
            exit 1
        fi
        if herold admin whoami >/dev/null 2>&1; then break; fi
        sleep 0.2
    done
    import >"$work/first-$i.json"
    import >"$work/again-$i.json"
    kill -TERM "$relay"
    wait "$relay" || true
    relay=
done
python3 - "$work" "$runs" <<'PY'
import json, statistics, sys
work, runs = sys.argv[1], int(sys.argv[2])
first = [json.load(open(f"{work}/first-{i}.json")) for i in range(1, runs + 1)]
again = [json.load(open(f"{work}/again-{i}.json")) for i in range(1, runs + 1)]
for i, (f, a) in enumerate(zip(first, again), 1):
    print(f"run {i}: import {f['seconds']:.2f} s (created {f['created']}, failed {f['failed']}, "
          f"groups/channels {f['conversations_created']}, codes {f['codes']}); "
          f"re-run {a['seconds']:.2f} s (created {a['created']}, unchanged {a['unchanged']}, codes {a['codes']})")
    assert f["created"] == f["rows"] and f["failed"] == 0, f
    assert a["created"] == 0 and a["unchanged"] == a["rows"] and a["codes"] == 0, a
print(f"median import {statistics.median(x['seconds'] for x in first):.2f} s, "
      f"median re-run {statistics.median(x['seconds'] for x in again):.2f} s "
      f"({first[0]['rows']} rows)")
PY
