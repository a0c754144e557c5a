#!/usr/bin/env bash
# Start a real single-node Slurm cluster (with accounting) for tests, by hand, no systemd.
#
#   bash .ci/slurm/start.sh STATE_DIR
#   source STATE_DIR/env.sh          # exports SLURM_CONF for sbatch, squeue, sacct, srun, ...
#
# Everything (configs, keys, database, logs, pid files, sockets, spool) lives under STATE_DIR,
# but for one link, /etc/slurm/slurm.conf -> STATE_DIR/etc/slurm.conf (see below; stop.sh
# removes it; SLURM_TEST_ETC_LINK=0 skips it).
# Daemons: munged, mariadbd, slurmdbd, slurmctld, slurmd. A daemon whose pid file points at a
# live process is left running, so a second start is harmless; stop with stop.sh STATE_DIR.
# Ports (loopback only): SLURM_TEST_PORT_BASE (default 16817) for slurmctld, +1 slurmd,
# +2 slurmdbd, +3 MariaDB.
set -euo pipefail

if [ "$#" -ne 1 ] || [ -z "$1" ]; then
    echo "usage: $0 STATE_DIR" >&2
    exit 2
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "start.sh: must run as root (SlurmUser=root, munged is started as the munge user)" >&2
    exit 1
fi
for bin in munged mungekey mariadbd mariadb-install-db mariadb slurmdbd slurmctld slurmd sacctmgr sinfo scontrol; do
    command -v "$bin" >/dev/null || { echo "start.sh: $bin not found; run .ci/slurm/install.sh" >&2; exit 1; }
done

T0=$(date +%s.%N)
mkdir -p "$1"
STATE=$(cd "$1" && pwd -P)
chmod 755 "$STATE"   # munged (munge user) must be able to traverse it

ETC=$STATE/etc LOG=$STATE/log RUN=$STATE/run
MUNGE_DIR=$STATE/munge DB_DIR=$STATE/mysql SPOOL=$STATE/spool DEV=$STATE/dev
mkdir -p "$ETC" "$LOG" "$RUN" "$MUNGE_DIR" "$SPOOL/slurmctld" "$SPOOL/slurmd" "$DEV"
chmod 700 "$ETC"   # slurmdbd.conf and the DB password live here

HOST=$(hostname -s)
PORT_BASE=${SLURM_TEST_PORT_BASE:-16817}
CTLD_PORT=$PORT_BASE
SLURMD_PORT=$((PORT_BASE + 1))
DBD_PORT=$((PORT_BASE + 2))
DB_PORT=$((PORT_BASE + 3))
MUNGE_SOCK=$MUNGE_DIR/munge.socket.2
DB_SOCK=$RUN/mysqld.sock
CONF=$ETC/slurm.conf
export SLURM_CONF=$CONF   # slurmdbd finds slurmdbd.conf, slurmd gres.conf, next to it

if [ "${#MUNGE_SOCK}" -gt 100 ] || [ "${#DB_SOCK}" -gt 100 ]; then
    echo "start.sh: STATE_DIR path too long for unix sockets (keep it under ~80 chars)" >&2
    exit 1
fi

log() { printf '[slurm-test %5.1fs] %s\n' "$(awk -v a="$(date +%s.%N)" -v b="$T0" 'BEGIN {print a - b}')" "$*"; }

# --- helpers ------------------------------------------------------------------------------
# pid_alive PIDFILE: true if the pid file names a live process.
pid_alive() {
    local pid
    [ -s "$1" ] || return 1
    pid=$(head -n1 "$1" | tr -dc '0-9')
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}
# wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND every 0.2 s until it succeeds.
wait_for() {
    local timeout=$1 what=$2; shift 2
    local end=$(( $(date +%s) + timeout ))
    until "$@" >/dev/null 2>&1; do
        if [ "$(date +%s)" -ge "$end" ]; then
            echo "start.sh: timed out after ${timeout}s waiting for $what" >&2
            return 1
        fi
        sleep 0.2
    done
}
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
check_port_free() {
    if port_busy "$1"; then
        echo "start.sh: port $1 ($2) is already in use; set SLURM_TEST_PORT_BASE to another base" >&2
        exit 1
    fi
}
fail_with_log() {
    echo "start.sh: $1; last lines of $2:" >&2
    tail -n 30 "$2" >&2 || true
    exit 1
}

# --- munge ----------------------------------------------------------------------------------
chown munge:munge "$MUNGE_DIR"
chmod 755 "$MUNGE_DIR"   # munged requires the socket dir to be executable by all
if [ ! -s "$MUNGE_DIR/munge.key" ]; then
    mungekey --create --keyfile="$MUNGE_DIR/munge.key"
