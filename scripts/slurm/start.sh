#!/usr/bin/env bash
# Starts a single-node Slurm on loopback for benchmarks and tests: slurmctld + slurmd with a fake 4-GPU node, no
# accounting database, and on request slurmrestd (the REST API, JWT auth). Installs what is missing first
# (scripts/slurm/install.sh, Debian).
#
#   scripts/slurm/start.sh RUN_DIR        # last line printed: export SLURM_CONF=RUN_DIR/slurm.conf
#   FERRY_SLURMREST_PORT=6820 scripts/slurm/start.sh RUN_DIR
#                                         # last two lines: export SLURM_CONF=...  export FERRY_SLURMREST_URL=...
#   scripts/slurm/stop.sh RUN_DIR
#
# Environment: FERRY_SLURM_PORT (slurmctld port, default 6817; slurmd uses the next one),
#              FERRY_SLURMREST_PORT (opt-in: also start slurmrestd on 127.0.0.1:PORT with OpenAPI v0.0.38; clients
#                                    authenticate with a JWT from `scontrol token username=root lifespan=3600`),
#              FERRY_SLURM_WAIT_S (how long to wait for the node to become idle, default 30).
# Calling it again while the daemons of RUN_DIR run starts nothing new. Each start clears the previous job state.
# Several RUN_DIRs can run at once (tests in parallel) when their ports differ; they share one munged.
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 RUN_DIR" >&2
    exit 2
fi
PATH=$PATH:/usr/sbin:/sbin
mkdir -p "$1"
RUN=$(cd "$1" && pwd)
CTLD_PORT=${FERRY_SLURM_PORT:-6817}
SLURMD_PORT=$((CTLD_PORT + 1))
REST_PORT=${FERRY_SLURMREST_PORT:-}
WAIT_S=${FERRY_SLURM_WAIT_S:-30}
NODE=$(hostname -s)
CONF=$RUN/slurm.conf
export SLURM_CONF=$CONF

log() { echo "slurm/start: $*" >&2; }
die() { echo "slurm/start: error: $*" >&2; exit 1; }
[[ -z $REST_PORT || $REST_PORT =~ ^[1-9][0-9]*$ ]] || die "FERRY_SLURMREST_PORT is not a port number: $REST_PORT"

# A pid file names a live process of the given command.
alive() {
    local pidfile=$1 comm=$2 pid
    [[ -s $pidfile ]] || return 1
    pid=$(<"$pidfile")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ $(cat "/proc/$pid/comm" 2>/dev/null || true) == "$comm" ]]
}

# Something listens on the TCP port on loopback (or any address).
listening() {
    [[ -n $(ss -Hltn "sport = :$1" 2>/dev/null) ]]
}

# 1. Install what is missing (install.sh is quick when everything is there).
if ! command -v slurmctld >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1 ||
    { [[ -n $REST_PORT ]] && ! command -v slurmrestd >/dev/null 2>&1; }; then
    [[ $(id -u) -eq 0 ]] || die "Slurm is not installed and installing it needs root"
    "$(dirname "${BASH_SOURCE[0]}")/install.sh" || die "scripts/slurm/install.sh failed"
fi
command -v slurmctld >/dev/null || die "slurmctld is still not on PATH after installing slurm-wlm"
[[ -z $REST_PORT ]] || command -v slurmrestd >/dev/null || die "slurmrestd is still not on PATH after installing it"

# 2. Configuration (written every time, so edits to this script take effect).
mkdir -p "$RUN/state" "$RUN/spool" "$RUN/dev"
for i in 0 1 2 3; do
    # Fake GPUs: character devices cloned from /dev/null. slurmd rejects plain files and file-less GPUs.
    [[ -c $RUN/dev/nvidia$i ]] || { rm -f "$RUN/dev/nvidia$i"; mknod "$RUN/dev/nvidia$i" c 1 3; }
