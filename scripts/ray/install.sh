#!/usr/bin/env bash
# Installs Ray for the Ray engine's tests: a venv at target/engines/ray-venv (relative to the repository root) with
# ray[default] (the dashboard and its Jobs REST API). Quick when it is already there.
#
#   scripts/ray/install.sh            # last line printed: the venv's directory
#
# Environment: FERRY_RAY_VERSION (default 2.60.0), FERRY_RAY_VENV (default <repo>/target/engines/ray-venv).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
VERSION=${FERRY_RAY_VERSION:-2.60.0}
VENV=${FERRY_RAY_VENV:-$ROOT/target/engines/ray-venv}

log() { echo "ray/install: $*" >&2; }
die() { echo "ray/install: error: $*" >&2; exit 1; }

installed() {
    [[ -x $VENV/bin/python3 && -x $VENV/bin/ray ]] &&
        [[ $("$VENV/bin/python3" -c 'import importlib.metadata as m; print(m.version("ray"))' 2>/dev/null) == \
            "$VERSION" ]] &&
        "$VENV/bin/python3" -c 'import ray.dashboard, aiohttp' 2>/dev/null
}

if installed; then
    log "ray $VERSION is already installed in $VENV"
    echo "$VENV"
    exit 0
fi

command -v python3 >/dev/null || die "python3 is missing (apt-get install python3 python3-venv)"
if [[ ! -x $VENV/bin/python3 ]]; then
    mkdir -p "$(dirname "$VENV")"
    python3 -m venv "$VENV" || die "python3 -m venv failed (apt-get install python3-venv?)"
fi
log "installing ray[default]==$VERSION into $VENV (log: $VENV/pip.log)"
"$VENV/bin/python3" -m pip install -q "ray[default]==$VERSION" >"$VENV/pip.log" 2>&1 ||
    die "pip install ray[default]==$VERSION failed; see $VENV/pip.log"
installed || die "ray $VERSION is still not importable from $VENV after pip install; see $VENV/pip.log"
log "ray $VERSION installed in $VENV"
echo "$VENV"
