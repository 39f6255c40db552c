#!/usr/bin/env bash
# The Helm chart helm/herold: the Helm CLI, and the checks of the chart.
#
#   scripts/helm.sh path    installs Helm if needed, prints its path
#   scripts/helm.sh check   installs Helm and kubernetes-validate if needed, then:
#     1. the chart's copies of the alerting rules and the dashboard
#        (helm/herold/files/) equal deploy/prometheus/alerts.yml and
#        deploy/grafana/herold.json
#     2. helm lint --strict with each profile (helm/herold/profiles/*.yaml)
#     3. helm template with each profile, into a temporary directory
#     4. kubernetes-validate --strict on every rendered manifest against the
#        Kubernetes $KUBE_VERSION schemas; ServiceMonitor and PrometheusRule
#        (Prometheus Operator CRDs, no schema in the tool) are skipped, by
#        name, and checked by the invariant tests instead
#     5. the invariant tests, helm/herold/tests/test_manifests.py (unittest
#        and PyYAML in the venv), which render both profiles and more
#   Every step runs; any failure fails the command (exit 1).
#   scripts/helm.sh sync    copies deploy/prometheus/alerts.yml and
#                           deploy/grafana/herold.json into the chart
#
# Where the tools come from (a cache outside the clone, reused when present):
#   ${HEROLD_CACHE:-$HOME/.cache/herold}/helm-$HELM_VERSION/helm
#     built from the Go module proxy: GOBIN=<that dir> go install
#     helm.sh/helm/v3/cmd/helm@$HELM_VERSION. Helm's go.mod wants Go
#     $HELM_GO_MIN or newer: a `go` on PATH that new is used as it is; an
#     older one (1.21 or newer) runs with GOTOOLCHAIN=$GO_TOOLCHAIN, which
#     the go command fetches from the module proxy; without any usable `go`
#     the $GO_TOOLCHAIN toolchain is fetched from the module proxy as the
#     module golang.org/toolchain (a zip), checked against its pinned go.sum
#     hash and unpacked into the cache.
#   ${HEROLD_CACHE:-$HOME/.cache/herold}/helm-venv-<hash>/
#     a python3 venv with helm/herold/tests/requirements.txt (pinned:
#     kubernetes-validate, PyYAML and their dependencies) from PyPI.
# HEROLD_HELM=/path/to/helm uses that Helm instead (it must be $HELM_VERSION).
set -euo pipefail
cd "$(dirname "$0")/.."

# Helm 3.21.4, not 3.22.0: the package notes of this workplace say 3.22.0 is
# served but not approved. Its go.mod says `go 1.26.0`.
HELM_VERSION=v3.21.4
HELM_GO_MIN=1.26.0
# The Go used when the machine's is missing or too old, and the go.sum
# hashes (h1) of its module zips, from the checksum database.
GO_TOOLCHAIN=go1.27.3
declare -A GO_TOOLCHAIN_H1=(
  [linux-amd64]="h1:r0ub+FnqzZxoWm/dSUOI9DcIqYWn/mNYGFJcv7PyBzs="
  [linux-arm64]="h1:VY4gDzfxOrsM17J2qtgZgiAIsWhp7XWK1jMfE3kXV0s="
)
# Kubernetes version whose schemas the manifests are checked against (the
# oldest the chart is meant for that kubernetes-validate 1.37.0 ships).
KUBE_VERSION=1.30.0
# Kinds without a schema in kubernetes-validate (CRDs): skipped there.
SKIP_KINDS=(ServiceMonitor PrometheusRule)

