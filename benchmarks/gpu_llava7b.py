"""Prompt-tuning and generation throughput of a LLaVA-1.5-7B-shaped model with random weights (one GPU).

    python benchmarks/gpu_llava7b.py --out benchmarks/results/gpu-llava7b-h100.json
    python benchmarks/gpu_llava7b.py --tiny-shape --device cpu --steps 2 --warmup 1   # the same code, small

Nothing is downloaded and nothing is read from disk: the model is built from configs with random weights,
directly in bf16 on the device (float32 on CPU), so the frozen 7B model never exists as an fp32 copy.
Random weights give the same speed as trained ones; only the numbers below are meaningful, not the outputs.

Training step (what modalprompt trains): every model parameter is frozen; one fp32 prompt P (L x hidden) is
the only trainable tensor. Per step: CLIP ViT-L/14-336 features (layer -2, CLS dropped) are projected and
scattered into the 576 image-token embeddings, P (cast to bf16) is spliced in after BOS, the LLM runs over
S = 1 + L + 576 + T positions, the LM head runs on the n scored positions only (labels are -100 elsewhere),
cross-entropy, backward (gradients reach P only), AdamW step on P.

FLOPs per step (model FLOPs; matmuls count 2 per multiply-add; B batch, S LLM positions, I = 576 image
tokens, Pv = I + 1 vision positions with CLS, n scored tokens; N_llm = decoder-layer + final-norm parameters,
N_vis = vision-tower parameters, N_proj = projector parameters; L/d layers/hidden of the LLM, Lv/dv of the
vision tower, V vocab):

    vision   = B * (2 * N_vis * Pv + 4 * Lv * Pv^2 * dv + 2 * N_proj * I)
    llm_fwd  = B * (2 * N_llm * S  + 4 * L  * S^2  * d  + 2 * d * V * n)
    llm_bwd  = B * (2 * N_llm * S  + 8 * L  * S^2  * d  + 2 * d * V * n)
    step     = vision + llm_fwd + llm_bwd          forward = vision + llm_fwd
    MFU      = step / step_time / peak             (peak: H100 SXM bf16 dense, 989.4 TFLOP/s)

The backward pass computes activation gradients only (weights are frozen, so no weight gradients): each
linear layer costs one matmul more (1x its forward), attention costs two per forward matmul (dQ, dK from dS;
dV, dP from dO: 2x its forward). The vision tower has no backward (nothing in it needs a gradient).
Attention counts the full S x S square (the usual MFU convention; causal kernels skip about half of it).
The embedding lookup and norms/activations are not counted.

Generation: greedy decoding with a KV cache, `--gen-batch` left-padded samples in one `generate` call (median of
3 after a warm-up) vs the same samples one at a time (batch 1, each once after a warm-up); every call makes
exactly `--new-tokens` tokens (no EOS stop).

Prints a table and writes JSON (`--out`) with the device, versions, shape, settings and every number.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

PAD_ID, BOS_ID = 0, 1
PROMPT_LENGTH = 10  # L: the trainable prompt's tokens, inserted after BOS
SCORED_TOKENS = 10  # n: loss on the last n text tokens (the answer), -100 over prompt, image and question
H100_BF16_DENSE_TFLOPS = 989.4

# Llama-2-7B (LLaVA-1.5's LLM, vocab grown by the image/pad tokens) and CLIP ViT-L/14 at 336 px.
SHAPE_7B = {
    "text": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
             "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32064,
             "max_position_embeddings": 4096, "rms_norm_eps": 1e-5},
    "vision": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
               "num_attention_heads": 16, "image_size": 336, "patch_size": 14, "projection_dim": 768},
}  # fmt: skip
# Same code path in seconds on a CPU: 4 image tokens (28 / 14 = 2 x 2 patches).
SHAPE_TINY = {
    "text": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 4, "vocab_size": 512, "max_position_embeddings": 4096,
             "rms_norm_eps": 1e-5},
    "vision": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
               "image_size": 28, "patch_size": 14, "projection_dim": 32},
}  # fmt: skip


def build_config(shape: dict) -> LlavaConfig:
    vocab = shape["text"]["vocab_size"]
    text = LlamaConfig(
        **shape["text"], pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=2, tie_word_embeddings=False
    )
    vision = CLIPVisionConfig(**shape["vision"])
    patches = (vision.image_size // vision.patch_size) ** 2
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=vocab - 64,  # 32000 for the 7B shape, as in llava-hf/llava-1.5-7b-hf
        image_seq_length=patches,
        projector_hidden_act="gelu",
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        pad_token_id=PAD_ID,
    )


def build_model(
    config: LlavaConfig, device: torch.device, dtype: torch.dtype
) -> LlavaForConditionalGeneration:
    """Random weights, allocated (and initialised) directly on the device in `dtype`: no fp32 copy, no disk."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            model = LlavaForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    model.requires_grad_(False).eval()
    return model


