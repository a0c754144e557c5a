"""dualprompt (Wang et al., ECCV 2022): a G-prompt shared by all tasks and an E-prompt with a key per task;
inference picks the E-prompt whose key matches the sample's query (selection accuracy is reported).
Settings: `dualprompt` (model/pool.py says what was adapted)."""

from __future__ import annotations

from modalprompt.methods.prompt_pool import PromptPoolMethod


class DualPrompt(PromptPoolMethod):
    name = "dualprompt"
    summary = "DualPrompt: a shared G-prompt and a per-task E-prompt picked by the CLIP query"
    prompts_of = "dualprompt"
    selects = True
    sections = ("dualprompt",)
    model_kind = "dualprompt"