CHART=helm/herold
PROFILES=("$CHART"/profiles/*.yaml)
REQUIREMENTS=$CHART/tests/requirements.txt
TESTS=$CHART/tests/test_manifests.py
COPIES=(
  "deploy/prometheus/alerts.yml:$CHART/files/alerts.yml"
  "deploy/grafana/herold.json:$CHART/files/herold.json"
)
CACHE="${HEROLD_CACHE:-$HOME/.cache/herold}"
GOPROXY_URL="${GOPROXY:-https://proxy.golang.org}"
GOPROXY_URL="${GOPROXY_URL%%[,|]*}"
[ "$GOPROXY_URL" != direct ] && [ "$GOPROXY_URL" != off ] || GOPROXY_URL=https://proxy.golang.org

say() { echo "helm.sh: $*" >&2; }
die() { say "$*"; exit 1; }

# ver_ge A B: is version A (1.26.8) at least B (1.26.0)?
ver_ge() { [ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -n 1)" = "$2" ]; }

# The platform part of Go's toolchain module versions.
go_platform() {
  case "$(uname -m)" in
    x86_64 | amd64) echo linux-amd64 ;;
    aarch64 | arm64) echo linux-arm64 ;;
    *) die "no Go toolchain pinned for $(uname -m)" ;;
  esac
}

# Fetches a URL to a file with curl or, without it, python3.
fetch() {
  if command -v curl >/dev/null; then
    curl -fsSL --retry 3 -o "$2" "$1"
  else
    python3 -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' "$1" "$2"
  fi
}

# The go.sum hash (h1, golang.org/x/mod/sumdb/dirhash.Hash1) of a module zip.
zip_h1() {
  python3 - "$1" <<'PY'
import base64, hashlib, sys, zipfile
summary = hashlib.sha256()
with zipfile.ZipFile(sys.argv[1]) as z:
    for name in sorted(i.filename for i in z.infolist() if not i.is_dir()):
        summary.update(f"{hashlib.sha256(z.read(name)).hexdigest()}  {name}\n".encode())
print("h1:" + base64.b64encode(summary.digest()).decode())
PY
}

# Prints the path of the go binary of the $GO_TOOLCHAIN toolchain, fetching
# it from the module proxy into the cache if needed.
fetched_go() {
  local platform version dir
  platform="$(go_platform)"
  version="v0.0.1-$GO_TOOLCHAIN.$platform"
  dir="$CACHE/go-${GO_TOOLCHAIN#go}-$platform"
  if [ ! -x "$dir/go/bin/go" ]; then
    command -v python3 >/dev/null || die "python3 is needed to unpack the Go toolchain"
    mkdir -p "$CACHE"
    local stage
    stage="$(mktemp -d "$CACHE/.go-download.XXXXXX")"
    say "fetching Go $GO_TOOLCHAIN ($platform, about 76 MB) from $GOPROXY_URL"
    fetch "$GOPROXY_URL/golang.org/toolchain/@v/$version.zip" "$stage/toolchain.zip" \
      || { rm -rf "$stage"; die "could not fetch golang.org/toolchain@$version"; }
    local got
    got="$(zip_h1 "$stage/toolchain.zip")"
    if [ "$got" != "${GO_TOOLCHAIN_H1[$platform]}" ]; then
      rm -rf "$stage"
      die "golang.org/toolchain@$version: hash $got is not the pinned ${GO_TOOLCHAIN_H1[$platform]}"
    fi
    python3 - "$stage/toolchain.zip" "$stage" "golang.org/toolchain@$version/" <<'PY'
import os, stat, sys, zipfile
src, dest, prefix = sys.argv[1:]
with zipfile.ZipFile(src) as z:
    for info in z.infolist():
        if not info.filename.startswith(prefix) or info.is_dir():
            continue
        path = os.path.join(dest, "go", info.filename[len(prefix):])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with z.open(info) as f, open(path, "wb") as out:
            out.write(f.read())
        # Module zips carry no modes: bin/ and pkg/tool/ hold the programs.
        rel = info.filename[len(prefix):]
        if rel.startswith("bin/") or rel.startswith("pkg/tool/"):
            os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
PY
    rm -f "$stage/toolchain.zip"
    mv -T "$stage" "$dir" 2>/dev/null || rm -rf "$stage"
    [ -x "$dir/go/bin/go" ] || die "$dir is in the way (no go/bin/go in it); remove it and run again"
    say "Go $GO_TOOLCHAIN unpacked into $dir"
  fi
  echo "$dir/go/bin/go"
}

# Sets GO_BIN and GO_TOOLCHAIN_ENV: a Go that can build Helm.
choose_go() {
  local have=""
  if command -v go >/dev/null; then
    have="$(go env GOVERSION 2>/dev/null | sed -n 's/^go\([0-9][0-9.]*\).*/\1/p')"
  fi
  if [ -n "$have" ] && ver_ge "$have" "$HELM_GO_MIN"; then
    GO_BIN=go GO_TOOLCHAIN_ENV=local
  elif [ -n "$have" ] && ver_ge "$have" 1.21; then
    say "go $have is older than the $HELM_GO_MIN Helm needs: using GOTOOLCHAIN=$GO_TOOLCHAIN"
    GO_BIN=go GO_TOOLCHAIN_ENV=$GO_TOOLCHAIN
  else
    [ -z "$have" ] && say "no go on PATH" || say "go $have cannot switch toolchains"
    GO_BIN="$(fetched_go)" GO_TOOLCHAIN_ENV=local
  fi
}

