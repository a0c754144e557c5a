"""Config: the shipped config.yaml loads; bad values get messages naming the key and the fix."""

from pathlib import Path

import pytest
import yaml

from modalprompt.config import (
    ConfigError,
    ExperimentConfig,
    MethodConfig,
    TextFeature,
    config_hash,
    experiment_from_dict,
    load_experiment,
)

ROOT = Path(__file__).resolve().parents[1]


def _raw(**changes):
    raw = yaml.safe_load((ROOT / "config.yaml").read_text())
    raw.pop("paths", None)
    for dotted, value in changes.items():
        node = raw
        *parents, last = dotted.split(".")
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        node[last] = value
    return raw


def test_shipped_config_loads_and_resolves_paths():
    cfg = load_experiment(ROOT / "config.yaml")
    assert [t.name for t in cfg.tasks] == ["colors", "shapes", "count"]
    assert Path(cfg.model.llava).is_absolute() and cfg.model.llava.startswith(str(ROOT))
    assert cfg.training_for("count").epochs == 60 and cfg.training_for("colors").epochs == cfg.training.epochs
    assert cfg.stage_of("shapes") == 2


def test_defaults_reproduce_the_reference():
    method = MethodConfig()
    assert (method.prefix_length, method.transfer_num, method.lam) == (10, 3, 0.5)
    assert (method.image_loss_weight, method.text_loss_weight, method.text_feature) == (
        1.0,
        1.0,
        TextFeature.POOLED,
    )
    training = ExperimentConfig().training
    assert (training.lr, training.weight_decay, training.epochs) == (2e-4, 0.0, 10.0)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"method.prefix_lenght": 3}, r"method: unknown key\(s\) \['prefix_lenght'\]"),
        ({"method.transfer_num": "3"}, r"method.transfer_num = '3': expected an integer"),
        ({"method.lam": 1.5}, r"method.lam = 1.5 is invalid: expected a number in \[0, 1\]"),
        (
            {"method.text_feature": "cls"},
            r"text_feature = 'cls' is not allowed: choose one of \['pooled', 'projected'\]",
        ),
        ({"training.schedule": "linear"}, r"choose one of \['constant', 'cosine'\]"),
        ({"tasks.0.name": "bad name;rm"}, r"tasks\[0\].name = 'bad name;rm' is not a safe task name"),
        ({"tasks.1.name": "colors"}, r"tasks\[1\].name = 'colors' appears twice"),
        ({"tasks.0.training": {"lr": -1}}, r"tasks\[colors\].training.lr = -1.0 is invalid"),
        ({"tasks.0.training": {"epoch": 2}}, r"tasks\[colors\].training: unknown key\(s\) \['epoch'\]"),
    ],
)
def test_bad_values_are_named(changes, message):
    with pytest.raises(ConfigError, match=message):
        experiment_from_dict(_raw(**changes), "config.yaml")


def test_missing_config_file_says_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match="does not exist: pass --config"):
        load_experiment(tmp_path / "nope.yaml")


def test_hash_ignores_key_order():
    assert config_hash({"a": 1, "b": 2}) == config_hash({"b": 2, "a": 1})
    assert config_hash(MethodConfig()) != config_hash(MethodConfig(lam=0.4))
