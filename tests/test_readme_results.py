"""Every results file the README cites is in the repository: present, tracked by git, and not matched by an
ignore pattern (so a clean clone holds it, and a re-measured file shows up in `git status`)."""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CITED = re.compile(r"benchmarks/results/[\w./-]*[\w]")


def _cited() -> list[str]:
    return sorted(set(CITED.findall((ROOT / "README.md").read_text())))


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)


def test_the_readme_cites_results_files():
    assert _cited(), "the README cites no benchmarks/results/ file: the pattern or the README changed"


@pytest.mark.parametrize("path", _cited())
def test_every_results_file_the_readme_cites_is_committed(path):
    if _git("rev-parse", "--is-inside-work-tree").returncode != 0:
        pytest.fail("not a git checkout: the test needs git to see which files are tracked")
    assert (ROOT / path).is_file(), f"README.md cites {path}, which does not exist"
    assert _git("ls-files", "--error-unmatch", path).returncode == 0, (
        f"README.md cites {path}: not tracked by git"
    )
    assert _git("check-ignore", "-q", "--no-index", path).returncode == 1, (
        f"{path} matches a .gitignore pattern"
    )


def test_every_generated_table_in_the_readme_equals_its_results_file():
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import tables  # a script, not a package

    text = (ROOT / "README.md").read_text()
    assert tables.MARKED.search(text), "the README holds no generated table: the markers changed"
    assert tables.render(text) == text, (
        "a table differs from its results file: run benchmarks/tables.py README.md"
    )
