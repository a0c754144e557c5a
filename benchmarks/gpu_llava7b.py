"""The package's own training step and generation on a LLaVA-1.5-7B-shaped model with random weights (one GPU).

    python benchmarks/gpu_llava7b.py --out benchmarks/results/gpu-llava7b-h100.json
    python benchmarks/gpu_llava7b.py --tiny-shape --device cpu --steps 2 --warmup 1   # the same code, small

Nothing is downloaded and nothing is read from disk: the models are built from configs with random weights,
directly in bf16 on the device (float32 on CPU), so the frozen 7B model never exists as an fp32 copy. Random
weights give the same speed as trained ones; only the times are meaningful, not the outputs.

What is timed is modalprompt's code, not a stand-in: a `Backbone` (LLaVA-1.5-7B shape: Llama-2-7B LLM,
CLIP ViT-L/14-336 vision tower, 576 image tokens; CLIP's text tower and projections of the same CLIP) with
`--tasks T` learned tasks in a `ModalPromptModel` (method defaults: L = 10, K = 3, key hidden = d), batches
made by the package's `Collator`, and
- the training step of stage T as `train_stage` runs it: `ModalPromptModel.forward` under bf16 autocast
  (one vision pass gives the image tokens and the CLIP image query, CLIP's text tower gives the text
  query, all T key networks give the keys, the T - 1 previous tasks are scored and the top K - 1 selected,
  their prompts and the current one (K * L positions) go in after BOS, the LLM runs with full logits over
  all S positions, cross-entropy on the answer tokens, both alignment terms), `normalised_loss`, then
  `PlainEngine`'s backward, gradient clipping and AdamW step on the current prompt and key network;
- generation as `evaluate` runs it: `ModalPromptModel.generate` (queries, scores against all T keys,
  top K prompts, greedy decoding with a KV cache) on `--gen-batch` left-padded samples in one call
  (median of 3 after a warm-up at full length) vs the same samples one at a time; the benchmark's EOS id
  is one the model cannot emit, so every call makes exactly `--new-tokens` tokens.
A bare LLaVA step is timed too, as a LOWER BOUND only: one fp32 prompt spliced in after BOS, no CLIP query,
no key networks, no selection, no alignment loss, LM head on the n answer positions only.

FLOPs of the package step (model FLOPs, 2 per multiply-add; B batch, t = T tasks, k = min(T, K) prompts,
S = 1 + k L + I + text LLM positions, I = 576 image tokens, Pv = I + 1 vision positions, C CLIP text tokens;
N_llm = decoder-layer + final-norm parameters, N_vis vision tower, N_proj projector, N_ct CLIP text tower
without its embeddings; L_/d_ layers/hidden of each tower; V vocab; h key hidden, e feature size):

    vision     = B * (2 * N_vis * Pv + 4 * Lv * Pv^2 * dv + 2 * dv * e)      every layer runs; + projection
    projector  = B * 2 * N_proj * I
    clip_text  = B * (2 * N_ct * C + 4 * Lc * C^2 * dc)
    keys       = t * 2 * L * (d * h + h * e)                  all T key networks on their L prompt rows
    scores     = B * 4 * t * e                                 cosines to the keys, image and text
    llm_fwd    = B * (2 * N_llm * S + 4 * Ll * S^2 * d + 2 * d * V * S)    full logits on every position
    keys_bwd   = 2 * 2 * L * (d * h + h * e)                   the current key network: weight and input grads
    llm_bwd    = B * (2 * N_llm * S + 8 * Ll * S^2 * d + 2 * d * V * S)    activation gradients only
    step       = vision + projector + clip_text + keys + scores + llm_fwd + keys_bwd + llm_bwd
    forward    = step - keys_bwd - llm_bwd
    MFU        = step / step_time / peak        (peak: H100 SXM bf16 dense, 989.4 TFLOP/s)

The frozen towers need no weight gradients, so the LLM's backward is activation gradients only (each linear
layer one matmul more, attention two per forward matmul), and the vision and CLIP text towers run under
no_grad (no backward). Attention counts the full S x S square (the usual MFU convention). Embedding lookups,
norms, activations, softmax, the optimizer and the gradient clipping are not counted. The bare lower bound
counts vision + projector + its own LLM forward and backward with the LM head on n positions.

Prints a table and writes JSON (`--out`) with the device, versions, shape, settings and every number, and
how it was measured (benchmarks/record.py: commit, machine, load average, wall time).
"""

