#!/usr/bin/env bash
# Stops what scripts/spark/start.sh RUN_DIR started: the worker and the master, by their pid files in RUN_DIR (the
# worker first, so that it does not try to reconnect). Executors the worker started die with it. Safe to run more than
# once, and on a RUN_DIR where nothing runs.
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 RUN_DIR" >&2
    exit 2
fi
RUN=$1
[[ -d $RUN ]] || exit 0

# The process exists and is not a zombie.
running() {
    local state
    state=$(ps -o stat= -p "$1" 2>/dev/null || true)
    [[ -n $state && $state != Z* ]]
}

# Stops the process a pid file names if it is still a Spark daemon; SIGKILL after 10 s.
stop_pidfile() {
    local pidfile=$1 pid
    [[ -s $pidfile ]] || return 0
    pid=$(<"$pidfile")
    if [[ $pid =~ ^[0-9]+$ && $(cat "/proc/$pid/comm" 2>/dev/null || true) =~ ^(java|bash|spark-class)$ ]]; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 100); do
            running "$pid" || break
            sleep 0.1
        done
        if running "$pid"; then
            echo "spark/stop: $pidfile (pid $pid) ignored SIGTERM for 10 s; killing it" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$pidfile"
}

stop_pidfile "$RUN/worker.pid"
stop_pidfile "$RUN/master.pid"
