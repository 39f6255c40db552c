#!/usr/bin/env bash
# promtool for Herold's alerting rules and Grafana dashboard; starts no daemon.
#
#   scripts/promtool.sh path    installs promtool if needed, prints its path
#   scripts/promtool.sh check   installs promtool if needed, then checks:
#     1. promtool check rules deploy/prometheus/alerts.yml
#     2. promtool test rules  deploy/prometheus/alerts_test.yml
#     3. every metric name the rules, their tests and the dashboard use is
#        declared in a metrics.rs (relay, store, router), so a renamed metric
#        fails here instead of leaving an alert that can never fire
#     4. every query of deploy/grafana/herold.json (panels and annotations),
#        with Grafana's variables replaced by PromQL values, as a
#        recording-rule group put through `promtool check rules`
#   Any error fails the command (exit 1).
#
# Where promtool comes from: a `promtool` already on PATH is used as it is.
# Otherwise the one of Debian's `prometheus` package: `apt-get download` (no
# install, no service) into a cache outside the clone, unpacked with `dpkg -x`:
#   ${HEROLD_CACHE:-$HOME/.cache/herold}/promtool-<debian-version>/
#     prometheus_<version>_<arch>.deb, root/ (the unpacked package),
#     promtool -> root/usr/bin/promtool
# A cached copy is reused. `apt-get update` runs only when the download fails
# (empty or stale package lists). HEROLD_PROMTOOL=/path/to/promtool overrides
# all of this.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${HEROLD_CACHE:-$HOME/.cache/herold}"
RULES=deploy/prometheus/alerts.yml
TESTS=deploy/prometheus/alerts_test.yml
DASHBOARD=deploy/grafana/herold.json
CATALOGUE=(relay/src/metrics.rs store/src/metrics.rs router/src/metrics.rs)

say() { echo "promtool.sh: $*" >&2; }
die() { say "$*"; exit 1; }

# Prints the path of a cached promtool (the newest Debian version), if any.
cached() {
  local found
  found="$(printf '%s\n' "$CACHE"/promtool-*/promtool | sort -V | tail -n 1)"
  [ -n "$found" ] && [ -x "$found" ] && echo "$found"
}

install() {
  command -v apt-get >/dev/null || die "promtool is not on PATH and apt-get is missing; install Prometheus' promtool by hand or set HEROLD_PROMTOOL"
  command -v dpkg-deb >/dev/null || die "dpkg-deb is missing"
  mkdir -p "$CACHE"
  local stage
  stage="$(mktemp -d "$CACHE/.promtool-download.XXXXXX")"
  chmod 755 "$stage"
  # apt-get download as root warns that the _apt user cannot write here; harmless.
  if ! (cd "$stage" && apt-get download -q prometheus >/dev/null 2>"$stage/err"); then
    say "apt-get download failed ($(tail -n 1 "$stage/err")); running apt-get update"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq >/dev/null || die "apt-get update failed"
    (cd "$stage" && apt-get download -q prometheus >/dev/null 2>"$stage/err") \
      || { cat "$stage/err" >&2; rm -rf "$stage"; die "apt-get download prometheus failed"; }
  fi
  local deb version dir
  deb="$(ls "$stage"/prometheus_*.deb)"
  version="$(dpkg-deb -f "$deb" Version | tr ':' '_')"
  dir="$CACHE/promtool-$version"
  if [ -x "$dir/promtool" ]; then rm -rf "$stage"; echo "$dir/promtool"; return; fi
  mkdir -p "$stage/root"
  dpkg-deb -x "$deb" "$stage/root"
  [ -x "$stage/root/usr/bin/promtool" ] || { rm -rf "$stage"; die "$deb holds no usr/bin/promtool"; }
  ln -s root/usr/bin/promtool "$stage/promtool"
  rm -f "$stage/err"
  # Another run may have finished the same version meanwhile: keep theirs.
  mv -T "$stage" "$dir" 2>/dev/null || rm -rf "$stage"
  [ -x "$dir/promtool" ] || die "$dir is in the way (no promtool in it); remove it and run again"
  say "promtool $version unpacked into $dir"
  echo "$dir/promtool"
}

promtool_path() {
  if [ -n "${HEROLD_PROMTOOL:-}" ]; then
    [ -x "$HEROLD_PROMTOOL" ] || die "HEROLD_PROMTOOL=$HEROLD_PROMTOOL is not executable"
    echo "$HEROLD_PROMTOOL"
  elif command -v promtool >/dev/null; then
    command -v promtool
  elif cached; then
    :
  else
    install
  fi
}

