#!/usr/bin/env bash
# Starts a Spark standalone cluster on loopback for tests and benchmarks: one master and one worker (2 cores, 2 GiB),
# from the pyspark venv that scripts/spark/install.sh makes (it is run first; quick when the venv is there).
#
#   scripts/spark/start.sh RUN_DIR        # last line printed: the master's URL and its web UI's URL
#   scripts/spark/stop.sh RUN_DIR
#
# Environment: FERRY_SPARK_PORT (the master's port, default 17077), FERRY_SPARK_UI_PORT (the master's web UI, default
#              18090; the worker's web UI uses the next port), FERRY_SPARK_WORKER_CORES (2), FERRY_SPARK_WORKER_MEMORY
#              (2g), FERRY_SPARK_WAIT_S (how long to wait for the worker to register, default 90), FERRY_SPARK_VENV.
# Calling it again while the daemons of RUN_DIR run starts nothing new. The pids are in RUN_DIR/{master,worker}.pid,
# the logs in RUN_DIR/{master,worker}.log.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=../lib/proc.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/proc.sh"

if [[ $# -ne 1 ]]; then
    echo "usage: $0 RUN_DIR" >&2
    exit 2
fi
mkdir -p "$1"
RUN=$(cd "$1" && pwd)
HERE=$(cd "$(dirname "$0")" && pwd)
PORT=${FERRY_SPARK_PORT:-17077}
UI_PORT=${FERRY_SPARK_UI_PORT:-18090}
WORKER_UI_PORT=$((UI_PORT + 1))
CORES=${FERRY_SPARK_WORKER_CORES:-2}
MEMORY=${FERRY_SPARK_WORKER_MEMORY:-2g}
WAIT_S=${FERRY_SPARK_WAIT_S:-90}
MASTER=spark://127.0.0.1:$PORT
UI=http://127.0.0.1:$UI_PORT

log() { echo "spark/start: $*" >&2; }
die() { echo "spark/start: error: $*" >&2; exit 1; }

PYTHON=$("$HERE/install.sh" | tail -n 1)
VENV=$(dirname "$(dirname "$PYTHON")")
SPARK_CLASS=$VENV/bin/spark-class
[[ -x $SPARK_CLASS ]] || die "$SPARK_CLASS is missing; run scripts/spark/install.sh"

export SPARK_LOCAL_IP=127.0.0.1 SPARK_LOCAL_HOSTNAME=localhost PYSPARK_PYTHON=$PYTHON
export SPARK_LOG_DIR=$RUN SPARK_WORKER_DIR=$RUN/work SPARK_NO_DAEMONIZE=1

# A pid file names a live java process (spark-class execs java, after a short while as bash).
alive() {
    local pidfile=$1 pid
    [[ -s $pidfile ]] || return 1
    pid=$(<"$pidfile")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    running "$pid" || return 1
    [[ $(cat "/proc/$pid/comm" 2>/dev/null || true) =~ ^(java|bash|spark-class)$ ]]
}

listening() {
    [[ -n $(ss -Hltn "sport = :$1" 2>/dev/null) ]]
}

# The master's JSON status, or nothing.
status() {
    "$PYTHON" - "$UI/json/" <<'PY' 2>/dev/null || true
import sys, urllib.request
print(urllib.request.urlopen(sys.argv[1], timeout=2).read().decode())
PY
}

# The number of ALIVE workers the master lists.
alive_workers() {
    status | "$PYTHON" -c '
import json, sys
try:
    print(sum(1 for w in json.load(sys.stdin).get("workers", []) if w.get("state") == "ALIVE"))
except Exception:
    print(0)'
}

mkdir -p "$RUN/work"
if ! alive "$RUN/master.pid"; then
    for p in "$PORT" "$UI_PORT"; do
        listening "$p" && die "port $p is taken; set FERRY_SPARK_PORT / FERRY_SPARK_UI_PORT"
    done
    log "starting the master on $MASTER (log: $RUN/master.log)"
    "$SPARK_CLASS" org.apache.spark.deploy.master.Master --host 127.0.0.1 --port "$PORT" --webui-port "$UI_PORT" \
        </dev/null >"$RUN/master.log" 2>&1 &
    echo $! >"$RUN/master.pid"
fi
if ! alive "$RUN/worker.pid"; then
    listening "$WORKER_UI_PORT" && die "port $WORKER_UI_PORT (the worker's web UI) is taken"
    log "starting a worker with $CORES cores and $MEMORY (log: $RUN/worker.log)"
    "$SPARK_CLASS" org.apache.spark.deploy.worker.Worker "$MASTER" --host 127.0.0.1 --webui-port "$WORKER_UI_PORT" \
        --cores "$CORES" --memory "$MEMORY" --work-dir "$RUN/work" </dev/null >"$RUN/worker.log" 2>&1 &
    echo $! >"$RUN/worker.pid"
fi

start=$SECONDS
until [[ $(alive_workers) -ge 1 ]]; do
    alive "$RUN/master.pid" || die "the master died; see $RUN/master.log"
    alive "$RUN/worker.pid" || die "the worker died; see $RUN/worker.log"
    ((SECONDS - start < WAIT_S)) || die "no worker registered with the master after ${WAIT_S} s; see $RUN/*.log"
    sleep 0.5
done
log "ready after $((SECONDS - start)) s"
echo "$MASTER $UI"
