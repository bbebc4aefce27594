#!/usr/bin/env bash
# slurm_up.sh - bring up a real single-node SLURM cluster on loopback, for
# development and CI (Debian 12 / slurm-wlm 22.05, run as root, no systemd).
#
# Starts, in order, each only if it is not already running (idempotent):
#   munged     auth for every Slurm message      (runs as user munge)
#   mariadbd   accounting database, unix socket only (skip-networking, user mysql)
#   slurmdbd   accounting daemon, so that `sacct` works. submitit polls sacct to
#              notice jobs that Slurm killed; without it, it waits forever.
#   slurmctld  controller
#   slurmd     compute daemon for this one node
# then waits until `sinfo` shows the node usable, slurmctld has run its first
# scheduling pass (so the first job starts as fast as later ones) and `sacct`
# answers, and prints one summary line. Daemons are started by hand (no
# systemd) and detached, with stdio on their log files, so the script returns
# even when a caller captures its output.
#
# Where things live:
#   - Configs go to /etc/slurm/slurm.conf and /etc/slurm/slurmdbd.conf (the
#     compiled-in defaults), so plain `sbatch`/`sinfo`/`sacct` work from any
#     shell or subprocess without exporting SLURM_CONF. The script owns these
#     two files and rewrites them on every run.
#   - The munge key is the packaged default /etc/munge/munge.key (created if
#     missing, never replaced) and munged listens on the default socket
#     /run/munge/munge.socket.2, which is where Slurm's auth/munge looks.
#   - Everything else (logs, pid files, Slurm state and spool, the MariaDB data
#     directory and socket, munge seed) lives under one directory:
#       QUADRL_SLURM_DIR (default /tmp/quadrl-slurm)
#     with one subdirectory per daemon user: munge/, mariadb/, slurm/.
#
# Cluster: ClusterName=quadrl, one node named `hostname -s` at 127.0.0.1,
# partition `debug` (Default=YES, MaxTime=INFINITE). Stop with slurm_down.sh.
#
# Environment:
#   QUADRL_SLURM_DIR        state directory (default /tmp/quadrl-slurm)
#   QUADRL_SLURM_TIMEOUT    seconds to wait for each daemon (default 60)
set -euo pipefail

STARTED_AT=$(date +%s.%N)
DIR=${QUADRL_SLURM_DIR:-/tmp/quadrl-slurm}
TIMEOUT=${QUADRL_SLURM_TIMEOUT:-60}
CLUSTER=quadrl
PARTITION=debug
NODE=$(hostname -s)

ETC=/etc/slurm
SLURM_CONF_FILE=$ETC/slurm.conf
DBD_CONF_FILE=$ETC/slurmdbd.conf
MUNGE_KEY=/etc/munge/munge.key
MUNGE_SOCKET_DIR=/run/munge

MUNGE_DIR=$DIR/munge
DB_DIR=$DIR/mariadb
DB_DATA=$DB_DIR/data
DB_SOCKET=$DB_DIR/mysqld.sock
SLURM_DIR=$DIR/slurm

PACKAGES=(slurm-wlm slurmdbd munge mariadb-server)

