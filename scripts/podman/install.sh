#!/usr/bin/env bash
# Installs what the container scripts and tests need, only when something is missing (Debian): podman (its
# Docker-compatible API service is what the agent talks to), runc (crun fails in hybrid cgroup layouts, see
# scripts/podman/start.sh) and busybox-static (the one binary the test image `localhost/busybox:ferry` is built from,
# without any registry). Quick (a few `command -v`) when everything is present.
#
#   scripts/podman/install.sh
set -euo pipefail
PATH=$PATH:/usr/sbin:/sbin

missing=()
command -v podman >/dev/null 2>&1 || missing+=(podman)
command -v runc >/dev/null 2>&1 || missing+=(runc)
[[ -x /bin/busybox ]] || missing+=(busybox-static)
command -v curl >/dev/null 2>&1 || missing+=(curl)
[[ ${#missing[@]} -eq 0 ]] && exit 0

[[ $(id -u) -eq 0 ]] || { echo "podman/install: ${missing[*]} missing and installing needs root" >&2; exit 1; }
echo "podman/install: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp "${TMPDIR:-/tmp}/ferry-podman-install.XXXXXX")
# Try without refreshing the package lists first (fast when they are recent); refresh and retry once otherwise.
if ! apt-get install -y -q -o DPkg::Lock::Timeout=120 "${missing[@]}" >"$log" 2>&1; then
    apt-get update -q >>"$log" 2>&1 || true
    if ! apt-get install -y -q -o DPkg::Lock::Timeout=120 "${missing[@]}" >>"$log" 2>&1; then
        tail -n 20 "$log" >&2
        echo "podman/install: apt-get install ${missing[*]} failed; see $log" >&2
        exit 1
    fi
fi
rm -f "$log"
