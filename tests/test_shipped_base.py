"""The mini-CoIN base shipped in the package: built from the default config's settings, installed whole and
checked, loaded through the production path, and replaced by pretraining when the settings differ."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from modalprompt.bases.backbone import load_backbone
from modalprompt.bench import minicoin, shipped
from modalprompt.config import ModelConfig
from modalprompt.errors import DataError
from modalprompt.experiment import load_experiment
from modalprompt.files import sha256_file

ROOT = Path(__file__).resolve().parents[1]


def test_the_default_config_uses_the_shipped_base():
    exp = load_experiment(ROOT / "config.yaml")
    assert shipped.difference(exp.model.pretrain, exp.benchmark) is None
    manifest = shipped.read_manifest()
    assert manifest["commit"] != "unknown" and not manifest["commit"].endswith("-dirty")
    assert {f.split("/")[0] for f in manifest["files"]} == set(shipped.FOLDERS)


def test_a_changed_setting_is_named():
    exp = load_experiment(ROOT / "config.yaml")
    pretrain = dataclasses.replace(exp.model.pretrain, lr=exp.model.pretrain.lr * 2)
    benchmark = dataclasses.replace(exp.benchmark, test_size=exp.benchmark.test_size + 1)
    why = shipped.difference(pretrain, benchmark)
    assert "model.pretrain.lr: shipped" in why and "benchmark.test_size: shipped" in why
    # the task files' sizes are not the corpus's: they change no base
    assert shipped.difference(exp.model.pretrain, dataclasses.replace(exp.benchmark, train_size=7)) is None


def test_install_checks_every_file_and_the_base_loads(tmp_path):
    out = shipped.install(tmp_path / "llava", tmp_path / "clip")
    assert out["commit"] == shipped.read_manifest()["commit"]
    backbone = load_backbone(
        ModelConfig(llava=str(tmp_path / "llava"), clip=str(tmp_path / "clip"), device="cpu")
    )
    assert backbone.num_image_tokens == (minicoin.SIZE // 8) ** 2

    copy = tmp_path / "shipped"
    shutil.copytree(shipped.SHIPPED, copy)
    weights = copy / "llava" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")  # one byte changed
    target = tmp_path / "again"
    with pytest.raises(DataError, match=r"llava/model.safetensors: sha256 differs"):
        shipped.install(target / "llava", target / "clip", manifest=copy / "manifest.json")
    assert not (target / "llava").exists()  # nothing half-installed


@pytest.mark.slow
def test_the_shipped_base_was_pretrained_on_the_corpus_the_code_writes_today(tmp_path):
    """A changed corpus generator (or its settings) makes the shipped base stale: rebuild it then."""
    corpus = shipped.read_manifest()["settings"]["corpus"]
    folder = minicoin.generic_corpus(tmp_path / "generic", corpus["generic_size"], corpus["seed"],
                                     corpus["test_size"], corpus["generic_grounding_weight"])  # fmt: skip
    assert sha256_file(folder / "train.json") == shipped.read_manifest()["corpus_sha256"], (
        "the generic corpus changed since the base was shipped: run `make shipped-base` and commit it"
    )
    assert json.loads((shipped.SHIPPED / "llava" / "pretraining.json").read_text())["records"] > 0


def test_every_answer_fits_the_default_generation_length():
    """Every test answer, a box the longest (about 20 tokens of the shipped tokenizer), and the end token fit
    in `evaluation.max_new_tokens`: with fewer new tokens every box is cut and box_iou scores 0 whatever the
    model knows."""
    from transformers import AutoTokenizer

    exp = load_experiment(ROOT / "config.yaml")
    tokenizer = AutoTokenizer.from_pretrained(shipped.SHIPPED / "llava")
    longest = max(
        len(tokenizer(sample.answer, add_special_tokens=False)["input_ids"]) + 1  # + the end token
        for drawn in minicoin.test_samples(exp.benchmark.seed, 20).values()
        for sample, _ in drawn
    )
    assert 15 <= longest <= exp.evaluation.max_new_tokens


def test_a_shipped_base_round_trips_through_its_manifest(tmp_path):
    """What `make shipped-base` writes (`ship`) is what the DAG reads back (`difference`, `install`)."""
    from modalprompt.bench.pretrain import pretrain_base
    from modalprompt.config import BenchmarkConfig, PretrainConfig, ProgressConfig

    benchmark = BenchmarkConfig(seed=1, generic_size=16, test_size=5)
    corpus = minicoin.generic_corpus(tmp_path / "generic", benchmark.generic_size, benchmark.seed,
                                     benchmark.test_size)  # fmt: skip
    pretrain = PretrainConfig(hidden=32, layers=1, vision_hidden=16, feature=16, clip_steps=2, caption_steps=2,
                              batch_size=4)  # fmt: skip
    threads = torch.get_num_threads()
    report = pretrain_base(corpus, tmp_path / "llava", tmp_path / "clip", pretrain, ProgressConfig(0, 0))
    # one thread whatever the machine (the weights depend on it), and the caller's threads restored
    assert report["threads"] == shipped.PRETRAIN_THREADS == 1 and torch.get_num_threads() == threads
    into = tmp_path / "package"
    manifest = shipped.ship(tmp_path / "llava", tmp_path / "clip", shipped.build_settings(pretrain, benchmark),
                            corpus / "train.json", report, "abc123", into=into)  # fmt: skip
    assert shipped.difference(pretrain, benchmark, manifest=manifest) is None
    assert "generic_size" in shipped.difference(pretrain, BenchmarkConfig(seed=1, generic_size=17, test_size=5),
                                                manifest=manifest)  # fmt: skip
    weighted = dataclasses.replace(benchmark, generic_grounding_weight=2)
    assert "benchmark.generic_grounding_weight" in shipped.difference(pretrain, weighted, manifest=manifest)
    read_layer = dataclasses.replace(pretrain, vision_feature_layer=-3)
    assert "model.pretrain.vision_feature_layer" in shipped.difference(
        read_layer, benchmark, manifest=manifest
    )
    # the LLaVA the base ships reads the vision tower's layer that the settings name
    assert json.loads((tmp_path / "llava" / "config.json").read_text())["vision_feature_layer"] == -2
    shipped.install(tmp_path / "out" / "llava", tmp_path / "out" / "clip", manifest=manifest)
    for name in shipped.FOLDERS:
        for file in (tmp_path / name).iterdir():
            assert (tmp_path / "out" / name / file.name).read_bytes() == file.read_bytes()
    assert shipped.read_manifest(manifest)["commit"] == "abc123"
