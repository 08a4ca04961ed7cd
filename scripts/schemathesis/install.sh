#!/usr/bin/env bash
# Installs Schemathesis, the property-based API tester from PyPI, for the OpenAPI test (crates/ferry/tests/openapi.rs):
# a venv at target/engines/schemathesis (relative to the repository root) with the `schemathesis` command, which
# generates requests from the server's OpenAPI document and checks the answers against it. Quick when it is already
# there.
#
#   scripts/schemathesis/install.sh   # last line printed: the venv's directory
#
# Environment: FERRY_SCHEMATHESIS_VERSION (default 4.32.5), FERRY_SCHEMATHESIS_VENV (default
# <repo>/target/engines/schemathesis).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=../lib/venv.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/venv.sh"

TAG=schemathesis/install
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
VERSION=${FERRY_SCHEMATHESIS_VERSION:-4.32.5}
VENV=${FERRY_SCHEMATHESIS_VENV:-$ROOT/target/engines/schemathesis}

installed() {
    [[ -x $VENV/bin/python3 && -x $VENV/bin/schemathesis ]] &&
        [[ $("$VENV/bin/python3" -c 'import importlib.metadata as m; print(m.version("schemathesis"))' 2>/dev/null) == \
            "$VERSION" ]]
}

venv_install "schemathesis $VERSION" "schemathesis==$VERSION"
