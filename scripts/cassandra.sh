#!/usr/bin/env bash
# Apache Cassandra 5 as the project's test CQL server. Cassandra stands in for
# Scylla (no Scylla server can be installed on our machines; both speak the
# same CQL native protocol and the `scylla` driver talks to both).
#
# Usage: scripts/cassandra.sh install|start|stop|status|restart
#        scripts/cassandra.sh start-cluster|stop-cluster|status-cluster
#        scripts/cassandra.sh start-node N|stop-node N|kill-node N
#
#   install  resolves org.apache.cassandra:cassandra-all:$VERSION and its
#            runtime dependencies from Maven Central with `mvn` into a cache
#            outside the clone, keyed by version. Works offline once cached.
#   start    installs if needed, writes cassandra.yaml and logback.xml into the
#            state dir, starts one node on 127.0.0.1 in the background and waits
#            (bounded) until CQL answers. Idempotent: a running node is reused.
#   stop     stops the node started by `start` and waits until it is gone.
#   status   exit 0 and a line when CQL answers, exit 1 otherwise.
#
# A three-node cluster for failover drills (runbooks/drills/), next to the
# single node (both can run at once; they share nothing but the jars):
#   start-cluster   nodes 1, 2, 3 on 127.0.0.1, 127.0.0.2, 127.0.0.3 (Linux
#                   routes all of 127/8 on lo), one after another: each is
#                   started once the previous one has joined (CQL answers on
#                   its address and its system.peers lists the others).
#                   Seed 127.0.0.1. Same CQL port on every address (default
#                   9142) and the same internode port (default 7110); JMX on
#                   7201..7203 (JMX binds 127.0.0.1 only). Heap 512M each.
#                   Idempotent: running nodes are reused.
#   stop-node N     SIGTERM node N (1..3) and wait until it is gone.
#   kill-node N     SIGKILL node N: a crash, for the node-loss drill.
#   start-node N    (re)start node N and wait until it has (re)joined.
#   stop-cluster    stop all three.
#   status-cluster  one line per node: CQL answers, peers it sees as up.
# Cluster state dirs: $HEROLD_CACHE/cassandra-cluster/node{1,2,3}. Drills
# create their keyspace with replication simple:3.
#
# Environment (all optional):
#   HEROLD_CASSANDRA_VERSION  default 5.0.9
#   HEROLD_CACHE              default $HOME/.cache/herold
#   HEROLD_CQL_PORT           native (CQL) port, default 9042
#   HEROLD_CASSANDRA_STORAGE_PORT  internode port, default 7010
#   HEROLD_CASSANDRA_JMX_PORT      default 7199
#   HEROLD_CASSANDRA_STATE    state dir (data, logs), default
#                             $HEROLD_CACHE/cassandra-state-$HEROLD_CQL_PORT
#   HEROLD_CASSANDRA_HEAP     default 768M
#   HEROLD_CASSANDRA_START_TIMEOUT  seconds, default 180
#   HEROLD_CASSANDRA_CLUSTER_CQL_PORT      cluster's CQL port, default 9142
#   HEROLD_CASSANDRA_CLUSTER_STORAGE_PORT  cluster's internode port, default 7110
#   HEROLD_CASSANDRA_CLUSTER_JMX_BASE      node N's JMX port is BASE+N, default 7200
#   HEROLD_CASSANDRA_CLUSTER_HEAP          default 512M
#   HEROLD_CASSANDRA_CLUSTER_STATE         default $HEROLD_CACHE/cassandra-cluster
set -euo pipefail

VERSION="${HEROLD_CASSANDRA_VERSION:-5.0.9}"
CACHE="${HEROLD_CACHE:-$HOME/.cache/herold}"
HOME_DIR="$CACHE/cassandra-$VERSION"
LIB="$HOME_DIR/lib"
PORT="${HEROLD_CQL_PORT:-9042}"
STORAGE_PORT="${HEROLD_CASSANDRA_STORAGE_PORT:-7010}"
JMX_PORT="${HEROLD_CASSANDRA_JMX_PORT:-7199}"
STATE="${HEROLD_CASSANDRA_STATE:-$CACHE/cassandra-state-$PORT}"
HEAP="${HEROLD_CASSANDRA_HEAP:-768M}"
TIMEOUT="${HEROLD_CASSANDRA_START_TIMEOUT:-180}"
HOST=127.0.0.1
CLUSTER_NAME=herold-test
SEEDS="$HOST:$STORAGE_PORT"
HINTS=false
BOOTSTRAP=true
PIDFILE="$STATE/cassandra.pid"
LOG="$STATE/logs/system.log"
OUT="$STATE/logs/stdout.log"

