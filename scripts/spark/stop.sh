#!/usr/bin/env bash
# Stops what scripts/spark/start.sh RUN_DIR started: the worker and the master, by their pid files in RUN_DIR (the
# worker first, so that it does not try to reconnect). Executors the worker started die with it. Safe to run more than
# once, and on a RUN_DIR where nothing runs.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=../lib/proc.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/proc.sh"

if [[ $# -ne 1 ]]; then
    echo "usage: $0 RUN_DIR" >&2
    exit 2
fi
RUN=$1
[[ -d $RUN ]] || exit 0

# Stops the process a pid file names if it is still a Spark daemon; SIGKILL after 10 s.
stop_pidfile() {
    local pidfile=$1 pid
    [[ -s $pidfile ]] || return 0
    pid=$(<"$pidfile")
    if [[ $pid =~ ^[0-9]+$ && $(cat "/proc/$pid/comm" 2>/dev/null || true) =~ ^(java|bash|spark-class)$ ]]; then
        stop_pids -m "spark/stop: $pidfile (pid $pid) ignored SIGTERM for 10 s; killing it" 10 "$pid"
    fi
    rm -f "$pidfile"
}

stop_pidfile "$RUN/worker.pid"
stop_pidfile "$RUN/master.pid"