fi
chown munge:munge "$MUNGE_DIR/munge.key"
chmod 600 "$MUNGE_DIR/munge.key"
if pid_alive "$MUNGE_DIR/munged.pid"; then
    log "munged already running"
else
    rm -f "$MUNGE_SOCK" "$MUNGE_SOCK.lock"
    # As the munge user: it owns the key and its directory (root would need --force).
    runuser -u munge -- munged \
        --socket="$MUNGE_SOCK" --key-file="$MUNGE_DIR/munge.key" \
        --pid-file="$MUNGE_DIR/munged.pid" --log-file="$MUNGE_DIR/munged.log" \
        --seed-file="$MUNGE_DIR/munged.seed" --num-threads=10 \
        || fail_with_log "munged failed to start" "$MUNGE_DIR/munged.log"
    wait_for 10 munged test -S "$MUNGE_SOCK" || fail_with_log "munged not up" "$MUNGE_DIR/munged.log"
    log "munged started"
fi

# --- MariaDB --------------------------------------------------------------------------------
DB_PASS_FILE=$ETC/db.pass
if [ ! -s "$DB_PASS_FILE" ]; then
    (umask 077; head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >"$DB_PASS_FILE")
fi
DB_PASS=$(cat "$DB_PASS_FILE")
db() { mariadb --no-defaults --socket="$DB_SOCK" -u root "$@"; }

if pid_alive "$RUN/mysqld.pid"; then
    log "mariadbd already running"
else
    check_port_free "$DB_PORT" MariaDB
    if [ ! -d "$DB_DIR/mysql" ]; then
        rm -rf "$DB_DIR"
        mariadb-install-db --no-defaults --datadir="$DB_DIR" --user=root \
            --auth-root-authentication-method=socket --skip-test-db \
            >"$LOG/mariadb-install.log" 2>&1 \
            || fail_with_log "mariadb-install-db failed" "$LOG/mariadb-install.log"
        log "MariaDB datadir created"
    fi
    rm -f "$DB_SOCK"
    setsid mariadbd --no-defaults --user=root --datadir="$DB_DIR" \
        --bind-address=127.0.0.1 --port="$DB_PORT" --socket="$DB_SOCK" \
        --pid-file="$RUN/mysqld.pid" --log-error="$LOG/mariadb.log" \
        --skip-name-resolve --innodb-buffer-pool-size=256M \
        --innodb-lock-wait-timeout=900 --innodb-log-file-size=64M \
        </dev/null >>"$LOG/mariadb.log" 2>&1 &
    wait_for 60 MariaDB db -e 'SELECT 1' || fail_with_log "MariaDB did not come up" "$LOG/mariadb.log"
    log "mariadbd started (127.0.0.1:$DB_PORT)"
fi
db <<SQL
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
SQL

# --- configs --------------------------------------------------------------------------------
CPUS=$(nproc)
MEM_MB=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
REAL_MEM=$(( MEM_MB * 95 / 100 ))

ln -sfn /dev/null "$DEV/fakegpu0"
ln -sfn /dev/null "$DEV/fakegpu1"

cat >"$CONF" <<EOF
# Generated by .ci/slurm/start.sh: a single-node test cluster; state under $STATE
ClusterName=modalprompt-test
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCK
StateSaveLocation=$SPOOL/slurmctld
SlurmdSpoolDir=$SPOOL/slurmd
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SchedulerType=sched/backfill
# Schedule a new batch job at once instead of batching submissions for up to 3 s.
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
MinJobAge=300
ReturnToService=2
JobRequeue=1
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
# Clients talk to slurmdbd with this munge socket (AuthInfo is not used for that link).
AccountingStoragePass=$MUNGE_SOCK
AccountingStorageTRES=gres/gpu
AccountingStoreFlags=job_comment
GresTypes=gpu
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$REAL_MEM Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF

cat >"$ETC/gres.conf" <<EOF
AutoDetect=off
NodeName=$HOST Name=gpu File=$DEV/fakegpu[0-1]
EOF

(umask 077; cat >"$ETC/slurmdbd.conf" <<EOF
# Generated by .ci/slurm/start.sh
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCK
DbdHost=$HOST
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
DebugLevel=info
LogFile=$LOG/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
)
chmod 600 "$ETC/slurmdbd.conf"

