"""l2p (Wang et al., CVPR 2022): one pool of prompts with keys, shared by all tasks and trained in every
stage; each sample takes the top-N prompts by cosine between its query and the keys. An evaluation after
stage s uses stage s's pool. Settings: `l2p` (model/pool.py says what was adapted)."""

from __future__ import annotations

from modalprompt.methods.prompt_pool import PromptPoolMethod


class L2P(PromptPoolMethod):
    name = "l2p"
    summary = "L2P: a shared pool of prompts, the top-N keys by the CLIP query pick them"
    prompts_of = "l2p"
    selects = False  # its prompts belong to no task
    sections = ("l2p",)
    model_kind = "l2p"