def flash_attention_available(device: torch.device) -> tuple[bool, str]:
    if device.type != "cuda":
        return False, "flash_attention_2 needs CUDA"
    try:
        import flash_attn  # noqa: F401
    except ImportError as error:
        return False, f"flash_attn does not import ({error})"
    return True, ""


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float:
    """Peak allocated CUDA memory since the last reset; on CPU the process's peak RSS (never reset)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def timed(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Seconds per call of `fn` after `warmup` untimed calls; the device is synchronised around each call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def flop_counts(model: LlavaForConditionalGeneration, batch: int, seq: int, scored: int) -> dict:
    """The formula of the module docstring, per step and per forward, with its inputs."""
    cfg, text, vision = model.config, model.config.text_config, model.config.vision_config
    image_tokens = cfg.image_seq_length
    vision_positions = image_tokens + 1  # + CLS
    n_llm = count_params(model.model.language_model) - count_params(model.model.language_model.embed_tokens)
    n_vis = count_params(model.model.vision_tower)
    n_proj = count_params(model.model.multi_modal_projector)
    d, layers, vocab = text.hidden_size, text.num_hidden_layers, text.vocab_size
    vision_flops = batch * (
        2 * n_vis * vision_positions
        + 4 * vision.num_hidden_layers * vision_positions**2 * vision.hidden_size
        + 2 * n_proj * image_tokens
    )
    linear, attention, head = 2 * n_llm * seq, 4 * layers * seq**2 * d, 2 * d * vocab * scored
    llm_fwd = batch * (linear + attention + head)
    llm_bwd = batch * (linear + 2 * attention + head)  # activation gradients only: weights are frozen
    return {
        "formula": {
            "vision": "B * (2 * N_vis * Pv + 4 * Lv * Pv^2 * dv + 2 * N_proj * I)",
            "llm_fwd": "B * (2 * N_llm * S + 4 * L * S^2 * d + 2 * d * V * n)",
            "llm_bwd": "B * (2 * N_llm * S + 8 * L * S^2 * d + 2 * d * V * n)  (activation gradients only)",
            "step": "vision + llm_fwd + llm_bwd",
            "forward": "vision + llm_fwd",
            "mfu": "step / step_time_s / (peak_tflops * 1e12)",
        },
        "inputs": {"B": batch, "S": seq, "I": image_tokens, "Pv": vision_positions, "n": scored, "L": layers,
                   "d": d, "V": vocab, "Lv": vision.num_hidden_layers, "dv": vision.hidden_size,
                   "N_llm": n_llm, "N_vis": n_vis, "N_proj": n_proj},
        "vision": vision_flops,
        "llm_fwd": llm_fwd,
        "llm_bwd": llm_bwd,
        "step": vision_flops + llm_fwd + llm_bwd,
        "forward": vision_flops + llm_fwd,
    }  # fmt: skip


def make_inputs(config: LlavaConfig, batch: int, text_tokens: int, device, dtype, generator) -> dict:
    """[BOS] + image placeholders + `text_tokens` random text ids per sample, and random pixels."""
    image_id, image_tokens = config.image_token_id, config.image_seq_length
    text = torch.randint(3, image_id, (batch, text_tokens), generator=generator)  # never BOS/PAD/image ids
    input_ids = torch.cat(
        [torch.full((batch, 1), BOS_ID), torch.full((batch, image_tokens), image_id), text], dim=1
    )
    size = config.vision_config.image_size
    pixels = torch.randn(batch, 3, size, size, generator=generator)
    return {"input_ids": input_ids.to(device), "pixel_values": pixels.to(device, dtype)}


def prompt_loss(
    model, prompt: torch.Tensor, input_ids: torch.Tensor, pixel_values: torch.Tensor, scored: int
):
    """modalprompt's training forward: image features into the placeholders, prompt after BOS, loss on the
    last `scored` tokens. `inputs_embeds` hides the image token ids from LLaVA's own forward, so the image
    features are scattered here, and the language model and LM head are called directly."""
    llava = model.model
    embeds = llava.get_input_embeddings()(input_ids)  # (B, N, d)
    image = llava.get_image_features(
        pixel_values=pixel_values,
        vision_feature_layer=model.config.vision_feature_layer,
        vision_feature_select_strategy=model.config.vision_feature_select_strategy,
        return_dict=True,
    ).pooler_output  # one (I, d) tensor per image
    features = torch.cat(image, dim=0).to(embeds.dtype)
    placeholders = (input_ids == model.config.image_token_id)[..., None]
    embeds = embeds.masked_scatter(placeholders, features)

    batch = len(input_ids)
    spliced = prompt.to(embeds.dtype)[None].expand(batch, -1, -1)  # fp32 trainable -> bf16, grad flows back
    embeds = torch.cat([embeds[:, :1], spliced, embeds[:, 1:]], dim=1)  # (B, S = N + L, d)
    attention_mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
    labels = torch.full(embeds.shape[:2], -100, dtype=torch.long, device=embeds.device)
    labels[:, -scored:] = input_ids[:, -scored:]  # prompt, image and question are -100

    hidden = llava.language_model(
        inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False
    ).last_hidden_state
    # Position t predicts label t + 1, and only the last `scored` labels are not -100, so the LM head runs on
    # the `scored` positions before them: the same loss as full logits, without a (B, S, V) tensor.
    logits = model.lm_head(hidden[:, -scored - 1 : -1]).float()
    return F.cross_entropy(logits.flatten(0, 1), labels[:, -scored:].flatten())


def bench_training(model, args, device, dtype, flops: dict) -> dict:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    inputs = make_inputs(model.config, args.batch_size, args.seq_len, device, dtype, generator)
    hidden = model.config.text_config.hidden_size
    prompt = torch.nn.Parameter(0.02 * torch.randn(PROMPT_LENGTH, hidden, device=device, dtype=torch.float32))
    optimizer = torch.optim.AdamW([prompt], lr=1e-3)
    scored = min(SCORED_TOKENS, args.seq_len)

    losses = []

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        loss = prompt_loss(model, prompt, **inputs, scored=scored)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())  # no .item() here: it would synchronise inside the timed loop

    @torch.no_grad()
    def forward_only():
        return prompt_loss(model, prompt, **inputs, scored=scored)

    reset_peak(device)
    step_times = timed(train_step, device, args.warmup, args.steps)
    peak = peak_memory_mb(device)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert not trainable and prompt.grad is not None, "only the prompt may train"
    forward_times = timed(forward_only, device, args.warmup, args.steps)

    step_s = statistics.mean(step_times)
    forward_s = statistics.mean(forward_times)
    seq = flops["inputs"]["S"]
    return {
        "step_time_s": step_s,
        "step_time_median_s": statistics.median(step_times),
        "samples_per_s": args.batch_size / step_s,
        "tokens_per_s": args.batch_size * seq / step_s,  # every LLM position: BOS, prompt, image, text
        "tflops": flops["step"] / step_s / 1e12,
        "mfu": flops["step"] / step_s / (args.peak_tflops * 1e12),
        "forward_time_s": forward_s,
        "forward_tflops": flops["forward"] / forward_s / 1e12,
        "step_to_forward_ratio": step_s / forward_s,
        "peak_memory_mb": peak,
        "loss_last": float(losses[-1]),  # about ln(V) for random weights; NaN would mean a broken setup
    }


def generation_inputs(config, count: int, text_tokens: int, device, dtype) -> list[dict]:
    """`count` samples with question lengths from `text_tokens` down to about half, so batches need padding."""
    generator = torch.Generator().manual_seed(1)
    samples = []
    for i in range(count):
        length = max(1, text_tokens - (i * (text_tokens // 2)) // max(1, count - 1))
        samples.append(make_inputs(config, 1, length, device, dtype, generator))
    return samples


def left_pad(samples: list[dict]) -> dict:
    width = max(s["input_ids"].shape[1] for s in samples)
    ids, masks = [], []
    for s in samples:
        row = s["input_ids"][0]
        pad = width - len(row)
        ids.append(F.pad(row, (pad, 0), value=PAD_ID))
        masks.append(F.pad(torch.ones_like(row), (pad, 0), value=0))
    return {
        "input_ids": torch.stack(ids),
        "attention_mask": torch.stack(masks),
        "pixel_values": torch.cat([s["pixel_values"] for s in samples]),
    }


def bench_generation(model, args, device, dtype) -> dict:
    samples = generation_inputs(model.config, args.gen_batch, args.seq_len, device, dtype)
    batched = left_pad(samples)
    singles = [left_pad([s]) for s in samples]

    @torch.no_grad()
    def generate(inputs: dict, new_tokens: int):
        out = model.generate(
            **inputs,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,  # random weights: never stop early at EOS, always `new_tokens`
            do_sample=False,
            pad_token_id=PAD_ID,
        )
        assert out.shape[1] == inputs["input_ids"].shape[1] + new_tokens, out.shape
        return out

    reset_peak(device)
    # Warm-up at full length (kernels for every cache length, the allocator's blocks), then the batch is
    # timed 3 times (median) and every sample once on its own (the sum).
    generate(singles[0], args.new_tokens)
    batch_s = statistics.median(timed(lambda: generate(batched, args.new_tokens), device, 1, 3))
    single_times = [timed(lambda s=s: generate(s, args.new_tokens), device, 0, 1)[0] for s in singles]
    single_s = sum(single_times)
    return {
        "gen_samples": args.gen_batch,
        "gen_batch_time_s": batch_s,
        "gen_batch_samples_per_s": args.gen_batch / batch_s,
        "gen_batch_new_tokens_per_s": args.gen_batch * args.new_tokens / batch_s,
        "gen_b1_time_s": single_s,
        "gen_b1_samples_per_s": args.gen_batch / single_s,
        "gen_b1_new_tokens_per_s": args.gen_batch * args.new_tokens / single_s,
        "gen_batch_speedup": single_s / batch_s,
        "gen_peak_memory_mb": peak_memory_mb(device),
    }


def _count(n: float) -> str:
    return f"{n / 1e9:.3f}B" if n >= 1e9 else f"{n / 1e6:.3f}M"


ROWS = [  # (label, key, format): 3 significant digits where the tiny shape's numbers are far below 1
    ("train step (s)", "step_time_s", "{:.4g}"),
    ("train samples/s", "samples_per_s", "{:.4g}"),
    ("train tokens/s", "tokens_per_s", "{:,.0f}"),
    ("train TFLOP/s", "tflops", "{:.3g}"),
    ("MFU (%)", "mfu", "{:.3g}"),
    ("no-grad forward (s)", "forward_time_s", "{:.4g}"),
    ("step / forward", "step_to_forward_ratio", "{:.2f}"),
    ("train peak memory (MB)", "peak_memory_mb", "{:,.0f}"),
    ("gen samples/s, batch N", "gen_batch_samples_per_s", "{:.4g}"),
    ("gen samples/s, batch 1", "gen_b1_samples_per_s", "{:.4g}"),
    ("gen batch N / batch 1", "gen_batch_speedup", "{:.2f}"),
    ("gen new tokens/s, batch N", "gen_batch_new_tokens_per_s", "{:,.1f}"),
    ("gen peak memory (MB)", "gen_peak_memory_mb", "{:,.0f}"),
]


def print_table(report: dict) -> None:
    s, settings, results, flops = report["shape"], report["settings"], report["results"], report["flops"]
    print(
        f"{report['device']} | torch {report['torch']} | transformers {report['transformers']} | {settings['dtype']}"
    )
    print(
        f"LLaVA-1.5 shape {s['name']}: {_count(s['params_total'])} params (LLM decoder {_count(s['params_llm'])}, "
        f"vision {_count(s['params_vision'])}), {s['image_tokens']} image tokens, random weights, "
        f"built in {report['build_s']:.1f} s"
    )
    print(
        f"train: batch {settings['batch_size']}, S = 1 + {settings['prompt_length']} prompt + "
        f"{s['image_tokens']} image + {settings['seq_len']} text = {flops['inputs']['S']} positions, "
        f"loss on {flops['inputs']['n']}; {flops['step'] / 1e12:.4g} TFLOP/step; "
        f"MFU against {settings['peak_tflops']} TFLOP/s"
    )
    print(
        f"generation: {settings['gen_batch']} samples, {settings['new_tokens']} new tokens, greedy, KV cache"
    )
    names = list(results)
    width = max(14, *(len(n) + 2 for n in names))
    print(f"{'':<27}" + "".join(f"{n:>{width}}" for n in names))
    for label, key, fmt in ROWS:
        cells = []
        for name in names:
            value = results[name].get(key)
            value = 100 * value if key == "mfu" and value is not None else value
            cells.append("skipped" if value is None else fmt.format(value))
        print(f"{label:<27}" + "".join(f"{c:>{width}}" for c in cells))
    for name in names:
        if "skipped" in results[name]:
            print(f"{name} skipped: {results[name]['skipped']}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiny-shape", action="store_true", help="tiny model, same code path (CPU, seconds)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--attention", choices=["sdpa", "flash_attention_2", "both"], default="both")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--seq-len", type=int, help="text tokens per sample besides the image tokens (default 128, tiny 16)"
    )
    parser.add_argument("--steps", type=int, default=10, help="timed training steps (and no-grad forwards)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--gen-batch", type=int, default=8, help="samples generated in one batch vs one by one"
    )
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--peak-tflops", type=float, default=H100_BF16_DENSE_TFLOPS, help="for MFU")
    parser.add_argument("--out", type=Path, help="write results as JSON here")
    args = parser.parse_args()
    if args.seq_len is None:
        args.seq_len = 16 if args.tiny_shape else 128
    if args.steps < 1 or args.batch_size < 1 or args.gen_batch < 1 or args.new_tokens < 1 or args.seq_len < 1:
        parser.error("--steps, --batch-size, --gen-batch, --new-tokens and --seq-len must be positive")

    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    attentions = ["sdpa", "flash_attention_2"] if args.attention == "both" else [args.attention]
    flash_ok, flash_reason = flash_attention_available(device)
    if args.attention == "flash_attention_2" and not flash_ok:
        parser.error(flash_reason)

    shape_name, shape = ("tiny", SHAPE_TINY) if args.tiny_shape else ("7b", SHAPE_7B)
    config = build_config(shape)
    sync(device)
    start = time.perf_counter()
    model = build_model(config, device, dtype)
    sync(device)
    build_s = time.perf_counter() - start
    seq = 1 + PROMPT_LENGTH + config.image_seq_length + args.seq_len
    flops = flop_counts(model, args.batch_size, seq, min(SCORED_TOKENS, args.seq_len))

    results: dict[str, dict] = {}
    for attention in attentions:
        if attention == "flash_attention_2" and not flash_ok:
            results[attention] = {"skipped": flash_reason}
            continue
        try:
            model.set_attn_implementation(attention)
        except (ImportError, ValueError) as error:  # e.g. a flash_attn build transformers does not accept
            if args.attention != "both":
                raise
            results[attention] = {"skipped": f"set_attn_implementation failed: {error}"}
            continue
        results[attention] = bench_training(model, args, device, dtype, flops)
        results[attention].update(bench_generation(model, args, device, dtype))
        gc.collect()

    try:
        import flash_attn

        flash_version = flash_attn.__version__
    except ImportError:
        flash_version = None
    report = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "device_type": device.type,
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "flash_attn": flash_version,
        "python": platform.python_version(),
        "build_s": build_s,
        "shape": {
            "name": shape_name,
            **{f"text_{k}": v for k, v in shape["text"].items()},
            **{f"vision_{k}": v for k, v in shape["vision"].items()},
            "image_token_id": config.image_token_id,
            "image_tokens": config.image_seq_length,
            "params_total": count_params(model),
            "params_llm": flops["inputs"]["N_llm"],
            "params_vision": flops["inputs"]["N_vis"],
            "params_projector": flops["inputs"]["N_proj"],
        },
        "settings": {
            "dtype": str(dtype).removeprefix("torch."),
            "attention": attentions,
            "batch_size": args.batch_size,
            "seq_len": args.seq_len,
            "prompt_length": PROMPT_LENGTH,
            "scored_tokens": flops["inputs"]["n"],
            "steps": args.steps,
            "warmup": args.warmup,
            "gen_batch": args.gen_batch,
            "new_tokens": args.new_tokens,
            "peak_tflops": args.peak_tflops,
        },
        "flops": flops,
        "results": results,
    }
    print_table(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
