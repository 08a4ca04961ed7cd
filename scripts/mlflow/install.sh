#!/usr/bin/env bash
# Installs the official MLflow client for the tracking tests (crates/ferry/tests/mlflow.rs): a venv at
# target/engines/mlflow-venv (relative to the repository root) with mlflow-skinny, MLflow's own package of the
# tracking client without the server and the ML libraries (about 20 s and 150 MB, against about 50 s and 1 GB for
# `mlflow`). The model tests also need what `mlflow.pyfunc` imports and pickles models with, which mlflow-skinny
# leaves out: numpy, pandas and cloudpickle (pinned below; about 15 s more). Quick when it is already there.
#
#   scripts/mlflow/install.sh         # last line printed: the venv's directory
#
# Environment: FERRY_MLFLOW_VERSION (default 3.17.2), FERRY_MLFLOW_VENV (default <repo>/target/engines/mlflow-venv).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=../lib/venv.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/venv.sh"

TAG=mlflow/install
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
VERSION=${FERRY_MLFLOW_VERSION:-3.17.2}
VENV=${FERRY_MLFLOW_VENV:-$ROOT/target/engines/mlflow-venv}
# Jobs run the client too, and an agent running as root runs jobs as the unprivileged `ferry-job`: the venv is built
# from the system's Python, which every account can run (a pyenv Python under /root is out of its reach).
if [[ -x /usr/bin/python3 ]]; then
    VENV_PYTHON=/usr/bin/python3
    if [[ -x $VENV/bin/python3 && $(readlink -f "$VENV/bin/python3") != $(readlink -f /usr/bin/python3) ]]; then
        log "rebuilding $VENV from /usr/bin/python3 (it was made from $(readlink -f "$VENV/bin/python3"))"
        rm -rf "$VENV"
    fi
fi
# What `mlflow.pyfunc.log_model`/`load_model` need beside mlflow-skinny, pinned.
EXTRAS=(numpy==2.4.6 pandas==2.3.3 cloudpickle==3.1.2)

installed() {
    [[ -x $VENV/bin/python3 ]] &&
        [[ $("$VENV/bin/python3" -c 'import importlib.metadata as m; print(m.version("mlflow-skinny"))' 2>/dev/null) == \
            "$VERSION" ]] &&
        "$VENV/bin/python3" -c 'from mlflow import MlflowClient; import mlflow.pyfunc, cloudpickle' 2>/dev/null &&
        [[ $("$VENV/bin/python3" -c 'import importlib.metadata as m; print(" ".join(n + "==" + m.version(n) for n in ("numpy", "pandas", "cloudpickle")))' 2>/dev/null) == \
            "${EXTRAS[*]}" ]]
}

venv_install "mlflow-skinny $VERSION" "mlflow-skinny==$VERSION" "${EXTRAS[@]}"
