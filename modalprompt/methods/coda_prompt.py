"""coda_prompt (Smith et al., CVPR 2023): per-task prompt components with keys and attention vectors,
summed with weights from the sample's query; each stage adds and trains its own components. Settings:
`coda_prompt` (model/pool.py says what was adapted)."""

from __future__ import annotations

from modalprompt.methods.prompt_pool import PromptPoolMethod


class CodaPrompt(PromptPoolMethod):
    name = "coda_prompt"
    summary = "CODA-Prompt: per-task prompt components weighted by attention to the CLIP query"
    prompts_of = "coda_prompt"
    selects = False  # a weighted sum of every component: no prompt is chosen
    sections = ("coda_prompt",)
    model_kind = "coda_prompt"
