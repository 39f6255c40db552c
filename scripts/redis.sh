#!/usr/bin/env bash
# Redis for Herold's tests, CI and developers, on loopback.
#
#   scripts/redis.sh install          Debian's redis-server and redis-sentinel (apt)
#   scripts/redis.sh start [what]     what: single | sentinel | cluster | all (default)
#   scripts/redis.sh stop             stops every instance this script started
#   scripts/redis.sh status
#   scripts/redis.sh env              prints the HEROLD_TEST_REDIS* variables
#
# Layouts (ports can be moved with HEROLD_REDIS_PORT_BASE, default 6390):
#   single     one Redis on BASE
#   sentinel   master BASE+1, replica BASE+2, three sentinels on BASE+20001..20003
#              monitoring master name "herold" (quorum 2, down after 1 s)
#   cluster    3 masters + 3 replicas on BASE+610..BASE+615 (7000.. by default)
# Instances keep no data on disk (no RDB, no AOF): a restart is a clean
# loss of everything, the harder case for the router. Their folders, logs
# and pid files live in ${HEROLD_REDIS_DIR:-${TMPDIR:-/tmp}/herold-redis}.
set -euo pipefail

BASE=${HEROLD_REDIS_PORT_BASE:-6390}
DIR=${HEROLD_REDIS_DIR:-${TMPDIR:-/tmp}/herold-redis}
SINGLE=$BASE
S_MASTER=$((BASE + 1))
S_REPLICA=$((BASE + 2))
SENTINELS=($((BASE + 20001)) $((BASE + 20002)) $((BASE + 20003)))
CLUSTER=($((BASE + 610)) $((BASE + 611)) $((BASE + 612)) $((BASE + 613)) $((BASE + 614)) $((BASE + 615)))

die() { echo "redis.sh: $*" >&2; exit 1; }

install() {
  if command -v redis-server >/dev/null && command -v redis-sentinel >/dev/null \
    && command -v redis-cli >/dev/null; then
    return 0
  fi
  command -v apt-get >/dev/null || die "redis-server is missing and apt-get is not available; install Redis 7 by hand"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "redis.sh: installing Debian's redis-server and redis-sentinel"
  $sudo apt-get update -qq >/dev/null || true
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server redis-sentinel >/dev/null
}

# wait_for PORT WHAT: until PING answers PONG, for up to 10 s.
wait_for() {
  local port=$1 i
  for i in $(seq 1 100); do
    if [ "$(redis-cli -p "$port" ping 2>/dev/null || true)" = "PONG" ]; then return 0; fi
    sleep 0.1
  done
  die "$2 on port $port did not answer within 10 s; see $DIR/$port/log"
}

# server PORT [extra redis-server arguments...]
server() {
  local port=$1; shift
  if [ "$(redis-cli -p "$port" ping 2>/dev/null || true)" = "PONG" ]; then return 0; fi
  mkdir -p "$DIR/$port"
  redis-server --port "$port" --bind 127.0.0.1 --dir "$DIR/$port" \
    --daemonize yes --pidfile "$DIR/$port/pid" --logfile "$DIR/$port/log" \
    --save "" --appendonly no --protected-mode no "$@"
  wait_for "$port" "redis-server"
}

start_single() {
  server "$SINGLE"
  echo "redis.sh: single Redis on 127.0.0.1:$SINGLE"
}

start_sentinel() {
  server "$S_MASTER"
  server "$S_REPLICA" --replicaof 127.0.0.1 "$S_MASTER"
  local p
  for p in "${SENTINELS[@]}"; do
    if [ "$(redis-cli -p "$p" ping 2>/dev/null || true)" = "PONG" ]; then continue; fi
    mkdir -p "$DIR/$p"
    cat > "$DIR/$p/sentinel.conf" <<EOF
port $p
bind 127.0.0.1
protected-mode no
daemonize yes
pidfile $DIR/$p/pid
logfile $DIR/$p/log
dir $DIR/$p
sentinel monitor herold 127.0.0.1 $S_MASTER 2
sentinel down-after-milliseconds herold 1000
sentinel failover-timeout herold 3000
sentinel parallel-syncs herold 1
EOF
    redis-sentinel "$DIR/$p/sentinel.conf"
    wait_for "$p" "redis-sentinel"
  done
  # Until the sentinels agree on the master.
  local i
  for i in $(seq 1 100); do
    if redis-cli -p "${SENTINELS[0]}" sentinel get-master-addr-by-name herold 2>/dev/null | grep -q 127.0.0.1; then
      echo "redis.sh: Sentinel master 'herold' on 127.0.0.1:$S_MASTER (replica :$S_REPLICA), sentinels on ${SENTINELS[*]}"
      return 0
    fi
    sleep 0.1
  done
  die "the sentinels did not report master 'herold' within 10 s"
}

