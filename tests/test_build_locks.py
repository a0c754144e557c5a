"""A torch extension build lock that no process holds (a DeepSpeed op build killed halfway) stops a DeepSpeed
run with an error naming the lock, instead of a wait that never ends; a lock a running build holds is left
to DeepSpeed, which waits for that build."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import torch

from modalprompt.config import EngineConfig
from modalprompt.run import engine as engines

pytestmark = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs Linux /proc")


def _lock(root: Path, op: str = "deepspeed_shm_comm") -> Path:
    lock = root / op / engines.LOCK_FILE
    lock.parent.mkdir(parents=True)
    lock.touch()
    return lock


def test_a_lock_no_process_holds_is_named_with_how_to_clear_it(tmp_path, monkeypatch):
    lock = _lock(tmp_path)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    with pytest.raises(
        engines.StaleBuildLock,
        match=rf"{re.escape(str(lock))}.*no process on this machine holds it.*rm {re.escape(str(lock))}",
    ):
        engines.check_build_locks()
    assert lock.exists()  # nothing is deleted behind the user's back


def test_a_lock_a_running_build_holds_is_left_to_deepspeed(tmp_path):
    lock = _lock(tmp_path)
    with lock.open() as held:  # the holder: another process with the lock open, as torch's builder keeps it
        holder = subprocess.Popen(["sleep", "60"], stdin=held)
    try:
        engines.check_build_locks(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    with pytest.raises(engines.StaleBuildLock):  # the same lock once its holder is gone
        engines.check_build_locks(tmp_path)


def test_no_lock_and_no_folder_are_fine(tmp_path):
    (tmp_path / "deepspeed_shm_comm").mkdir()
    engines.check_build_locks(tmp_path)
    engines.check_build_locks(tmp_path / "absent")


def test_the_extensions_root_is_where_torch_builds(tmp_path, monkeypatch):
    """Without TORCH_EXTENSIONS_DIR: torch's per-user cache with its Python and accelerator folder, the
    parent of the folder torch builds an op in."""
    from torch.utils import cpp_extension

    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    monkeypatch.setattr(cpp_extension, "get_default_build_root", lambda: str(tmp_path))
    built = Path(cpp_extension._get_build_directory("deepspeed_shm_comm", verbose=False))
    assert engines.extensions_root() / "deepspeed_shm_comm" == built
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "mine"))
    assert engines.extensions_root() == tmp_path / "mine"


def test_a_deepspeed_engine_stops_at_a_stale_lock_of_its_op_before_deepspeed_starts(tmp_path, monkeypatch):
    """DeepSpeed's CPU communication op builds under the name checked here; make_engine raises before
    DeepSpeed is initialised (the stand-in model would fail there otherwise)."""
    pytest.importorskip("deepspeed")
    from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder

    lock = _lock(tmp_path, ShareMemCommBuilder.NAME)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    p = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([p], lr=0.5)
    with pytest.raises(engines.StaleBuildLock, match=re.escape(str(lock))):
        engines.make_engine(EngineConfig(zero_stage=2), torch.nn.Identity(), [p], optimizer, None, batch_size=1,
                            accum=1, max_grad_norm=None, world=1)  # fmt: skip