from __future__ import annotations

import argparse
import gc
import platform
import resource
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
import transformers
from record import Measurement, write_results
from torch import nn
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
)

from modalprompt.bases.backbone import Backbone
from modalprompt.config import MethodConfig
from modalprompt.data.datasets import IGNORE_INDEX, Batch, Collator, Encoded
from modalprompt.model.wrapper import ModalPromptModel
from modalprompt.run.engine import PlainEngine

PAD_ID, BOS_ID = 0, 1
CLIP_PAD_ID = 0
PROMPT_LENGTH = 10  # L (the method's default)
TRANSFER_NUM = 3  # K (the method's default)
SCORED_TOKENS = 10  # n: loss on the last n text tokens (the answer), -100 over prompt, image and question
H100_BF16_DENSE_TFLOPS = 989.4

# Llama-2-7B (LLaVA-1.5's LLM, vocab grown by the image/pad tokens), CLIP ViT-L/14 at 336 px (its vision
# tower in LLaVA, its text tower and projections for the queries).
SHAPE_7B = {
    "text": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
             "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32064,
             "max_position_embeddings": 4096, "rms_norm_eps": 1e-5},
    "vision": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
               "num_attention_heads": 16, "image_size": 336, "patch_size": 14, "projection_dim": 768},
    "clip_text": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                  "num_attention_heads": 12, "vocab_size": 49408, "max_position_embeddings": 77},
}  # fmt: skip
# Same code path in seconds on a CPU: 4 image tokens (28 / 14 = 2 x 2 patches).
SHAPE_TINY = {
    "text": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 4, "vocab_size": 512, "max_position_embeddings": 4096,
             "rms_norm_eps": 1e-5},
    "vision": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
               "image_size": 28, "patch_size": 14, "projection_dim": 32},
    "clip_text": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                  "vocab_size": 256, "max_position_embeddings": 77},
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


