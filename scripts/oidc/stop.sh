#!/usr/bin/env bash
# Stops what scripts/oidc/start.sh RUN_DIR started: the pid recorded in RUN_DIR/oidc.pid, if it still names the same
# process (same start time), SIGTERM first and SIGKILL after 5 s. Safe to run more than once, and on a RUN_DIR where
# nothing runs. Leaves RUN_DIR/oidc.log in place.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=../lib/proc.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/proc.sh"

if [[ $# -ne 1 ]]; then
    echo "usage: $0 RUN_DIR" >&2
    exit 2
fi
[[ -d $1 ]] || exit 0
RUN=$(cd "$1" && pwd)

if [[ -s $RUN/oidc.pid ]]; then
    read -r pid start <"$RUN/oidc.pid" || true
    if [[ ${pid:-} =~ ^[0-9]+$ && $(starttime "$pid" || true) == "${start:-}" ]]; then
        stop_pids -m "oidc/stop: the provider (pid $pid) ignored SIGTERM for 5 s: SIGKILL" 5 "$pid"
    fi
fi
rm -f "$RUN/oidc.pid" "$RUN/oidc.url"
exit 0
