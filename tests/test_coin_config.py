"""config/coin.yaml on a CoIN-shaped fixture: the pre-flight validation passes and the Slurm DAG plans every
stage and every evaluation cell. Only the config's path roots are rewritten to the fixture."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from coin_fixture import INSTRUCTIONS, TASKS, write_coin

from modalprompt.cli import main
from modalprompt.experiment import load_experiment
from modalprompt.layout import evaluation_cells

ROOT = Path(__file__).resolve().parents[1]
COIN_ORDER = ["ScienceQA", "TextVQA", "ImageNet", "GQA", "VizWiz", "Grounding", "VQAv2", "OCRVQA"]


def coin_project(folder: Path) -> Path:
    """The fixture (data, the two downloaded model folders' config.json) and config/coin.yaml with its
    paths.models, paths.data and paths.results pointed at it; returns the config file."""
    write_coin(folder / "data")
    originals = {"llava-v1.5-7b": {"architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava",
                                   "mm_projector_type": "mlp2x_gelu"},
                 "clip-vit-large-patch14-336": {"model_type": "clip"}}  # fmt: skip
    for name, config in originals.items():
        (folder / "models" / name).mkdir(parents=True)
        (folder / "models" / name / "config.json").write_text(json.dumps(config))
    raw = yaml.safe_load((ROOT / "config" / "coin.yaml").read_text())
    raw["paths"] = {
        "models": str(folder / "models"),
        "data": str(folder / "data"),
        "results": str(folder / "results"),
    }
    (folder / "coin.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return folder / "coin.yaml"


def test_coin_config_is_the_reference_sequence_in_coins_layout(tmp_path):
    cfg = load_experiment(coin_project(tmp_path))
    assert [t.name for t in cfg.tasks] == COIN_ORDER == list(TASKS)
    for task in cfg.tasks:
        split = TASKS[task.name][0]
        assert task.eval_file == str(tmp_path / "data" / INSTRUCTIONS / task.name / f"{split}.json")
        assert task.image_root == str(tmp_path / "data" / "cl_dataset")
    assert cfg.task("TextVQA").answers_file == str(
        tmp_path / "data/cl_dataset/TextVQA/TextVQA_0.5.1_val.json"
    )
    assert {t.name: str(t.scorer) for t in cfg.tasks} == {
        "ScienceQA": "option_letter", "TextVQA": "vqa_soft", "ImageNet": "contains", "GQA": "exact_match",
        "VizWiz": "exact_match_strict", "Grounding": "box_iou", "VQAv2": "exact_match_strict",
        "OCRVQA": "exact_match_strict",
    }  # fmt: skip
    assert cfg.model.original_llava == str(tmp_path / "models" / "llava-v1.5-7b")
    # ModalPrompt's Train/*.sh: 10 epochs, lr 2e-4, per-GPU batch per task on 4 GPUs
    batches = {name: cfg.training_for(name).batch_size for name in COIN_ORDER}
    assert batches == {"ScienceQA": 32, "TextVQA": 32, "ImageNet": 64, "GQA": 24, "VizWiz": 64, "Grounding": 16,
                       "VQAv2": 24, "OCRVQA": 48}  # fmt: skip
    assert cfg.training.epochs == 10 and cfg.training.lr == 2e-4 and cfg.resources.train.gpus == 4


def test_coin_config_validates_on_the_fixture(tmp_path, capsys):
    config = coin_project(tmp_path)
    assert main(["validate", "--config", str(config)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 * len(COIN_ORDER) + 1 and all(line.endswith("all valid") for line in lines)
    assert any("TextVQA_0.5.1_val.json" in line for line in lines)


def test_coin_validation_names_what_is_missing(tmp_path, capsys):
    """A missing image and a TextVQA question without its 10 answers: listed, exit 1."""
    config = coin_project(tmp_path)
    image = tmp_path / "data" / "cl_dataset" / TASKS["GQA"][1][0][0]
    image.unlink()
    answers = tmp_path / "data" / "cl_dataset" / "TextVQA" / "TextVQA_0.5.1_val.json"
    data = json.loads(answers.read_text())
    answers.write_text(json.dumps({**data, "data": data["data"][1:]}))
    assert main(["validate", "--config", str(config)]) == 1
    out = capsys.readouterr().out
    assert f"image file {image} does not exist" in out
    assert "no answers for question 34602 of" in out


@pytest.mark.slow
def test_coin_dag_plans_the_full_matrix_on_slurm(tmp_path):
    """`snakemake --profile profiles/slurm --configfile coin.yaml -n`: the conversion, 8 stages, every
    evaluation cell and its score (row 0, the lower triangle, the forward cells), with the config's GPUs."""
    config = coin_project(tmp_path)
    command = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "workflow" / "Snakefile"), "--profile",
               str(ROOT / "profiles" / "slurm"), "--configfile", str(config), "-n"]  # fmt: skip
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    jobs = []
    for block in re.split(r"\n(?=\[|(?:local)?rule )", done.stdout):
        rule = re.search(r"^(?:local)?rule (\w+):", block, re.MULTILINE)
        if rule:
            found = re.search(r"wildcards: (.*)", block)
            wildcards = dict(re.findall(r"(\w+)=([\w-]+)", found.group(1) if found else ""))
            resources = (re.search(r"resources: (.*)", block) or re.search("()", ""))[1]
            jobs.append((rule[1], wildcards, resources))
    rules = [rule for rule, _, _ in jobs]
    assert rules.count("convert_llava") == 1 and rules.count("matrix") == 1 and rules.count("track") == 1
    trained = sorted(int(w["stage"]) for rule, w, _ in jobs if rule == "train")
    assert trained == list(range(1, 9))
    cells = set(evaluation_cells(COIN_ORDER, zero_shot=True))
    assert len(cells) == 8 + 36 + 7
    for kind in ("evaluate", "score"):
        assert {(int(w["stage"]), w["task"]) for rule, w, _ in jobs if rule == kind} == cells
    train_resources = next(res for rule, _, res in jobs if rule == "train")
    assert "gpu=4" in train_resources and "cpus_per_task=32" in train_resources
    assert "gpu=1" in next(res for rule, _, res in jobs if rule == "evaluate")