def on_device(build: Callable[[], nn.Module], device: torch.device, dtype: torch.dtype) -> nn.Module:
    """Random weights, allocated (and initialised) directly on the device in `dtype`: no fp32 copy, no disk;
    frozen, eval mode."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            module = build()
    finally:
        torch.set_default_dtype(previous)
    return module.requires_grad_(False).eval()


def build_model(
    config: LlavaConfig, device: torch.device, dtype: torch.dtype
) -> LlavaForConditionalGeneration:
    return on_device(lambda: LlavaForConditionalGeneration(config), device, dtype)


def build_backbone(model: LlavaForConditionalGeneration, shape: dict, device, dtype) -> Backbone:
    """The package's `Backbone` around the random LLaVA: CLIP's text tower and both projections beside it,
    LLaVA's vision tower as CLIP's (`clip_vision=None`: the image query reuses LLaVA's vision pass, as with
    llava-hf/llava-1.5-7b-hf and openai/clip-vit-large-patch14-336). Ids go in directly, so the tokenizers
    are only asked for their special ids; EOS is an id outside the vocabulary (no sample stops early)."""
    text = shape["clip_text"]
    clip_eos = text["vocab_size"] - 1
    clip_config = CLIPTextConfig(
        **text, pad_token_id=CLIP_PAD_ID, bos_token_id=clip_eos - 1, eos_token_id=clip_eos
    )
    feature = shape["vision"]["projection_dim"]
    clip_text = on_device(lambda: CLIPTextModel(clip_config), device, dtype)
    visual = on_device(lambda: nn.Linear(shape["vision"]["hidden_size"], feature, bias=False), device, dtype)
    textual = on_device(lambda: nn.Linear(text["hidden_size"], feature, bias=False), device, dtype)
    vocab = model.config.text_config.vocab_size
    return Backbone(
        llava=model,
        clip_text=clip_text,
        text_projection=textual,
        visual_projection=visual,
        clip_vision=None,
        tokenizer=SimpleNamespace(bos_token_id=BOS_ID, pad_token_id=PAD_ID, eos_token_id=vocab),
        clip_tokenizer=SimpleNamespace(pad_token_id=CLIP_PAD_ID, eos_token_id=clip_eos),
        image_processor=None,
        fingerprint="random-weights",
        device=device,
        dtype=dtype,
    )


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


def flop_counts(
    backbone: Backbone, method: MethodConfig, batch: int, text: int, clip_len: int, tasks: int
) -> dict:
    """The package step's FLOPs by the module docstring's formula, with its inputs; and those of the bare
    lower bound (vision + projector + its LLM forward and backward, LM head on n positions)."""
    model, ct = backbone.llava, backbone.clip_text.config
    cfg, lm, vision = model.config, model.config.text_config, model.config.vision_config
    image_tokens = cfg.image_seq_length
    pv = image_tokens + 1  # + CLS
    language = model.model.language_model
    n_llm = count_params(language) - count_params(language.get_input_embeddings())
    n_vis = count_params(model.model.vision_tower)
    n_proj = count_params(model.model.multi_modal_projector)
    n_ct = count_params(backbone.clip_text) - count_params(backbone.clip_text.embeddings)
    d, layers, vocab = lm.hidden_size, lm.num_hidden_layers, lm.vocab_size
    big_l, h = method.prefix_length, method.key_hidden_size or d
    e = backbone.visual_projection.out_features
    k = min(tasks, method.transfer_num)
    seq = 1 + k * big_l + image_tokens + text
    scored = min(SCORED_TOKENS, text)

    def llm(positions: int, head_positions: int) -> tuple[int, int]:
        """Forward and backward (activation gradients only) of the LLM over `positions`, LM head on some."""
        linear, attention = 2 * n_llm * positions, 4 * layers * positions**2 * d
        head = 2 * d * vocab * head_positions
        return batch * (linear + attention + head), batch * (linear + 2 * attention + head)

    key_net = 2 * big_l * (d * h + h * e)  # one key network on its L prompt rows
    tower = 2 * n_vis * pv + 4 * vision.num_hidden_layers * pv**2 * vision.hidden_size
    terms = {
        "vision": batch * (tower + 2 * vision.hidden_size * e),
        "projector": batch * 2 * n_proj * image_tokens,
        "clip_text": batch * (2 * n_ct * clip_len + 4 * ct.num_hidden_layers * clip_len**2 * ct.hidden_size),
        "keys": tasks * key_net,
        "scores": batch * 4 * tasks * e,
    }
    terms["llm_fwd"], terms["llm_bwd"] = llm(seq, seq)  # full logits, as train_stage computes them
    terms["keys_bwd"] = 2 * key_net  # the current task's key network: weight and input gradients
    bare_seq = 1 + big_l + image_tokens + text
    bare_fwd, bare_bwd = llm(bare_seq, scored)
    bare_forward = batch * tower + terms["projector"] + bare_fwd
    return {
        "inputs": {"B": batch, "T": tasks, "K": method.transfer_num, "k": k, "L": big_l, "S": seq,
                   "I": image_tokens, "Pv": pv, "C": clip_len, "n": scored, "Ll": layers, "d": d, "V": vocab,
                   "Lv": vision.num_hidden_layers, "dv": vision.hidden_size, "Lc": ct.num_hidden_layers,
                   "dc": ct.hidden_size, "h": h, "e": e, "N_llm": n_llm, "N_vis": n_vis, "N_proj": n_proj,
                   "N_ct": n_ct},
        "terms": terms,
        "step": sum(terms.values()),
        "forward": sum(v for key, v in terms.items() if not key.endswith("_bwd")),
        "bare_lower_bound": {"S": bare_seq, "step": bare_forward + bare_bwd, "forward": bare_forward},
    }  # fmt: skip


def sample(config: LlavaConfig, clip_vocab: int, text_tokens: int, clip_len: int, generator, train: bool):
    """One `Encoded` sample: [BOS] + image placeholders + random text ids (the last n scored when training),
    CLIP ids of the instruction ending in CLIP's EOS, random pixels (one image: (1, 3, H, W), the rows the
    collator concatenates)."""
    image_id, image_tokens = config.image_token_id, config.image_seq_length
    text = torch.randint(3, image_id, (text_tokens,), generator=generator).tolist()  # never BOS/PAD/image
    ids = [BOS_ID] + [image_id] * image_tokens + text
    labels = None
    if train:
        scored = min(SCORED_TOKENS, text_tokens)
        labels = [IGNORE_INDEX] * (len(ids) - scored) + ids[-scored:]
    clip_ids = torch.randint(1, clip_vocab - 2, (clip_len - 1,), generator=generator).tolist()
    size = config.vision_config.image_size
    return Encoded(
        ids, labels, [*clip_ids, clip_vocab - 1], torch.randn(1, 3, size, size, generator=generator), None
    )


def batch_on(backbone: Backbone, samples: list[Encoded], left_pad: bool) -> Batch:
    """The package's `Collator` (right padding for training, left for generation), on the device."""
    batch = Collator(PAD_ID, CLIP_PAD_ID, left_pad=left_pad)(samples).to(backbone.device)
    batch.pixel_values = batch.pixel_values.to(backbone.dtype)
    return batch


