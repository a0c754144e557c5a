"""The MLflow UI in a real browser (Debian's Chromium, headless, driven by Selenium with Debian's chromedriver:
nothing downloaded), over a store that the pipeline produced in this test. `make test-browser` installs
Chromium and runs it; screenshots go to $MODALPROMPT_SCREENSHOTS (default: test-artifacts/screenshots).
$MODALPROMPT_CHROMIUM and $MODALPROMPT_CHROMEDRIVER override the two programs' paths.

Every page is opened as a model-training user sees it: MLflow 3.17's UI chooses its GenAI or model-training
layout from the URL's `workflowType` (or the sidebar switch the browser remembers), so each URL carries
`workflowType=machine_learning`; MLflow's assistant panel is closed once, as a user closes it. A screenshot
is taken once what it shows is drawn: the plots' SVG axes and lines, the images at their own size."""

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

from modalprompt.tracking import EXPERIMENT_KIND_TAG, TABLE_COST, TABLE_METRICS, TRAINING_KIND, runs_table_url

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


def _training(url: str) -> str:
    """`url` in the UI's model-training layout (MLflow 3.17 opens every page in its GenAI layout otherwise)."""
    if "workflowType=" in url:
        return url
    return f"{url}{'&' if '?' in url.split('#')[-1] else '?'}workflowType=machine_learning"


def _open(browser, url: str, *texts: str, timeout: float = 60) -> str:
    """Load `url` in the model-training layout and wait until the page shows every one of `texts`; returns
    the page's text, which must not be the GenAI layout's (its sidebar's "Evaluation runs", its run pages'
    "Evaluations" breadcrumb)."""
    browser.get(_training(url))
    deadline = time.time() + timeout
    while time.time() < deadline:
        body = browser.find_element("tag name", "body").text
        if all(t in body for t in texts):
            assert "Evaluation runs" not in body and "\nEvaluations\n" not in body, body[:1000]
            _close_assistant(browser)
            return body
        time.sleep(0.5)
    raise AssertionError(f"{url} did not show {texts}; it shows:\n{body[:2000]}")


def _close_assistant(browser) -> None:
    """MLflow's assistant panel opens by itself on the first page and covers a quarter of the window: closed
    the way a user closes it (the browser remembers it)."""
    for button in browser.find_elements(
        "css selector", "[data-component-id='mlflow.assistant.chat_panel.close']"
    ):
        browser.execute_script("arguments[0].click()", button)


def _wait_drawn(browser, script: str, what: str, timeout: float = 60) -> None:
    """Wait until `script` (JavaScript returning true once the plot is drawn) holds, then for two animation
    frames, so that what the script found is painted before a screenshot."""
    deadline = time.time() + timeout
    while not browser.execute_script(script):
        if time.time() > deadline:
            raise AssertionError(f"{what} was not drawn in {timeout:.0f} s")
        time.sleep(0.25)
    browser.execute_async_script(
        "const done = arguments[0]; requestAnimationFrame(() => requestAnimationFrame(() => done()))"
    )


def _wait_image(browser, path: Path, timeout: float = 30) -> None:
    """Wait until the artifact view shows the image file `path`: fetched by the page (a blob), loaded at the
    file's own size and laid out on the page."""
    from PIL import Image

    width, height = Image.open(path).size
    _wait_drawn(browser, f"""return Array.from(document.images).some(i => i.src.startsWith('blob:')
        && i.complete && i.naturalWidth === {width} && i.naturalHeight === {height}
        && i.getBoundingClientRect().width > 0)""", f"{path.name} ({width}x{height} px)", timeout)  # fmt: skip


def _runs_table(browser) -> dict[str, dict[str, str]]:
    """The runs table's cells as the page shows them: run id -> column id (e.g. metrics.`avg`) -> text."""
    cells = browser.execute_script("""return Array.from(document.querySelectorAll('[role=gridcell][col-id]'))
        .map(c => [c.closest('[role=row]').getAttribute('row-id'), c.getAttribute('col-id'), c.innerText])""")
    table: dict[str, dict[str, str]] = {}
    for run_id, column, text in cells:
        table.setdefault(run_id, {})[column] = text.strip()
    return table


