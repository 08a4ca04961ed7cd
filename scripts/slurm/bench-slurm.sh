#!/usr/bin/env bash
# Throughput of a local Slurm for comparison with Ferry: N trivial jobs submitted as fast as one sbatch loop can, then
# the time until none is left in the queue. Then the same N as one job array (--array=1-N).
#
#   eval "$(scripts/slurm/start.sh RUN_DIR | tail -n 1)"
#   scripts/slurm/bench-slurm.sh 1000 [--no-array]
#
# Prints one machine-readable line per figure:
#   slurm_jobs=1000 submit_s=8.8 total_s=25.7 jobs_per_s=38.9
#   slurm_array_jobs=1000 submit_s=0.01 total_s=28.5 jobs_per_s=35.1
# jobs_per_s = N / total_s, where total_s runs from the first submission until the queue is empty.
set -euo pipefail

usage() { echo "usage: $0 N [--no-array]   (needs SLURM_CONF)" >&2; exit 2; }
[[ $# -ge 1 && $1 =~ ^[1-9][0-9]*$ ]] || usage
N=$1
ARRAY=1
if [[ $# -ge 2 ]]; then
    [[ $2 == --no-array ]] || usage
    ARRAY=0
fi
[[ -n ${SLURM_CONF:-} && -r $SLURM_CONF ]] || { echo "bench-slurm: SLURM_CONF is not set to a readable slurm.conf" >&2; exit 2; }
WAIT_S=${FERRY_SLURM_BENCH_WAIT_S:-900}

now() { echo "$EPOCHREALTIME"; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
rate() { awk -v n="$1" -v s="$2" 'BEGIN { if (s > 0) printf "%.1f", n / s; else print "inf" }'; }
queued() { squeue -h 2>/dev/null | wc -l; }

# Waits, polling every 100 ms, until the queue is empty; fails after WAIT_S seconds.
wait_empty() {
    local deadline=$((SECONDS + WAIT_S)) left
    while :; do
        left=$(queued)
        [[ $left -eq 0 ]] && return 0
        if ((SECONDS >= deadline)); then
            echo "bench-slurm: $left jobs still queued or running after ${WAIT_S}s; cancelling them" >&2
            scancel --user="$(id -un)" >/dev/null 2>&1 || true
            return 1
        fi
        sleep 0.1
    done
}

scontrol ping >/dev/null || { echo "bench-slurm: slurmctld does not answer (SLURM_CONF=$SLURM_CONF)" >&2; exit 1; }
# Start from an empty queue.
wait_empty

cd "${TMPDIR:-/tmp}"

# 1. One sbatch per job.
t0=$(now)
for ((i = 0; i < N; i++)); do
    sbatch -Q -o /dev/null --wrap true >/dev/null
done
t1=$(now)
wait_empty
t2=$(now)
total=$(secs "$t0" "$t2")
echo "slurm_jobs=$N submit_s=$(secs "$t0" "$t1") total_s=$total jobs_per_s=$(rate "$N" "$total")"

# 2. One job array of N tasks.
if ((ARRAY)); then
    t0=$(now)
    sbatch -Q -o /dev/null --array="1-$N" --wrap true >/dev/null
    t1=$(now)
    wait_empty
    t2=$(now)
    total=$(secs "$t0" "$t2")
    echo "slurm_array_jobs=$N submit_s=$(secs "$t0" "$t1") total_s=$total jobs_per_s=$(rate "$N" "$total")"
fi
