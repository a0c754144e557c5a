"""The MLflow UI in a real browser (Debian's Chromium, headless, driven by Selenium with Debian's chromedriver:
nothing downloaded), over a store that the pipeline produced in this test. `make test-browser` installs
Chromium and runs it; screenshots go to $MODALPROMPT_SCREENSHOTS (default: test-artifacts/screenshots).
$MODALPROMPT_CHROMIUM and $MODALPROMPT_CHROMEDRIVER override the two programs' paths."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import skip_unless_required

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("MODALPROMPT_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("MODALPROMPT_CHROMEDRIVER", "/usr/bin/chromedriver")
pytestmark = pytest.mark.browser
SHOTS = Path(os.environ.get("MODALPROMPT_SCREENSHOTS", ROOT / "test-artifacts" / "screenshots"))


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "HF_HUB_OFFLINE": "1",
    }


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The toy DAG with three methods, run by the real Snakemake: its MLflow store is what the UI shows."""
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        skip_unless_required(
            "browser", "needs Debian's chromium and chromium-driver (make test-browser installs them)"
        )
    folder = tmp_path_factory.mktemp("browse")
    raw = yaml.safe_load((ROOT / "config" / "toy.yaml").read_text())
    raw["paths"] = {"models": "models", "data": "data", "results": "results"}
    raw["training"].update(epochs=2, batch_size=8)
    raw["evaluation"].update(max_new_tokens=3)
    raw["pipeline"]["methods"] = ["modalprompt", "seq_prompt", "zero_shot"]
    raw["resources"] = {
        k: {"gpus": 0, "cpus": 1, "mem_mb": 1000, "runtime": 10} for k in ("train", "evaluate", "prepare")
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    done = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "workflow" / "Snakefile"), "--directory",
                           str(folder), "--configfile", str(folder / "config.yaml"), "--cores", "2"], cwd=folder,
                          env=_env(), capture_output=True, text=True, timeout=1200)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return folder


@pytest.fixture(scope="module")
def ui(project):
    """`modalprompt ui` on a free port, as a user starts it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # its own session and a log file: MLflow's server starts worker processes that outlive it otherwise
    log = project / "ui.log"
    with log.open("w") as out:
        server = subprocess.Popen([sys.executable, "-m", "modalprompt", "ui", "--config", "config.yaml", "--port",
                                   str(port)], cwd=project, env=_env(), stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline and server.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                if answer.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    else:
        _stop(server)
        pytest.fail(f"modalprompt ui did not answer: {log.read_text()[-2000:]}")
    yield url
    _stop(server)


def _stop(server: subprocess.Popen) -> None:
    """The UI and every process it started (its session): asked to stop, then killed."""
    for signal_number in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(server.pid, signal_number)
        except ProcessLookupError:
            break
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(timeout=30)
        time.sleep(1)  # its workers stop too, or the next signal ends them


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1000"):  # fmt: skip
        options.add_argument(flag)
    for old in SHOTS.glob("*.png"):  # this run's screenshots only
        old.unlink()
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def _open(browser, url: str, *texts: str, timeout: float = 60) -> str:
    """Load `url` and wait until the page shows every one of `texts`; returns the page's text."""
    browser.get(url)
    deadline = time.time() + timeout
    while time.time() < deadline:
        body = browser.find_element("tag name", "body").text
        if all(t in body for t in texts):
            return body
        time.sleep(0.5)
    raise AssertionError(f"{url} did not show {texts}; it shows:\n{body[:2000]}")


