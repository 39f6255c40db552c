#!/usr/bin/env bash
# The loom models of herold-sync (sync/src/lib.rs): the relay's concurrent
# building blocks with every interleaving of their threads explored. Built
# with `--cfg loom` in a target folder of its own, since the flag changes
# the build of every crate. LOOM_MAX_PREEMPTIONS bounds the search (3, as
# tokio's CI).
#
#   scripts/loom.sh [test name filter]
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}/loom"
export RUSTFLAGS="--cfg loom ${RUSTFLAGS:-}"
export LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-3}"
CARGO_TARGET_DIR="$target" cargo test --locked -q -p herold-sync --release --lib "$@"