install_helm() {
  local dir="$CACHE/helm-$HELM_VERSION"
  choose_go
  mkdir -p "$CACHE"
  local stage
  stage="$(mktemp -d "$CACHE/.helm-build.XXXXXX")"
  say "building Helm $HELM_VERSION with $("$GO_BIN" version 2>/dev/null | awk '{print $3}') (GOTOOLCHAIN=$GO_TOOLCHAIN_ENV; a few minutes on 2 cores)"
  if ! GOBIN="$stage" GOTOOLCHAIN="$GO_TOOLCHAIN_ENV" GOFLAGS= CGO_ENABLED=0 nice -n 10 \
      "$GO_BIN" install -trimpath \
      -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
      "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >&2; then
    rm -rf "$stage"
    die "go install helm.sh/helm/v3/cmd/helm@$HELM_VERSION failed"
  fi
  mv -T "$stage" "$dir" 2>/dev/null || rm -rf "$stage"
  [ -x "$dir/helm" ] || die "$dir is in the way (no helm in it); remove it and run again"
  say "Helm $HELM_VERSION built into $dir"
}

helm_path() {
  local helm
  if [ -n "${HEROLD_HELM:-}" ]; then
    helm="$HEROLD_HELM"
    [ -x "$helm" ] || die "HEROLD_HELM=$helm is not executable"
  else
    helm="$CACHE/helm-$HELM_VERSION/helm"
    [ -x "$helm" ] || install_helm
  fi
  local version
  version="$("$helm" version --template '{{.Version}}' 2>/dev/null || true)"
  [ "$version" = "$HELM_VERSION" ] || die "$helm is Helm ${version:-of unknown version}, want $HELM_VERSION"
  echo "$helm"
}

# Prints the venv's directory, creating it when needed.
venv_path() {
  command -v python3 >/dev/null || die "python3 is needed for kubernetes-validate and the tests"
  local key dir
  key="$( (python3 -c 'import sys; print(sys.version_info[:2])'; cat "$REQUIREMENTS") | sha256sum | cut -c1-12)"
  dir="$CACHE/helm-venv-$key"
  if [ ! -f "$dir/.complete" ]; then
    rm -rf "$dir"
    mkdir -p "$CACHE"
    say "creating $dir (kubernetes-validate, PyYAML from PyPI)"
    python3 -m venv "$dir" >&2 \
      || die "python3 -m venv failed (on Debian: apt-get install python3-venv)"
    nice -n 10 "$dir/bin/pip" install -q --disable-pip-version-check -r "$REQUIREMENTS" >&2 \
      || { rm -rf "$dir"; die "pip install -r $REQUIREMENTS failed"; }
    touch "$dir/.complete"
  fi
  echo "$dir"
}

TMP=""
cleanup() { [ -z "$TMP" ] || rm -rf "$TMP"; }
FAILED=()
PASSED=0
# step NAME COMMAND...: runs one check, remembers its failure, goes on.
step() {
  local name=$1; shift
  echo "== $name"
  if "$@"; then PASSED=$((PASSED + 1)); else FAILED+=("$name"); fi
}

