#!/usr/bin/env bash
# Stop the test Slurm cluster started by start.sh STATE_DIR: every daemon by its pid file
# (never by name). Safe to run twice, or on a STATE_DIR where nothing runs.
# Jobs still queued or running are cancelled first (set KEEP_JOBS=1 to leave them in the
# saved state instead). STATE_DIR itself is kept, so start.sh can bring the cluster back;
# remove it with rm -rf when it is no longer needed.
set -uo pipefail

if [ "$#" -ne 1 ] || [ -z "$1" ]; then
    echo "usage: $0 STATE_DIR" >&2
    exit 2
fi
if [ ! -d "$1" ]; then
    echo "slurm test cluster: $1 does not exist, nothing to stop"
    exit 0
fi
STATE=$(cd "$1" && pwd -P)
RUN=$STATE/run
export SLURM_CONF=$STATE/etc/slurm.conf

# pid_of PIDFILE EXPECTED_NAME: print the pid if the file names a live process whose program
# is EXPECTED_NAME (guards against a reused pid).
pid_of() {
    local pid exe
    [ -s "$1" ] || return 1
    pid=$(head -n1 "$1" | tr -dc '0-9')
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    exe=$(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | head -n1)
    case "$(basename "$exe")" in
        "$2"*) echo "$pid" ;;
        *) echo "stop.sh: pid $pid in $1 is not $2 ($exe); leaving it alone" >&2; return 1 ;;
    esac
}

# stop_daemons NAME PIDFILE [NAME PIDFILE ...]: SIGTERM to each, wait up to 30 s for all of
# them to exit, then SIGKILL what is left.
stop_daemons() {
    local names=() pids=() pidfiles=() pid i k alive
    while [ "$#" -ge 2 ]; do
        if pid=$(pid_of "$2" "$1"); then
            kill -TERM "$pid" 2>/dev/null
            names+=("$1"); pids+=("$pid")
        fi
        pidfiles+=("$2")
        shift 2
    done
    for i in $(seq 1 150); do
        alive=0
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.2
    done
    for k in "${!pids[@]}"; do
        if kill -0 "${pids[$k]}" 2>/dev/null; then
            echo "stop.sh: ${names[$k]} (pid ${pids[$k]}) did not exit after 30 s; sending SIGKILL" >&2
            kill -KILL "${pids[$k]}" 2>/dev/null
            sleep 0.5
        fi
        echo "slurm test cluster: stopped ${names[$k]} (pid ${pids[$k]})"
    done
    rm -f "${pidfiles[@]}"
}

# Cancel remaining jobs while slurmctld and slurmd still run, so no slurmstepd is left behind.
if [ "${KEEP_JOBS:-0}" != 1 ] && pid_of "$RUN/slurmctld.pid" slurmctld >/dev/null 2>&1 \
        && [ -f "$SLURM_CONF" ]; then
    jobs_left=$(squeue -h -o %i 2>/dev/null | wc -l)
    if [ "$jobs_left" -gt 0 ]; then
        echo "slurm test cluster: cancelling $jobs_left job(s)"
        squeue -h -o %i 2>/dev/null | xargs -r scancel 2>/dev/null || true
        for i in $(seq 1 200); do   # up to ~40 s (KillWait is 30 s)
            [ "$(squeue -h -o %i 2>/dev/null | wc -l)" -eq 0 ] && break
            sleep 0.2
        done
    fi
fi

# slurmctld before slurmdbd (it sends its last records), slurmdbd before MariaDB.
stop_daemons slurmd "$RUN/slurmd.pid" slurmctld "$RUN/slurmctld.pid"
stop_daemons slurmdbd "$RUN/slurmdbd.pid"
stop_daemons mariadbd "$RUN/mysqld.pid" munged "$STATE/munge/munged.pid"
# Remove the /etc/slurm/slurm.conf link start.sh made, if it points at this cluster.
if [ -L /etc/slurm/slurm.conf ] && [ "$(readlink /etc/slurm/slurm.conf)" = "$SLURM_CONF" ]; then
    rm -f /etc/slurm/slurm.conf
fi
echo "slurm test cluster: down ($STATE)"
