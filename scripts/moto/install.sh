#!/usr/bin/env bash
# Installs moto's server, a real S3 API on loopback, for the S3 artifact store's tests (crates/ferry/tests/mlflow.rs):
# a venv at target/engines/moto-venv (relative to the repository root) with moto[server] (and boto3, which it pulls
# in, for creating buckets and listing objects from the tests). Quick when it is already there.
#
#   scripts/moto/install.sh           # last line printed: the venv's directory
#
# Environment: FERRY_MOTO_VERSION (default 5.2.5), FERRY_MOTO_VENV (default <repo>/target/engines/moto-venv).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=../lib/venv.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/venv.sh"

TAG=moto/install
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
VERSION=${FERRY_MOTO_VERSION:-5.2.5}
VENV=${FERRY_MOTO_VENV:-$ROOT/target/engines/moto-venv}

installed() {
    [[ -x $VENV/bin/python3 && -x $VENV/bin/moto_server ]] &&
        [[ $("$VENV/bin/python3" -c 'import importlib.metadata as m; print(m.version("moto"))' 2>/dev/null) == \
            "$VERSION" ]] &&
        "$VENV/bin/python3" -c 'import moto.server, boto3, flask' 2>/dev/null
}

venv_install "moto $VERSION" "moto[server]==$VERSION"
