#!/usr/bin/env bash
# Starts Podman's Docker-compatible API service for tests and for agents that run jobs in containers: one
# `podman system service` on a unix socket in RUN_DIR, with a project-local containers.conf that works on machines
# where root lacks CAP_SYS_RESOURCE and cgroups are hybrid. Builds the test image `localhost/busybox:ferry` from the
# node's /bin/busybox if it is missing (no registry needed). Installs what is missing first (scripts/podman/install.sh).
#
#   scripts/podman/start.sh RUN_DIR      # last line printed: export CONTAINER_HOST=unix://RUN_DIR/podman.sock
#   scripts/podman/stop.sh RUN_DIR
#
# Environment: FERRY_PODMAN_WAIT_S (how long to wait for the socket to answer, default 60; a loaded machine answers slowly).
# Calling it again while the service of RUN_DIR runs starts nothing new. Images live in Podman's usual storage
# (/var/lib/containers/storage for root), so they are built once per machine.
#
# Why the configuration (see also shared notes on podman):
# - Podman's default rlimits are above the hard limits where root lacks CAP_SYS_RESOURCE, and every container then
#   fails with "setrlimit RLIMIT_NOFILE: Operation not permitted": the defaults are pinned to the hard limits.
# - crun refuses hybrid cgroup layouts ("cgroups in hybrid mode not supported"): runc works as is.
# - There is no systemd: cgroupfs manages the groups, and logs and events go to files.
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 RUN_DIR" >&2
    exit 2
fi
PATH=$PATH:/usr/sbin:/sbin
mkdir -p "$1"
RUN=$(cd "$1" && pwd)
SOCK=$RUN/podman.sock
WAIT_S=${FERRY_PODMAN_WAIT_S:-60}
IMAGE=localhost/busybox:ferry

log() { echo "podman/start: $*" >&2; }
die() { echo "podman/start: error: $*" >&2; exit 1; }

"$(dirname "$0")/install.sh"

# The hard limits this shell (and so the service and its containers) lives under; conmon caps nproc at 32768.
nofile=$(ulimit -Hn)
nproc=$(ulimit -Hu)
[[ $nofile == unlimited ]] && nofile=1048576
[[ $nproc == unlimited || $nproc -gt 32768 ]] && nproc=32768
cat >"$RUN/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
log_driver = "k8s-file"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
export CONTAINERS_CONF=$RUN/containers.conf

answers() { curl -sf --max-time 10 --unix-socket "$SOCK" http://d/v1.41/version >/dev/null 2>&1; }

if ! answers; then
    rm -f "$SOCK"
    # A session of its own, so the service outlives this script and a Ctrl-C in the caller's terminal.
    setsid podman --log-level=info system service --time=0 "unix://$SOCK" >"$RUN/podman.log" 2>&1 </dev/null &
    echo $! >"$RUN/podman.pid"
    deadline=$((SECONDS + WAIT_S))
    while ((SECONDS < deadline)); do
        answers && break
        kill -0 "$(<"$RUN/podman.pid")" 2>/dev/null || { tail -n 20 "$RUN/podman.log" >&2; die "the service exited"; }
        sleep 0.1
    done
    answers || { tail -n 20 "$RUN/podman.log" >&2; die "no answer on $SOCK within ${WAIT_S}s"; }
    log "serving on $SOCK (pid $(<"$RUN/podman.pid"))"
fi

if ! podman image exists "$IMAGE"; then
    log "building $IMAGE from /bin/busybox"
    root=$(mktemp -d "$RUN/bbroot.XXXXXX")
    mkdir -p "$root"/{bin,etc,tmp,proc,sys,dev,root}
    cp /bin/busybox "$root/bin/"
    for c in $(/bin/busybox --list); do
        [[ $c == busybox ]] || ln -sf busybox "$root/bin/$c"
    done
    echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
    echo 'root:x:0:' >"$root/etc/group"
    tar -C "$root" -cf "$root.tar" .
    podman import --change 'CMD ["/bin/sh"]' --change 'ENV PATH=/bin' "$root.tar" "$IMAGE" >/dev/null \
        2>"$RUN/import.log" || { cat "$RUN/import.log" >&2; die "podman import failed"; }
    rm -rf "$root" "$root.tar"
fi

echo "export CONTAINER_HOST=unix://$SOCK"