done
cat >"$CONF" <<EOF
# Written by scripts/slurm/start.sh: one node on loopback, no accounting database.
ClusterName=ferry
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
StateSaveLocation=$RUN/state
SlurmdSpoolDir=$RUN/spool
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmctldLogFile=$RUN/slurmctld.log
SlurmdLogFile=$RUN/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Without a default, each job takes all the node's memory and jobs run one at a time.
DefMemPerCPU=100
GresTypes=gpu
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$RUN/jobcomp.txt
JobAcctGatherType=jobacct_gather/linux
MinJobAge=300
MaxJobCount=20000
# The machine has fewer CPUs; 32 overcommits them (allowed by config_overrides) so that many jobs run at once.
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=32 RealMemory=16000 Gres=gpu:fake:4 State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
SchedulerParameters=sched_min_interval=0,batch_sched_delay=0,default_queue_depth=1000
SlurmdParameters=config_overrides
EOF
echo "NodeName=$NODE Name=gpu Type=fake File=$RUN/dev/nvidia[0-3]" >"$RUN/gres.conf"
# JWT: the key slurmctld signs and checks tokens with (`scontrol token`, slurmrestd's clients). Always configured, so
# that slurmrestd can be added to a running Slurm; kept across starts so that tokens already issued stay valid.
if [[ ! -s $RUN/jwt_hs256.key ]]; then
    (umask 077 && head -c 32 /dev/urandom >"$RUN/jwt_hs256.key")
fi
chmod 600 "$RUN/jwt_hs256.key"
cat >>"$CONF" <<EOF
AuthAltTypes=auth/jwt
AuthAltParameters=jwt_key=$RUN/jwt_hs256.key
EOF

# 3. munge, shared by every RUN_DIR: reuse a running munged, else start one. A munged some start.sh started is
# recorded in /run/munge/ferry.pid and in each RUN_DIR that uses it, so that the last stop.sh stops it; a munged
# started otherwise (a system one) is never stopped. Under a lock, so that parallel starts do not race.
exec 9>/tmp/ferry-slurm-munge.lock
flock 9
if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    if alive /run/munge/ferry.pid munged; then
        cp /run/munge/ferry.pid "$RUN/munged.pid"
    fi
else
    [[ -s /etc/munge/munge.key ]] || die "/etc/munge/munge.key is missing (reinstall munge, or run mungekey)"
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    chown munge:munge /run/munge /var/lib/munge /var/log/munge
    rm -f /run/munge/munged.pid
    runuser -u munge -- /usr/sbin/munged || die "munged failed to start; see /var/log/munge/munged.log"
    for _ in $(seq 50); do
        [[ -s /run/munge/munged.pid ]] && break
        sleep 0.1
    done
    [[ -s /run/munge/munged.pid ]] || die "munged wrote no pid file"
    cp /run/munge/munged.pid /run/munge/ferry.pid
    cp /run/munge/munged.pid "$RUN/munged.pid"
    log "started munged (pid $(<"$RUN/munged.pid"))"
    munge -n </dev/null | unmunge >/dev/null || die "munged runs but does not answer"
fi
flock -u 9
exec 9>&-

# 4. The daemons.
if alive "$RUN/slurmctld.pid" slurmctld; then
    log "slurmctld already running (pid $(<"$RUN/slurmctld.pid"))"
else
    rm -f "$RUN/slurmctld.pid"
    # slurmctld forks before it binds, so a taken port would only show in its log; check first.
    listening "$CTLD_PORT" && die "port $CTLD_PORT is taken (another Slurm?); choose another with FERRY_SLURM_PORT"
    # -c: start with an empty queue, whatever an earlier run left.
    slurmctld -c -f "$CONF" || die "slurmctld failed to start; see $RUN/slurmctld.log"
fi
if alive "$RUN/slurmd.pid" slurmd; then
    log "slurmd already running (pid $(<"$RUN/slurmd.pid"))"