_COMPARE_GRIDS = """const grids = Array.from(document.querySelectorAll('.ReactVirtualized__Grid'));
    const names = grids.find(g => g.querySelector("a[title='Plot chart']"));  // metric names link to plots
    const values = grids[grids.indexOf(names) + 1];
    if (arguments[0] !== null) { names.scrollTop = arguments[0]; values.scrollTop = arguments[0]; }
    const cells = g => Array.from(g.querySelector('.ReactVirtualized__Grid__innerScrollContainer').children,
        c => [parseFloat(c.style.top), parseFloat(c.style.left), c.innerText.trim()]);
    return [cells(names), cells(values), names.scrollHeight, names.clientHeight];"""


def _compare_metrics(browser) -> dict[str, list[str]]:
    """The compare page's metrics table: metric name -> the value in each run column, as shown. The table is
    two virtualized grids side by side (names, values) that draw only the rows in view: both are scrolled
    through a window at a time, and each cell is placed by its position."""
    names: dict[float, str] = {}
    values: dict[tuple[float, float], str] = {}
    top = 0
    while True:
        browser.execute_script(_COMPARE_GRIDS, top)
        browser.execute_async_script(  # the grids draw the rows now in view
            "const done = arguments[0]; requestAnimationFrame(() => requestAnimationFrame(() => done()))"
        )
        named, valued, height, window = browser.execute_script(_COMPARE_GRIDS, None)
        names.update({y: text for y, _, text in named})
        values.update({(y, x): text for y, x, text in valued})
        if top + window >= height:
            break
        top += window
    browser.execute_script(_COMPARE_GRIDS, 0)  # back at the top, as the page opened
    columns = sorted({x for _, x in values})
    return {name: [values.get((y, x), "") for x in columns] for y, name in names.items()}


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


def test_the_experiment_opens_as_training_runs_with_the_summary_metrics_as_columns(project, ui, browser):
    """The link the docs give opens the runs table in the model-training layout (no GenAI "Evaluation
    runs"), in the project's saved view: one row per method's summary run, and its avg, bwt, forgetting and
    selection accuracy as columns, equal to the method's metrics.json, without a click."""
    from mlflow.tracking import MlflowClient

    experiment, runs = _runs(project)
    client = MlflowClient(f"sqlite:///{project / 'results' / 'tiny-demo' / 'mlflow.db'}")
    assert client.get_experiment(experiment).tags[EXPERIMENT_KIND_TAG] == TRAINING_KIND
    summaries = {r.info.run_id: r.data.tags["method"] for r in runs if r.data.tags.get("kind") == "summary"}
    columns = [f"metrics.`{name}`" for name in (*TABLE_METRICS, TABLE_COST)]
    body = _open(browser, runs_table_url(ui, experiment), *(f"{m} summary" for m in summaries.values()))
    assert "summary metrics" in body  # the saved view's name, in the view selector
    deadline = time.time() + 30
    while time.time() < deadline:
        table = _runs_table(browser)
        if set(table) == set(summaries) and all(c in table[r] for r in table for c in columns):
            break
        time.sleep(0.5)
    assert set(table) == set(summaries), table  # the summary runs, and only they
    for run_id, method in summaries.items():
        metrics = json.loads((project / "results" / "tiny-demo" / method / "metrics.json").read_text())
        cost = json.loads((project / "results" / "tiny-demo" / method / "cost.json").read_text())
        metrics[TABLE_COST] = cost["total"]["device_hours"]
        for name, column in zip((*TABLE_METRICS, TABLE_COST), columns, strict=True):
            shown = table[run_id][column]
            if metrics[name] is None:
                assert shown == "-", (method, name, shown)
            else:  # as the table rounds it
                assert float(shown) == pytest.approx(metrics[name], rel=1e-3, abs=5e-4), (method, name, shown)
    headers = browser.execute_script(
        "return Array.from(document.querySelectorAll('[role=columnheader][col-id]')).map(h => h.innerText)"
    )
    assert {*TABLE_METRICS, TABLE_COST} <= set(headers), headers
    _shot(browser, "experiment.png")


