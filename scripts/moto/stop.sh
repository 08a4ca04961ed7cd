#!/usr/bin/env bash
# Stops what scripts/moto/start.sh RUN_DIR started: the pid recorded in RUN_DIR/pid, if it still names the same
# process (same start time), SIGTERM first and SIGKILL after 5 s. Safe to run more than once, and on a RUN_DIR where
# nothing runs.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=../lib/proc.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/proc.sh"

if [[ $# -ne 1 ]]; then
    echo "usage: $0 RUN_DIR" >&2
    exit 2
fi
[[ -d $1 ]] || exit 0
RUN=$(cd "$1" && pwd)

if [[ -s $RUN/pid ]]; then
    read -r pid start <"$RUN/pid" || true
    if [[ ${pid:-} =~ ^[0-9]+$ && $(starttime "$pid" || true) == "${start:-}" ]]; then
        stop_pids 5 "$pid"
    fi
fi
rm -f "$RUN/pid" "$RUN/url"
exit 0