# Slurm clients that run with SLURM_CONF removed from their environment look for the default
# /etc/slurm/slurm.conf. The Snakemake Slurm plugin's job step does exactly that (it deletes
# every SLURM_* variable, SLURM_CONF included, before calling srun inside the job), so point the
# default path at this cluster's conf: only if nothing is there, or if it is a link left by this
# script. SLURM_TEST_ETC_LINK=0 skips it (then the plugin's jobs fail with "Could not establish
# a configuration source").
ETC_LINK=/etc/slurm/slurm.conf
if [ "${SLURM_TEST_ETC_LINK:-1}" != 0 ]; then
    if [ -L "$ETC_LINK" ] || [ ! -e "$ETC_LINK" ]; then
        mkdir -p /etc/slurm
        ln -sfn "$CONF" "$ETC_LINK"
    elif [ "$(readlink -f "$ETC_LINK")" != "$CONF" ]; then
        echo "start.sh: warning: $ETC_LINK is a real file, not replaced; jobs that drop SLURM_CONF" \
             "(the Snakemake plugin's job step) will use it instead of this cluster" >&2
    fi
fi

cat >"$STATE/env.sh" <<EOF
# Source this to use the test cluster: sbatch, squeue, sacct, srun, scancel, sinfo.
export SLURM_CONF=$CONF
EOF

# --- slurmdbd -------------------------------------------------------------------------------
if pid_alive "$RUN/slurmdbd.pid"; then
    log "slurmdbd already running"
else
    check_port_free "$DBD_PORT" slurmdbd
    slurmdbd || fail_with_log "slurmdbd failed to start" "$LOG/slurmdbd.log"
    wait_for 60 slurmdbd sacctmgr -n -P show cluster || fail_with_log "slurmdbd not answering" "$LOG/slurmdbd.log"
    log "slurmdbd started (127.0.0.1:$DBD_PORT)"
fi

# Cluster, account and user must exist before slurmctld registers (then no restart is needed).
if [ -z "$(sacctmgr -n -P show cluster modalprompt-test format=Cluster)" ]; then
    sacctmgr -i add cluster modalprompt-test >/dev/null
fi
if [ -z "$(sacctmgr -n -P show account test format=Account)" ]; then
    sacctmgr -i add account test cluster=modalprompt-test Description=tests Organization=modalprompt >/dev/null
fi
if [ -z "$(sacctmgr -n -P show assoc cluster=modalprompt-test account=test user=root format=User)" ]; then
    sacctmgr -i add user root account=test cluster=modalprompt-test >/dev/null
fi

# --- slurmctld ------------------------------------------------------------------------------
ctld_started=0
if pid_alive "$RUN/slurmctld.pid"; then
    log "slurmctld already running"
else
    check_port_free "$CTLD_PORT" slurmctld
    slurmctld || fail_with_log "slurmctld failed to start" "$LOG/slurmctld.log"
    ctld_started=1
fi
wait_for 60 slurmctld scontrol ping || fail_with_log "slurmctld not answering" "$LOG/slurmctld.log"
[ "$ctld_started" = 1 ] && log "slurmctld started (127.0.0.1:$CTLD_PORT)"

# slurmctld registers with slurmdbd when it starts; if the cluster was added after that (an
# older slurmctld from a previous start), restart it so that it registers.
registered() {
    local port
    port=$(sacctmgr -n -P show cluster modalprompt-test format=ControlPort)
    [ -n "$port" ] && [ "$port" != 0 ]
}
if ! wait_for 10 "slurmctld to register with slurmdbd" registered; then
    log "restarting slurmctld so that it registers with slurmdbd"
    scontrol reconfigure >/dev/null 2>&1 || true
    if ! wait_for 10 registration registered; then
        kill "$(cat "$RUN/slurmctld.pid")"
        wait_for 30 "slurmctld to exit" bash -c "! kill -0 $(cat "$RUN/slurmctld.pid") 2>/dev/null"
        slurmctld || fail_with_log "slurmctld failed to restart" "$LOG/slurmctld.log"
        wait_for 60 slurmctld scontrol ping || fail_with_log "slurmctld not answering" "$LOG/slurmctld.log"
        wait_for 30 registration registered || fail_with_log "slurmctld did not register" "$LOG/slurmdbd.log"
    fi
fi

# --- slurmd ---------------------------------------------------------------------------------
if pid_alive "$RUN/slurmd.pid"; then
    log "slurmd already running"
else
    check_port_free "$SLURMD_PORT" slurmd
    slurmd || fail_with_log "slurmd failed to start" "$LOG/slurmd.log"
    log "slurmd started (127.0.0.1:$SLURMD_PORT)"
fi

# idle on a fresh start; mixed/allocated if jobs survived from a previous run.
node_idle() { case "$(sinfo -h -n "$HOST" -o '%T' 2>/dev/null)" in idle|mixed|allocated) return 0;; *) return 1;; esac; }
if ! wait_for 60 "node $HOST to be idle" node_idle; then
    sinfo -N -l >&2 || true
    fail_with_log "node $HOST not idle" "$LOG/slurmctld.log"
fi
log "node $HOST $(sinfo -h -n "$HOST" -o %T)"

echo "slurm test cluster up: SLURM_CONF=$CONF"
