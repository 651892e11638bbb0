#!/usr/bin/env bash
# Single-node Kafka (KRaft) + FerretDB (MongoDB wire protocol on SQLite) on
# loopback, for psvis tests.
#
#   scripts/services.sh start    wipe old state, start both, wait until ready,
#                                write <run dir>/env and print its path on stdout
#   scripts/services.sh stop     stop both (safe when nothing runs)
#   scripts/services.sh status   show what runs; exit 0 only if both are ready
#   scripts/services.sh env      print <run dir>/env (export lines)
#
#   source "$(scripts/services.sh start)"   # sets PSVIS_KAFKA_BOOTSTRAP, PSVIS_MONGO_URL
#
# Environment knobs:
#   PSVIS_SERVICES_DIR       run dir (default <repo>/.run/services)
#   PSVIS_KAFKA_PORT         Kafka client port (default: a free port)
#   PSVIS_KAFKA_CONTROLLER_PORT  KRaft controller port (default: a free port)
#   PSVIS_MONGO_PORT         FerretDB port (default: a free port)
#   PSVIS_SERVICES_TIMEOUT   seconds to wait for readiness (default 120)
#   PSVIS_KAFKA_HEAP         JVM heap flags (default "-Xms256m -Xmx512m")
#   PSVIS_KAFKA_JVM_OPTS     extra JVM flags for the broker (appended)
#   PSVIS_FERRETDB_LOG_LEVEL FerretDB log level (default warn)
#   JAVA                     java binary (default: java on PATH)
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/_lib.sh"

RUN_DIR="${PSVIS_SERVICES_DIR:-$PSVIS_REPO_DIR/.run/services}"
TIMEOUT="${PSVIS_SERVICES_TIMEOUT:-120}"
KAFKA_HEAP="${PSVIS_KAFKA_HEAP:--Xms256m -Xmx512m}"
KAFKA_JVM_OPTS="${PSVIS_KAFKA_JVM_OPTS:-}"
FERRETDB_LOG_LEVEL="${PSVIS_FERRETDB_LOG_LEVEL:-warn}"
JAVA="${JAVA:-java}"
HOST=127.0.0.1
PROBE=("${PYTHON:-python3}" "$PSVIS_SCRIPTS_DIR/_probe.py")
SERVICES=(kafka ferretdb)

ENV_FILE="$RUN_DIR/env"

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" >&2
    exit 2
}

# pid_of SERVICE: print the pid if that service (started by us, from this run
# dir) is alive; a pid file left behind by a dead process or a recycled pid
# does not count.
pid_of() {
    local pidfile="$RUN_DIR/$1.pid" pid
    [[ -f "$pidfile" ]] || return 1
    pid="$(cat "$pidfile" 2>/dev/null)" || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [[ -r "/proc/$pid/cmdline" ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$RUN_DIR/$1" || return 1
    echo "$pid"
}

log_files() {
    case "$1" in
        kafka) echo "$RUN_DIR/kafka/server.log $RUN_DIR/kafka/stdout.log" ;;
        ferretdb) echo "$RUN_DIR/ferretdb/ferretdb.log" ;;
    esac
}

show_log_tail() {
    local f shown=0
    for f in $(log_files "$1"); do
        if [[ -s "$f" ]]; then
            echo "----- last 40 lines of $f -----" >&2
            tail -n 40 "$f" >&2
            shown=1
        fi
    done
    ((shown)) || log "($1 has written no log output yet: $(log_files "$1"))"
}

