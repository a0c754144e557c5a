#!/usr/bin/env bash
# Every GPU check of the project in one short run on a single-GPU machine with nothing downloaded:
#   1. the GPU test tier (bf16 stage and batched generation on CUDA; DeepSpeed ZeRO-3 and ZeRO-3 with
#      offload on CUDA give the plain engine's tensors),
#   2. benchmarks/gpu_llava7b.py: the package's own training step (ModalPromptModel, stage 8, K = 3) and
#      generation (ModalPromptModel.generate) on a LLaVA-1.5-7B-shaped base (batch 8, 16), and the bare
#      LLaVA step as a lower bound,
#   3. benchmarks/scaling.py on the GPU: latency after T = 1..32 tasks with 576 image tokens.
#   4. the package's generation at batch 32 vs batch 1 (the evaluation's batching).
# Usage: [STEPS="gpu-tests scaling"] bash benchmarks/gpu_session.sh OUT_DIR [WHEEL_DIR]
# WHEEL_DIR: wheels of packages the machine lacks (this project's transformers pin, jsonschema, deepspeed),
# installed into a private folder first. Each step has its own time limit; a failed step does not stop the
# others. Logs and JSON results go to OUT_DIR; each JSON file is written by its script through
# benchmarks/record.py (commit, dirty, command, machine, load, wall time). Run it in a git checkout: in a copy
# of the files without .git the commit reads "unknown", and such a file does not belong in benchmarks/results/.
set -u -o pipefail
out=${1:?usage: gpu_session.sh OUT_DIR [WHEEL_DIR]}
wheels=${2:-}
mkdir -p "$out"
if [[ -n $wheels ]]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$wheels"/*.whl || exit 1
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$out/summary.txt"
python3 -c "import sys, torch, transformers; print('python', sys.version.split()[0], '| torch', torch.__version__,
'| cuda', torch.version.cuda, '| transformers', transformers.__version__)" | tee -a "$out/summary.txt"

steps=${STEPS:-gpu-tests llava7b-b8 llava7b-b16 scaling generation-b32}
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to OUT/NAME.log, report the status
    local name=$1 limit=$2
    shift 2
    [[ " $steps " == *" $name "* ]] || return 0
    local start=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$out/$name.log"
    echo "== $name: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s" | tee -a "$out/summary.txt"
}

step gpu-tests 170 python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu.py
step generation-b32 150 python3 benchmarks/gpu_llava7b.py --attention sdpa --batch-size 8 --steps 2 --warmup 1 \
    --gen-batch 32 --out "$out/gpu-llava7b-gen32.json"
step llava7b-b8 150 python3 benchmarks/gpu_llava7b.py --attention both --batch-size 8 --gen-batch 8 \
    --out "$out/gpu-llava7b-b8.json"
step llava7b-b16 120 python3 benchmarks/gpu_llava7b.py --attention sdpa --batch-size 16 --gen-batch 16 \
    --steps 6 --out "$out/gpu-llava7b-b16.json"
step scaling 120 python3 benchmarks/scaling.py --device cuda --hidden 2048 --layers 8 --heads 16 \
    --image-size 192 --repeats 30 --dag-tasks 0 --out "$out/scaling-gpu.json"
cat "$out/summary.txt"
