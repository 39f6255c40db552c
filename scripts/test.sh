#!/usr/bin/env bash
# Runs every test of the workspace: unit, property, conformance and the
# end-to-end tests over real QUIC on loopback, and the CQL tier against a real
# CQL server: Apache Cassandra 5 standing in for Scylla, started here with
# scripts/cassandra.sh (installed on first use from Maven Central into
# ~/.cache/herold, kept running afterwards; `scripts/cassandra.sh stop`).
# The Redis tier: a single Redis, a Sentinel setup and a 3-master Redis
# Cluster on loopback from scripts/redis.sh (Debian's redis-server,
# installed with apt if missing; `scripts/redis.sh stop`), for the router's
# conformance suite and the cluster tests of several relay processes.
# Prometheus' promtool (scripts/promtool.sh) for the alerting rules, the
# dashboard and a real scrape; Helm and kubernetes-validate (scripts/helm.sh)
# for the chart.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/cassandra.sh start
export HEROLD_TEST_CQL="${HEROLD_TEST_CQL:-127.0.0.1:${HEROLD_CQL_PORT:-9042}}"
scripts/redis.sh start all
while IFS='=' read -r name value; do
  # A value already in the environment wins (another Redis of the developer's).
  if [ -z "${!name:-}" ]; then export "$name=$value"; fi
done < <(scripts/redis.sh env)
# Prometheus' promtool (from Debian's package, no daemon; cached outside the
# clone): the alerting rules' unit tests and the dashboard's queries here,
# `promtool check metrics` on a real scrape in relay/tests/observability.rs.
HEROLD_PROMTOOL="${HEROLD_PROMTOOL:-$(scripts/promtool.sh path)}"
export HEROLD_PROMTOOL
scripts/promtool.sh check
# The Helm chart: helm lint and template for both profiles, the rendered
# manifests against the Kubernetes schemas (offline) and their invariants
# (Helm built from the Go module proxy, cached outside the clone).
scripts/helm.sh check
# The web messenger: the SDK built to WebAssembly, the page with Vite, and
# its end-to-end tests in headless Chromium with Playwright against a real
# relay and the CLI (wasm-bindgen-cli and npm packages cached outside the
# clone; Debian's chromium installed with apt if missing).
scripts/web.sh test
# The loom models of the relay's concurrent building blocks (herold-sync,
# every interleaving of their threads; a target folder of their own).
scripts/loom.sh
exec cargo test --workspace --locked "$@"