def _shot(browser, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / name
    browser.save_screenshot(str(path))
    return path


def _shown_metrics(body: str) -> dict[str, float]:
    """Metric name / value pairs of the run page's metrics table (a name line, then its value line)."""
    lines = [line.strip() for line in body.splitlines()]
    shown = {}
    for name, value in itertools.pairwise(lines):
        try:
            shown[name] = float(value)
        except ValueError:
            continue
    return shown


def _runs(project):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{project / 'results' / 'tiny-demo' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny-demo")
    return experiment.experiment_id, client.search_runs([experiment.experiment_id])


def test_summary_run_shows_the_matrix_metrics_and_the_heatmap(project, ui, browser):
    experiment, runs = _runs(project)
    _open(browser, f"{ui}/#/experiments/{experiment}/runs", "modalprompt summary", "seq_prompt summary")
    _shot(browser, "experiment.png")
    summary = next(
        r for r in runs if r.data.tags.get("kind") == "summary" and r.data.tags["method"] == "modalprompt"
    )
    body = _open(
        browser, f"{ui}/#/experiments/{experiment}/runs/{summary.info.run_id}", "Metrics", "avg", "bwt"
    )
    shown = _shown_metrics(body)
    results = project / "results" / "tiny-demo" / "modalprompt"
    metrics = json.loads((results / "metrics.json").read_text())
    for name in ("avg", "mft", "maa", "bwt", "forgetting"):
        assert shown[name] == pytest.approx(metrics[name], abs=1e-6), name  # what the page shows = the file
    rows = (results / "matrix.csv").read_text().splitlines()
    tasks, last = rows[0].split(",")[1:], rows[-1].split(",")[1:]
    for task, value in zip(tasks, last, strict=True):
        assert shown[f"acc/{task}"] == pytest.approx(float(value), abs=1e-4), task  # latest step = last stage
    _shot(browser, "summary-run.png")

    _open(
        browser,
        f"{ui}/#/experiments/{experiment}/runs/{summary.info.run_id}/artifacts/heatmap.png",
        "heatmap.png",
    )
    from PIL import Image

    width = Image.open(results / "heatmap.png").width
    deadline = time.time() + 30
    while time.time() < deadline:  # the file itself, fetched by the page and drawn at its own size
        drawn = [browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", i)
                 for i in browser.find_elements("tag name", "img") if (i.get_attribute("src") or "").startswith("blob:")]  # fmt: skip
        if width in drawn:
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"the heatmap ({width} px wide) did not load in the artifact view")
    _shot(browser, "heatmap.png")


def test_methods_side_by_side_on_the_compare_page(project, ui, browser):
    experiment, runs = _runs(project)
    summaries = {r.data.tags["method"]: r for r in runs if r.data.tags.get("kind") == "summary"}
    assert set(summaries) == {"modalprompt", "seq_prompt", "zero_shot"}
    ids = json.dumps([r.info.run_id for r in summaries.values()]).replace(" ", "")
    body = _open(browser, f"{ui}/#/compare-runs?runs={ids}&experiments=[\"{experiment}\"]", "avg", "bwt",
                 "forgetting", *(f"{m} summary" for m in summaries))  # fmt: skip
    numbers = set()
    for token in body.split():
        try:
            numbers.add(round(float(token), 4))
        except ValueError:
            continue
    for method in summaries:
        metrics = json.loads((project / "results" / "tiny-demo" / method / "metrics.json").read_text())
        # each method's avg is on the page, as the UI rounds it (to 3 or 4 decimals)
        assert any(abs(metrics["avg"] - n) <= 5e-4 for n in numbers), (method, metrics["avg"])
    _shot(browser, "compare.png")
    comparison = next(r for r in runs if r.data.tags.get("kind") == "comparison")
    _open(browser, f"{ui}/#/experiments/{experiment}/runs/{comparison.info.run_id}/artifacts/forgetting.png",
          "forgetting.png")  # fmt: skip
    time.sleep(2)
    _shot(browser, "forgetting.png")
    assert {"experiment.png", "summary-run.png", "heatmap.png", "compare.png", "forgetting.png"} <= {
        p.name for p in SHOTS.glob("*.png")
    }


def test_a_training_stage_shows_its_curves_while_it_trains(project, ui, browser, tmp_path):
    """A training job sends its curves to the store the UI serves while it trains: the run page shows
    the run running, with the steps so far (the screenshot for the README's "Following a running job")."""
    from mlflow.tracking import MlflowClient

    raw = yaml.safe_load((project / "config.yaml").read_text())
    raw["training"].update(epochs=40)  # long enough to be seen while it runs
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({**raw, "paths": {
        k: str(project / v) for k, v in raw["paths"].items()}}, sort_keys=False))  # fmt: skip
    uri = f"sqlite:///{project / 'results' / 'tiny-demo' / 'mlflow.db'}"
    job = subprocess.Popen([sys.executable, "-m", "modalprompt", "train", "--config", str(tmp_path / "config.yaml"),
                            "--task", "colors", "--out", str(tmp_path / "stage-1"), "--progress-steps", "5",
                            "--tracking-uri", uri, "--tracking-experiment", "tiny-demo-live"], cwd=tmp_path,
                           env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        client = MlflowClient(uri)
        deadline, run = time.time() + 300, None
        while time.time() < deadline and job.poll() is None:
            experiment = client.get_experiment_by_name("tiny-demo-live")
            runs = client.search_runs([experiment.experiment_id]) if experiment else []
            if runs and len(client.get_metric_history(runs[0].info.run_id, "loss")) >= 10:
                run = runs[0]
                break
            time.sleep(0.5)
        assert run is not None and job.poll() is None, "the live run did not show 10 steps while the job ran"
        page = f"{ui}/#/experiments/{experiment.experiment_id}/runs/{run.info.run_id}/model-metrics"
        _open(browser, page, "loss", "ce")
        time.sleep(3)  # the charts draw
        assert job.poll() is None  # still training when the picture is taken
        _shot(browser, "live-run.png")
    finally:
        output = job.communicate(timeout=600)[0]
    assert job.returncode == 0, output[-3000:]
    assert "modalprompt train stage 1 colors: step 5/" in output  # its log has progress lines too