cluster_ok_everywhere() {
  local p
  for p in "${CLUSTER[@]}"; do
    redis-cli -p "$p" cluster info 2>/dev/null | grep -q "cluster_state:ok" || return 1
  done
}

start_cluster() {
  local p
  for p in "${CLUSTER[@]}"; do
    # A node that is not running has nothing worth keeping: a nodes.conf left
    # by an earlier run (a killed machine, a crashed script) would make it
    # rejoin a cluster that no longer exists and refuse `--cluster create`.
    if [ "$(redis-cli -p "$p" ping 2>/dev/null || true)" != "PONG" ]; then
      rm -f "$DIR/$p/nodes.conf"
    fi
    server "$p" --cluster-enabled yes --cluster-config-file "$DIR/$p/nodes.conf" \
      --cluster-node-timeout 2000
  done
  if ! cluster_ok_everywhere; then
    # Not one healthy cluster (half-started, or left over): start over. The
    # instances hold test data only.
    for p in "${CLUSTER[@]}"; do
      redis-cli -p "$p" flushall >/dev/null 2>&1 || true
      redis-cli -p "$p" cluster reset hard >/dev/null 2>&1 \
        || die "CLUSTER RESET on port $p failed; see $DIR/$p/log"
    done
    local addrs=()
    for p in "${CLUSTER[@]}"; do addrs+=("127.0.0.1:$p"); done
    if ! redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes \
      >"$DIR/cluster-create.log" 2>&1; then
      tail -n 20 "$DIR/cluster-create.log" >&2
      die "cluster create failed; see $DIR/cluster-create.log"
    fi
  fi
  local i
  for i in $(seq 1 200); do
    if cluster_ok_everywhere; then
      echo "redis.sh: Redis Cluster (3 masters, 3 replicas) on 127.0.0.1:${CLUSTER[0]}..${CLUSTER[5]}"
      return 0
    fi
    sleep 0.1
  done
  die "the cluster did not reach cluster_state:ok within 20 s"
}

stop_all() {
  local f
  shopt -s nullglob
  for f in "$DIR"/*/pid; do
    kill "$(cat "$f")" 2>/dev/null || true
  done
  # Cluster state and logs go too: a restart begins clean.
  for f in "$DIR"/*/pid; do
    local pid i
    pid=$(cat "$f")
    for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  done
  rm -rf "$DIR"
  echo "redis.sh: stopped"
}

status() {
  local p
  for p in "$SINGLE" "$S_MASTER" "$S_REPLICA" "${SENTINELS[@]}" "${CLUSTER[@]}"; do
    printf '%-6s %s\n' "$p" "$(redis-cli -p "$p" ping 2>/dev/null || echo down)"
  done
}

env_vars() {
  local c=""
  local p
  for p in "${CLUSTER[@]:0:3}"; do c="${c:+$c,}127.0.0.1:$p"; done
  echo "HEROLD_TEST_REDIS=redis://127.0.0.1:$SINGLE"
  echo "HEROLD_TEST_REDIS_SENTINEL=sentinel://herold@127.0.0.1:${SENTINELS[0]},127.0.0.1:${SENTINELS[1]},127.0.0.1:${SENTINELS[2]}"
  echo "HEROLD_TEST_REDIS_CLUSTER=cluster://$c"
}

case "${1:-}" in
  install) install ;;
  start)
    install
    case "${2:-all}" in
      single) start_single ;;
      sentinel) start_sentinel ;;
      cluster) start_cluster ;;
      all) start_single; start_sentinel; start_cluster ;;
      *) die "start what? single | sentinel | cluster | all" ;;
    esac ;;
  stop) stop_all ;;
  status) status ;;
  env) env_vars ;;
  *) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 64 ;;
esac