# Writes the dashboard's panel queries as one recording-rule group to $2.
dashboard_rules() {
  python3 - "$1" "$2" <<'PY'
import json, re, sys

src, out = sys.argv[1], sys.argv[2]
with open(src) as f:
    dash = json.load(f)

# Grafana's variables, replaced by values that keep the query valid PromQL.
REPLACE = [
    (r"\$__rate_interval\b|\$\{__rate_interval\}", "1m"),
    (r"\$__interval\b|\$\{__interval\}", "1m"),
    (r"\$__range\b|\$\{__range\}", "1h"),
    (r"\$\{instance(:\w+)?\}|\$instance\b", ".+"),
]

def panels(items):
    for p in items:
        yield p
        yield from panels(p.get("panels", []))

queries, rules, errors = [], [], []
for p in panels(dash.get("panels", [])):
    for t in p.get("targets", []):
        if t.get("expr") is None:
            continue
        queries.append((
            f'panel {p.get("id")} "{p.get("title")}" query {t.get("refId")}',
            f'herold_dashboard:panel_{p.get("id")}_{t.get("refId", "A")}'.lower(),
            t["expr"],
        ))
for i, a in enumerate(dash.get("annotations", {}).get("list", [])):
    if a.get("expr"):
        queries.append((f'annotation {i} "{a.get("name")}"', f"herold_dashboard:annotation_{i}", a["expr"]))
for where, record, expr in queries:
    if not expr.strip():
        errors.append(f"{where}: empty expr")
        continue
    for pattern, value in REPLACE:
        expr = re.sub(pattern, value, expr)
    left = re.findall(r"\$\{?[A-Za-z_]\w*", expr)
    if left:
        errors.append(f"{where}: unknown Grafana variable {left[0]}")
        continue
    rules.append({"record": record, "expr": expr})
if errors:
    sys.exit("\n".join(errors))
if not rules:
    sys.exit(f"{src}: no panel queries found")
with open(out, "w") as f:
    # JSON is YAML: promtool reads it as a rule file.
    json.dump({"groups": [{"name": "herold-dashboard", "rules": rules}]}, f, indent=1)
print(len(rules))
PY
}

# Every herold_* metric name used in the rules and the dashboard must be one
# declared in the metrics.rs files (histograms with _bucket, _sum or _count).
catalogue_names() {
  python3 - "$RULES" "$TESTS" "$DASHBOARD" "${CATALOGUE[@]}" <<'PY'
import json, re, sys

rules, tests, dashboard, *catalogue = sys.argv[1:]
declared = set()
for path in catalogue:
    with open(path) as f:
        declared |= set(re.findall(r'"(herold_[a-z0-9_]+)"', f.read()))
if not declared:
    sys.exit("no metric names found in " + " ".join(catalogue))

def known(name):
    if name in declared:
        return True
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name[: -len(suffix)] in declared:
            return True
    return False

used = {}
def scan(text, where):
    for name in re.findall(r"\bherold_[a-z0-9_]+", text):
        used.setdefault(name, where)
for path in (rules, tests):
    with open(path) as f:
        scan(f.read(), path)
with open(dashboard) as f:
    dash = json.load(f)
def panels(items):
    for p in items:
        yield p
        yield from panels(p.get("panels", []))
for p in panels(dash.get("panels", [])):
    for t in p.get("targets", []):
        scan(t.get("expr") or "", dashboard)
for a in dash.get("annotations", {}).get("list", []):
    scan(a.get("expr") or "", dashboard)
for v in dash.get("templating", {}).get("list", []):
    query = v.get("query")
    scan(query.get("query", "") if isinstance(query, dict) else str(query or ""), dashboard)

unknown = sorted((where, name) for name, where in used.items() if not known(name))
for where, name in unknown:
    print(f"{where}: {name} is not declared in any metrics.rs", file=sys.stderr)
if unknown:
    sys.exit(1)
base = {n if n in declared else re.sub(r"_(bucket|sum|count)$", "", n) for n in used}
print(f"{len(base)} of the {len(declared)} declared metrics are used, all names known")
PY
}

TMP=""
cleanup() { [ -z "$TMP" ] || rm -rf "$TMP"; }
FAILED=()
# step NAME COMMAND...: runs one check, remembers its failure, goes on.
step() {
  local name=$1; shift
  echo "== $name"
  "$@" || FAILED+=("$name")
}

dashboard_check() {
  local pt=$1 n
  n="$(dashboard_rules "$DASHBOARD" "$TMP/dashboard.rules.yml")" || return 1
  echo "$n queries (panels and annotations)"
  "$pt" check rules "$TMP/dashboard.rules.yml" && return 0
  say "a rule herold_dashboard:panel_<id>_<refid> above is query <refid> of the panel with that id in $DASHBOARD"
  return 1
}

check() {
  local pt
  pt="$(promtool_path)"
  echo "promtool.sh: using $pt ($("$pt" --version 2>&1 | head -n 1))"
  command -v python3 >/dev/null || die "python3 is needed to read $DASHBOARD"
  TMP="$(mktemp -d)"
  trap cleanup EXIT

  step "promtool check rules $RULES" "$pt" check rules --lint=all --lint-fatal "$RULES"
  step "promtool test rules $TESTS" "$pt" test rules "$TESTS"
  step "metric names against ${CATALOGUE[*]}" catalogue_names
  step "dashboard queries of $DASHBOARD" dashboard_check "$pt"
  if [ "${#FAILED[@]}" -gt 0 ]; then
    say "FAILED:"
    printf '  %s\n' "${FAILED[@]}" >&2
    exit 1
  fi
  echo "promtool.sh: all checks passed"
}

case "${1:-}" in
  path) promtool_path ;;
  check) check ;;
  *) echo "usage: scripts/promtool.sh path|check" >&2; exit 64 ;;
esac
