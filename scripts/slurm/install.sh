#!/usr/bin/env bash
# Installs what the Slurm scripts and tests need, only when something is missing (Debian): slurm-wlm (slurmctld,
# slurmd, the client commands), munge and slurmrestd. Quick (a few `command -v`) when everything is present.
#
#   scripts/slurm/install.sh
set -euo pipefail
PATH=$PATH:/usr/sbin:/sbin

missing=()
for tool in slurmctld slurmd sbatch squeue scancel scontrol; do
    command -v "$tool" >/dev/null 2>&1 || { missing+=(slurm-wlm); break; }
done
command -v munged >/dev/null 2>&1 || missing+=(munge)
command -v slurmrestd >/dev/null 2>&1 || missing+=(slurmrestd)
[[ ${#missing[@]} -eq 0 ]] && exit 0

[[ $(id -u) -eq 0 ]] || { echo "slurm/install: ${missing[*]} missing and installing needs root" >&2; exit 1; }
echo "slurm/install: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp "${TMPDIR:-/tmp}/ferry-slurm-install.XXXXXX")
# Try without refreshing the package lists first (fast when they are recent); refresh and retry once otherwise.
if ! apt-get install -y -q -o DPkg::Lock::Timeout=120 "${missing[@]}" >"$log" 2>&1; then
    apt-get update -q >>"$log" 2>&1 || true
    if ! apt-get install -y -q -o DPkg::Lock::Timeout=120 "${missing[@]}" >>"$log" 2>&1; then
        tail -n 20 "$log" >&2
        echo "slurm/install: apt-get install ${missing[*]} failed; see $log" >&2
        exit 1
    fi
fi
rm -f "$log"
