#!/usr/bin/env bash
# Runs every test of the workspace: unit, property, conformance and the
# end-to-end tests over real QUIC on loopback. Later tiers (Redis, CQL) start
# their servers from here.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo test --workspace --locked "$@"
