#!/usr/bin/env bash
# The cargo-fuzz targets in fuzz/ (frame codec, client frames, the MLS
# framing checks, the roster CSV import), each run for a bounded time from
# its committed seed corpus (fuzz/corpus/<target>).
#
#   scripts/fuzz.sh [target...]        default: every target
#
# HEROLD_FUZZ_SECONDS (default 30) bounds each target's run; HEROLD_FUZZ_SEED
# fixes libFuzzer's seed (CI does, so that a run is repeatable; without it
# every run explores differently). New inputs the
# fuzzer finds go to a scratch corpus, not into the tree; a crash fails the
# run and leaves its input under fuzz/artifacts/<target>/ (rerun it with
# `cargo +nightly fuzz run <target> <file>`). Needs the nightly toolchain
# (libFuzzer's instrumentation) and installs cargo-fuzz once into the cache
# folder ${HEROLD_CI_CACHE:-$HOME/.cache/herold-ci}.
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_VERSION=0.13.2
CACHE=${HEROLD_CI_CACHE:-$HOME/.cache/herold-ci}
SECONDS_EACH=${HEROLD_FUZZ_SECONDS:-30}
die() { echo "fuzz.sh: $*" >&2; exit 1; }

rustup toolchain list 2>/dev/null | grep -q '^nightly' \
  || die "the nightly toolchain is missing (cargo-fuzz needs it): rustup toolchain install nightly"
root="$CACHE/cargo-fuzz-$FUZZ_VERSION"
if ! [ -x "$root/bin/cargo-fuzz" ]; then
  echo "fuzz.sh: installing cargo-fuzz $FUZZ_VERSION into $root"
  cargo install cargo-fuzz --version "$FUZZ_VERSION" --locked --root "$root" -q
fi
export PATH="$root/bin:$PATH"
# Its own build folder: sanitizer builds share nothing with the others.
export CARGO_TARGET_DIR="$CACHE/fuzz-target"

targets=("$@")
[ "${#targets[@]}" -gt 0 ] || targets=(frame_codec client_frame mls_framing roster_csv)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cargo +nightly fuzz build --fuzz-dir fuzz
for t in "${targets[@]}"; do
  [ -d "fuzz/corpus/$t" ] || die "no seed corpus fuzz/corpus/$t"
  mkdir -p "$scratch/$t"
  echo "fuzz.sh: $t for ${SECONDS_EACH} s"
  seed=()
  [ -z "${HEROLD_FUZZ_SEED:-}" ] || seed=(-seed="$HEROLD_FUZZ_SEED")
  cargo +nightly fuzz run --fuzz-dir fuzz "$t" "$scratch/$t" "fuzz/corpus/$t" -- \
    -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 "${seed[@]}" \
    2>"$scratch/$t.log" || { tail -40 "$scratch/$t.log" >&2; die "$t failed (see fuzz/artifacts/$t/)"; }
  grep -E "^stat::number_of_executed_units|^stat::peak_rss_mb" "$scratch/$t.log" | sed "s/^/fuzz.sh: $t /"
done
echo "fuzz.sh: ${#targets[@]} targets passed"
