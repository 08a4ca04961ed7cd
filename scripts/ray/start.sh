#!/usr/bin/env bash
# Starts a single-node Ray head on loopback for the Ray engine's tests and benchmarks, from the venv that
# scripts/ray/install.sh makes (run that first). Every listener is on 127.0.0.1.
#
#   scripts/ray/start.sh RUN_DIR [BASE_PORT]    # last line printed: the Jobs API's address, http://127.0.0.1:PORT
#   scripts/ray/stop.sh RUN_DIR
#
# Ports: a block of 256 from BASE_PORT (argument, else FERRY_RAY_BASE_PORT, else 21000), so that two heads with
# different bases never collide: BASE the GCS (--port; it must lie outside Ray's default worker range 10002-19999),
# BASE+1 the dashboard and its Jobs REST API, BASE+2..8 the agents, raylet, object manager, metrics and client
# server, BASE+16..BASE+255 the workers. Keep the block below the kernel's ephemeral range (usually 32768 on), where
# outgoing connections may already hold a port.
# Environment: FERRY_RAY_VENV (default <repo>/target/engines/ray-venv), FERRY_RAY_NUM_CPUS (logical CPUs, default 4:
# each job's driver holds its entrypoint_num_cpus for its whole life), FERRY_RAY_WAIT_S (default 90).
# Every process of the head carries FERRY_RAY_RUN=RUN_DIR in its environment; stop.sh finds them by it (and by the
# pids recorded in RUN_DIR/pids), never by process name, so other Rays on the machine are left alone.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=../lib/proc.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/proc.sh"

if [[ $# -lt 1 || $# -gt 2 ]]; then
    echo "usage: $0 RUN_DIR [BASE_PORT]" >&2
    exit 2
fi
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$1"
RUN=$(cd "$1" && pwd)
BASE=${2:-${FERRY_RAY_BASE_PORT:-21000}}
VENV=${FERRY_RAY_VENV:-$ROOT/target/engines/ray-venv}
NUM_CPUS=${FERRY_RAY_NUM_CPUS:-4}
WAIT_S=${FERRY_RAY_WAIT_S:-90}

log() { echo "ray/start: $*" >&2; }
die() { echo "ray/start: error: $*" >&2; exit 1; }

[[ $BASE =~ ^[0-9]+$ ]] || die "BASE_PORT must be a number: $BASE"
((BASE >= 20000 && BASE + 255 <= 65535)) || ((BASE >= 1024 && BASE + 255 < 10002)) ||
    die "BASE_PORT $BASE: the block BASE..BASE+255 must lie within 1024-10001 or 20000-65535"
[[ -x $VENV/bin/ray ]] || die "no Ray in $VENV: run scripts/ray/install.sh first"
DASHBOARD=$((BASE + 1))
URL=http://127.0.0.1:$DASHBOARD

jobs_api_up() {
    "$VENV/bin/python3" - "$URL" <<'PY' 2>/dev/null
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1] + "/api/jobs/", timeout=2) as r:
    sys.exit(0 if r.status == 200 else 1)
PY
}

# Already running for this RUN_DIR: nothing to do.
if [[ -s $RUN/pids && -s $RUN/url ]] && jobs_api_up; then
    log "a Ray head of $RUN already answers at $(<"$RUN/url")"
    cat "$RUN/url"
    exit 0
fi

listening() { [[ -n $(ss -Hltn "sport = :$1" 2>/dev/null) ]]; }
for port in $(seq "$BASE" $((BASE + 8))); do
    listening "$port" && die "port $port (of the block from $BASE) is in use; pick another BASE_PORT"
done

# Ray puts unix sockets under its temp dir, and their paths must stay under 108 bytes: keep it short.
TMP=$(mktemp -d /tmp/fr-XXXXXX)
echo "$TMP" >"$RUN/tempdir"
rm -f "$RUN/pids" "$RUN/url"

export PATH=$VENV/bin:$PATH
export RAY_USAGE_STATS_ENABLED=0 RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 FERRY_RAY_RUN=$RUN
log "starting a Ray head (ports $BASE-$((BASE + 255)), $NUM_CPUS CPUs, temp dir $TMP, log $RUN/ray-start.log)"
started=$(date +%s)
if ! ray start --head --node-ip-address=127.0.0.1 --port="$BASE" --dashboard-host=127.0.0.1 \
    --dashboard-port="$DASHBOARD" --dashboard-agent-listen-port=$((BASE + 2)) \
    --dashboard-agent-grpc-port=$((BASE + 3)) --runtime-env-agent-port=$((BASE + 4)) \
    --node-manager-port=$((BASE + 5)) --object-manager-port=$((BASE + 6)) --metrics-export-port=$((BASE + 7)) \
    --ray-client-server-port=$((BASE + 8)) --min-worker-port=$((BASE + 16)) --max-worker-port=$((BASE + 255)) \
    --include-dashboard=true --num-cpus="$NUM_CPUS" --num-gpus=0 --object-store-memory=$((100 << 20)) \
    --temp-dir="$TMP" --disable-usage-stats >"$RUN/ray-start.log" 2>&1; then
    tail -n 30 "$RUN/ray-start.log" >&2
    "$(dirname "$0")/stop.sh" "$RUN" || true
    die "ray start failed; see $RUN/ray-start.log"
fi

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

# RUN_DIR/pids: "PID STARTTIME" per process of this head.
record_pids() {
    local pid start
    : >"$RUN/pids.new"
    for pid in $(ours); do
        start=$(starttime "$pid") && echo "$pid $start" >>"$RUN/pids.new"
    done
    mv "$RUN/pids.new" "$RUN/pids"
}

until jobs_api_up; do
    if (($(date +%s) - started > WAIT_S)); then
        record_pids
        "$(dirname "$0")/stop.sh" "$RUN" || true
        die "the Jobs API at $URL did not answer within ${WAIT_S}s; see $RUN/ray-start.log and $TMP/session_latest/logs"
    fi
    sleep 0.5
done
record_pids
echo "$URL" >"$RUN/url"
log "Ray head up after $(($(date +%s) - started))s: $(wc -l <"$RUN/pids") processes, Jobs API at $URL"
echo "$URL"
