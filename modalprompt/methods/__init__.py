"""The continual-learning methods, one module each behind `Method` (base.py), and their registry.

Adding a method: a module with its `Method` subclass, and its line in `REGISTRY` below. Import needs no
torch (the Snakefile reads the registry).
"""

from __future__ import annotations

from modalprompt.methods.base import Method
from modalprompt.methods.coda_prompt import CodaPrompt
from modalprompt.methods.dualprompt import DualPrompt
from modalprompt.methods.l2p import L2P
from modalprompt.methods.lora_ft import LoraFT
from modalprompt.methods.modalprompt import ModalPrompt
from modalprompt.methods.multitask import Multitask
from modalprompt.methods.oracle import Oracle
from modalprompt.methods.replay import Replay
from modalprompt.methods.seq_prompt import SeqPrompt
from modalprompt.methods.zero_shot import ZeroShot

REGISTRY: dict[str, Method] = {
    method.name: method
    for method in (
        ModalPrompt(),
        SeqPrompt(),
        Oracle(),
        ZeroShot(),
        LoraFT(),
        Replay(),
        Multitask(),
        L2P(),
        DualPrompt(),
        CodaPrompt(),
    )
}


def get(name: str) -> Method:
    try:
        return REGISTRY[str(name)]
    except KeyError:
        raise ValueError(f"unknown method {name!r}: choose one of {sorted(REGISTRY)}") from None
