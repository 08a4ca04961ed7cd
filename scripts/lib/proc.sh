# shellcheck shell=bash
# Helpers for the scripts that start and stop test services (scripts/*/start.sh, scripts/*/stop.sh): reading a
# process's state from /proc (no fork per check) and stopping processes, SIGTERM first, SIGKILL after a grace time.
# Sourced, not executed:
#
#   source "$(dirname "${BASH_SOURCE[0]}")/../lib/proc.sh"
#
# starttime PID         Prints the process's start time (clock ticks since boot, field 22 of /proc/PID/stat); fails
#                       when there is no such process. A pid and its start time name one process, even after the pid
#                       is reused: record both, and compare the start time before signalling a recorded pid.
# running PID           True while the process exists and is not a zombie.
# term_wait SECS PID... SIGTERM to the pids, then waits up to SECS seconds (polling every 0.1 s) until none of them
#                       runs. Sets the array LEFT to the pids still running; true when none is left.
# kill_wait SECS PID... SIGKILL to the pids that still run, then waits up to SECS seconds until none of them runs
#                       (gone or a zombie: its ports and files are released).
# stop_pids [-m MSG] SECS PID...
#                       term_wait, then kill_wait for those left, after printing MSG (if given) on stderr.
# Signals to pids that are already gone are ignored; all of these return 0 except running, starttime and term_wait.

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    echo "$0: source this file from a script, do not run it" >&2
    exit 2
fi

starttime() {
    local stat
    { read -r stat <"/proc/$1/stat"; } 2>/dev/null || return 1
    # The command name (field 2, in parentheses) may hold spaces and parentheses: skip to the last ") ".
    stat=${stat##*) }
    # shellcheck disable=SC2086
    set -- $stat
    echo "${20}"
}

running() {
    local stat
    { read -r stat <"/proc/$1/stat"; } 2>/dev/null || return 1
    stat=${stat##*) }
    [[ ${stat%% *} != Z ]]
}

# True when none of the pids runs any more, polling every 0.1 s for up to SECS seconds. Sets LEFT.
_proc_wait() {
    local secs=$1 pid
    shift
    for _ in $(seq $((secs * 10))); do
        LEFT=()
        for pid in "$@"; do running "$pid" && LEFT+=("$pid"); done
        ((${#LEFT[@]} == 0)) && return 0
        sleep 0.1
    done
    LEFT=()
    for pid in "$@"; do running "$pid" && LEFT+=("$pid"); done
    ((${#LEFT[@]} == 0))
}

term_wait() {
    local secs=$1
    shift
    LEFT=()
    (($# > 0)) || return 0
    kill -TERM "$@" 2>/dev/null || true
    _proc_wait "$secs" "$@"
}

kill_wait() {
    local secs=$1 pid alive=()
    shift
    for pid in "$@"; do running "$pid" && alive+=("$pid"); done
    ((${#alive[@]} > 0)) || return 0
    kill -KILL "${alive[@]}" 2>/dev/null || true
    _proc_wait "$secs" "${alive[@]}" || true
}

stop_pids() {
    local msg=
    if [[ $1 == -m ]]; then
        msg=$2
        shift 2
    fi
    local secs=$1
    shift
    term_wait "$secs" "$@" && return 0
    [[ -z $msg ]] || echo "$msg" >&2
    kill_wait "$secs" "${LEFT[@]}"
}
