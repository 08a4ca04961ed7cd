#!/usr/bin/env bash
# Stops what scripts/podman/start.sh RUN_DIR started: removes the containers Ferry made through its socket (those
# labelled ferry.engine=unix://RUN_DIR/podman.sock; the image storage is the machine's, shared with other services,
# whose containers stay) and stops the API service (by its pid file in RUN_DIR; SIGKILL after 10 s). Images stay.
# Safe to run more than once, and on a RUN_DIR where nothing runs.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=../lib/proc.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/proc.sh"

if [[ $# -ne 1 ]]; then
    echo "usage: $0 RUN_DIR" >&2
    exit 2
fi
[[ -d $1 ]] || exit 0
RUN=$(cd "$1" && pwd)
[[ -f $RUN/containers.conf ]] && export CONTAINERS_CONF=$RUN/containers.conf

if [[ -S $RUN/podman.sock ]] && command -v podman >/dev/null 2>&1; then
    ids=$(podman --url "unix://$RUN/podman.sock" ps -aq --filter "label=ferry.engine=unix://$RUN/podman.sock" \
        2>/dev/null || true)
    if [[ -n $ids ]]; then
        # shellcheck disable=SC2086
        podman --url "unix://$RUN/podman.sock" rm -f -t 1 $ids >/dev/null 2>&1 || true
    fi
fi

pidfile=$RUN/podman.pid
if [[ -s $pidfile ]]; then
    pid=$(<"$pidfile")
    if [[ $pid =~ ^[0-9]+$ && $(cat "/proc/$pid/comm" 2>/dev/null || true) == podman ]]; then
        stop_pids 10 "$pid"
    fi
    rm -f "$pidfile"
fi
rm -f "$RUN/podman.sock"