def package_model(backbone: Backbone, method: MethodConfig, tasks: int) -> ModalPromptModel:
    """T learned tasks, seeded as `train_stage` seeds them; only the last one trains (stage T)."""
    model = ModalPromptModel(backbone, method)
    for stage in range(1, tasks + 1):
        model.add_task(f"task{stage}", seed=stage)
    return model


def step_report(step_times: list[float], forward_times: list[float], step_flops: float, forward_flops: float,
                batch_size: int, positions: int, peak_tflops: float, peak_mb: float, last_loss) -> dict:  # fmt: skip
    """Times, throughput and MFU of a timed training step and its no-grad forward (means over the runs);
    tokens count every LLM position; the last loss is NaN only for a broken setup."""
    step_s, forward_s = statistics.mean(step_times), statistics.mean(forward_times)
    return {
        "step_time_s": step_s,
        "step_time_median_s": statistics.median(step_times),
        "samples_per_s": batch_size / step_s,
        "tokens_per_s": batch_size * positions / step_s,
        "tflops": step_flops / step_s / 1e12,
        "mfu": step_flops / step_s / (peak_tflops * 1e12),
        "forward_time_s": forward_s,
        "forward_tflops": forward_flops / forward_s / 1e12,
        "step_to_forward_ratio": step_s / forward_s,
        "peak_memory_mb": peak_mb,
        "loss_last": float(last_loss),
    }


