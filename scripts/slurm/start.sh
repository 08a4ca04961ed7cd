#!/usr/bin/env bash
# Starts a single-node Slurm on loopback for benchmarks and tests: slurmctld + slurmd with a fake 4-GPU node, no
# accounting database. Installs slurm-wlm and munge first when slurmctld is missing (Debian).
#
#   scripts/slurm/start.sh RUN_DIR        # last line printed: export SLURM_CONF=RUN_DIR/slurm.conf
#   scripts/slurm/stop.sh RUN_DIR
#
# Environment: FERRY_SLURM_PORT (slurmctld port, default 6817; slurmd uses the next one),
#              FERRY_SLURM_WAIT_S (how long to wait for the node to become idle, default 30).
# Calling it again while the daemons of RUN_DIR run starts nothing new. Each start clears the previous job state.
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
WAIT_S=${FERRY_SLURM_WAIT_S:-30}
NODE=$(hostname -s)
CONF=$RUN/slurm.conf
export SLURM_CONF=$CONF

log() { echo "slurm/start: $*" >&2; }
die() { echo "slurm/start: error: $*" >&2; exit 1; }

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

# 1. Install what is missing.
if ! command -v slurmctld >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
    [[ $(id -u) -eq 0 ]] || die "slurmctld is not installed and installing it needs root"
    log "installing slurm-wlm and munge (log: $RUN/apt.log)"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q slurm-wlm munge >"$RUN/apt.log" 2>&1; then
        apt-get update -q >>"$RUN/apt.log" 2>&1 || true
        apt-get install -y -q slurm-wlm munge >>"$RUN/apt.log" 2>&1 ||
            die "apt-get install slurm-wlm munge failed; see $RUN/apt.log"
    fi
fi
command -v slurmctld >/dev/null || die "slurmctld is still not on PATH after installing slurm-wlm"

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

# 3. munge: reuse a running munged, else start one and remember that we did.
if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    :
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
    cp /run/munge/munged.pid "$RUN/munged.pid"
    log "started munged (pid $(<"$RUN/munged.pid"))"
    munge -n </dev/null | unmunge >/dev/null || die "munged runs but does not answer"
fi

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
echo "export SLURM_CONF=$CONF"
