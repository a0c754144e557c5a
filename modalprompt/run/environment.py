"""The environment a stage ran in, recorded in its stage.json and MLflow run: the hardware, the drivers, the
versions of every library that can change its numbers, and how the base ran (dtype, attention kernel,
processes). A library that is not installed is recorded as null."""

from __future__ import annotations

import importlib.metadata
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

import torch

LIBRARIES = (
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "deepspeed",
    "flash-attn",
    "safetensors",
    "tokenizers",
)


def library_version(name: str) -> str | None:
    """The installed version of a distribution, or None when it is absent (nothing is imported)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def nvidia_driver() -> str | None:
    """The NVIDIA driver version nvidia-smi reports, or None without one."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20, check=True)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    lines = done.stdout.strip().splitlines()
    return lines[0].strip() if lines else None


def describe_environment(
    device: torch.device, dtype: torch.dtype, attention: str | None, world_size: int
) -> dict[str, Any]:
    """GPU model and count, driver, CUDA, library versions, world size, dtype and attention kernel."""
    cuda = device.type == "cuda" and torch.cuda.is_available()
    return {
        "gpu": torch.cuda.get_device_name(device) if cuda else None,
        "gpu_count": torch.cuda.device_count() if cuda else 0,
        "driver": nvidia_driver() if cuda else None,
        "cuda": torch.version.cuda,
        "device": str(device),
        "world_size": world_size,
        "dtype": str(dtype).removeprefix("torch."),
        "attention": attention,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {name: library_version(name) for name in LIBRARIES},
    }


def backbone_environment(backbone: Any, world_size: int) -> dict[str, Any]:
    """describe_environment for a loaded base (its device, dtype and the LLM's attention kernel)."""
    attention = getattr(backbone.llava.config, "_attn_implementation", None)
    return describe_environment(backbone.device, backbone.dtype, attention, world_size)


def git_state(folder: Path, exclude: tuple[str, ...] = (), untracked: bool = True) -> tuple[str, bool]:
    """(HEAD's full hash, whether files under `folder` differ from it, those under `exclude` (paths relative
    to the repository's root) left out; with `untracked`, a new file counts too). Where git cannot tell (no
    git, or the files without their repository): ("unknown", True), never clean."""
    pathspec = [".", *(f":(top,exclude){path}" for path in exclude)]
    try:
        head = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)  # fmt: skip
        status = subprocess.run(["git", "-C", str(folder), "status", "--porcelain",
                                 f"--untracked-files={'normal' if untracked else 'no'}", "--", *pathspec],
                                capture_output=True, text=True, timeout=10)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown", True
    if head.returncode != 0 or status.returncode != 0:
        return "unknown", True
    return head.stdout.strip(), bool(status.stdout.strip())
