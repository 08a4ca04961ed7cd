#!/usr/bin/env bash
# Installs moto's server, a real S3 API on loopback, for the S3 artifact store's tests (crates/ferry/tests/mlflow.rs):
# a venv at target/engines/moto-venv (relative to the repository root) with moto[server] (and boto3, which it pulls
# in, for creating buckets and listing objects from the tests). Quick when it is already there.
#
#   scripts/moto/install.sh           # last line printed: the venv's directory
#
# Environment: FERRY_MOTO_VERSION (default 5.2.5), FERRY_MOTO_VENV (default <repo>/target/engines/moto-venv).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
VERSION=${FERRY_MOTO_VERSION:-5.2.5}
VENV=${FERRY_MOTO_VENV:-$ROOT/target/engines/moto-venv}

log() { echo "moto/install: $*" >&2; }
die() { echo "moto/install: error: $*" >&2; exit 1; }

installed() {
    [[ -x $VENV/bin/python3 && -x $VENV/bin/moto_server ]] &&
        [[ $("$VENV/bin/python3" -c 'import importlib.metadata as m; print(m.version("moto"))' 2>/dev/null) == \
            "$VERSION" ]] &&
        "$VENV/bin/python3" -c 'import moto.server, boto3, flask' 2>/dev/null
}

if installed; then
    log "moto $VERSION is already installed in $VENV"
    echo "$VENV"
    exit 0
fi

command -v python3 >/dev/null || die "python3 is missing (apt-get install python3 python3-venv)"
if [[ ! -x $VENV/bin/python3 ]]; then
    mkdir -p "$(dirname "$VENV")"
    python3 -m venv "$VENV" || die "python3 -m venv failed (apt-get install python3-venv?)"
fi
log "installing moto[server]==$VERSION into $VENV (log: $VENV/pip.log)"
"$VENV/bin/python3" -m pip install -q "moto[server]==$VERSION" >"$VENV/pip.log" 2>&1 ||
    die "pip install moto[server]==$VERSION failed; see $VENV/pip.log"
installed || die "moto $VERSION is still not importable from $VENV after pip install; see $VENV/pip.log"
log "moto $VERSION installed in $VENV"
echo "$VENV"