def bench_package_training(backbone: Backbone, method: MethodConfig, args, flops: dict) -> dict:
    device, dtype = backbone.device, backbone.dtype
    generator = torch.Generator().manual_seed(0)
    clip_vocab = backbone.clip_text.config.vocab_size
    rows = [sample(backbone.llava.config, clip_vocab, args.seq_len, args.clip_len, generator, train=True)
            for _ in range(args.batch_size)]  # fmt: skip
    batch = batch_on(backbone, rows, left_pad=False)
    model = package_model(backbone, method, args.tasks)
    params = [p for p in model.parameters() if p.requires_grad]
    current = {id(p) for p in model.prompts.tasks[-1].parameters()}
    assert params and {id(p) for p in params} == current, "only the current task's tensors may train"
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    engine = PlainEngine(model, params, optimizer, scheduler, max_grad_norm=1.0, world=1)
    use_autocast = device.type == "cuda" and dtype != torch.float32  # as train_stage
    autocast = torch.autocast("cuda", dtype=dtype) if use_autocast else nullcontext()
    counts = (batch.answer_tokens, int(batch.has_image.sum()), len(batch.keys))
    losses = []

    def train_step():
        with autocast:
            out = engine.forward(batch)
        loss = out.normalised_loss(*counts)
        engine.backward(loss, last=True)
        engine.step()
        losses.append(loss.detach())  # no .item() here: it would synchronise inside the timed loop

    @torch.no_grad()
    def forward_only():
        with autocast:
            return model(batch).loss

    reset_peak(device)
    step_times = timed(train_step, device, args.warmup, args.steps)
    peak = peak_memory_mb(device)
    forward_times = timed(forward_only, device, args.warmup, args.steps)
    return step_report(step_times, forward_times, flops["step"], flops["forward"], args.batch_size,
                       flops["inputs"]["S"], args.peak_tflops, peak, losses[-1])  # fmt: skip


