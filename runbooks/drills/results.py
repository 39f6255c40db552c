#!/usr/bin/env python3
"""A drill's figures from herold-loadtest's report (drill.json) and the
faults the drill script injected; printed, and appended to the results
files (Markdown table and JSON lines). Exit 1 if an accepted message was
lost or the load tester's verification failed otherwise (duplicated,
reordered, misdelivered, two messages at one place)."""

import argparse
import datetime
import json
import os
import socket

p = argparse.ArgumentParser()
for a in ["drill", "report", "faults", "cql", "relays", "work", "note", "seconds",
          "results-md", "results-jsonl"]:
    p.add_argument("--" + a, required=a != "note", default="")
args = p.parse_args()

r = json.load(open(args.report))
v = r["verification"]
rec = r.get("recovery", {})
start_ms = r.get("started_at_unix_ms", 0)
faults = []
for line in open(args.faults):
    line = line.strip()
    if line:
        ms, label = line.split(" ", 1)
        faults.append((int(ms), label))
first_fault = (faults[0][0] - start_ms) / 1000 if faults and start_ms else None

ttra = rec.get("time_to_receive_again", {})
last_again = rec.get("last_received_again_at_secs")
# From the (first) fault until the last device that lost its connection
# received again: "until every device receives again".
all_again = None
if first_fault is not None and last_again is not None:
    all_again = max(0.0, last_again - first_fault)

row = {
    "drill": args.drill,
    "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    "host": socket.gethostname(),
    "cores": os.cpu_count(),
    "cql": args.cql,
    "relays": int(args.relays),
    "devices": r["devices"],
    "faults_at_secs": [round((ms - start_ms) / 1000, 1) for ms, _ in faults],
    "faults": [label for _, label in faults],
    "sent": r["sent"],
    "accepted": r["accepted"],
    "failed_submits": r["failed"],
    "retried_submits": r.get("retried", 0),
    "errors": r.get("errors", {}),
    "expected": v["expected"],
    "delivered": v["delivered"],
    "lost": v["lost"],
    "duplicated": v["duplicated"],
    "reordered": v["reordered"],
    "misdelivered": v["misdelivered"],
    "order_conflicts": v["order_conflicts"],
    "unexpected": v["unexpected"],
    "devices_disconnected": rec.get("devices_disconnected", 0),
    "time_to_receive_again_p99_s": round(ttra.get("p99_ms", 0) / 1000, 2),
    "time_to_receive_again_max_s": round(ttra.get("max_ms", 0) / 1000, 2),
    "never_received_again": rec.get("never_received_again", 0),
    "fault_to_all_receiving_s": None if all_again is None else round(all_again, 2),
    "longest_delivery_gap_s": round(rec.get("longest_delivery_gap_secs", 0), 2),
    "longest_delivery_gap_from_s": round(rec.get("longest_delivery_gap_from_secs", 0), 1),
    "accepted_p99_ms": r["submit_to_accepted"]["p99_ms"],
    "accepted_max_ms": r["submit_to_accepted"]["max_ms"],
    "delivered_p50_ms": r["submit_to_delivered"]["p50_ms"],
    "delivered_p99_ms": r["submit_to_delivered"]["p99_ms"],
    "delivered_max_ms": r["submit_to_delivered"]["max_ms"],
    "drill_secs": int(args.seconds),
    "work": args.work,
    "note": args.note,
}
clean = all(v[k] == 0 for k in ["lost", "duplicated", "reordered", "misdelivered", "order_conflicts"])
row["verdict"] = "PASS" if clean else ("LOST" if v["lost"] else "FAIL")

def fmt(x, unit=""):
    return "-" if x is None else f"{x}{unit}"

print(f"""
== drill {args.drill}: {row['verdict']} ==
faults (s into the traffic): {', '.join(f'{t} {l}' for t, l in zip(row['faults_at_secs'], row['faults'])) or 'none'}
submits: {row['sent']} sent, {row['accepted']} accepted, {row['failed_submits']} failed {row['errors'] or ''}; {row['retried_submits']} retries after UNAVAILABLE
deliveries: {row['expected']} owed, {row['delivered']} seen; lost {row['lost']}, duplicated {row['duplicated']}, reordered {row['reordered']}, misdelivered {row['misdelivered']}, order conflicts {row['order_conflicts']}
devices disconnected: {row['devices_disconnected']}; time to receive again p99 {row['time_to_receive_again_p99_s']} s, max {row['time_to_receive_again_max_s']} s; still waiting at the end: {row['never_received_again']}
fault -> every disconnected device received again: {fmt(row['fault_to_all_receiving_s'], ' s')}
longest time without any delivery: {row['longest_delivery_gap_s']} s (from {row['longest_delivery_gap_from_s']} s)
latency submit->accepted p99 {row['accepted_p99_ms']} ms (max {row['accepted_max_ms']}); submit->delivered p50 {row['delivered_p50_ms']} ms, p99 {row['delivered_p99_ms']} ms, max {row['delivered_max_ms']} ms
evidence: {args.work}
""")

header = ("| date | drill | CQL | verdict | accepted | lost | dup | reordered | failed submits (retries) "
          "| disconnected devices | receive again p99 / max (s) | fault -> all receive again (s) "
          "| longest silence (s) | delivered p99 / max (ms) | drill (s) |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
line = (f"| {row['date']} | {row['drill']} | {row['cql']} | {row['verdict']} | {row['accepted']} "
        f"| {row['lost']} | {row['duplicated']} | {row['reordered']} | {row['failed_submits']} ({row['retried_submits']}) "
        f"| {row['devices_disconnected']} | {row['time_to_receive_again_p99_s']} / {row['time_to_receive_again_max_s']} "
        f"| {fmt(row['fault_to_all_receiving_s'])} | {row['longest_delivery_gap_s']} "
        f"| {row['delivered_p99_ms']:.1f} / {row['delivered_max_ms']:.1f} | {row['drill_secs']} |\n")
new = not os.path.exists(args.results_md)
with open(args.results_md, "a") as f:
    if new:
        f.write(header)
    f.write(line)
with open(args.results_jsonl, "a") as f:
    f.write(json.dumps(row) + "\n")
print(f"appended to {args.results_md} and {args.results_jsonl}")
raise SystemExit(0 if clean else 1)
