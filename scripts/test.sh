#!/usr/bin/env bash
# Runs every test of the workspace: unit, property, conformance and the
# end-to-end tests over real QUIC on loopback, and the CQL tier against a real
# CQL server: Apache Cassandra 5 standing in for Scylla, started here with
# scripts/cassandra.sh (installed on first use from Maven Central into
# ~/.cache/herold, kept running afterwards; `scripts/cassandra.sh stop`).
# Later tiers (Redis) start their servers from here.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/cassandra.sh start
export HEROLD_TEST_CQL="${HEROLD_TEST_CQL:-127.0.0.1:${HEROLD_CQL_PORT:-9042}}"
exec cargo test --workspace --locked "$@"
