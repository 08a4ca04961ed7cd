#!/usr/bin/env bash
# Stops what scripts/ray/start.sh RUN_DIR started: the pids recorded in RUN_DIR/pids and every process that carries
# FERRY_RAY_RUN=RUN_DIR in its environment or has a file open under the head's temp dir (workers and job drivers
# started since), SIGTERM first, SIGKILL after 5 s (gcs_server, raylet and the agents need it). Never `ray stop`,
# which kills every Ray on the machine by name. Safe to run more than once, and on a RUN_DIR where nothing runs.
# Removes the head's temp dir (/tmp/fr-*) too.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=../lib/proc.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/proc.sh"

if [[ $# -ne 1 ]]; then
    echo "usage: $0 RUN_DIR" >&2
    exit 2
fi
[[ -d $1 ]] || exit 0
RUN=$(cd "$1" && pwd)
# Called from start.sh, this script would carry the marker itself (and so would its children).
unset FERRY_RAY_RUN

# The pids of this head's processes: those that carry its marker in their environment, and those with a file open
# under its temp dir (Ray's processes rename themselves with setproctitle, which can wipe /proc/PID/environ; every
# one of them keeps its log files open). One grep and one find over /proc, no fork per process.
ours() {
    {
        grep -lsaxzF -- "FERRY_RAY_RUN=$RUN" /proc/[0-9]*/environ 2>/dev/null |
            sed -n 's|^/proc/\([0-9]*\)/environ$|\1|p'
        if [[ -n ${TMP:-} ]]; then
            find /proc/[0-9]*/fd -maxdepth 1 -lname "$TMP/*" 2>/dev/null | sed -n 's|^/proc/\([0-9]*\)/fd/.*|\1|p'
        fi
    } | grep -vx "$$" | sort -un || true
}

TMP=
if [[ -s $RUN/tempdir ]]; then
    TMP=$(<"$RUN/tempdir")
    [[ $TMP == /tmp/fr-* ]] || TMP=
fi
mapfile -t pids < <(ours)
if [[ -s $RUN/pids ]]; then
    # A recorded pid counts only while it names the same process (same start time): pids are reused.
    while read -r pid start; do
        [[ $pid =~ ^[0-9]+$ && $(starttime "$pid" || true) == "$start" ]] && pids+=("$pid")
    done <"$RUN/pids"
fi
if ((${#pids[@]} > 0)); then
    term_wait 5 "${pids[@]}" || true
    # Workers may have started while we waited: take the census again.
    mapfile -t late < <(ours)
    # Gone (or a zombie) before we return, so that the ports are free.
    kill_wait 5 "${LEFT[@]}" "${late[@]}"
fi
rm -f "$RUN/pids" "$RUN/url" "$RUN/tempdir"
[[ -n $TMP && -d $TMP ]] && rm -rf -- "$TMP"
exit 0
