"""The README and the documentation site (mkdocs.yml, docs/): the generated configuration reference is current
and lists every key of the schema; the README stays short and gives the two commands; its links and the
site's pages exist; the pipeline picture is Snakemake's rule graph of today's workflow; and the text speaks
about the tool only. `make docs` (CI's docs tier) builds the site with --strict."""

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
REFERENCE = ROOT / "docs" / "configuration.md"
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"


def _generator():
    spec = importlib.util.spec_from_file_location(
        "gen_config_reference", ROOT / "docs" / "gen_config_reference.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------- the configuration reference


def test_the_config_reference_is_what_the_config_code_gives():
    assert REFERENCE.read_text() == _generator().render(), (
        "docs/configuration.md is stale: run python docs/gen_config_reference.py (make docs-reference)"
    )


def _schema_keys(schema: dict, prefix: str = "") -> list[tuple[str, list[str]]]:
    """(key path, the keys it accepts when it is an override mapping) for every key of the JSON schema, read
    from the committed schema file, independently of the generator. An override mapping (a task's or a
    method section's `training:`) is an object whose keys have no defaults: its keys are the overridden
    section's."""
    keys = []
    for name, sub in schema["properties"].items():
        path = f"{prefix}{name}"
        inner = sub.get("items", sub) if sub.get("type") == "array" else sub
        children = inner.get("properties")
        if children and not any("default" in child for child in children.values()):
            keys.append((path, list(children)))
            continue
        keys.append((path, []))
        if children:
            keys += _schema_keys(inner, f"{path}[]." if sub.get("type") == "array" else f"{path}.")
    return keys


def test_the_schema_walk_finds_nested_keys_and_override_mappings():
    keys = dict(_schema_keys(yaml.safe_load(SCHEMA.read_text())))
    assert len(keys) > 100
    assert "model.pretrain.hidden" in keys and "resources.train.gpus" in keys and "tasks[].scorer" in keys
    assert "lr" in keys["lora.training"] and "max_new_tokens" in keys["tasks[].evaluation"]


@pytest.mark.parametrize(
    "key,accepts", _schema_keys(yaml.safe_load(SCHEMA.read_text())), ids=lambda v: str(v)
)
def test_the_config_reference_lists_every_schema_key(key, accepts):
    page = REFERENCE.read_text()
    section = key.split(".")[0]
    if "." not in key and key != "experiment":  # a top-level section: its heading
        assert f"## `{section}`" in page, f"docs/configuration.md has no section for `{key}`"
        return
    rows = [line for line in page.splitlines() if line.startswith(f"| `{key}` |")]
    assert rows, f"docs/configuration.md has no row for `{key}`: run make docs-reference"
    cells = [c.strip() for c in rows[0].strip("|").split(" | ")]
    assert len(cells) == 5 and all(cells[i] for i in (1, 3, 4)), (
        f"`{key}`: a row needs type, description, reruns"
    )
    for name in accepts:
        assert f"`{name}`" in rows[0], f"`{key}` accepts `{name}`, which its row does not list"


# ----------------------------------------------------------------------------- the README


def test_the_readme_is_short():
    lines = README.read_text().count("\n")
    assert lines <= 250, f"README.md has {lines} lines; the details belong in docs/"


def test_the_readme_gives_the_two_commands_that_ci_and_the_makefile_run():
    text = README.read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.DOTALL).group(1)
    assert re.search(r"^make demo\b", block, re.M) and re.search(r"^make test\b", block, re.M)
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo: .*\n\t\$\(BIN\)/snakemake\n", makefile, re.M)
    assert re.search(r"^test: ", makefile, re.M)
    assert re.search(r"^tier \w+ make test\b", (ROOT / ".ci" / "run").read_text(), re.M), (
        "CI runs `make test`"
    )


LINK = re.compile(r"\]\(([^)#\s]+)(#[^)]*)?\)")


def test_every_relative_link_of_the_readme_exists():
    targets = [t for t, _ in LINK.findall(README.read_text()) if not re.match(r"\w+://", t)]
    assert "docs/getting-started.md" in targets and "docs/configuration.md" in targets
    missing = [t for t in targets if not (ROOT / t).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"


def test_every_page_is_in_the_site_navigation():
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]

    def pages(entries):
        for entry in entries:
            for value in entry.values() if isinstance(entry, dict) else [entry]:
                yield from pages(value) if isinstance(value, list) else [value]

    listed = set(pages(nav))
    on_disk = {str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md")}
    assert listed == on_disk, (
        f"pages not in mkdocs.yml's nav: {on_disk - listed}; missing: {listed - on_disk}"
    )
    for page in ("getting-started.md", "coin-slurm.md", "configuration.md", "methods.md", "base-models.md",
                 "results.md", "performance.md", "reliability.md", "architecture.md", "contributing.md"):  # fmt: skip
        assert page in listed


def test_the_docs_tier_builds_the_site_strictly():
    assert re.search(r"^docs: .*\n\t.*\$\(BIN\)/mkdocs build --strict", (ROOT / "Makefile").read_text(), re.M)
    assert re.search(r"^tier \w+ make .*\bdocs\b", (ROOT / ".ci" / "run").read_text(), re.M)


# ----------------------------------------------------------------------------- the pipeline picture


def _snakemake() -> str:
    found = Path(sys.executable).parent / "snakemake"
    return str(found) if found.exists() else shutil.which("snakemake") or pytest.skip("no snakemake")


def test_the_pipeline_picture_is_the_rule_graph_of_the_workflow():
    """docs/images/rulegraph.svg (`make rulegraph`) names the rules and edges `snakemake --rulegraph` gives
    for config.yaml now: a rule added, dropped or rewired makes it stale."""
    out = subprocess.run([_snakemake(), "--rulegraph"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    labels = dict(re.findall(r'^\s*(\d+)\[label = "(\w+)"', out.stdout, re.M))
    edges = {(labels[a], labels[b]) for a, b in re.findall(r"^\s*(\d+) -> (\d+)", out.stdout, re.M)}
    svg = (ROOT / "docs" / "images" / "rulegraph.svg").read_text()
    nodes = dict(re.findall(r"<title>(\d+)</title>\n<path[^\n]*\n<text[^>]*>(\w+)</text>", svg))
    drawn = {(nodes[a], nodes[b]) for a, b in re.findall(r"<title>(\d+)&#45;&gt;(\d+)</title>", svg)}
    assert set(nodes.values()) == set(labels.values()), (
        "docs/images/rulegraph.svg is stale: run make rulegraph"
    )
    assert drawn == edges, "docs/images/rulegraph.svg is stale: run make rulegraph"
    assert "rulegraph.svg" in README.read_text()


# ----------------------------------------------------------------------------- what the text speaks about

FORBIDDEN = re.compile(r"this stop|issue [0-9]|shared/docs|\.\./shared|/work/|/tmp/", re.IGNORECASE)


def test_the_readme_and_docs_speak_about_the_tool_only():
    """No history of the project's making, no issue numbers, no files outside the repository, no paths of
    one machine."""
    files = [
        README,
        ROOT / "mkdocs.yml",
        *(p for p in (ROOT / "docs").rglob("*") if p.suffix in {".md", ".json", ".py"}),
    ]
    found = [
        f"{p.relative_to(ROOT)}:{n}: {line.strip()[:80]}"
        for p in files
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if FORBIDDEN.search(line)
    ]
    assert not found, "\n".join(found)
