"""Methods, base-model families and scorers from installed packages (entry points, modalprompt/plugins.py):
one that loads joins its registry and the config's allowed values; one that fails to load, or whose name is
taken, stops with a message that names the entry point and the package it comes from. Each case with a
package runs in a process of its own, the package installed beside it (tests/installed.py): the registries
load once per process.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from installed import environment, install

from modalprompt.config import MethodConfig
from modalprompt.errors import PluginError
from modalprompt.methods import Method, Section, registry

METHOD = """
from modalprompt.methods import Method, Section, register
from modalprompt.config import MethodConfig


@register
class Extra(Method):
    name = "{name}"
    summary = "a method from another package"
    prompts_of = "{name}"
    section = Section("{section}", MethodConfig, "its own knobs") if "{section}" else None
    sections = ("{section}",) if "{section}" else ()
"""


def _python(site: Path, code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=environment(site), capture_output=True, text=True,
                          cwd=site.parent, timeout=300)  # fmt: skip


def _method_package(tmp_path: Path, name: str, section: str = "") -> Path:
    source = METHOD.format(name=name, section=section)
    return install(tmp_path / "site", "extra-method", {"extra_method.py": source},
                   {"modalprompt.methods": {name: "extra_method"}})  # fmt: skip


def test_an_installed_method_joins_the_registry_the_config_and_the_schema(tmp_path):
    site = _method_package(tmp_path, "extra", section="extra")
    done = _python(
        site,
        """if True:
        from modalprompt import experiment, methods
        schema = experiment.json_schema()["properties"]
        print(list(methods.REGISTRY)[-1], list(experiment.MethodName)[-1].value)
        print("extra" in schema["pipeline"]["properties"]["methods"]["items"]["enum"])
        print(schema["extra"]["description"])
        cfg = experiment.experiment_from_dict({"pipeline": {"methods": ["extra"]}, "extra": {"lam": 0.25}})
        print(cfg.extra.lam)
    """,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["extra extra", "True", "its own knobs (method extra).", "0.25"]


def test_a_method_that_fails_to_load_is_named_with_its_package(tmp_path):
    site = install(tmp_path / "site", "broken-method", {"broken_method.py": "import not_a_module\n"},
                   {"modalprompt.methods": {"broken": "broken_method"}})  # fmt: skip
    done = _python(site, "import modalprompt.methods")
    assert done.returncode != 0
    assert (
        "PluginError: entry point broken = broken_method (group modalprompt.methods, from broken-method 0.1.0) "
        "failed to load: ModuleNotFoundError: No module named 'not_a_module'"
    ) in done.stderr


def test_a_method_whose_name_is_taken_is_refused(tmp_path):
    site = _method_package(tmp_path, "l2p")
    done = _python(site, "import modalprompt.methods")
    assert done.returncode != 0
    assert (
        "entry point l2p = extra_method (group modalprompt.methods, from extra-method 0.1.0)" in done.stderr
    )
    assert "method 'l2p' of extra_method clashes with the method of that name in modalprompt.methods.l2p" in (
        done.stderr
    )


def test_a_method_section_named_like_a_common_one_is_refused(tmp_path):
    site = _method_package(tmp_path, "extra", section="training")
    done = _python(site, "import modalprompt.experiment")
    assert done.returncode != 0
    assert (
        "the config section 'training' of method(s) ['extra'] clashes with a section every experiment has"
        in (done.stderr)
    )


def _method(name: str, section: Section | None, reads: tuple[str, ...]) -> Method:
    return type(name, (Method,), {"name": name, "summary": "", "prompts_of": name, "section": section,
                                  "sections": reads})()  # fmt: skip


def test_two_methods_defining_one_section_key_or_reading_an_undefined_one_are_refused(monkeypatch):
    first, second = Section("knobs", MethodConfig, "one"), Section("knobs", dict, "another")
    monkeypatch.setattr(registry, "REGISTRY", {"a": _method("a", first, ("knobs",)),
                                               "b": _method("b", second, ("knobs",))})  # fmt: skip
    with pytest.raises(PluginError, match="methods 'a' and 'b' both define a config section 'knobs'"):
        registry.sections()
    monkeypatch.setattr(registry, "REGISTRY", {"a": _method("a", None, ("knobs",))})
    with pytest.raises(
        PluginError, match=r"method 'a' reads config sections \['knobs'\] that no method defines"
    ):
        registry.sections()


SCORER = """
def shouted(prediction, reference):
    return float(prediction == reference.upper())
"""


def test_an_installed_scorer_scores_and_is_a_valid_task_scorer(tmp_path):
    site = install(tmp_path / "site", "extra-scorer", {"extra_scorer.py": SCORER},
                   {"modalprompt.scorers": {"shouted": "extra_scorer:shouted"}})  # fmt: skip
    done = _python(
        site,
        """if True:
        from modalprompt.config import Scorer
        from modalprompt.scoring.scorers import score
        print(Scorer("shouted").value, score("shouted", "YES", "yes"), score("shouted", "yes", "yes"))
    """,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["shouted", "1.0", "0.0"]


def test_a_scorer_whose_name_is_taken_is_refused(tmp_path):
    site = install(tmp_path / "site", "extra-scorer", {"extra_scorer.py": SCORER},
                   {"modalprompt.scorers": {"exact_match": "extra_scorer:shouted"}})  # fmt: skip
    done = _python(site, "import modalprompt.scoring.scorers")
    assert done.returncode != 0
    assert (
        "a scorer named 'exact_match' exists already" in done.stderr
        and "from extra-scorer 0.1.0" in done.stderr
    )


BASE = """
from modalprompt.bases.llava import LlavaAdapter


class Copy(LlavaAdapter):
    family = "{family}"
    model_type = "{model_type}"
"""


def test_an_installed_base_family_joins_the_adapters_and_a_taken_model_type_is_refused(tmp_path):
    site = install(tmp_path / "site", "extra-base", {"extra_base.py": BASE.format(family="copy", model_type="copy")},
                   {"modalprompt.bases": {"copy": "extra_base:Copy"}})  # fmt: skip
    done = _python(
        site,
        """if True:
        from modalprompt.bases.backbone import ADAPTERS
        from modalprompt.config import ModelFamily
        print(list(ADAPTERS)[-1], ModelFamily("copy").value)
    """,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["copy", "copy"]

    taken = install(tmp_path / "taken", "taken-base", {"taken_base.py": BASE.format(family="copy", model_type="llava")},
                    {"modalprompt.bases": {"copy": "taken_base:Copy"}})  # fmt: skip
    done = _python(taken, "import modalprompt.bases.backbone")
    assert done.returncode != 0
    assert (
        "family 'copy' (model_type 'llava') clashes with modalprompt.bases.llava.LlavaAdapter" in done.stderr
    )
