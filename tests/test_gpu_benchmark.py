"""benchmarks/gpu_llava7b.py with the tiny shape on CPU (the GPU run uses the same code path): it runs the
package's own step and generation, and its FLOP formula counts what actually runs."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_results_files import problems
from torch.utils.flop_counter import FlopCounterMode

from modalprompt.config import MethodConfig

ROOT = Path(__file__).resolve().parents[1]


def _benchmark_module():
    if str(ROOT / "benchmarks") not in sys.path:  # the script imports benchmarks/record.py as its neighbour
        sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("gpu_llava7b", ROOT / "benchmarks" / "gpu_llava7b.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("tasks", [1, 2, 8])
def test_flop_formula_counts_what_the_package_step_runs(tasks):
    """PyTorch's FlopCounterMode over one package step (forward and backward) on the tiny shape, with eager
    attention (which it counts as the full S x S square, the formula's convention), equals the formula
    within 1%, and part by part: full logits, the LLM over every prompt position, all T key networks
    forward and the current one backward, the CLIP text tower."""
    g = _benchmark_module()
    device, dtype = torch.device("cpu"), torch.float32
    llava = g.build_model(g.build_config(g.SHAPE_TINY), device, dtype)
    backbone = g.build_backbone(llava, g.SHAPE_TINY, device, dtype)
    llava.set_attn_implementation("eager")
    backbone.clip_text.set_attn_implementation("eager")
    method = MethodConfig(prefix_length=g.PROMPT_LENGTH, transfer_num=3)
    batch_size, text, clip_len = 4, 12, 9
    flops = g.flop_counts(backbone, method, batch_size, text, clip_len, tasks)
    generator = torch.Generator().manual_seed(0)
    rows = [g.sample(llava.config, g.SHAPE_TINY["clip_text"]["vocab_size"], text, clip_len, generator, train=True)
            for _ in range(batch_size)]  # fmt: skip
    batch = g.batch_on(backbone, rows, left_pad=False)
    model = g.package_model(backbone, method, tasks)
    with FlopCounterMode(display=False) as counted:
        out = model(batch)
        out.normalised_loss(batch.answer_tokens, batch_size, batch_size).backward()
    counts = {name: sum(by_op.values()) for name, by_op in counted.get_flop_counts().items()}
    terms, d, vocab, seq = flops["terms"], *(flops["inputs"][k] for k in ("d", "V", "S"))
    head = 2 * 2 * batch_size * seq * d * vocab  # full logits on every position, forward and backward
    assert counts["LlavaForConditionalGeneration.lm_head"] == head
    assert counts["LlavaForConditionalGeneration.model.language_model"] == pytest.approx(
        terms["llm_fwd"] + terms["llm_bwd"] - head, rel=0.01
    )
    assert (
        sum(v for name, v in counts.items() if name.endswith("key_net")) == terms["keys"] + terms["keys_bwd"]
    )
    assert counts["CLIPTextModel"] == pytest.approx(terms["clip_text"], rel=0.05)  # biases count as weights
    assert counted.get_total_flops() == pytest.approx(flops["step"], rel=0.01)
    assert flops["inputs"]["S"] == batch.input_ids.shape[1] + min(tasks, 3) * g.PROMPT_LENGTH


@pytest.mark.slow
def test_tiny_shape_benchmark_writes_positive_numbers(tmp_path):
    out = tmp_path / "tmp.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "gpu_llava7b.py"), "--tiny-shape", "--device", "cpu",
               "--steps", "2", "--warmup", "1", "--gen-batch", "2", "--new-tokens", "2", "--out", str(out)]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # nothing may be downloaded
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "train step (s)" in done.stdout and "lower bound" in done.stdout

    report = json.loads(out.read_text())
    assert problems(report) == [], problems(report)
    assert report["device_type"] == "cpu" and report["settings"]["dtype"] == "float32"
    assert report["shape"]["image_tokens"] == 4  # 28 px / 14 px patches = 2 x 2
    flops = report["flops"]
    assert (
        flops["step"] > flops["forward"] > 0
        and flops["terms"]["clip_text"] > 0
        and flops["terms"]["keys"] > 0
    )
    assert flops["step"] > flops["bare_lower_bound"]["step"]
    package, bare = report["results"]["sdpa"]["package"], report["results"]["sdpa"]["bare_lower_bound"]
    for key in (
        "step_time_s",
        "tokens_per_s",
        "mfu",
        "step_to_forward_ratio",
        "gen_batch_samples_per_s",
        "gen_b1_samples_per_s",
    ):
        assert package[key] > 0, key
    assert bare["step_time_s"] > 0 and bare["mfu"] > 0
    assert report["results"]["flash_attention_2"] == {"skipped": "flash_attention_2 needs CUDA"}
