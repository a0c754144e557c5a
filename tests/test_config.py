"""Config: the shipped config.yaml and the schema agree with the package; bad values are named."""

from pathlib import Path

import jsonschema
import pytest
import yaml

from modalprompt import methods
from modalprompt.config import ConfigError, MethodConfig, TextFeature, config_hash, job_from_json, job_to_json
from modalprompt.experiment import ExperimentConfig, experiment_from_dict, json_schema, load_experiment
from modalprompt.jobs import EvalJob, TrainJob, eval_job, train_job

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
TOY = ROOT / "config" / "toy.yaml"  # the quick toy experiment


def _raw(**changes):
    raw = yaml.safe_load(TOY.read_text())
    for dotted, value in changes.items():
        node = raw
        *parents, last = dotted.split(".")
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        node[last] = value
    return raw


def test_committed_schema_is_generated_from_the_config_classes():
    """The workflow validates against the YAML file, the package against its dataclasses: they must agree."""
    assert yaml.safe_load(SCHEMA.read_text()) == json_schema(), (
        "run `modalprompt schema > " + str(SCHEMA) + "`"
    )


def test_every_schema_key_has_type_description_and_default():
    def walk(node, path, defaults=True):
        for key, prop in node.get("properties", {}).items():
            where = f"{path}.{key}"
            assert "type" in prop and prop.get("description"), where
            assert ("default" in prop) == defaults, where
            # overrides (a task's, a method section's `training`) have no defaults: the values they override do
            is_override = key in ("training", "evaluation") and path != "config"
            walk(prop, where, defaults and not is_override)
            if "items" in prop:
                walk(prop["items"], where + ".items", defaults)

    walk(json_schema(), "config")


def test_toy_config_is_valid_for_both():
    raw = yaml.safe_load(TOY.read_text())
    jsonschema.validate(raw, json_schema())
    cfg = load_experiment(TOY)
    assert [t.name for t in cfg.tasks] == ["colors", "shapes", "count"]
    assert cfg.model.llava == str(ROOT / "models" / "tiny" / "llava")  # under paths.models
    assert cfg.tasks[0].train_file == str(ROOT / "data" / "toy" / "colors" / "train.json")  # under paths.data
    assert cfg.results_dir == ROOT / "results" / "tiny-demo"
    assert cfg.tracking_uri == f"sqlite:///{ROOT / 'results' / 'tiny-demo' / 'mlflow.db'}"
    assert cfg.training_for("count").epochs == 60 and cfg.training_for("colors").epochs == cfg.training.epochs
    assert cfg.stage_of("shapes") == 2


def test_schema_and_classes_reject_the_same_bad_configs():
    for changes in (
        {"method.lam": 2},
        {"tasks.0.name": "a b"},
        {"model.dtype": "fp8"},
        {"extra": 1},
        {"tasks.0.training": {"epoch": 1}},
        {"resources.train.gpus": -1},
    ):
        raw = _raw(**changes)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(raw, json_schema())
        with pytest.raises(ConfigError):
            experiment_from_dict(raw, "config.yaml")


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
        ({"method.prefix_lenght": 3}, r"config.yaml: method: unknown key\(s\) \['prefix_lenght'\]"),
        ({"method.transfer_num": "3"}, r"config.yaml: method.transfer_num = '3': expected an integer"),
        (
            {"method.transfer_num": 100},
            r"method.transfer_num = 100 is invalid: expected a number >= 1 and <= 64",
        ),
        ({"method.lam": 1.5}, r"method.lam = 1.5 is invalid: expected a number >= 0.0 and <= 1.0"),
        (
            {"method.text_feature": "cls"},
            r"text_feature = 'cls' is not allowed: choose one of \['pooled', 'projected'\]",
        ),
        ({"training.schedule": "linear"}, r"choose one of \['constant', 'cosine'\]"),
        ({"tasks.0.name": "bad name;rm"}, r"tasks\[0\].name = 'bad name;rm' is not a safe name"),
        ({"tasks.0.name": "../up"}, r"tasks\[0\].name = '../up' is not a safe name"),
        ({"tasks.1.name": "colors"}, r"tasks\[1\].name = 'colors' appears twice"),
        (
            {"tasks.0.scorer": "bleu"},
            r"tasks\[0\].scorer = 'bleu' is not allowed: choose one of \['option_letter'",
        ),
        (
            {"tasks.0.training": {"lr": -1}},
            r"tasks\[0\].training.lr = -1 is invalid: expected a number > 0.0",
        ),
        ({"tasks.0.training": {"epoch": 2}}, r"tasks\[0\].training: unknown key\(s\) \['epoch'\]"),
        ({"tasks.0.train_file": ""}, r"tasks\[0\].train_file is missing"),
        ({"model.source": "original"}, r"model.original_llava is empty"),
        ({"experiment": "my run"}, r"experiment = 'my run' is not a safe name"),
    ],
)
def test_bad_values_are_named(changes, message):
    with pytest.raises(ConfigError, match=message):
        experiment_from_dict(_raw(**changes), "config.yaml")


