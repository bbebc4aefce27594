#!/usr/bin/env bash
# slurm_down.sh - stop the single-node SLURM cluster started by slurm_up.sh.
#
# Stops, in reverse start order, each daemon slurm_up.sh started, by the pid in
# its pid file (after checking the process really has the expected name, so a
# stale pid file never kills an unrelated process), and removes the pid files.
# Exits 0 when nothing runs.
#
# Jobs: a slurmd that stops leaves its running job steps (slurmstepd + the job's
# processes) alive, by Slurm design. Since this cluster is for dev/CI, all jobs
# still queued or running are cancelled first, and we wait (up to KillWait +
# a few s) for them to end, so no job process outlives the cluster. Set
# QUADRL_SLURM_KEEP_JOBS=1 to skip that (running steps then keep running, and
# reattach when slurm_up.sh starts slurmd again).
#
# Configs in /etc/slurm, the state directory (QUADRL_SLURM_DIR, default
# /tmp/quadrl-slurm: logs, Slurm state, accounting DB) and the packages are
# left in place; the next slurm_up.sh starts from them. To wipe all state:
#   slurm_down.sh && rm -rf /tmp/quadrl-slurm
set -uo pipefail

DIR=${QUADRL_SLURM_DIR:-/tmp/quadrl-slurm}
SLURM_DIR=$DIR/slurm

log() { printf '[slurm_down] %s\n' "$*" >&2; }

[[ $(id -u) -eq 0 ]] || { log "must run as root"; exit 1; }

# daemon_pid, proc_is, pid_alive, stop_daemon
source "$(dirname "$0")/daemons.sh"

if [[ ${QUADRL_SLURM_KEEP_JOBS:-0} != 1 ]] &&
    pid_alive "$SLURM_DIR/slurmctld.pid" slurmctld &&
    pid_alive "$SLURM_DIR/slurmd.pid" slurmd; then
    mapfile -t job_ids < <(squeue -h -o %A 2>/dev/null)
    if [[ ${#job_ids[@]} -gt 0 ]]; then
        log "cancelling ${#job_ids[@]} job(s): ${job_ids[*]}"
        scancel "${job_ids[@]}" 2>/dev/null
        # Cancelled jobs get SIGTERM, then SIGKILL after KillWait (10 s).
        for ((i = 0; i < 200; i++)); do
            [[ -z $(squeue -h -o %A 2>/dev/null) ]] && break
            sleep 0.1
        done
    fi
fi

stop_daemon "$SLURM_DIR/slurmd.pid" slurmd
stop_daemon "$SLURM_DIR/slurmctld.pid" slurmctld
stop_daemon "$SLURM_DIR/slurmdbd.pid" slurmdbd
stop_daemon "$DIR/mariadb/mariadb.pid" mariadbd
stop_daemon "$DIR/munge/munged.pid" munged

log "slurm down (state kept in $DIR)"
exit 0
