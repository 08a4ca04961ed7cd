#!/usr/bin/env bash
# Installs pyspark into a venv for the Spark engine's tests and benchmarks: target/engines/spark-venv (relative to
# the repository root). Quick and silent when it is already there.
#
#   scripts/spark/install.sh            # last line printed: the venv's python
#
# Environment: FERRY_SPARK_VENV (where the venv goes), FERRY_PYSPARK_VERSION (default 4.3.0; "any" takes what pip
# can get). Needs python3 with venv, and Java 17 (installed with apt-get when missing and running as root).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=../lib/venv.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/venv.sh"

TAG=spark/install
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
VENV=${FERRY_SPARK_VENV:-$ROOT/target/engines/spark-venv}
VERSION=${FERRY_PYSPARK_VERSION:-4.3.0}

if ! command -v java >/dev/null 2>&1; then
    [[ $(id -u) -eq 0 ]] || die "java is not installed and installing it needs root"
    log "installing openjdk-17-jre-headless"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q openjdk-17-jre-headless >/dev/null 2>&1 ||
        { apt-get update -q >/dev/null 2>&1 || true; apt-get install -y -q openjdk-17-jre-headless >/dev/null; } ||
        die "apt-get install openjdk-17-jre-headless failed"
fi

if [[ -x $VENV/bin/spark-submit && -x $VENV/bin/spark-class ]] && "$VENV/bin/python" -c 'import pyspark' 2>/dev/null; then
    echo "$VENV/bin/python"
    exit 0
fi

venv_create
if [[ $VERSION == any ]]; then
    spec=pyspark
else
    spec=pyspark==$VERSION
fi
log "pip install $spec (about 450 MB, a minute or more)"
if ! "$VENV/bin/pip" install -q "$spec"; then
    [[ $VERSION == any ]] && die "pip install pyspark failed"
    log "pip install $spec failed; trying the newest pyspark pip can get"
    "$VENV/bin/pip" install -q pyspark || die "pip install pyspark failed"
fi
[[ -x $VENV/bin/spark-submit ]] || die "pyspark installed but $VENV/bin/spark-submit is missing"
echo "$VENV/bin/python"
