#!/usr/bin/env bash
# Installs Ray for the Ray engine's tests: a venv at target/engines/ray-venv (relative to the repository root) with
# ray[default] (the dashboard and its Jobs REST API). Quick when it is already there.
#
#   scripts/ray/install.sh            # last line printed: the venv's directory
#
# Environment: FERRY_RAY_VERSION (default 2.60.0), FERRY_RAY_VENV (default <repo>/target/engines/ray-venv).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=../lib/venv.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/venv.sh"

TAG=ray/install
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
VERSION=${FERRY_RAY_VERSION:-2.60.0}
VENV=${FERRY_RAY_VENV:-$ROOT/target/engines/ray-venv}

installed() {
    [[ -x $VENV/bin/python3 && -x $VENV/bin/ray ]] &&
        [[ $("$VENV/bin/python3" -c 'import importlib.metadata as m; print(m.version("ray"))' 2>/dev/null) == \
            "$VERSION" ]] &&
        "$VENV/bin/python3" -c 'import ray.dashboard, aiohttp' 2>/dev/null
}

venv_install "ray $VERSION" "ray[default]==$VERSION"
