"""benchmarks/gpu_llava7b.py end to end with the tiny shape on CPU (the H100 run uses the same code path)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_tiny_shape_benchmark_writes_positive_numbers(tmp_path):
    out = tmp_path / "tmp.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "gpu_llava7b.py"), "--tiny-shape", "--device", "cpu",
               "--steps", "2", "--warmup", "1", "--gen-batch", "2", "--new-tokens", "2", "--out", str(out)]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # nothing may be downloaded
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "train step (s)" in done.stdout

    report = json.loads(out.read_text())
    assert report["device_type"] == "cpu" and report["settings"]["dtype"] == "float32"
    assert report["shape"]["image_tokens"] == 4  # 28 px / 14 px patches = 2 x 2
    assert report["flops"]["step"] > report["flops"]["forward"] > 0
    sdpa = report["results"]["sdpa"]
    for key in (
        "step_time_s",
        "tokens_per_s",
        "mfu",
        "step_to_forward_ratio",
        "gen_batch_samples_per_s",
        "gen_b1_samples_per_s",
    ):
        assert sdpa[key] > 0, key
    assert report["results"]["flash_attention_2"] == {"skipped": "flash_attention_2 needs CUDA"}
