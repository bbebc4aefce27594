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

# daemon_pid PIDFILE COMM: print the pid from PIDFILE if that process is alive
# and called COMM. Checking the name guards against stale pid files whose pid
# got reused; a zombie counts as dead.
daemon_pid() {
    local pid
    pid=$(tr -cd '0-9' 2>/dev/null <"$1") || return 1
    [[ -n $pid ]] && proc_is "$pid" "$2" && echo "$pid"
}
proc_is() { # proc_is PID COMM
    local stat=() state
    read -r -a stat 2>/dev/null <"/proc/$1/stat" || return 1
    state=${stat[2]}
    [[ ${stat[1]} == "($2)" && $state != Z && $state != X ]]
}
pid_alive() { daemon_pid "$@" >/dev/null; }

# stop_daemon PIDFILE COMM: SIGTERM, wait up to 30 s for the process (not its
# pid file, which daemons remove early) to go, then SIGKILL; remove PIDFILE.
stop_daemon() {
    local pid i
    if pid=$(daemon_pid "$1" "$2"); then
        log "stopping $2 (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 300; i++)); do
            proc_is "$pid" "$2" || break
            sleep 0.1
        done
        if proc_is "$pid" "$2"; then
            log "$2 (pid $pid) ignored SIGTERM for 30 s, sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            for ((i = 0; i < 50; i++)); do
                proc_is "$pid" "$2" || break
                sleep 0.1
            done
        fi
    fi
    rm -f "$1"
}

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
