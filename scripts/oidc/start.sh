#!/usr/bin/env bash
# Starts the OpenID Connect provider of Ferry's end-to-end SSO tests (scripts/oidc/provider.mjs: panva's
# oidc-provider with one confidential client, accounts from a JSON file and a plain-HTML login) on a loopback port,
# in the background, with the node_modules that scripts/oidc/install.sh makes (run that first).
#
#   OIDC_CLIENT_ID=ferry OIDC_CLIENT_SECRET=secret OIDC_REDIRECT_URIS=http://127.0.0.1:8080/callback \
#   OIDC_ACCOUNTS=/path/accounts.json scripts/oidc/start.sh RUN_DIR [PORT]
#                                       # last line printed: the issuer, http://127.0.0.1:PORT
#   scripts/oidc/stop.sh RUN_DIR
#
# PORT: the port to listen on (127.0.0.1 only); without it, a free one the kernel picks.
# RUN_DIR gets `oidc.pid` ("PID STARTTIME", so that stop.sh never signals a reused pid), `oidc.url` (the issuer)
# and `oidc.log` (the provider's output: one line per request, errors with their details).
# The provider's environment is the caller's: OIDC_CLIENT_ID, OIDC_CLIENT_SECRET, OIDC_REDIRECT_URIS
# (comma-separated) and OIDC_ACCOUNTS (a JSON file) are required; OIDC_ID_TOKEN_TTL, OIDC_ACCESS_TOKEN_TTL (default
# 60 s), OIDC_REFRESH_TOKEN_TTL (3600 s), OIDC_DEVICE_CODE_TTL (600 s), OIDC_DEVICE_INTERVAL (1 s) and
# OIDC_ROTATE_REFRESH_TOKEN (0) are optional; scripts/oidc/README.md says what each does. OIDC_PORT is set here.
# Environment of this script: FERRY_OIDC_PREFIX (default <repo>/target/oidc), FERRY_OIDC_WAIT_S (default 30).
# Calling it again while the provider of RUN_DIR answers starts nothing new (the environment of the first start
# stays in effect).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=../lib/proc.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/proc.sh"

if [[ $# -lt 1 || $# -gt 2 ]]; then
    echo "usage: $0 RUN_DIR [PORT]" >&2
    exit 2
fi
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$1"
RUN=$(cd "$1" && pwd)
PORT=${2:-}
PREFIX=${FERRY_OIDC_PREFIX:-$ROOT/target/oidc}
WAIT_S=${FERRY_OIDC_WAIT_S:-30}

log() { echo "oidc/start: $*" >&2; }
die() { echo "oidc/start: error: $*" >&2; exit 1; }

command -v node >/dev/null || die "no node on PATH"
command -v curl >/dev/null || die "no curl on PATH"
[[ -f $PREFIX/node_modules/oidc-provider/package.json ]] ||
    die "no oidc-provider in $PREFIX/node_modules: run scripts/oidc/install.sh first"
[[ -z $PORT || $PORT =~ ^[0-9]+$ ]] || die "PORT must be a number, not '$PORT'"
for var in OIDC_CLIENT_ID OIDC_CLIENT_SECRET OIDC_REDIRECT_URIS OIDC_ACCOUNTS; do
    [[ -n ${!var:-} ]] || die "$var is not set (see scripts/oidc/README.md)"
done
[[ -r $OIDC_ACCOUNTS ]] || die "OIDC_ACCOUNTS names no readable file: $OIDC_ACCOUNTS"

# True when an OpenID provider with issuer URL answers its discovery document at URL.
up() {
    curl -fsS --max-time 2 "$1/.well-known/openid-configuration" 2>/dev/null | grep -qF "\"issuer\":\"$1\""
}

# Already running for this RUN_DIR: nothing to do.
if [[ -s $RUN/oidc.pid && -s $RUN/oidc.url ]] && up "$(<"$RUN/oidc.url")"; then
    url=$(<"$RUN/oidc.url")
    [[ -z $PORT || $url == "http://127.0.0.1:$PORT" ]] ||
        die "the provider of $RUN already runs at $url, not on port $PORT: stop it first (scripts/oidc/stop.sh $RUN)"
    log "the provider of $RUN already answers at $url"
    echo "$url"
    exit 0
fi
"$(dirname "$0")/stop.sh" "$RUN"

# A free port: the kernel picks one, and it is released just before the provider binds it.
if [[ -z $PORT ]]; then
    PORT=$(node -e 'const s = require("net").createServer(); s.listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); })')
fi
URL=http://127.0.0.1:$PORT
! up "$URL" || die "another OpenID provider already answers at $URL"
log "starting oidc-provider at $URL (log: $RUN/oidc.log)"
started=$(date +%s)
OIDC_PORT=$PORT OIDC_NODE_PREFIX=$PREFIX \
    setsid node "$ROOT/scripts/oidc/provider.mjs" >"$RUN/oidc.log" 2>&1 </dev/null &
pid=$!
echo "$pid $(starttime "$pid" || echo 0)" >"$RUN/oidc.pid"
# Ready when this process has said so (a provider of another RUN_DIR may hold the port) and answers.
until grep -qxF "ready $URL" "$RUN/oidc.log" && up "$URL"; do
    if ! running "$pid"; then
        tail -n 20 "$RUN/oidc.log" >&2
        rm -f "$RUN/oidc.pid"
        die "the provider exited; see $RUN/oidc.log"
    fi
    if (($(date +%s) - started > WAIT_S)); then
        tail -n 20 "$RUN/oidc.log" >&2
        "$(dirname "$0")/stop.sh" "$RUN" || true
        die "the provider did not answer at $URL within ${WAIT_S}s; see $RUN/oidc.log"
    fi
    sleep 0.2
done
echo "$URL" >"$RUN/oidc.url"
log "oidc-provider up after $(($(date +%s) - started))s at $URL"
echo "$URL"