say() { echo "cassandra.sh: $*" >&2; }
die() { say "$*"; exit 1; }

CLUSTER_CQL_PORT="${HEROLD_CASSANDRA_CLUSTER_CQL_PORT:-9142}"
CLUSTER_STORAGE_PORT="${HEROLD_CASSANDRA_CLUSTER_STORAGE_PORT:-7110}"
CLUSTER_JMX_BASE="${HEROLD_CASSANDRA_CLUSTER_JMX_BASE:-7200}"
CLUSTER_HEAP="${HEROLD_CASSANDRA_CLUSTER_HEAP:-512M}"
CLUSTER_STATE="${HEROLD_CASSANDRA_CLUSTER_STATE:-$CACHE/cassandra-cluster}"
CLUSTER_NODES=3

# Points the single-node variables (HOST, PORT, STATE, ...) at cluster node N.
use_node() {
    local n=$1
    case "$n" in 1|2|3) ;; *) die "node must be 1, 2 or 3, not '$n'" ;; esac
    HOST="127.0.0.$n"
    PORT="$CLUSTER_CQL_PORT"
    STORAGE_PORT="$CLUSTER_STORAGE_PORT"
    JMX_PORT=$((CLUSTER_JMX_BASE + n))
    STATE="$CLUSTER_STATE/node$n"
    HEAP="$CLUSTER_HEAP"
    CLUSTER_NAME=herold-drill
    SEEDS="127.0.0.1:$CLUSTER_STORAGE_PORT"
    # Hints on, as in production: a node back after a short loss gets the
    # writes it missed replayed by the others.
    HINTS=true
    # A fresh cluster has no data to stream: nodes join without bootstrap.
    BOOTSTRAP=false
    PIDFILE="$STATE/cassandra.pid"
    LOG="$STATE/logs/system.log"
    OUT="$STATE/logs/stdout.log"
}

# The peers HOST:PORT lists in system.peers, one address a line (a minimal
# CQL v4 client: STARTUP, then one QUERY at consistency ONE).
cql_peers() {
    python3 - "$HOST" "$PORT" <<'PY' 2>/dev/null
import socket, struct, sys
host, port = sys.argv[1], int(sys.argv[2])
s = socket.create_connection((host, port), timeout=2)
s.settimeout(5)
def frame(stream, opcode, body):
    s.sendall(struct.pack(">BBhBI", 0x04, 0, stream, opcode, len(body)) + body)
    head = b""
    while len(head) < 9:
        c = s.recv(9 - len(head))
        if not c:
            sys.exit(1)
        head += c
    _v, _f, _s, op, n = struct.unpack(">BBhBI", head)
    data = b""
    while len(data) < n:
        c = s.recv(n - len(data))
        if not c:
            sys.exit(1)
        data += c
    return op, data
def string(b):
    return struct.pack(">H", len(b)) + b
op, _ = frame(1, 0x01, struct.pack(">H", 1) + string(b"CQL_VERSION") + string(b"3.0.0"))
if op != 0x02:
    sys.exit(1)
q = b"SELECT peer FROM system.peers"
op, d = frame(2, 0x07, struct.pack(">I", len(q)) + q + struct.pack(">HB", 0x0001, 0))
if op != 0x08 or struct.unpack(">i", d[:4])[0] != 2:
    sys.exit(1)
i = 4
flags, ncols = struct.unpack(">ii", d[i:i + 8]); i += 8
def skip_string():
    global i
    n = struct.unpack(">H", d[i:i + 2])[0]; i += 2 + n
if flags & 0x0002:  # paging state
    n = struct.unpack(">i", d[i:i + 4])[0]; i += 4 + max(n, 0)
if flags & 0x0001:
    skip_string(); skip_string()
for _ in range(ncols):
    if not flags & 0x0001:
        skip_string(); skip_string()
    skip_string()
    i += 2  # type id (inet: no parameters)
rows = struct.unpack(">i", d[i:i + 4])[0]; i += 4
for _ in range(rows):
    n = struct.unpack(">i", d[i:i + 4])[0]; i += 4
    if n == 4:
        print(socket.inet_ntoa(d[i:i + 4]))
    i += max(n, 0)
PY
}

