#!/usr/bin/env bash
# The web messenger (docs/web.md).
#   scripts/web.sh build   the SDK to WebAssembly (herold-web, wasm-bindgen)
#                          and the page with Vite into web/app/dist
#   scripts/web.sh test    build, then the end-to-end tests in headless
#                          Chromium (Playwright) against a real relay and CLI
# Tools come from the registries this project uses and are cached outside
# the clone: wasm-bindgen-cli at the exact version of the wasm-bindgen crate
# in Cargo.lock (cargo install; wasm-pack would download binaries), the npm
# packages of web/app/package-lock.json (npm ci), Debian's chromium (apt).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"
cache="${HEROLD_CACHE:-$HOME/.cache/herold}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"

wasm_bindgen() {
    local version
    version="$(awk '/^name = "wasm-bindgen"$/ {getline; gsub(/"/, "", $3); print $3; exit}' Cargo.lock)"
    local dir="$cache/tools/wasm-bindgen-$version"
    if [ ! -x "$dir/bin/wasm-bindgen" ]; then
        echo "web: installing wasm-bindgen-cli $version into $dir" >&2
        # Its own target folder: this build must not wait for, or evict,
        # the workspace's.
        CARGO_TARGET_DIR="$cache/tools/build" cargo install -q wasm-bindgen-cli \
            --version "$version" --root "$dir.partial"
        rm -rf "$dir" && mv "$dir.partial" "$dir"
    fi
    echo "$dir/bin/wasm-bindgen"
}

build() {
    rustup target list --installed | grep -q '^wasm32-unknown-unknown$' \
        || rustup target add wasm32-unknown-unknown
    local bindgen
    bindgen="$(wasm_bindgen)"
    cargo build --locked -q --release -p herold-web --target wasm32-unknown-unknown
    "$bindgen" --target web --out-dir web/app/src/pkg --out-name herold_web \
        "$CARGO_TARGET_DIR/wasm32-unknown-unknown/release/herold_web.wasm"
    (cd web/app && npm ci --no-audit --no-fund --loglevel=error && npm run -s build)
}

chromium_path() {
    if [ -n "${HEROLD_CHROMIUM:-}" ]; then echo "$HEROLD_CHROMIUM"; return; fi
    if ! command -v chromium >/dev/null 2>&1; then
        echo "web: installing Debian's chromium" >&2
        apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >&2
    fi
    command -v chromium
}

case "${1:-}" in
    build) build ;;
    test)
        build
        cargo build --locked -q -p herold-relay -p herold-client
        HEROLD_CHROMIUM="$(chromium_path)" HEROLD_BIN_DIR="$CARGO_TARGET_DIR/debug" \
            node --test --test-reporter=spec web/app/tests/
        ;;
    *) echo "usage: scripts/web.sh build|test" >&2; exit 64 ;;
esac
