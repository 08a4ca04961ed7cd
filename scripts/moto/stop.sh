#!/usr/bin/env bash
# Stops what scripts/moto/start.sh RUN_DIR started: the pid recorded in RUN_DIR/pid, if it still names the same
# process (same start time), SIGTERM first and SIGKILL after 5 s. Safe to run more than once, and on a RUN_DIR where
# nothing runs.
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 RUN_DIR" >&2
    exit 2
fi
[[ -d $1 ]] || exit 0
RUN=$(cd "$1" && pwd)

starttime() {
    local stat
    { read -r stat <"/proc/$1/stat"; } 2>/dev/null || return 1
    stat=${stat##*) }
    # shellcheck disable=SC2086
    set -- $stat
    echo "${20}"
}

# The process exists and is not a zombie.
running() {
    local stat
    { read -r stat <"/proc/$1/stat"; } 2>/dev/null || return 1
    stat=${stat##*) }
    [[ ${stat%% *} != Z ]]
}

if [[ -s $RUN/pid ]]; then
    read -r pid start <"$RUN/pid" || true
    if [[ ${pid:-} =~ ^[0-9]+$ && $(starttime "$pid" || true) == "${start:-}" ]]; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 50); do
            running "$pid" || break
            sleep 0.1
        done
        if running "$pid"; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
fi
rm -f "$RUN/pid" "$RUN/url"
exit 0