else
    rm -f "$RUN/slurmd.pid"
    listening "$SLURMD_PORT" && die "port $SLURMD_PORT is taken (another slurmd?); choose another with FERRY_SLURM_PORT"
    slurmd -N "$NODE" -f "$CONF" || die "slurmd failed to start; see $RUN/slurmd.log"
fi

# 5. Wait until the node is idle.
deadline=$((SECONDS + WAIT_S))
state=""
while ((SECONDS < deadline)); do
    if scontrol ping >/dev/null 2>&1; then
        state=$(sinfo -h -n "$NODE" -o %t 2>/dev/null || true)
        if [[ $state == idle ]]; then
            # Make sure it is our daemons that answer: each writes its pid file as it starts, and one that died
            # (e.g. on a port taken meanwhile) leaves none or a dead pid.
            alive "$RUN/slurmctld.pid" slurmctld || die "slurmctld of $RUN is not running; see $RUN/slurmctld.log"
            alive "$RUN/slurmd.pid" slurmd || die "slurmd of $RUN is not running; see $RUN/slurmd.log"
            break
        fi
        # A node left drained or down by an earlier run: give it back.
        if [[ $state == drain* || $state == down* ]]; then
            scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true
        fi
    fi
    sleep 0.2
done
if [[ $state != idle ]]; then
    tail -n 20 "$RUN/slurmctld.log" "$RUN/slurmd.log" >&2 || true
    die "node $NODE is not idle after ${WAIT_S}s (state: '${state:-no answer}')"
fi
log "node $NODE idle (slurmctld on 127.0.0.1:$CTLD_PORT)"

# 6. slurmrestd, on request. Pitfalls (each seen): it refuses to run as root (-u nobody); without slurmdbd only the
# v0.0.38 plugin loads (-s openapi/v0.0.38, not the dbv0.0.38 one); without SLURM_JWT=daemon in its environment every
# request fails with "Authentication failure". It stays in the foreground: it runs in the background, its pid kept.
if [[ -n $REST_PORT ]]; then
    if alive "$RUN/slurmrestd.pid" slurmrestd; then
        log "slurmrestd already running (pid $(<"$RUN/slurmrestd.pid"))"
    else
        rm -f "$RUN/slurmrestd.pid"
        listening "$REST_PORT" && die "port $REST_PORT is taken; choose another with FERRY_SLURMREST_PORT"
        runuser -u nobody -- test -r "$CONF" ||
            die "slurmrestd runs as nobody, who cannot read $CONF; make $RUN and the folders above it readable (chmod 755)"
        SLURM_JWT=daemon setsid slurmrestd -f "$CONF" -a rest_auth/jwt -s openapi/v0.0.38 -u nobody \
            "127.0.0.1:$REST_PORT" </dev/null >>"$RUN/slurmrestd.log" 2>&1 &
        echo $! >"$RUN/slurmrestd.pid"
        deadline=$((SECONDS + WAIT_S))
        until listening "$REST_PORT"; do
            # Right after the fork the process may not be named slurmrestd yet (setsid has not exec'd): ask only
            # whether it lives.
            if ! kill -0 "$(<"$RUN/slurmrestd.pid")" 2>/dev/null; then
                tail -n 20 "$RUN/slurmrestd.log" >&2 || true
                die "slurmrestd exited; see $RUN/slurmrestd.log"
            fi
            ((SECONDS < deadline)) || die "slurmrestd does not listen on $REST_PORT after ${WAIT_S}s; see $RUN/slurmrestd.log"
            sleep 0.1
        done
        log "slurmrestd (pid $(<"$RUN/slurmrestd.pid")) on 127.0.0.1:$REST_PORT"
    fi
fi
echo "export SLURM_CONF=$CONF"
[[ -z $REST_PORT ]] || echo "export FERRY_SLURMREST_URL=http://127.0.0.1:$REST_PORT"