copies_check() {
  local pair src copy ok=0
  for pair in "${COPIES[@]}"; do
    src=${pair%%:*} copy=${pair#*:}
    if cmp -s "$src" "$copy"; then
      echo "$copy equals $src"
    else
      say "$copy differs from $src: run scripts/helm.sh sync"
      diff -u "$src" "$copy" | head -n 20 >&2 || true
      ok=1
    fi
  done
  return $ok
}

sync_copies() {
  local pair
  for pair in "${COPIES[@]}"; do
    cp "${pair%%:*}" "${pair#*:}"
    echo "copied ${pair%%:*} to ${pair#*:}"
  done
}

lint() {
  local profile=$1
  "$HELM" lint "$CHART" -f "$profile" --strict --quiet
}

render() {
  local profile=$1 name
  name="$(basename "$profile" .yaml)"
  "$HELM" template herold "$CHART" --namespace herold -f "$profile" \
    --kube-version "$KUBE_VERSION" >"$TMP/$name.yaml" || return 1
  echo "$TMP/$name.yaml: $(grep -c '^kind:' "$TMP/$name.yaml") manifests"
}

# Splits the rendered profiles into one file per manifest (skipping the CRD
# kinds, by name) and runs kubernetes-validate --strict on them; a warning
# (e.g. a kind it has no schema for) counts as a failure too.
validate() {
  local out=$TMP/validate
  mkdir -p "$out"
  "$VENV/bin/python" -B - "$out" "${SKIP_KINDS[*]}" "$TMP"/*.yaml <<'PY' || return 1
import os, sys, yaml
out, skip, files = sys.argv[1], set(sys.argv[2].split()), sys.argv[3:]
n = 0
for path in files:
    profile = os.path.basename(path)[: -len(".yaml")]
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    for d in docs:
        kind, name = d["kind"], d["metadata"]["name"]
        if kind in skip:
            print(f"skipped {profile}: {kind}/{name} (a CRD, no schema in kubernetes-validate)")
            continue
        n += 1
        with open(os.path.join(out, f"{profile}-{n:02d}-{kind}-{name}.yaml"), "w") as f:
            yaml.safe_dump(d, f)
print(f"{n} manifests to validate")
PY
  local log=$TMP/validate.log
  "$VENV/bin/kubernetes-validate" -k "$KUBE_VERSION" --strict "$out"/*.yaml >"$log" 2>&1
  local rc=$?
  grep -E '^(WARN|ERROR)' "$log" >&2 && rc=1
  echo "kubernetes-validate $("$VENV/bin/kubernetes-validate" --version 2>&1 | awk '{print $NF}') --strict, Kubernetes $KUBE_VERSION: $(grep -c 'passed for resource' "$log") passed"
  return $rc
}

invariants() {
  HEROLD_HELM="$HELM" PYTHONDONTWRITEBYTECODE=1 "$VENV/bin/python" -B "$TESTS"
}

check() {
  local started=$SECONDS profile
  HELM="$(helm_path)"
  VENV="$(venv_path)"
  echo "helm.sh: Helm $("$HELM" version --template '{{.Version}} ({{.GoVersion}})'), $("$VENV/bin/python" --version)"
  TMP="$(mktemp -d)"
  trap cleanup EXIT

  step "chart copies of the alerts and the dashboard" copies_check
  for profile in "${PROFILES[@]}"; do
    step "helm lint --strict -f $profile" lint "$profile"
  done
  for profile in "${PROFILES[@]}"; do
    step "helm template -f $profile" render "$profile"
  done
  step "kubernetes-validate --strict (Kubernetes $KUBE_VERSION; skipped: ${SKIP_KINDS[*]})" validate
  step "invariant tests $TESTS" invariants
  echo "helm.sh: $PASSED passed, ${#FAILED[@]} failed ($((SECONDS - started)) s)"
  if [ "${#FAILED[@]}" -gt 0 ]; then
    say "FAILED:"
    printf '  %s\n' "${FAILED[@]}" >&2
    exit 1
  fi
}

case "${1:-}" in
  path) helm_path ;;
  check) check ;;
  sync) sync_copies ;;
  *) echo "usage: scripts/helm.sh path|check|sync" >&2; exit 64 ;;
esac
