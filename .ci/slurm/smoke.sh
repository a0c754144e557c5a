#!/usr/bin/env bash
# Smoke test of a running test cluster (start.sh STATE_DIR first): batch job + sacct, a GPU job,
# a 2-task srun, a signal to the batch shell, scancel. Takes about 20 s. Job files go to a temp dir.
#   bash .ci/slurm/smoke.sh STATE_DIR
set -euo pipefail
[ "$#" -eq 1 ] || { echo "usage: $0 STATE_DIR" >&2; exit 2; }
# shellcheck disable=SC1091
source "$1/env.sh"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"

fail() { echo "SMOKE FAIL: $*" >&2; exit 1; }
# wait_state JOBID REGEX [TRIES]: poll sacct (job allocation line) until its State matches.
wait_state() {
    local s i
    for i in $(seq 1 "${3:-150}"); do
        s=$(sacct -j "$1" -X -n -P --format=State 2>/dev/null | head -n1)
        [[ "$s" =~ $2 ]] && return 0
        sleep 0.2
    done
    fail "job $1 state '$s', wanted $2"
}
wait_running() {
    local i
    for i in $(seq 1 150); do
        [ "$(squeue -h -j "$1" -o %T)" = RUNNING ] && return 0
        sleep 0.2
    done
    fail "job $1 did not start"
}

j=$(sbatch --parsable --wrap 'hostname')
wait_state "$j" '^(COMPLETED|FAILED|CANCELLED)'
out=$(sacct -j "$j" --format=JobID,State,ExitCode -n -P)
echo "$out"
grep -q "^$j|COMPLETED|0:0" <<<"$out" || fail "hostname job"

j=$(sbatch --parsable --gpus=1 --cpus-per-task=1 --mem=500M -t 5 --wrap 'echo CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES')
wait_state "$j" '^COMPLETED'
cat "slurm-$j.out"
grep -Eq '^CUDA_VISIBLE_DEVICES=[01]$' "slurm-$j.out" || fail "gpu job"

out=$(srun -n 2 bash -c 'echo $SLURM_PROCID $SLURM_NTASKS $SLURM_LOCALID' | sort)
echo "$out"
[ "$out" = $'0 2 0\n1 2 1' ] || fail "srun -n 2"

cat >sig.sh <<'EOF'
#!/bin/bash
trap 'echo caught USR1; exit 0' USR1
for i in $(seq 300); do sleep 1; done
echo no signal
EOF
j=$(sbatch --parsable --signal=B:USR1@30 -t 2 sig.sh)
wait_running "$j"
sleep 1
scancel --signal=USR1 --batch "$j"
wait_state "$j" '^COMPLETED'
cat "slurm-$j.out"
grep -q 'caught USR1' "slurm-$j.out" || fail "USR1 trap"

j=$(sbatch --parsable --wrap 'sleep 300')
wait_running "$j"
scancel "$j"
wait_state "$j" '^CANCELLED'
sacct -j "$j" --format=JobID,State,ExitCode -n -P

echo "SMOKE OK"