# A real CQL handshake: OPTIONS (protocol v4) must be answered by SUPPORTED.
cql_answers() {
    python3 - "$HOST" "$PORT" <<'PY' 2>/dev/null
import socket, struct, sys
host, port = sys.argv[1], int(sys.argv[2])
try:
    s = socket.create_connection((host, port), timeout=2)
    s.settimeout(3)
    s.sendall(struct.pack(">BBhBI", 0x04, 0, 0, 0x05, 0))
    head = b""
    while len(head) < 9:
        chunk = s.recv(9 - len(head))
        if not chunk:
            sys.exit(1)
        head += chunk
    version, _flags, _stream, opcode, _length = struct.unpack(">BBhBI", head)
    sys.exit(0 if version == 0x84 and opcode == 0x06 else 1)
except Exception:
    sys.exit(1)
PY
}

our_pid() {
    [ -f "$PIDFILE" ] || return 1
    local pid
    pid="$(cat "$PIDFILE")"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

need_tools() {
    command -v java >/dev/null 2>&1 || die "java not found (install openjdk-17-jre-headless)"
    command -v python3 >/dev/null 2>&1 || die "python3 not found (used for the CQL probe)"
    local v
    v="$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1)"
    [ "${v:-0}" -ge 17 ] || die "Cassandra $VERSION needs Java 17, found: $(java -version 2>&1 | head -1)"
}

install() {
    if [ -f "$HOME_DIR/.complete" ]; then
        say "Cassandra $VERSION is installed in $HOME_DIR"
        return 0
    fi
    command -v mvn >/dev/null 2>&1 || die "mvn not found (apt-get install -y maven)"
    say "installing Cassandra $VERSION into $HOME_DIR (Maven Central, via mvn)"
    local tmp
    tmp="$(mktemp -d)"
    cat >"$tmp/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>herold</groupId>
  <artifactId>cassandra-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.cassandra</groupId>
      <artifactId>cassandra-all</artifactId>
      <version>$VERSION</version>
    </dependency>
  </dependencies>
</project>
EOF
    rm -rf "$HOME_DIR"
    mkdir -p "$LIB"
    if ! (cd "$tmp" && mvn -q -B dependency:copy-dependencies -DincludeScope=runtime \
            -DoutputDirectory="$LIB" >"$tmp/mvn.log" 2>&1); then
        tail -40 "$tmp/mvn.log" >&2
        rm -rf "$tmp" "$HOME_DIR"
        die "mvn could not resolve cassandra-all:$VERSION"
    fi
    rm -rf "$tmp"
    [ -f "$LIB/cassandra-all-$VERSION.jar" ] || die "cassandra-all-$VERSION.jar missing after mvn"
    touch "$HOME_DIR/.complete"
    say "installed $(ls "$LIB" | wc -l) jars"
}

write_config() {
    mkdir -p "$STATE"/{data,commitlog,saved_caches,hints,cdc_raw,logs,triggers}
    cat >"$STATE/cassandra.yaml" <<EOF
# Written by scripts/cassandra.sh: a test node on loopback.
cluster_name: $CLUSTER_NAME
auto_bootstrap: $BOOTSTRAP
num_tokens: 16
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
data_file_directories:
  - $STATE/data
commitlog_directory: $STATE/commitlog
saved_caches_directory: $STATE/saved_caches
hints_directory: $STATE/hints
cdc_raw_directory: $STATE/cdc_raw
commitlog_sync: periodic
commitlog_sync_period: 10000ms
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "$SEEDS"
listen_address: $HOST
rpc_address: $HOST
storage_port: $STORAGE_PORT
native_transport_port: $PORT
start_native_transport: true
endpoint_snitch: SimpleSnitch
authenticator: AllowAllAuthenticator
authorizer: AllowAllAuthorizer
role_manager: CassandraRoleManager
materialized_views_enabled: false
sasi_indexes_enabled: false
auto_snapshot: false
snapshot_before_compaction: false
concurrent_reads: 8
concurrent_writes: 8
concurrent_counter_writes: 8
concurrent_compactors: 1
memtable_heap_space: 128MiB
memtable_offheap_space: 128MiB
key_cache_size: 16MiB
prepared_statements_cache_size: 16MiB
disk_failure_policy: stop
commit_failure_policy: stop
hinted_handoff_enabled: $HINTS
EOF
    cat >"$STATE/logback.xml" <<EOF
<configuration scan="false">
  <appender name="FILE" class="ch.qos.logback.core.FileAppender">
    <file>$LOG</file>
    <encoder><pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="FILE"/></root>
  <logger name="org.apache.cassandra" level="INFO"/>
</configuration>
EOF
}

# JVM options from Cassandra 5.0's conf/jvm-server.options and
# conf/jvm17-server.options, trimmed to what a small test node needs.
jvm_opts() {
    local jamm
    jamm="$(ls "$LIB"/jamm-*.jar | head -1)"
    cat <<EOF
-Xms$HEAP
-Xmx$HEAP
-Xss256k
-XX:+UseG1GC
-XX:+ParallelRefProcEnabled
-XX:MaxTenuringThreshold=1
-XX:+AlwaysPreTouch
-XX:+UseThreadPriorities
-XX:+PerfDisableSharedMem
-XX:+HeapDumpOnOutOfMemoryError
-XX:+ExitOnOutOfMemoryError
-XX:HeapDumpPath=$STATE
-XX:+UnlockDiagnosticVMOptions
-XX:+DebugNonSafepoints
-XX:TieredStopAtLevel=1
-Djava.net.preferIPv4Stack=true
-Djdk.attach.allowAttachSelf=true
-Dio.netty.tryReflectionSetAccessible=true
-javaagent:$jamm
--add-exports=java.base/jdk.internal.misc=ALL-UNNAMED
--add-exports=java.base/jdk.internal.ref=ALL-UNNAMED
--add-exports=java.base/sun.nio.ch=ALL-UNNAMED
--add-exports=java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED
--add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED
--add-exports=java.rmi/sun.rmi.server=ALL-UNNAMED
--add-exports=java.sql/java.sql=ALL-UNNAMED
--add-exports=java.base/java.lang.ref=ALL-UNNAMED
--add-exports=jdk.unsupported/sun.misc=ALL-UNNAMED
--add-opens=java.base/java.lang.module=ALL-UNNAMED
--add-opens=java.base/jdk.internal.loader=ALL-UNNAMED
--add-opens=java.base/jdk.internal.ref=ALL-UNNAMED
--add-opens=java.base/jdk.internal.reflect=ALL-UNNAMED
--add-opens=java.base/jdk.internal.math=ALL-UNNAMED
--add-opens=java.base/jdk.internal.module=ALL-UNNAMED
--add-opens=java.base/jdk.internal.util.jar=ALL-UNNAMED
--add-opens=jdk.management/com.sun.management.internal=ALL-UNNAMED
--add-opens=java.base/sun.nio.ch=ALL-UNNAMED
--add-opens=java.base/java.io=ALL-UNNAMED
--add-opens=java.base/java.nio=ALL-UNNAMED
--add-opens=java.base/java.util.concurrent=ALL-UNNAMED
--add-opens=java.base/java.util=ALL-UNNAMED
--add-opens=java.base/java.util.concurrent.atomic=ALL-UNNAMED
--add-opens=java.base/java.lang=ALL-UNNAMED
--add-opens=java.base/java.math=ALL-UNNAMED
--add-opens=java.base/java.lang.reflect=ALL-UNNAMED
--add-opens=java.base/java.net=ALL-UNNAMED
-Dcassandra.config=file://$STATE/cassandra.yaml
-Dcassandra.storagedir=$STATE
-Dcassandra.logdir=$STATE/logs
-Dcassandra.triggers_dir=$STATE/triggers
-Dlogback.configurationFile=file://$STATE/logback.xml
-Dcassandra.jmx.local.port=$JMX_PORT
-Dcassandra-foreground=yes
-Dcassandra.skip_wait_for_gossip_to_settle=0
-Dcassandra.ring_delay_ms=0
-Dcassandra.superuser_setup_delay_ms=0
-Dcassandra.gossip_settle_min_wait_ms=0
-Dcassandra.gossip_settle_poll_interval_ms=0
-Dcassandra.migration_task_wait_in_seconds=0
-Dcassandra.disable_auth_caches_remote_configuration=true
EOF
}

start() {
    if cql_answers; then
        say "CQL already answers on $HOST:$PORT${PIDFILE:+ (log: $LOG)}"
        return 0
    fi
    if pid="$(our_pid)"; then
        say "node $pid is running but CQL does not answer yet; waiting"
    else
        need_tools
        install
        write_config
        local cp
        cp="$(find "$LIB" -name '*.jar' | sort | tr '\n' ':')"
        mapfile -t opts < <(jvm_opts)
        say "starting Cassandra $VERSION on $HOST:$PORT (state: $STATE)"
        # setsid: the node outlives this script and gets its own process group.
        setsid java "${opts[@]}" -cp "$cp" org.apache.cassandra.service.CassandraDaemon \
            >"$OUT" 2>&1 </dev/null &
        echo $! >"$PIDFILE"
        pid=$!
    fi
    local waited=0
    while ! cql_answers; do
        if ! kill -0 "$pid" 2>/dev/null; then
            say "Cassandra exited before CQL answered; last lines of $OUT and $LOG:"
            tail -30 "$OUT" >&2 || true
            tail -60 "$LOG" >&2 || true
            rm -f "$PIDFILE"
            exit 1
        fi
        if [ "$waited" -ge "$TIMEOUT" ]; then
            say "CQL did not answer within ${TIMEOUT}s; last lines of $LOG:"
            tail -60 "$LOG" >&2 || true
            exit 1
        fi
        sleep 1
        waited=$((waited + 1))
    done
    say "CQL answers on $HOST:$PORT after ${waited}s (pid $pid); log: $LOG"
}

stop() {
    local pid
    if ! pid="$(our_pid)"; then
        rm -f "$PIDFILE"
        say "not running (no live pid in $PIDFILE)"
        return 0
    fi
    kill "$pid"
    for _ in $(seq 1 60); do
        kill -0 "$pid" 2>/dev/null || { rm -f "$PIDFILE"; say "stopped $pid"; return 0; }
        sleep 1
    done
    say "$pid did not stop in 60s; killing it"
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$PIDFILE"
}

status() {
    if cql_answers; then
        echo "cassandra: CQL answers on $HOST:$PORT (log: $LOG)"
    else
        echo "cassandra: CQL does not answer on $HOST:$PORT"
        return 1
    fi
}

# Starts cluster node N if needed and waits until it has joined: CQL answers
# on its address and its system.peers lists every other node that runs.
start_node() {
    local n=$1 m others want got waited=0
    use_node "$n"
    start
    others=()
    for m in $(seq 1 "$CLUSTER_NODES"); do
        [ "$m" = "$n" ] && continue
        ( use_node "$m"; our_pid >/dev/null ) && others+=("127.0.0.$m")
    done
    want="$(printf '%s\n' "${others[@]}" | sort | tr '\n' ' ')"
    while :; do
        got="$(cql_peers | sort | tr '\n' ' ' || true)"
        # Every running node must be among the peers (a peer that is down
        # stays listed, so "among", not "equal").
        local missing=0 o
        for o in "${others[@]}"; do
            case " $got " in *" $o "*) ;; *) missing=1 ;; esac
        done
        [ "$missing" = 0 ] && break
        [ "$waited" -ge "$TIMEOUT" ] && die "node $n: system.peers lists '$got', want '$want' after ${TIMEOUT}s; see $LOG"
        sleep 1
        waited=$((waited + 1))
    done
    say "node $n ($HOST:$PORT) has joined; peers: ${got:-none}"
}

