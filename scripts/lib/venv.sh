# shellcheck shell=bash
# Helpers for the scripts that install a Python package into a venv of their own (scripts/*/install.sh). Sourced,
# not executed. Every message goes to stderr, prefixed with the caller's TAG; stdout is left to the caller's result.
#
#   source "$(dirname "${BASH_SOURCE[0]}")/../lib/venv.sh"
#   TAG=ray/install                         # the prefix of every message: "ray/install: ..."
#   VENV=...                                # the venv's directory
#   installed() { ...; }                    # true when $VENV already holds what is wanted
#   venv_install "ray $VERSION" "ray[default]==$VERSION"
#
# log MSG...            "TAG: MSG" on stderr.
# die MSG...            "TAG: error: MSG" on stderr, then exit 1.
# venv_create           Makes $VENV with $VENV_PYTHON (default python3) -m venv unless $VENV/bin/python3 is there
#                       (dies if the interpreter is missing or venv fails).
# venv_install WHAT SPEC...
#                       The whole install: if `installed`, says "WHAT is already installed in $VENV", prints $VENV
#                       and exits 0. Otherwise venv_create, `pip install -q SPEC...` (its output in $VENV/pip.log),
#                       checks `installed` again, says "WHAT installed in $VENV" and prints $VENV (last line on
#                       stdout). Dies on any failure.

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    echo "$0: source this file from a script, do not run it" >&2
    exit 2
fi

log() { echo "$TAG: $*" >&2; }
die() { echo "$TAG: error: $*" >&2; exit 1; }

venv_create() {
    local python=${VENV_PYTHON:-python3}
    command -v "$python" >/dev/null || die "$python is missing (apt-get install python3 python3-venv)"
    if [[ ! -x $VENV/bin/python3 ]]; then
        log "creating $VENV with $python"
        mkdir -p "$(dirname "$VENV")"
        "$python" -m venv "$VENV" || die "$python -m venv failed (apt-get install python3-venv?)"
    fi
}

venv_install() {
    local what=$1
    shift
    if installed; then
        log "$what is already installed in $VENV"
        echo "$VENV"
        exit 0
    fi
    venv_create
    log "installing $1 into $VENV (log: $VENV/pip.log)"
    "$VENV/bin/python3" -m pip install -q "$@" >"$VENV/pip.log" 2>&1 ||
        die "pip install $* failed; see $VENV/pip.log"
    installed || die "$what is still not importable from $VENV after pip install; see $VENV/pip.log"
    log "$what installed in $VENV"
    echo "$VENV"
}
