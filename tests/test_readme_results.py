"""The numbers in README.md and the documentation pages (docs/**/*.md) come from committed results files.

- every results file they cite is in the repository: present, tracked by git, and not matched by an ignore
  pattern (so a clean clone holds it, and a re-measured file shows up in `git status`); a file the docs only
  name as the `--out` of the command that writes it is not a citation;
- every generated table (between `<!-- table: KIND FILE -->` and `<!-- end table -->`) equals what
  benchmarks/tables.py writes from its file, so a number that differs from its file fails;
- no table of numbers is typed in by hand outside those markers.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CITED = re.compile(r"benchmarks/results/[\w./-]*[\w]")
WRITTEN = re.compile(r"--out\s+(benchmarks/results/[\w./-]*[\w])")

sys.path.insert(0, str(ROOT / "benchmarks"))
import tables  # noqa: E402  (a script, not a package)


def _documents() -> list[Path]:
    return tables.documents()


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _cited() -> list[str]:
    """Results files the docs cite (less those they only name as a command's output), and every file a
    generated table reads."""
    cited, written, sources = set(), set(), set()
    for path in _documents():
        text = path.read_text()
        cited |= set(CITED.findall(text))
        written |= set(WRITTEN.findall(text))
        sources |= {m.group(3) for m in tables.MARKED.finditer(text)}
    return sorted((cited - written) | sources)


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)


def test_the_docs_cite_results_files():
    assert _cited(), "neither the README nor the docs cite a benchmarks/results/ file: the pattern changed"
    assert {"README.md", "docs/results.md"} <= {_name(p) for p in _documents()}


@pytest.mark.parametrize("path", _cited())
def test_every_results_file_the_docs_cite_is_committed(path):
    if _git("rev-parse", "--is-inside-work-tree").returncode != 0:
        pytest.fail("not a git checkout: the test needs git to see which files are tracked")
    assert (ROOT / path).is_file(), f"the docs cite {path}, which does not exist"
    assert _git("ls-files", "--error-unmatch", path).returncode == 0, (
        f"the docs cite {path}: not tracked by git"
    )
    assert _git("check-ignore", "-q", "--no-index", path).returncode == 1, (
        f"{path} matches a .gitignore pattern"
    )


def test_the_readme_and_the_results_pages_hold_generated_tables():
    for name in ("README.md", "docs/results.md", "docs/performance.md"):
        assert tables.MARKED.search((ROOT / name).read_text()), f"{name} holds no generated table"


@pytest.mark.parametrize("path", _documents(), ids=_name)
def test_every_generated_table_equals_its_results_file(path):
    text = path.read_text()
    assert tables.render(text) == text, (
        f"a table in {_name(path)} differs from its results file: run python benchmarks/tables.py"
    )


def test_a_number_changed_in_a_generated_table_is_caught():
    text = (ROOT / "README.md").read_text()
    match = tables.MARKED.search(text)
    rows_start = text.index("\n", text.index("|---", match.start(4)))  # after the header's separator line
    digit = re.compile(r"\d").search(text, rows_start, match.end(4))
    assert digit, "the README's first generated table holds no number"
    at = digit.start()
    changed = text[:at] + str((int(text[at]) + 1) % 10) + text[at + 1 :]
    assert tables.render(changed) != changed


_VALUE = r"[-+]?\d[\d,]*(\.\d+)?(\s*(s|ms|%|x|MB|GB))?"
# a cell that is a measured value: "69.9", "1,704 s", "55.3 +- 8.7", "1,968 s / 18.1 s", "80 (68-133)"
NUMBER = re.compile(rf"\**{_VALUE}(\s*(\+-|/)\s*{_VALUE})?(\s*\(\d[\d.,]*\s*-\s*\d[\d.,]*\))?\**")


def _hand_typed_number_rows(text: str) -> list[str]:
    """Table rows outside the generated regions with two or more cells that are numbers."""
    outside = tables.MARKED.sub("", text)
    rows = []
    for line in outside.splitlines():
        if not line.startswith("|") or set(line) <= set("|-: "):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if sum(bool(NUMBER.fullmatch(c)) for c in cells) >= 2:
            rows.append(line)
    return rows


@pytest.mark.parametrize("path", _documents(), ids=_name)
def test_no_table_of_numbers_is_typed_by_hand(path):
    rows = _hand_typed_number_rows(path.read_text())
    assert not rows, (
        f"{_name(path)}: table rows of numbers outside a generated table (add a table kind to "
        f"benchmarks/tables.py and mark the table): {rows[:3]}"
    )


def test_the_hand_typed_check_can_fail():
    assert _hand_typed_number_rows("| a | 1.0 | 2 s |\n|---|---|---|\n| b | 3 | 4 |\n")
    generated = "<!-- table: startup x.json -->\n| a | 1.0 | 2 s |\n<!-- end table -->\n"
    assert not _hand_typed_number_rows(generated)
