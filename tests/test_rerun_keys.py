"""Every job of every shipped config keeps its rerun key (tests/rerun_keys.py records them): a change of the
code that should rerun nothing moves none. A change meant to rerun jobs rewrites the record
(`python tests/rerun_keys.py --write tests/rerun_keys.json`) in the same commit, which shows which jobs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _script():
    spec = importlib.util.spec_from_file_location("rerun_keys", HERE / "rerun_keys.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_shipped_job_keeps_its_rerun_key():
    script = _script()
    recorded = json.loads((HERE / "rerun_keys.json").read_text())
    assert script.compare(recorded, script.all_keys()) == []


def test_the_comparison_sees_a_changed_key():
    script = _script()
    recorded = json.loads((HERE / "rerun_keys.json").read_text())
    changed = json.loads(json.dumps(recorded))
    job = next(iter(changed["config.yaml"]))
    changed["config.yaml"][job] = "0" * 16
    assert script.compare(recorded, changed) == [f"config.yaml: {job} changed"]