cmd_stop() {
    # SIGTERM everything first, then wait: both take ~2 s to shut down cleanly.
    local svc pid i pids=() names=()
    for svc in "${SERVICES[@]}"; do
        if pid="$(pid_of "$svc")"; then
            log "stopping $svc (pid $pid)"
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid")
            names+=("$svc")
        fi
    done
    for ((i = 0; i < ${#pids[@]}; i++)); do
        if ! wait_gone "${pids[i]}" 150; then   # 15 s for a clean shutdown
            log "${names[i]} did not exit after SIGTERM; sending SIGKILL"
            kill -KILL "${pids[i]}" 2>/dev/null || true
            wait_gone "${pids[i]}" 50 || log "WARNING: ${names[i]} (pid ${pids[i]}) is still alive"
        fi
    done
    for svc in "${SERVICES[@]}"; do
        rm -f "$RUN_DIR/$svc.pid"
    done
    rm -f "$ENV_FILE"
}

wait_gone() {   # wait_gone PID TENTHS_OF_SECONDS
    local i
    for ((i = 0; i < $2; i++)); do
        kill -0 "$1" 2>/dev/null || return 0
        sleep 0.1
    done
    ! kill -0 "$1" 2>/dev/null
}

elapsed() {   # seconds since $1 (an $EPOCHREALTIME value), one decimal
    local now=$EPOCHREALTIME
    awk -v a="${1/,/.}" -v b="${now/,/.}" 'BEGIN { printf "%.1f", b - a }'
}

# spawn SERVICE LOGFILE CMD...: run CMD detached in its own session; the child
# writes its own pid (exec keeps it) so the pid file names the real process.
spawn() {
    local svc="$1" out="$2" i
    shift 2
    rm -f "$RUN_DIR/$svc.pid"
    # shellcheck disable=SC2016  # $$ and $@ are for the inner shell
    setsid nohup bash -c 'echo $$ >"$0"; exec "$@"' "$RUN_DIR/$svc.pid" "$@" \
        </dev/null >>"$out" 2>&1 &
    for ((i = 0; i < 50; i++)); do
        [[ -s "$RUN_DIR/$svc.pid" ]] && return 0
        sleep 0.1
    done
    die "$svc did not start (no pid file)"
}

pick_port() {   # pick_port VAR_VALUE DESCRIPTION FALLBACK
    local want="$1" what="$2" fallback="$3"
    if [[ -n "$want" ]]; then
        [[ "$want" =~ ^[0-9]+$ ]] || die "$what port '$want' is not a number"
        "${PROBE[@]}" portfree "$want" || die "$what port $want on $HOST is already in use"
        echo "$want"
    else
        echo "$fallback"
    fi
}

start_kafka() {
    local port="$1" cport="$2" libs="$3" dir="$RUN_DIR/kafka" cluster_id
    mkdir -p "$dir/data"
    cat >"$dir/server.properties" <<EOF
# Generated by psvis scripts/services.sh: single-node KRaft broker+controller for tests.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$HOST:$cport
listeners=PLAINTEXT://$HOST:$port,CONTROLLER://$HOST:$cport
advertised.listeners=PLAINTEXT://$HOST:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$dir/data
num.partitions=1
auto.create.topics.enable=true
default.replication.factor=1
min.insync.replicas=1
# internal topics: one replica, few partitions (fast first use on one node)
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# small machine
num.network.threads=2
num.io.threads=4
log.cleaner.dedupe.buffer.size=16777216
EOF
    cat >"$dir/log4j2.properties" <<EOF
# Generated by psvis scripts/services.sh: WARN and above to a file in the run dir.
status = warn
name = psvis-kafka
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = $dir/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.file.ref = FILE
# keep the one-line "Kafka Server started" / shutdown messages
logger.raft.name = kafka.server.KafkaRaftServer
logger.raft.level = INFO
EOF
    # shellcheck disable=SC2206  # heap/JVM option strings are meant to word-split
    local jvm=($KAFKA_HEAP -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExitOnOutOfMemoryError
        -XX:TieredStopAtLevel=1 -Xshare:auto -Djava.awt.headless=true
        "-Dlog4j2.configurationFile=$dir/log4j2.properties" "-Dkafka.logs.dir=$dir"
        $KAFKA_JVM_OPTS -cp "$libs/*")
    # a random cluster id in Kafka's form (URL-safe base64 of a UUID), never one that starts
    # with "-", which the storage tool would read as an option (as Kafka's own ids avoid)
    cluster_id="$("${PROBE[0]}" -c 'import base64,uuid
while (i := base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")).startswith("-"): pass
print(i)')"
    "$JAVA" "${jvm[@]}" kafka.tools.StorageTool format -t "$cluster_id" \
        -c "$dir/server.properties" >"$dir/format.log" 2>&1 || {
        cat "$dir/format.log" >&2
        die "formatting Kafka storage failed"
    }
    spawn kafka "$dir/stdout.log" "$JAVA" "${jvm[@]}" kafka.Kafka "$dir/server.properties"
}

start_ferretdb() {
    local port="$1" bin="$2" dir="$RUN_DIR/ferretdb"
    mkdir -p "$dir/data"
    spawn ferretdb "$dir/ferretdb.log" "$bin" \
        --handler=sqlite "--sqlite-url=file:$dir/data/" \
        "--listen-addr=$HOST:$port" "--state-dir=$dir" \
        --debug-addr=- --telemetry=disable \
        "--log-level=$FERRETDB_LOG_LEVEL" --log-format=text
}

probe() {   # probe SERVICE PORT
    case "$1" in
        kafka) "${PROBE[@]}" kafka "$HOST" "$2" 2>/dev/null ;;
        ferretdb) "${PROBE[@]}" mongo "$HOST" "$2" 2>/dev/null ;;
    esac
}

port_of() { cat "$RUN_DIR/$1.port" 2>/dev/null; }

cmd_start() {
    need "$JAVA" "${PROBE[0]}" setsid
    local t0=$EPOCHREALTIME kafka_libs ferretdb_bin
    kafka_libs="$("$PSVIS_SCRIPTS_DIR/install-kafka.sh")"
    ferretdb_bin="$("$PSVIS_SCRIPTS_DIR/install-ferretdb.sh")"

    cmd_stop
    # wipe only what we own (the run dir may be user-supplied)
    rm -rf "$RUN_DIR/kafka" "$RUN_DIR/ferretdb" "$RUN_DIR"/{kafka,ferretdb}.{pid,port} "$ENV_FILE"
    mkdir -p "$RUN_DIR"
    # keep the default run dir out of git without touching the repo's .gitignore
    if [[ "$RUN_DIR" == "$PSVIS_REPO_DIR/.run/"* && ! -e "$PSVIS_REPO_DIR/.run/.gitignore" ]]; then
        echo '*' >"$PSVIS_REPO_DIR/.run/.gitignore"
    fi

    local free kport cport mport
    read -r -a free <<<"$("${PROBE[@]}" freeports 3)"
    kport="$(pick_port "${PSVIS_KAFKA_PORT:-}" Kafka "${free[0]}")"
    cport="$(pick_port "${PSVIS_KAFKA_CONTROLLER_PORT:-}" "Kafka controller" "${free[1]}")"
    mport="$(pick_port "${PSVIS_MONGO_PORT:-}" FerretDB "${free[2]}")"
    echo "$kport" >"$RUN_DIR/kafka.port"
    echo "$mport" >"$RUN_DIR/ferretdb.port"

    log "starting Kafka on $HOST:$kport and FerretDB on $HOST:$mport (state in $RUN_DIR)"
    # whatever goes wrong from here on, leave nothing running behind
    trap 'log "start failed; stopping what was started"; cmd_stop' EXIT
    start_ferretdb "$mport" "$ferretdb_bin"
    start_kafka "$kport" "$cport" "$kafka_libs"

    local deadline=$((SECONDS + TIMEOUT)) pending=("${SERVICES[@]}") still svc
    while ((${#pending[@]})); do
        still=()
        for svc in "${pending[@]}"; do
            if ! pid_of "$svc" >/dev/null; then
                log "$svc exited during start-up"
                show_log_tail "$svc"
                die "$svc failed to start (logs in $RUN_DIR/$svc)"
            fi
            if probe "$svc" "$(port_of "$svc")"; then
                log "$svc ready on $HOST:$(port_of "$svc") after $(elapsed "$t0") s"
            else
                still+=("$svc")
            fi
        done
        pending=("${still[@]+"${still[@]}"}")
        ((${#pending[@]})) || break
        if ((SECONDS >= deadline)); then
            for svc in "${pending[@]}"; do show_log_tail "$svc"; done
            die "timed out after ${TIMEOUT}s waiting for: ${pending[*]} (logs in $RUN_DIR)"
        fi
        sleep 0.25
    done

    cat >"$ENV_FILE.tmp" <<EOF
export PSVIS_KAFKA_BOOTSTRAP=$HOST:$kport
export PSVIS_MONGO_URL=mongodb://$HOST:$mport/
EOF
    mv "$ENV_FILE.tmp" "$ENV_FILE"
    trap - EXIT
    log "services ready in $(elapsed "$t0") s; env in $ENV_FILE"
    echo "$ENV_FILE"
}

cmd_status() {
    local svc pid port rc=0
    for svc in "${SERVICES[@]}"; do
        port="$(port_of "$svc" || true)"
        if pid="$(pid_of "$svc")"; then
            if probe "$svc" "$port"; then
                echo "$svc: ready on $HOST:$port (pid $pid)"
            else
                echo "$svc: running but not answering on $HOST:${port:-?} (pid $pid)"
                rc=1
            fi
        else
            echo "$svc: stopped"
            rc=1
        fi
    done
    return $rc
}

cmd_env() {
    [[ -f "$ENV_FILE" ]] || die "no $ENV_FILE: services are not started (run: $0 start)"
    cat "$ENV_FILE"
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) cmd_env ;;
    -h | --help | help) usage ;;
    *) usage ;;
esac
