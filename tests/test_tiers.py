"""CI never passes a tier that ran nothing: with $MODALPROMPT_REQUIRE_TIERS naming it (as `make test-slurm`
and `make test-browser` set it), a missing Slurm cluster or browser fails the tier instead of skipping it,
and a selection with no tests at all is pytest's exit code 5, which `make` (and so CI) reports as a failure.
Each case runs pytest in a subprocess on the real tier files, with the cluster or browser made absent."""

import os
import subprocess
import sys
from pathlib import Path

from conftest import REQUIRED_TIERS

ROOT = Path(__file__).resolve().parents[1]
ABSENT = {"SLURM_CONF": "", "MODALPROMPT_CHROMIUM": str(ROOT / "no-such-chromium")}


def _pytest(marker: str, *files: str, **env: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", marker, *files]
    return subprocess.run(command, cwd=ROOT, env={**os.environ, **ABSENT, **env}, capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def test_required_tiers_without_their_environment_fail_and_optional_ones_skip():
    files = ("tests/test_slurm.py", "tests/test_browser.py")
    required = _pytest("slurm or browser", *files, **{REQUIRED_TIERS: "slurm,browser"})
    out = required.stdout + required.stderr
    assert required.returncode == 1, out[-2000:]
    assert "the slurm tier is required" in out and "the browser tier is required" in out
    assert " passed" not in out and " skipped" not in out

    optional = _pytest("slurm or browser", *files, **{REQUIRED_TIERS: ""})
    out = optional.stdout + optional.stderr
    assert optional.returncode == 0 and " skipped" in out and " error" not in out, out[-2000:]


def test_a_tier_that_selects_no_test_is_an_error():
    done = _pytest("slurm", "tests/test_tiers.py")
    assert done.returncode == 5, done.stdout[-2000:]  # pytest.ExitCode.NO_TESTS_COLLECTED: make fails
