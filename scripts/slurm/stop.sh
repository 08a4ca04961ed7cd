#!/usr/bin/env bash
# Stops what scripts/slurm/start.sh RUN_DIR started: slurmrestd, slurmd, slurmctld (by their pid files in RUN_DIR)
# and munged if start.sh started it and no other Slurm daemon still needs it. Safe to run more than once, and on a RUN_DIR where nothing runs.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=../lib/proc.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/proc.sh"

if [[ $# -ne 1 ]]; then
    echo "usage: $0 RUN_DIR" >&2
    exit 2
fi
RUN=$1
[[ -d $RUN ]] || exit 0

# Stops the process named by a pid file if it is still the given command; SIGKILL after 10 s.
stop_pidfile() {
    local pidfile=$1 comm=$2 pid
    [[ -s $pidfile ]] || return 0
    pid=$(<"$pidfile")
    if [[ $pid =~ ^[0-9]+$ && $(cat "/proc/$pid/comm" 2>/dev/null || true) == "$comm" ]]; then
        stop_pids -m "slurm/stop: $comm (pid $pid) ignored SIGTERM for 10 s; killing it" 10 "$pid"
    fi
    rm -f "$pidfile"
}

stop_pidfile "$RUN/slurmrestd.pid" slurmrestd
stop_pidfile "$RUN/slurmd.pid" slurmd
stop_pidfile "$RUN/slurmctld.pid" slurmctld
# munged: only one a start.sh started (its pid is then in RUN_DIR), and only when no Slurm daemon is left that may
# use it (another RUN_DIR's); the last stop.sh stops it. Under start.sh's lock.
if [[ -s $RUN/munged.pid ]]; then
    exec 9>/tmp/ferry-slurm-munge.lock
    flock 9
    others=0
    # running: a zombie does not count (PID 1 here may be slow to reap what daemons leave behind).
    for pid in $(ps -C slurmctld,slurmd,slurmrestd -o pid= 2>/dev/null || true); do
        if running "$pid"; then others=1; fi
    done
    if ((others)); then
        rm -f "$RUN/munged.pid"
    else
        stop_pidfile "$RUN/munged.pid" munged
        rm -f /run/munge/ferry.pid
    fi
fi