def test_missing_config_file_says_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match="does not exist: pass --config"):
        load_experiment(tmp_path / "nope.yaml")


def test_job_settings_round_trip_and_are_canonical():
    cfg = load_experiment(TOY)
    job = train_job(cfg, "count")
    assert job.training.epochs == 60 and job.task.training == {}  # overrides applied, not repeated
    assert job_from_json(TrainJob, job_to_json(job)) == job
    evaluation = eval_job(cfg, "colors")
    assert job_from_json(EvalJob, job_to_json(evaluation)) == evaluation
    assert job_to_json(job) == job_to_json(train_job(cfg, "count"))
    with pytest.raises(ConfigError, match="--settings: not valid JSON"):
        job_from_json(TrainJob, "{")


def test_hash_ignores_key_order():
    assert config_hash({"a": 1, "b": 2}) == config_hash({"b": 2, "a": 1})
    assert config_hash(MethodConfig()) != config_hash(MethodConfig(lam=0.4))


SHIPPED = [*sorted((ROOT / "config").glob("*.yaml")), ROOT / "config.yaml"]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    assert load_experiment(path).tasks


@pytest.mark.parametrize("name", ["minicoin-all.yaml", "minicoin-all-short.yaml"])
def test_the_all_methods_configs_share_the_default_base_and_data(name):
    """They run on the default's generated data and pretrained base (their header says so): the same
    folders, the same base and data settings, and tasks that are the default's own."""
    default, other = load_experiment(ROOT / "config.yaml"), load_experiment(ROOT / "config" / name)
    assert other.model == default.model and other.benchmark == default.benchmark
    assert (other.paths.models, other.paths.data) == (default.paths.models, default.paths.data)
    assert other.pipeline.seeds == (0, 1, 2) and {str(m) for m in other.pipeline.methods} == set(
        methods.REGISTRY
    )
    assert all(task in default.tasks for task in other.tasks)


def test_the_base_pretraining_settings_rerun_only_jobs_whose_base_is_pretrained_here():
    """`model.pretrain` is in a job's settings (its rerun key) only with `model.source: pretrain`; elsewhere
    the job reads it back as the defaults."""
    import dataclasses

    from modalprompt.config import ModelSource
    from modalprompt.jobs import job_settings

    coin = load_experiment(ROOT / "config" / "coin.yaml")
    task = coin.tasks[0].name
    other_base = dataclasses.replace(coin.model.pretrain, layers=coin.model.pretrain.layers + 1)
    changed = dataclasses.replace(coin, model=dataclasses.replace(coin.model, pretrain=other_base))
    for job_of, cls in (
        (lambda cfg: train_job(cfg, task), TrainJob),
        (lambda cfg: eval_job(cfg, task), EvalJob),
    ):
        assert job_settings(job_of(changed)) == job_settings(job_of(coin))
        assert job_from_json(cls, job_settings(job_of(coin))).model == coin.model  # the defaults, read back
    mini = load_experiment(ROOT / "config.yaml")
    assert mini.model.source == ModelSource.PRETRAIN
    other_base = dataclasses.replace(mini.model.pretrain, layers=mini.model.pretrain.layers + 1)
    changed = dataclasses.replace(mini, model=dataclasses.replace(mini.model, pretrain=other_base))
    first = mini.tasks[0].name
    assert job_settings(train_job(changed, first)) != job_settings(train_job(mini, first))
    assert job_settings(eval_job(changed, first)) != job_settings(eval_job(mini, first))
