#!/usr/bin/env bash
# Starts moto's server (a real S3 API, among other AWS services) on a free loopback port for the S3 artifact store's
# tests, from the venv that scripts/moto/install.sh makes (run that first).
#
#   scripts/moto/start.sh RUN_DIR     # last line printed: the endpoint, http://127.0.0.1:PORT
#   scripts/moto/stop.sh RUN_DIR
#
# RUN_DIR gets `pid` ("PID STARTTIME", so that stop.sh never signals a reused pid), `url` and the server's log.
# Any access key works against moto; the tests use AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing.
# Environment: FERRY_MOTO_VENV (default <repo>/target/engines/moto-venv), FERRY_MOTO_WAIT_S (default 30).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=../lib/proc.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/proc.sh"

if [[ $# -ne 1 ]]; then
    echo "usage: $0 RUN_DIR" >&2
    exit 2
fi
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$1"
RUN=$(cd "$1" && pwd)
VENV=${FERRY_MOTO_VENV:-$ROOT/target/engines/moto-venv}
WAIT_S=${FERRY_MOTO_WAIT_S:-30}

log() { echo "moto/start: $*" >&2; }
die() { echo "moto/start: error: $*" >&2; exit 1; }

[[ -x $VENV/bin/moto_server ]] || die "no moto in $VENV: run scripts/moto/install.sh first"

up() {
    "$VENV/bin/python3" - "$1" <<'PY' 2>/dev/null
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1] + "/", timeout=2) as r:
    sys.exit(0 if r.status == 200 else 1)
PY
}

# Already running for this RUN_DIR: nothing to do.
if [[ -s $RUN/pid && -s $RUN/url ]] && up "$(<"$RUN/url")"; then
    log "moto of $RUN already answers at $(<"$RUN/url")"
    cat "$RUN/url"
    exit 0
fi
rm -f "$RUN/pid" "$RUN/url"

# A free port: the kernel picks one, and it is released just before moto binds it.
PORT=$("$VENV/bin/python3" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
URL=http://127.0.0.1:$PORT
log "starting moto_server at $URL (log: $RUN/moto.log)"
started=$(date +%s)
setsid "$VENV/bin/moto_server" -H 127.0.0.1 -p "$PORT" >"$RUN/moto.log" 2>&1 </dev/null &
pid=$!
echo "$pid $(starttime "$pid" || echo 0)" >"$RUN/pid"
until up "$URL"; do
    if ! kill -0 "$pid" 2>/dev/null; then
        tail -n 20 "$RUN/moto.log" >&2
        rm -f "$RUN/pid"
        die "moto_server exited; see $RUN/moto.log"
    fi
    if (($(date +%s) - started > WAIT_S)); then
        "$(dirname "$0")/stop.sh" "$RUN" || true
        die "moto_server did not answer at $URL within ${WAIT_S}s; see $RUN/moto.log"
    fi
    sleep 0.2
done
echo "$URL" >"$RUN/url"
log "moto up after $(($(date +%s) - started))s at $URL"
echo "$URL"
