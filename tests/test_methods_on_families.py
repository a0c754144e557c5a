"""Every registered method on every base family's tiny model (bases/: LLaVA-1.5, LLaVA-NeXT, Qwen2.5-VL):
a method reaches the base only through the base-model interface, so each one trains its stages (two, two
optimizer steps each, on the stages and earlier tasks it reads) and evaluates after stage 2 on each family,
with its own sections at small sizes, and leaves the frozen base as it was."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from modalprompt import methods
from modalprompt.bases.backbone import ADAPTERS, load_backbone
from modalprompt.bench.tiny import build_tiny_base
from modalprompt.config import ModelConfig
from modalprompt.experiment import METHOD_SECTIONS
from modalprompt.methods.coda_prompt import CodaPromptConfig
from modalprompt.methods.dualprompt import DualPromptConfig
from modalprompt.methods.l2p import L2PConfig
from modalprompt.methods.lora_ft import LoraSettings
from modalprompt.methods.moe_lora import MoeLoraSettings
from modalprompt.methods.replay import ReplayConfig
from modalprompt.model.checkpoint import META_FILE
from modalprompt.run.evaluate import evaluate_stage
from modalprompt.run.train import train_stage

FAMILIES = list(ADAPTERS)
# each section shrunk to the tiny bases; a section no built-in method has keeps its defaults
SMALL = {
    "lora": LoraSettings(rank=4, alpha=8.0, dropout=0.0),
    "replay": ReplayConfig(buffer_size=4),
    "l2p": L2PConfig(pool_size=4, prompt_length=2, top_k=2),
    "dualprompt": DualPromptConfig(g_length=2, e_length=2),
    "coda_prompt": CodaPromptConfig(components_per_task=3, prompt_length=2),
    "moe_lora": MoeLoraSettings(experts=2, rank=4, alpha=8.0, dropout=0.0),
}
STAGE_TASKS = ("colors", "shapes")  # stage 1, stage 2
SAMPLES = 2  # evaluated per case
pytestmark = pytest.mark.slow  # 30 cases, 1-7 s each on 2 shared cores (two stages to train in most)


@pytest.fixture(scope="module", params=FAMILIES)
def family_backbone(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    llava, clip = build_tiny_base(folder / "model", folder / "clip", seed=0, family=request.param)
    return request.param, load_backbone(ModelConfig(llava=str(llava), clip=str(clip), device="cpu"))


@pytest.fixture(scope="module")
def trained() -> dict[tuple[str, str], list[Path]]:
    """Stage folders by (family, method): a method's stages are trained once, for it and for the methods
    that evaluate them (oracle: modalprompt's)."""
    return {}


def _options(name: str) -> dict:
    return {s: SMALL.get(s, METHOD_SECTIONS[s]()) for s in methods.get(name).sections}


def _stages(family, backbone, name, method, training, toy_tasks, out: Path, cache) -> list[Path]:
    """Stages 1 and 2 of method `name`, each given the stages and earlier tasks the method says it reads."""
    if (family, name) not in cache:
        owner, folders = methods.get(name), []
        for stage, task in enumerate(STAGE_TASKS, start=1):
            earlier = [toy_tasks[t] for t in STAGE_TASKS[: stage - 1]] if owner.reads_earlier_tasks else []
            result = train_stage(backbone, method, training, toy_tasks[task],
                                 [folders[s - 1] for s in owner.training_inputs(stage)], out / f"{name}-{stage}",
                                 method_name=name, options=_options(name), earlier_tasks=earlier,
                                 progress=False)  # fmt: skip
            folders.append(result.checkpoint)
        cache[family, name] = folders
    return cache[family, name]


def _llm_input_rows(backbone, run):
    """What `run` returns, and the length of the first input sequence the LLM was called on."""
    seen = []

    def record(module, args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        if embeds is not None and not seen:
            seen.append(embeds.shape[1])

    hook = backbone.llava.model.language_model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        return run(), seen[0]
    finally:
        hook.remove()


@pytest.mark.parametrize("name", list(methods.REGISTRY))
def test_each_method_trains_and_evaluates_on_each_family(
    name, family_backbone, trained, method, training, evaluation, toy_tasks, tmp_path_factory
):
    family, backbone = family_backbone
    before = {k: v.detach().clone() for k, v in backbone.llava.state_dict().items()}
    impl = methods.get(name)
    checkpoints = []
    if impl.prompts_of is not None:
        quick = dataclasses.replace(training, max_steps=2)
        folders = _stages(family, backbone, impl.prompts_of, method, quick, toy_tasks,
                          tmp_path_factory.mktemp(family), trained)  # fmt: skip
        for folder in folders:
            assert json.loads((folder / META_FILE).read_text())["family"] == family
        checkpoints = [folders[s - 1] for s in impl.evaluation_inputs(len(STAGE_TASKS))]
    few = dataclasses.replace(evaluation, max_samples=SAMPLES, max_new_tokens=2)

    def evaluate(method_name, checkpoints):
        return evaluate_stage(backbone, method, few, toy_tasks[STAGE_TASKS[0]], checkpoints,
                              method_name=method_name, options=_options(method_name), progress=False)  # fmt: skip

    result, rows = _llm_input_rows(backbone, lambda: evaluate(name, checkpoints))
    _, base_rows = _llm_input_rows(backbone, lambda: evaluate("zero_shot", []))
    # the prompt budget it reports (the all-methods table's) is what reaches the LLM: at most, and exactly
    # for all but ModalPrompt's min(t, K) prompts
    budget = impl.prefix_tokens(impl.evaluation_settings(method), _options(name))
    assert rows - base_rows <= budget and (rows - base_rows == budget or name in ("modalprompt", "oracle"))

    assert len(result.predictions) == SAMPLES
    assert result.stage == (len(STAGE_TASKS) if impl.prompts_of else 0)  # the tasks it learned
    if impl.selects:
        assert all(set(p.selected) <= set(STAGE_TASKS) for p in result.predictions)
    after = backbone.llava.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], v) for k, v in before.items())
    assert not any(p.requires_grad for p in backbone.llava.parameters())