stop_node() {
    use_node "$1"
    stop
}

kill_node() {
    use_node "$1"
    local pid
    if ! pid="$(our_pid)"; then
        say "node $1 is not running"
        return 0
    fi
    kill -9 "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    rm -f "$PIDFILE"
    say "node $1 ($HOST) killed (SIGKILL, pid $pid)"
}

start_cluster() {
    local n t0=$SECONDS
    for n in $(seq 1 "$CLUSTER_NODES"); do
        ( start_node "$n" )
    done
    say "cluster of $CLUSTER_NODES nodes answers on 127.0.0.1-3:$CLUSTER_CQL_PORT ($((SECONDS - t0))s)"
}

stop_cluster() {
    local n
    for n in $(seq "$CLUSTER_NODES" -1 1); do
        ( stop_node "$n" )
    done
}

status_cluster() {
    local n rc=0
    for n in $(seq 1 "$CLUSTER_NODES"); do
        (
            use_node "$n"
            if cql_answers; then
                echo "node $n: CQL answers on $HOST:$PORT; peers: $(cql_peers | sort | tr '\n' ' ')"
            else
                echo "node $n: CQL does not answer on $HOST:$PORT"
                exit 1
            fi
        ) || rc=1
    done
    return $rc
}

case "${1:-}" in
    install) install ;;
    start-cluster) start_cluster ;;
    stop-cluster) stop_cluster ;;
    status-cluster) status_cluster ;;
    start-node) start_node "${2:?start-node N}" ;;
    stop-node) stop_node "${2:?stop-node N}" ;;
    kill-node) kill_node "${2:?kill-node N}" ;;
    start) start ;;
    stop) stop ;;
    restart) stop; start ;;
    status) status ;;
    *) echo "usage: $0 install|start|stop|status|restart|start-cluster|stop-cluster|status-cluster|start-node N|stop-node N|kill-node N" >&2; exit 64 ;;
esac