def bench_package_generation(backbone: Backbone, method: MethodConfig, args) -> dict:
    generator = torch.Generator().manual_seed(1)
    clip_vocab = backbone.clip_text.config.vocab_size
    rows = []
    for i in range(
        args.gen_batch
    ):  # question lengths from --seq-len down to about half: batches need padding
        length = max(1, args.seq_len - (i * (args.seq_len // 2)) // max(1, args.gen_batch - 1))
        rows.append(sample(backbone.llava.config, clip_vocab, length, args.clip_len, generator, train=False))
    batched = batch_on(backbone, rows, left_pad=True)  # as evaluate batches
    singles = [batch_on(backbone, [r], left_pad=True) for r in rows]
    model = package_model(backbone, method, args.tasks)
    model.prompts.requires_grad_(False)
    device = backbone.device

    def generate(batch: Batch):
        out = model.generate(batch, args.new_tokens)
        assert out.token_ids.shape == (len(batch.keys), args.new_tokens), out.token_ids.shape
        return out

    reset_peak(device)
    # Warm-up at full length (kernels for every cache length, the allocator's blocks; the frozen keys and
    # prompts are computed here once, as in an evaluation), then the batch is timed 3 times (median) and
    # every sample once on its own (the sum).
    generate(singles[0])
    batch_s = statistics.median(timed(lambda: generate(batched), device, 1, 3))
    single_s = sum(timed(lambda s=s: generate(s), device, 0, 1)[0] for s in singles)
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


def bare_prompt_loss(
    model, prompt: torch.Tensor, input_ids: torch.Tensor, pixel_values: torch.Tensor, scored: int
):
    """The LOWER BOUND, not modalprompt's step: image features into the placeholders, one prompt after BOS,
    loss on the last `scored` tokens; no CLIP query, no keys, no selection, no alignment loss. `inputs_embeds` hides the image token ids from LLaVA's own forward, so the image
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


def bench_bare_training(model, args, device, dtype, flops: dict) -> dict:
    """The bare LLaVA step (lower bound): `flops` is flop_counts(...)['bare_lower_bound']."""
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
        loss = bare_prompt_loss(model, prompt, **inputs, scored=scored)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())  # no .item() here: it would synchronise inside the timed loop

    @torch.no_grad()
    def forward_only():
        return bare_prompt_loss(model, prompt, **inputs, scored=scored)

    reset_peak(device)
    step_times = timed(train_step, device, args.warmup, args.steps)
    peak = peak_memory_mb(device)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert not trainable and prompt.grad is not None, "only the prompt may train"
    forward_times = timed(forward_only, device, args.warmup, args.steps)

    # tokens: every LLM position (BOS, prompt, image, text); loss about ln(V) for random weights
    return step_report(step_times, forward_times, flops["step"], flops["forward"], args.batch_size,
                       flops["S"], args.peak_tflops, peak, losses[-1])  # fmt: skip


def _count(n: float) -> str:
    return f"{n / 1e9:.3f}B" if n >= 1e9 else f"{n / 1e6:.3f}M"


ROWS = [  # (section, label, key, format): 3 significant digits where the tiny shape's numbers are far below 1
    ("package", "train step (s)", "step_time_s", "{:.4g}"),
    ("package", "train samples/s", "samples_per_s", "{:.4g}"),
    ("package", "train tokens/s", "tokens_per_s", "{:,.0f}"),
    ("package", "train TFLOP/s", "tflops", "{:.3g}"),
    ("package", "MFU (%)", "mfu", "{:.3g}"),
    ("package", "no-grad forward (s)", "forward_time_s", "{:.4g}"),
    ("package", "step / forward", "step_to_forward_ratio", "{:.2f}"),
    ("package", "train peak memory (MB)", "peak_memory_mb", "{:,.0f}"),
    ("package", "gen samples/s, batch N", "gen_batch_samples_per_s", "{:.4g}"),
    ("package", "gen samples/s, batch 1", "gen_b1_samples_per_s", "{:.4g}"),
    ("package", "gen batch N / batch 1", "gen_batch_speedup", "{:.2f}"),
    ("package", "gen new tokens/s, batch N", "gen_batch_new_tokens_per_s", "{:,.1f}"),
    ("package", "gen peak memory (MB)", "gen_peak_memory_mb", "{:,.0f}"),
    ("bare_lower_bound", "bare step, lower bound (s)", "step_time_s", "{:.4g}"),
    ("bare_lower_bound", "bare MFU (%)", "mfu", "{:.3g}"),
]


def print_table(report: dict) -> None:
    s, settings, results, flops = report["shape"], report["settings"], report["results"], report["flops"]
    f = flops["inputs"]
    print(
        f"{report['device']} | torch {report['torch']} | transformers {report['transformers']} | {settings['dtype']}"
    )
    print(
        f"LLaVA-1.5 shape {s['name']}: {_count(s['params_total'])} params (LLM decoder {_count(s['params_llm'])}, "
        f"vision {_count(s['params_vision'])}, CLIP text {_count(s['params_clip_text'])}), {s['image_tokens']} "
        f"image tokens, random weights, built in {report['build_s']:.1f} s"
    )
    print(
        f"package step (ModalPromptModel, stage T = {f['T']}, K = {f['K']}): batch {f['B']}, S = 1 + {f['k']} x "
        f"{f['L']} prompt + {f['I']} image + {settings['seq_len']} text = {f['S']} positions, CLIP text "
        f"{f['C']} tokens, full logits, CE on {f['n']}; {flops['step'] / 1e12:.4g} TFLOP/step; "
        f"MFU against {settings['peak_tflops']} TFLOP/s"
    )
    print(f"bare LLaVA step (lower bound only): S = {flops['bare_lower_bound']['S']}, LM head on {f['n']}")
    print(
        f"generation (ModalPromptModel.generate): {settings['gen_batch']} samples, {settings['new_tokens']} new "
        "tokens, greedy, KV cache"
    )
    names = list(results)
    width = max(14, *(len(n) + 2 for n in names))
    print(f"{'':<29}" + "".join(f"{n:>{width}}" for n in names))
    for section, label, key, fmt in ROWS:
        cells = []
        for name in names:
            value = results[name].get(section, {}).get(key)
            value = 100 * value if key == "mfu" and value is not None else value
            cells.append("skipped" if value is None else fmt.format(value))
        print(f"{label:<29}" + "".join(f"{c:>{width}}" for c in cells))
    for name in names:
        if "skipped" in results[name]:
            print(f"{name} skipped: {results[name]['skipped']}")


def main(argv: list[str] | None = None) -> None:
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
    parser.add_argument(
        "--clip-len", type=int, help="CLIP text tokens of the instruction (default 77, tiny 16)"
    )
    parser.add_argument("--tasks", type=int, default=8, help="T learned tasks (the step trains stage T)")
    parser.add_argument("--transfer-num", type=int, default=TRANSFER_NUM, help="K prompts per sample")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps (and no-grad forwards)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--gen-batch", type=int, default=8, help="samples generated in one batch vs one by one"
    )
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--peak-tflops", type=float, default=H100_BF16_DENSE_TFLOPS, help="for MFU")
    parser.add_argument("--out", type=Path, help="write results as JSON here")
    args = parser.parse_args(argv)
    if args.seq_len is None:
        args.seq_len = 16 if args.tiny_shape else 128
    if args.clip_len is None:
        args.clip_len = 16 if args.tiny_shape else 77
    positive = (args.steps, args.batch_size, args.gen_batch, args.new_tokens, args.seq_len, args.tasks,
                args.transfer_num, args.clip_len - 1)  # fmt: skip
    if min(positive) < 1 or args.clip_len > 77:
        parser.error("--steps, --batch-size, --gen-batch, --new-tokens, --seq-len, --tasks and --transfer-num "
                     "must be positive, --clip-len 2 to 77")  # fmt: skip

    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    attentions = ["sdpa", "flash_attention_2"] if args.attention == "both" else [args.attention]
    flash_ok, flash_reason = flash_attention_available(device)
    if args.attention == "flash_attention_2" and not flash_ok:
        parser.error(flash_reason)

    with Measurement() as measured:
        shape_name, shape = ("tiny", SHAPE_TINY) if args.tiny_shape else ("7b", SHAPE_7B)
        config = build_config(shape)
        sync(device)
        start = time.perf_counter()
        model = build_model(config, device, dtype)
        backbone = build_backbone(model, shape, device, dtype)
        sync(device)
        build_s = time.perf_counter() - start
        method = MethodConfig(prefix_length=PROMPT_LENGTH, transfer_num=args.transfer_num)
        flops = flop_counts(backbone, method, args.batch_size, args.seq_len, args.clip_len, args.tasks)

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
            package = bench_package_training(backbone, method, args, flops)
            gc.collect()
            package.update(bench_package_generation(backbone, method, args))
            gc.collect()
            bare = bench_bare_training(model, args, device, dtype, flops["bare_lower_bound"])
            gc.collect()
            results[attention] = {"package": package, "bare_lower_bound": bare}

    try:
        import flash_attn

        flash_version = flash_attn.__version__
    except ImportError:
        flash_version = None
    report = measured.record(None if argv is None else [__file__, *argv])
    report |= {
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
        "timed_code": {
            "package": "ModalPromptModel.forward + normalised_loss + PlainEngine backward/clip/AdamW "
            "(train_stage's step); ModalPromptModel.generate (evaluate's generation)",
            "bare_lower_bound": "LLaVA alone: one prompt after BOS, LM head on n positions; no CLIP query, "
            "keys, selection or alignment loss",
        },
        "shape": {
            "name": shape_name,
            **{f"text_{k}": v for k, v in shape["text"].items()},
            **{f"vision_{k}": v for k, v in shape["vision"].items()},
            **{f"clip_text_{k}": v for k, v in shape["clip_text"].items()},
            "image_token_id": config.image_token_id,
            "image_tokens": config.image_seq_length,
            "params_total": count_params(model),
            "params_llm": flops["inputs"]["N_llm"],
            "params_vision": flops["inputs"]["N_vis"],
            "params_projector": flops["inputs"]["N_proj"],
            "params_clip_text": count_params(backbone.clip_text),
        },
        "settings": {
            "dtype": str(dtype).removeprefix("torch."),
            "attention": attentions,
            "batch_size": args.batch_size,
            "seq_len": args.seq_len,
            "clip_len": args.clip_len,
            "tasks": args.tasks,
            "transfer_num": args.transfer_num,
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
        write_results(args.out, report)


if __name__ == "__main__":
    main()
