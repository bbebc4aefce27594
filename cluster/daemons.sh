# daemons.sh - pid-file helpers shared by slurm_up.sh and slurm_down.sh (sourced, not run).
# The caller defines log().

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