def test_summary_run_shows_the_matrix_metrics_and_the_heatmap(project, ui, browser):
    experiment, runs = _runs(project)
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

    artifacts = f"{ui}/#/experiments/{experiment}/runs/{summary.info.run_id}/artifacts"
    _open(browser, f"{artifacts}/heatmap.png", "heatmap.png")
    _wait_image(browser, results / "heatmap.png")  # the file itself, fetched by the page, at its own size
    _shot(browser, "heatmap.png")
    # another file of the same run: clicked in the artifact tree, as a user does (the open page does not
    # follow a changed URL of the same run's artifacts)
    entry = browser.find_element("xpath", "//*[normalize-space(text())='selection_confusion.png']")
    browser.execute_script("arguments[0].click()", entry)
    _wait_image(browser, results / "selection_confusion.png")
    _shot(browser, "selection-confusion.png")


def test_methods_side_by_side_on_the_compare_page(project, ui, browser):
    experiment, runs = _runs(project)
    summaries = {r.data.tags["method"]: r for r in runs if r.data.tags.get("kind") == "summary"}
    assert set(summaries) == {"modalprompt", "seq_prompt", "zero_shot"}
    ids = json.dumps([r.info.run_id for r in summaries.values()]).replace(" ", "")
    body = _open(browser, f"{ui}/#/compare-runs?runs={ids}&experiments=[\"{experiment}\"]", "Run Name:",
                 *(f"{m} summary" for m in summaries))  # fmt: skip
    lines = body.splitlines()
    start = lines.index("Run Name:") + 1
    columns = [name.removesuffix(" summary") for name in lines[start : start + len(summaries)]]
    assert sorted(columns) == sorted(summaries), columns  # the page's run columns, in its order
    shown = _compare_metrics(browser)
    for method in summaries:
        metrics = json.loads((project / "results" / "tiny-demo" / method / "metrics.json").read_text())
        for name in ("avg", "bwt", "forgetting"):  # each method's, in its column, as the UI rounds it
            value = shown[name][columns.index(method)]
            assert float(value) == pytest.approx(metrics[name], rel=1e-3, abs=5e-4), (method, name, value)
    # the parallel-coordinates plot drawn: an axis per chosen param and metric (method, avg) with its title
    # and domain line (SVG), the lines between them on the canvases beside it
    _wait_drawn(browser, """const plot = document.querySelector('.js-plotly-plot');
        const titles = plot ? Array.from(plot.querySelectorAll('.parcoords .axis-title'), t => t.textContent) : [];
        return titles.includes('method') && titles.includes('avg')
            && plot.querySelectorAll('.parcoords .y-axis path.domain').length >= 2
            && plot.querySelectorAll('canvas').length > 0""", "the parallel-coordinates plot")  # fmt: skip
    _shot(browser, "compare.png")
    comparison = next(r for r in runs if r.data.tags.get("kind") == "comparison")
    _open(browser, f"{ui}/#/experiments/{experiment}/runs/{comparison.info.run_id}/artifacts/forgetting.png",
          "forgetting.png")  # fmt: skip
    _wait_image(browser, project / "results" / "tiny-demo" / "comparison" / "forgetting.png")
    _shot(browser, "forgetting.png")
    assert {"experiment.png", "summary-run.png", "heatmap.png", "selection-confusion.png", "compare.png",
            "forgetting.png"} <= {p.name for p in SHOTS.glob("*.png")}  # fmt: skip


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
        # the charts drawn: every chart on the page has its line (an SVG path with points), and there are
        # some (the charts below the window are drawn when scrolled to)
        _wait_drawn(browser, """const plots = Array.from(document.querySelectorAll('.js-plotly-plot'));
            return plots.length >= 2 && plots.every(p => Array.from(p.querySelectorAll('path.js-line'))
                .some(l => (l.getAttribute('d') || '').length > 1))""", "the live run's charts")  # fmt: skip
        assert job.poll() is None  # still training when the picture is taken
        _shot(browser, "live-run.png")
    finally:
        output = job.communicate(timeout=600)[0]
    assert job.returncode == 0, output[-3000:]
    assert "modalprompt train stage 1 colors: step 5/" in output  # its log has progress lines too