log() { printf '[slurm_up] %s\n' "$*" >&2; }
die() { printf '[slurm_up] ERROR: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root"
[[ $DIR == /* ]] || die "QUADRL_SLURM_DIR must be an absolute path (got $DIR)"

# --------------------------------------------------------------------------
# Packages
# --------------------------------------------------------------------------
install_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    log "installing ${missing[*]}"
    if ! apt-cache show "${missing[@]}" >/dev/null 2>&1; then
        apt-get update -q >/dev/null
    fi
    # Package maintainer scripts would try to start the services through
    # invoke-rc.d; we start the daemons ourselves (by pid file), so forbid that
    # for the duration of the install if no policy is in place already.
    local policy=/usr/sbin/policy-rc.d own_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        own_policy=1
    fi
    local rc=0
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "${missing[@]}" >"$DIR/apt-install.log" 2>&1 || rc=$?
    [[ $own_policy -eq 1 ]] && rm -f "$policy"
    [[ $rc -eq 0 ]] || die "apt-get install failed (rc=$rc), see $DIR/apt-install.log"
}

# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------

# daemon_pid, proc_is, pid_alive, stop_daemon
source "$(dirname "$0")/daemons.sh"

# wait_for DESCRIPTION COMMAND...: poll COMMAND every 0.2 s until it succeeds.
wait_for() {
    local what=$1 deadline
    shift
    deadline=$(($(date +%s) + TIMEOUT))
    until "$@" >/dev/null 2>&1; do
        (($(date +%s) < deadline)) || return 1
        sleep 0.2
    done
    log "$what: ok"
}

# write_if_changed FILE MODE: write stdin to FILE only if the content differs.
# Returns 0 if FILE changed, 1 if it was already up to date.
write_if_changed() {
    local tmp
    tmp=$(mktemp "$1.XXXXXX")
    cat >"$tmp"
    chmod "$2" "$tmp"
    if [[ -f $1 ]] && cmp -s "$tmp" "$1"; then
        rm -f "$tmp"
        return 1
    fi
    mv -f "$tmp" "$1"
    return 0
}

fail_with_log() { # fail_with_log MESSAGE LOGFILE
    log "$1; last lines of $2:"
    tail -n 25 "$2" >&2 2>/dev/null || true
    exit 1
}

# --------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------
# One cluster per machine: the ports, /etc/slurm and the munge socket are
# shared. Refuse to start a second one from another QUADRL_SLURM_DIR.
if [[ -f $SLURM_CONF_FILE ]]; then
    old_dir=$(sed -n 's|^StateSaveLocation=\(.*\)/slurm/state$|\1|p' "$SLURM_CONF_FILE")
    if [[ -n $old_dir && $old_dir != "$DIR" ]] && pid_alive "$old_dir/slurm/slurmctld.pid" slurmctld; then
        die "a cluster from QUADRL_SLURM_DIR=$old_dir is running; stop it first: QUADRL_SLURM_DIR=$old_dir $(dirname "$0")/slurm_down.sh"
    fi
fi

mkdir -p "$DIR"
install_packages

mkdir -p "$MUNGE_DIR" "$DB_DIR" "$SLURM_DIR/state" "$SLURM_DIR/spool" "$ETC" \
    "$(dirname "$MUNGE_KEY")" "$MUNGE_SOCKET_DIR"
chmod 755 "$DIR" "$SLURM_DIR"
chown munge:munge "$MUNGE_DIR" "$MUNGE_SOCKET_DIR"
chmod 700 "$MUNGE_DIR"
chmod 755 "$MUNGE_SOCKET_DIR"   # clients must reach the socket
chown mysql:mysql "$DB_DIR"
chmod 750 "$DB_DIR"

# Node hardware, as slurmd itself detects it, so the declared node never
# disagrees with what slurmd registers (a mismatch drains the node).
detect=$(slurmd -C 2>/dev/null | head -n1 || true)
field() { sed -n "s/.*[[:space:]]$1=\([0-9]*\).*/\1/p" <<<"$detect"; }
CPUS=$(field CPUs); SOCKETS=$(field SocketsPerBoard); CORES=$(field CoresPerSocket)
THREADS=$(field ThreadsPerCore); MEM=$(field RealMemory)
if [[ -z $CPUS || -z $SOCKETS || -z $CORES || -z $THREADS ]]; then
    CPUS=$(nproc); SOCKETS=1; CORES=$CPUS; THREADS=1
fi
[[ -n $MEM ]] || MEM=$(($(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024))
# Declare ~95 % of RAM: slurmd drains a node whose RealMemory exceeds what it
# finds, and the OS + daemons need some headroom anyway.
REAL_MEM=$((MEM * 95 / 100))

# --------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------
config_changed=0
write_if_changed "$SLURM_CONF_FILE" 644 <<EOF && config_changed=1
# Written by quadrl cluster/slurm_up.sh - do not edit, it is rewritten on each run.
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
# Everything runs as root: single-user dev/CI box, no slurm system user needed.
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
# Keep every listening socket on loopback (srun/slurmstepd included): with
# these, daemons bind to the address of their host name instead of 0.0.0.0.
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny

AuthType=auth/munge
CredType=cred/munge
# A requeued job may not start again until its old credential expires
# (default 120 s). 10 s brings the requeue round trip from ~3 min to seconds.
AuthInfo=cred_expire=10

StateSaveLocation=$SLURM_DIR/state
SlurmdSpoolDir=$SLURM_DIR/spool
SlurmctldPidFile=$SLURM_DIR/slurmctld.pid
SlurmdPidFile=$SLURM_DIR/slurmd.pid
SlurmctldLogFile=$SLURM_DIR/slurmctld.log
SlurmdLogFile=$SLURM_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info

# No cgroup setup here: track job processes via /proc, no CPU binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
# No mail server; sbatch --mail-* must not make the controller hang or log errors.
MailProg=/bin/true

# Schedule on submit and then every 2 s (defaults batch_sched_delay=3,
# sched_interval=60): job start latency drops to well under a second.
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_interval=2
# Allocate single cores and memory, so two 1-CPU jobs run side by side.
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Without a default, a job that does not ask for memory gets the whole node.
DefMemPerCPU=2000
# submitit requeues preempted/timed-out jobs with "scontrol requeue".
JobRequeue=1
PreemptType=preempt/none
PreemptMode=OFF
# Time between SIGTERM and SIGKILL on cancel/timeout (default 30 s).
KillWait=10
# A node that was DOWN (e.g. after slurm_down.sh) becomes usable as soon as
# its slurmd registers again, without "scontrol update ... state=resume".
ReturnToService=2

# Accounting through slurmdbd: required for sacct (submitit relies on it).
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/none

NodeName=$NODE NodeAddr=127.0.0.1 NodeHostname=$NODE CPUs=$CPUS SocketsPerBoard=$SOCKETS CoresPerSocket=$CORES ThreadsPerCore=$THREADS RealMemory=$REAL_MEM State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF

# slurmdbd refuses a config readable by others (it holds DB credentials).
write_if_changed "$DBD_CONF_FILE" 600 <<EOF && config_changed=1
# Written by quadrl cluster/slurm_up.sh - do not edit, it is rewritten on each run.
AuthType=auth/munge
DbdHost=$NODE
DbdAddr=127.0.0.1
DbdPort=6819
# Not in the slurmdbd.conf man page, but slurmdbd honours it like the other
# daemons (checked: it then binds 127.0.0.1:6819 instead of 0.0.0.0:6819).
CommunicationParameters=NoInAddrAny
SlurmUser=root
PidFile=$SLURM_DIR/slurmdbd.pid
LogFile=$SLURM_DIR/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
# "localhost" makes the MySQL client use a unix socket; which one is given by
# MYSQL_UNIX_PORT in slurmdbd's environment (slurmdbd.conf has no socket
# option). MariaDB's root@localhost authenticates by unix_socket: no password.
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
EOF

# A daemon running with an outdated config is restarted (jobs keep running:
# slurmstepd processes survive a slurmd restart).
if [[ $config_changed -eq 1 ]]; then
    for d in slurmd slurmctld slurmdbd; do
        if pid_alive "$SLURM_DIR/$d.pid" "$d"; then
            log "configuration changed, restarting $d"
            stop_daemon "$SLURM_DIR/$d.pid" "$d"
        fi
    done
fi

# --------------------------------------------------------------------------
# munged
# --------------------------------------------------------------------------
if [[ ! -s $MUNGE_KEY ]]; then
    log "creating $MUNGE_KEY"
    dd if=/dev/urandom of="$MUNGE_KEY" bs=1024 count=1 status=none
fi
chown munge:munge "$MUNGE_KEY"
chmod 400 "$MUNGE_KEY"

munge_ok() { munge -n </dev/null | unmunge >/dev/null; }
if pid_alive "$MUNGE_DIR/munged.pid" munged; then
    log "munged already running"
else
    rm -f "$MUNGE_DIR/munged.pid"
    log "starting munged"
    # munged insists on owning its log file; create it as munge so that the
    # redirect below (startup errors) does not leave it owned by root.
    touch "$MUNGE_DIR/munged.log"
    chown munge:munge "$MUNGE_DIR/munged.log"
    # munged refuses to run with a key it does not own: run it as munge.
    runuser -u munge -- /usr/sbin/munged \
        --key-file="$MUNGE_KEY" \
        --pid-file="$MUNGE_DIR/munged.pid" \
        --log-file="$MUNGE_DIR/munged.log" \
        --seed-file="$MUNGE_DIR/munged.seed" \
        </dev/null >>"$MUNGE_DIR/munged.log" 2>&1 ||
        fail_with_log "munged failed to start" "$MUNGE_DIR/munged.log"
fi
wait_for "munge" munge_ok || fail_with_log "munge does not answer" "$MUNGE_DIR/munged.log"

# --------------------------------------------------------------------------
# MariaDB (no TCP at all: --skip-networking; only slurmdbd talks to it)
# --------------------------------------------------------------------------
mysql_q() { mariadb --no-defaults --socket="$DB_SOCKET" -u root -N -B -e "$1"; }
if pid_alive "$DB_DIR/mariadb.pid" mariadbd; then
    log "mariadbd already running"
else
    rm -f "$DB_DIR/mariadb.pid"
    if [[ ! -d $DB_DATA/mysql ]]; then
        log "initialising MariaDB data directory $DB_DATA"
        rm -rf "$DB_DATA"
        mariadb-install-db --no-defaults --user=mysql --datadir="$DB_DATA" \
            --auth-root-authentication-method=socket --skip-test-db \
            >"$DB_DIR/install-db.log" 2>&1 ||
            fail_with_log "mariadb-install-db failed" "$DB_DIR/install-db.log"
    fi
    log "starting mariadbd"
    # mariadbd stays in the foreground: detach it into its own session with
    # all stdio redirected, so it neither holds our caller's pipes open nor
    # dies with the caller's process group. --no-defaults: ignore /etc/mysql.
    # Buffer pool 1G (virtual; RSS grows only with use) and lock wait timeout
    # 900 s are the minimums slurmdbd checks for; it logs an error otherwise.
    setsid /usr/sbin/mariadbd --no-defaults --user=mysql \
        --datadir="$DB_DATA" --socket="$DB_SOCKET" \
        --pid-file="$DB_DIR/mariadb.pid" --log-error="$DB_DIR/mariadb.log" \
        --skip-networking --skip-name-resolve \
        --innodb-buffer-pool-size=1G --innodb-lock-wait-timeout=900 \
        </dev/null >>"$DB_DIR/mariadb.log" 2>&1 &
fi
wait_for "mariadb" mysql_q 'SELECT 1' || fail_with_log "mariadb does not answer" "$DB_DIR/mariadb.log"

# --------------------------------------------------------------------------
# slurmdbd
# --------------------------------------------------------------------------
dbd_ok() { sacctmgr -n -P show cluster format=cluster; }
if pid_alive "$SLURM_DIR/slurmdbd.pid" slurmdbd; then
    log "slurmdbd already running"
else
    rm -f "$SLURM_DIR/slurmdbd.pid"
    log "starting slurmdbd"
    MYSQL_UNIX_PORT=$DB_SOCKET /usr/sbin/slurmdbd </dev/null >>"$SLURM_DIR/slurmdbd.log" 2>&1 ||
        fail_with_log "slurmdbd failed to start" "$SLURM_DIR/slurmdbd.log"
fi
wait_for "slurmdbd" dbd_ok || fail_with_log "slurmdbd does not answer" "$SLURM_DIR/slurmdbd.log"
# Register the cluster before slurmctld first connects (as the Slurm docs say).
if ! dbd_ok 2>/dev/null | grep -qx "$CLUSTER"; then
    log "registering cluster $CLUSTER in accounting"
    sacctmgr -i add cluster "$CLUSTER" >/dev/null
fi

# --------------------------------------------------------------------------
# slurmctld
# --------------------------------------------------------------------------
if pid_alive "$SLURM_DIR/slurmctld.pid" slurmctld; then
    log "slurmctld already running"
else
    rm -f "$SLURM_DIR/slurmctld.pid"
    log "starting slurmctld"
    /usr/sbin/slurmctld </dev/null >>"$SLURM_DIR/slurmctld.log" 2>&1 ||
        fail_with_log "slurmctld failed to start" "$SLURM_DIR/slurmctld.log"
fi
wait_for "slurmctld" scontrol ping || fail_with_log "slurmctld does not answer" "$SLURM_DIR/slurmctld.log"

# --------------------------------------------------------------------------
# slurmd
# --------------------------------------------------------------------------
if pid_alive "$SLURM_DIR/slurmd.pid" slurmd; then
    log "slurmd already running"
else
    rm -f "$SLURM_DIR/slurmd.pid"
    log "starting slurmd"
    /usr/sbin/slurmd </dev/null >>"$SLURM_DIR/slurmd.log" 2>&1 ||
        fail_with_log "slurmd failed to start" "$SLURM_DIR/slurmd.log"
fi

# Usable = idle, or busy with jobs (second run on a live cluster). Anything
# with a flag (drain*, down*, ...) or unknown is not.
node_ok() {
    local state
    state=$(sinfo -h -N -n "$NODE" -o %T 2>/dev/null | head -n1)
    [[ $state == idle || $state == mixed || $state == allocated || $state == completing ]]
}
wait_for "node $NODE" node_ok || {
    sinfo -N -l >&2 || true
    fail_with_log "node $NODE is not usable" "$SLURM_DIR/slurmd.log"
}
# slurmctld runs its first scheduling pass ~3 s after it starts and only then
# starts submitted jobs within a second; wait for it, so that the first job a
# test submits does not take 3 s longer than the next ones.
sched_ran() {
    local cycles
    cycles=$(sdiag 2>/dev/null | sed -n '/Main schedule statistics/,/Total cycles/s/^[[:space:]]*Total cycles:[[:space:]]*\([0-9]*\).*/\1/p')
    [[ ${cycles:-0} -ge 1 ]]
}
wait_for "scheduler" sched_ran || fail_with_log "slurmctld never ran its scheduler" "$SLURM_DIR/slurmctld.log"

# sacct talks to slurmdbd directly; it must answer, and not with "Slurm
# accounting storage is disabled" (what it says without slurmdbd).
sacct_ok() {
    local out
    out=$(sacct -n -X -a -S now-1minutes -o JobID 2>&1) || return 1
    ! grep -qi 'disabled\|error' <<<"$out"
}
wait_for "sacct" sacct_ok || fail_with_log "sacct does not answer" "$SLURM_DIR/slurmdbd.log"

elapsed=$(awk -v a="$STARTED_AT" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
printf 'slurm up: cluster=%s node=%s (CPUs=%s RealMemory=%sM) partition=%s state=%s dir=%s conf=%s (%ss)\n' \
    "$CLUSTER" "$NODE" "$CPUS" "$REAL_MEM" "$PARTITION" \
    "$(sinfo -h -N -n "$NODE" -o %T | head -n1)" "$DIR" "$SLURM_CONF_FILE" "$elapsed"
