"""The real Snakemake on a tiny config: a full local run, MLflow read back, and stale-only reruns.

The job-set tests change config.yaml after a full run and read the exact jobs a dry run plans.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEFILE = ROOT / "workflow" / "Snakefile"
pytestmark = pytest.mark.slow


def toy_config() -> dict:
    """config/toy.yaml with its paths made local to the folder the test writes it into."""
    raw = yaml.safe_load((ROOT / "config" / "toy.yaml").read_text())
    raw["paths"] = {"models": "models", "data": "data", "results": "results"}
    return raw


def _env() -> dict[str, str]:
    # jobs run `modalprompt` from PATH: the environment this test runs in
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "HF_HUB_OFFLINE": "1",
    }


def snakemake(project: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(project),
               "--configfile", str(project / "config.yaml"), *args]  # fmt: skip
    done = subprocess.run(command, cwd=project, env=_env(), capture_output=True, text=True, timeout=1200)
    if check and done.returncode != 0:
        # the failed jobs' own logs first: CI shows only the end of a failure, and they hold the cause
        logs = re.findall(r"log: (\S+) \(check log", done.stdout + done.stderr)
        failed = "".join(f"--- {log}:\n{_tail(Path(log))}\n" for log in dict.fromkeys(logs))
        raise AssertionError(
            f"snakemake {' '.join(args)} failed:\n{failed}{done.stdout[-4000:]}\n{done.stderr[-6000:]}"
        )
    return done


def _tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.is_file() else "(no log)"


def planned_jobs(project: Path) -> set[tuple]:
    """(rule, stage, task) of every job a dry run plans; stage/task None where the rule has no such wildcard."""
    out = snakemake(project, "-n", "--cores", "2").stdout
    jobs = set()
    for block in re.split(r"\n(?=\[|(?:local)?rule )", out):
        match = re.search(r"^(?:local)?rule (\w+):", block, re.MULTILINE)
        if not match:
            continue
        wildcards = dict(re.findall(r"(\w+)=([\w-]+)", (re.search(r"wildcards: (.*)", block) or [""])[0]))
        stage = int(wildcards["stage"]) if "stage" in wildcards else None
        jobs.add((match.group(1), stage, wildcards.get("task")))
    return jobs


def write_config(project: Path, raw: dict) -> None:
    (project / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def base_config(project: Path) -> dict:
    raw = toy_config()
    raw["training"].update(epochs=2, batch_size=8)
    raw["tasks"][2]["training"] = {"epochs": 3}
    raw["evaluation"].update(max_new_tokens=3)
    raw["pipeline"]["methods"] = ["modalprompt"]
    raw["resources"] = {kind: {"gpus": 0, "cpus": 1, "mem_mb": 1000, "runtime": 10}
                        for kind in ("train", "evaluate", "prepare")}  # fmt: skip
    return raw


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project folder after one full `snakemake` run (the embedded default, made smaller)."""
    folder = tmp_path_factory.mktemp("project with space")
    raw = base_config(folder)
    write_config(folder, raw)
    done = snakemake(folder, "--cores", "2")
    folder.joinpath("first-run.log").write_text(done.stdout + done.stderr)
    return folder


RESULTS = Path("results/tiny-demo")
TASKS = ["colors", "shapes", "count"]


def cells(zero_shot=True, tasks=TASKS):
    from modalprompt.layout import evaluation_cells

    return set(evaluation_cells(tasks, zero_shot))


def test_full_run_produces_matrix_metrics_and_heatmap(project):
    method = project / RESULTS / "modalprompt"
    matrix = (method / "matrix.csv").read_text().splitlines()
    assert matrix[0] == "stage,colors,shapes,count" and [r.split(",")[0] for r in matrix[1:]] == [
        "0",
        "1",
        "2",
        "3",
    ]
    metrics = json.loads((method / "metrics.json").read_text())
    assert set(metrics) >= {"avg", "mft", "maa", "bwt", "bwt_coin", "forgetting", "fwt", "selection_accuracy"}
    assert metrics["fwt"] is not None  # row 0 and the (s, s+1) cells were evaluated
    assert (method / "heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for s, task in cells():
        owner = (
            project / RESULTS / ("zero_shot" if s == 0 else "modalprompt")
        )  # row 0 is shared by all methods
        score = json.loads((owner / f"stage-{s}" / "eval" / f"{task}.score.json").read_text())
        assert (score["stage"], score["task"]) == (s, task)
    log = (project / "first-run.log").read_text()
    assert (
        "modalprompt: accuracy matrix" in log
        and "mlflow ui --backend-store-uri" in log
        and "--host 127.0.0.1" in log
    )
    assert (project / RESULTS / "logs" / "modalprompt" / "train-stage-1.log").is_file()
    assert (project / RESULTS / "benchmarks" / "modalprompt" / "train-stage-1.tsv").is_file()


def test_every_job_records_its_cost_and_the_matrix_step_sums_them(project):
    """Each training stage's stage.json and each evaluation's cost file (copied into its score) hold the
    job's wall time, device-hours (core-hours here: wall x the job's one thread), samples/s and peak
    memory; cost.json sums them per stage and in all."""
    method = project / RESULTS / "modalprompt"
    trained = {s: json.loads((method / f"stage-{s}" / "checkpoint" / "stage.json").read_text())["extra"]
               for s in (1, 2, 3)}  # fmt: skip
    evaluated = {}
    for s, task in cells():
        owner = project / RESULTS / ("zero_shot" if s == 0 else "modalprompt")
        cost = json.loads((owner / f"stage-{s}" / "eval" / f"{task}.cost.json").read_text())
        assert json.loads((owner / f"stage-{s}" / "eval" / f"{task}.score.json").read_text())["cost"] == cost
        assert (cost["task"], cost["stage"], cost["samples"]) == (task, s, 8)  # the toy's 8 test records
        evaluated.setdefault(s, []).append(cost)
    for extra in trained.values():
        cost = extra["cost"]
        # the job's wall time: start-up and loading included, so more than the training loop
        assert cost["wall_seconds"] > extra["seconds"] and cost["samples"] == extra["samples"]
    for cost in [t["cost"] for t in trained.values()] + [c for costs in evaluated.values() for c in costs]:
        assert (cost["device"], cost["devices"]) == ("cpu", 1)  # resources.*.cpus: 1 -> --threads 1
        assert cost["device_hours"] == pytest.approx(cost["wall_seconds"] / 3600)
        assert cost["samples_per_s"] == pytest.approx(cost["samples"] / cost["wall_seconds"])
        assert cost["peak_memory_mb"] > 0
    summed = json.loads((method / "cost.json").read_text())
    assert set(summed["stages"]) == {"0", "1", "2", "3"} and summed["complete"]
    assert summed["stages"]["0"]["train"] is None  # row 0: the base model, evaluated only
    for s in (1, 2, 3):
        stage = summed["stages"][str(s)]
        assert stage["train"]["device_hours"] == pytest.approx(trained[s]["cost"]["device_hours"])
        assert stage["eval"]["jobs"] == len(evaluated[s])
        assert stage["eval"]["wall_seconds"] == pytest.approx(sum(c["wall_seconds"] for c in evaluated[s]))
        assert stage["eval"]["peak_memory_mb"] == max(c["peak_memory_mb"] for c in evaluated[s])
    every_eval = [c for costs in evaluated.values() for c in costs]
    assert summed["eval"]["jobs"] == len(cells()) and summed["train"]["jobs"] == 3
    assert summed["eval"]["device_hours"] == pytest.approx(sum(c["device_hours"] for c in every_eval))
    assert summed["total"]["device_hours"] == pytest.approx(
        summed["train"]["device_hours"] + summed["eval"]["device_hours"]
    )
    assert (project / RESULTS / "comparison" / "accuracy_cost.png").read_bytes()[:4] == b"\x89PNG"


def test_the_answer_overlap_of_the_toy_tasks_and_its_correlation_with_forgetting(project):
    """The toy tasks share no answer: the overlap is 100 on the diagonal (each task's test answers are among
    its training answers) and 0 elsewhere; with no spread in the overlap, Pearson's r is undefined (null).
    Each method's forgetting cells are those of its matrix."""
    from modalprompt.scoring.metrics import read_matrix

    overlap = (project / RESULTS / "answer_overlap.csv").read_text().splitlines()
    assert overlap == ["train_answers_of,colors,shapes,count", "colors,100.0000,0.0000,0.0000",
                       "shapes,0.0000,100.0000,0.0000", "count,0.0000,0.0000,100.0000"]  # fmt: skip
    method = project / RESULTS / "modalprompt"
    result = json.loads((method / "overlap_forgetting.json").read_text())
    assert result["correlation"] == "pearson" and result["pearson_r"] is None
    _, rows = read_matrix(method / "matrix.csv")
    assert [(c["stage"], c["tested"]) for c in result["cells"]] == [
        (2, "colors"),
        (3, "colors"),
        (3, "shapes"),
    ]
    for c in result["cells"]:
        j = TASKS.index(c["tested"])
        best = max(rows[k][j] for k in range(j + 1, c["stage"]))
        assert c["forgetting"] == pytest.approx(best - rows[c["stage"]][j]) and c["overlap"] == 0.0
    assert (method / "answer_overlap.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("family", ["llava_next", "qwen2_5_vl"])
def test_toy_dag_runs_end_to_end_on_another_base_family(family, tmp_path):
    """The toy DAG from an empty folder with `model.family` set: the tiny base of that family is built, every
    stage trains on it, is evaluated and scored. (LLaVA-1.5: the `project` fixture's run.)"""
    raw = base_config(tmp_path)
    raw["model"]["family"] = family
    write_config(tmp_path, raw)
    snakemake(tmp_path, "--cores", "2")
    model_config = json.loads((tmp_path / "models" / "tiny" / "llava" / "config.json").read_text())
    assert model_config["model_type"] == family
    method = tmp_path / RESULTS / "modalprompt"
    matrix = (method / "matrix.csv").read_text().splitlines()
    assert matrix[0] == "stage,colors,shapes,count"
    assert [row.split(",")[0] for row in matrix[1:]] == ["0", "1", "2", "3"]
    for stage in (1, 2, 3):
        meta = json.loads((method / f"stage-{stage}" / "checkpoint" / "stage.json").read_text())
        assert meta["family"] == family
    for s, task in cells():
        owner = tmp_path / RESULTS / ("zero_shot" if s == 0 else "modalprompt")
        rows = (owner / f"stage-{s}" / "eval" / f"{task}.jsonl").read_text().splitlines()
        assert len(rows) == 8 and all("prediction" in json.loads(row) for row in rows)
    assert "Nothing to be done" in snakemake(tmp_path, "-n", "--cores", "2").stdout


def test_mlflow_holds_one_run_per_stage_and_a_summary(project):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{project / RESULTS / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("tiny-demo")
    runs = client.search_runs([experiment.experiment_id])
    kinds = sorted((r.data.tags["kind"], r.data.tags.get("stage", "")) for r in runs)
    assert kinds == [("comparison", ""), ("summary", ""), ("train", "1"), ("train", "2"), ("train", "3")]
    # the closing message names the address of the runs table (the saved view, as training runs)
    closing = (project / "first-run.log").read_text()
    assert f"/#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning" in closing
    stage2 = next(r for r in runs if r.data.tags.get("stage") == "2")
    assert stage2.data.tags["task"] == "shapes" and stage2.data.tags["method"] == "modalprompt"
    assert stage2.data.params["training.epochs"] == "2.0" and stage2.data.params["method.transfer_num"] == "3"
    assert {"git_commit", "torch_version", "transformers_version", "checkpoint", "training.seed"} <= set(
        stage2.data.params
    )
    loss = client.get_metric_history(stage2.info.run_id, "loss")
    assert len(loss) > 1 and [m.step for m in loss] == sorted(m.step for m in loss)
    assert "samples_per_s" in stage2.data.metrics and "peak_memory_mb" in stage2.data.metrics
    summary = next(r for r in runs if r.data.tags["kind"] == "summary")
    metrics = json.loads((project / RESULTS / "modalprompt" / "metrics.json").read_text())
    assert summary.data.metrics["avg"] == pytest.approx(metrics["avg"])
    cost = json.loads((project / RESULTS / "modalprompt" / "cost.json").read_text())
    for part in ("train", "eval", "total"):
        assert summary.data.metrics[f"cost_{part}_device_hours"] == pytest.approx(cost[part]["device_hours"])
    per_stage = client.get_metric_history(summary.info.run_id, "cost/train_device_hours")
    assert sorted(m.step for m in per_stage) == [1, 2, 3]
    colors = client.get_metric_history(summary.info.run_id, "acc/colors")
    assert sorted(m.step for m in colors) == [0, 1, 2, 3]
    assert not (project / "mlruns").exists()
    assert (project / RESULTS / "mlartifacts").is_dir()  # artifacts stay beside the store
    artifacts = {a.path for a in client.list_artifacts(summary.info.run_id)}
    assert artifacts == {
        "matrix.csv",
        "selection.csv",
        "metrics.json",
        "heatmap.png",
        "matrix_published.csv",  # the same cells scored as CoIN's scripts score them
        "metrics_published.json",
        "cost.json",
        "selection_confusion.csv",
        "selection_confusion.png",
    }
    comparison = next(r for r in runs if r.data.tags["kind"] == "comparison")
    assert {a.path for a in client.list_artifacts(comparison.info.run_id)} == {
        "forgetting.png",
        "metrics.csv",
        "accuracy_cost.png",
    }


def test_tracking_again_replaces_nothing(project):
    from mlflow.tracking import MlflowClient

    results = project / RESULTS
    uri = f"sqlite:///{results / 'mlflow.db'}"
    done = subprocess.run([sys.executable, "-m", "modalprompt", "track", "--uri", uri, "--experiment", "tiny-demo",
                           "--results", str(results), "--methods", "modalprompt", "--tasks", *TASKS],
                          capture_output=True, text=True, env=_env(), check=True)  # fmt: skip
    assert json.loads(done.stdout)["modalprompt"]["logged"] == []
    experiment = MlflowClient(uri).get_experiment_by_name("tiny-demo")
    assert (
        len(MlflowClient(uri).search_runs([experiment.experiment_id])) == 5
    )  # 3 stages, summary, comparison


def _dead_http_uri() -> str:
    with socket.socket() as s:  # a port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_mlflow_down_leaves_tracking_pending_and_the_next_run_catches_up(project):
    results = project / RESULTS
    done = subprocess.run([sys.executable, "-m", "modalprompt", "track", "--uri", _dead_http_uri(), "--experiment",
                           "tiny-demo", "--results", str(results), "--methods", "modalprompt", "--tasks", *TASKS,
                           "--out", str(results / "tracking.json")], capture_output=True, text=True, env=_env())  # fmt: skip
    assert done.returncode == 0, done.stderr  # the pipeline does not fail
    assert "does not answer" in done.stderr and "next `snakemake` run tracks them" in done.stderr
    assert json.loads((results / "tracking.json").read_text())["pending"] is True
    assert planned_jobs(project) == {("track", None, None), ("all", None, None)}  # only tracking catches up
    snakemake(project, "--cores", "2")
    assert "pending" not in json.loads((results / "tracking.json").read_text())
    assert planned_jobs(project) == set()


def test_two_trackers_at_once_lose_nothing(project, tmp_path):
    """Two `track` processes writing to one MLflow experiment (SQLite store) at the same time."""
    from mlflow.tracking import MlflowClient

    results = tmp_path / "results"
    shutil.copytree(project / RESULTS / "modalprompt", results / "modalprompt")
    shutil.copytree(project / RESULTS / "modalprompt", results / "seq_prompt")  # a second method's files
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(uri).create_experiment("shared")  # both find it: the race is on the runs, not the experiment
    procs = [subprocess.Popen([sys.executable, "-m", "modalprompt", "track", "--uri", uri, "--experiment", "shared",
                               "--results", str(results), "--methods", method, "--tasks", *TASKS], env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for method in ("modalprompt", "seq_prompt")]  # fmt: skip
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("shared").experiment_id])
    keys = sorted(r.data.tags["modalprompt.key"] for r in runs)
    expected = sorted(
        f"{m}/{k}"
        for m in ("modalprompt", "seq_prompt")
        for k in ("stage-1", "stage-2", "stage-3", "summary")
    )
    assert keys == expected  # every run, once
    assert all(
        len(client.get_metric_history(r.info.run_id, "loss")) > 1
        for r in runs
        if r.data.tags["kind"] == "train"
    )


def test_a_tracking_server_that_does_not_answer_stops_the_dag_before_any_job(tmp_path):
    raw = base_config(tmp_path)
    raw["tracking"] = {"uri": _dead_http_uri(), "experiment": None}
    write_config(tmp_path, raw)
    done = snakemake(tmp_path, "-n", check=False)
    assert done.returncode != 0
    assert "tracking.uri" in done.stdout + done.stderr and "does not answer" in done.stdout + done.stderr
    assert not (tmp_path / "results").exists()


def test_nothing_changed_nothing_runs(project):
    assert planned_jobs(project) == set()


def _with_change(project, change):
    raw = base_config(project)
    change(raw)
    write_config(project, raw)
    try:
        return planned_jobs(project)
    finally:
        write_config(project, base_config(project))


REPORT = {("matrix", None, None), ("overlap_forgetting", None, None), ("compare", None, None),
          ("track", None, None), ("all", None, None)}  # fmt: skip
SELECTION = {("confusion", None, None)}  # the last stage's predictions changed: the confusion matrix too
OVERLAP = {("answer_overlap", None, None)}  # the task files, their order or their scorers changed


def _evals(selected):
    return {(rule, s, t) for s, t in selected for rule in ("evaluate", "score")}


def test_changing_one_tasks_training_reruns_it_and_later_stages_only(project):
    def change(raw):
        raw["tasks"][1]["training"] = {"lr": 0.02}

    expected = (
        {("train", 2, None), ("train", 3, None)}
        | _evals({c for c in cells() if c[0] >= 2})
        | REPORT
        | SELECTION
    )
    assert _with_change(project, change) == expected


def test_changing_an_evaluation_setting_reruns_evaluations_only(project):
    def change(raw):
        raw["evaluation"]["max_new_tokens"] = 4

    assert _with_change(project, change) == _evals(cells()) | REPORT | SELECTION


def test_changing_one_tasks_evaluation_override_reruns_its_evaluations(project):
    def change(raw):
        raw["tasks"][0]["evaluation"] = {"max_new_tokens": 4}

    assert (
        _with_change(project, change) == _evals({c for c in cells() if c[1] == "colors"}) | REPORT | SELECTION
    )


def test_changing_the_engine_or_preemption_reruns_nothing_and_reaches_the_train_command(project):
    def change(raw):
        raw["engine"] = {"zero_stage": 3, "offload": True}
        raw["preemption"] = {"save_every_steps": 7, "signal_seconds": 60}

    assert _with_change(project, change) == set()
    raw = base_config(project)
    change(raw)
    write_config(project, raw)
    try:
        printed = snakemake(project, "-n", "-p", "--cores", "1", "--forcerun", "train").stdout
    finally:
        write_config(project, base_config(project))
    commands = [line for line in printed.splitlines() if " train --settings " in line]
    assert commands and all("--save-every 7 --zero-stage 3 --offload yes" in c for c in commands), commands[
        :1
    ]


def test_changing_a_scorer_reruns_only_its_scoring(project):
    def change(raw):
        raw["tasks"][2]["scorer"] = "contains"

    expected = {("score", s, t) for s, t in cells() if t == "count"} | REPORT | OVERLAP
    assert _with_change(project, change) == expected


def test_appending_a_task_runs_only_the_new_stage(project):
    def change(raw):
        raw["tasks"].append({**raw["tasks"][0], "name": "colors2"})

    new_cells = cells(tasks=[*TASKS, "colors2"]) - cells()
    assert {s for s, _ in new_cells} == {0, 3, 4}  # row 0, the forward cell (3, colors2), stage 4
    assert (
        _with_change(project, change)
        == {("train", 4, None)} | _evals(new_cells) | REPORT | SELECTION | OVERLAP
    )


def test_reordering_tasks_reruns_from_the_first_changed_position(project):
    def change(raw):
        raw["tasks"][1], raw["tasks"][2] = raw["tasks"][2], raw["tasks"][1]

    order = ["colors", "count", "shapes"]
    changed = {c for c in cells(tasks=order) if c[0] >= 2} | {(1, "count")}  # (1, count): new forward cell
    assert (
        _with_change(project, change)
        == {("train", 2, None), ("train", 3, None)} | _evals(changed) | REPORT | SELECTION | OVERLAP
    )


def test_a_changed_early_stage_reruns_every_later_stage_and_evaluation(project):
    """Jobs name only their latest checkpoint as input (Method.dag_inputs); the earlier ones are reached
    through the training chain, so stage 1's file changed (retrained or copied in by hand) still reruns
    stages 2 and 3 and every evaluation that loads stage 1, stage 3's included."""
    from modalprompt.layout import checkpoint_files

    changed = project / checkpoint_files(RESULTS, "modalprompt", 1)[0]
    content, before = changed.read_bytes(), changed.stat()
    # new content: Snakemake ignores a file that is only newer (same checksum as recorded)
    changed.write_bytes(content + b"\n")
    try:
        planned = planned_jobs(project)
    finally:
        changed.write_bytes(content)
        os.utime(changed, ns=(before.st_atime_ns, before.st_mtime_ns))
    expected = (
        {("train", 2, None), ("train", 3, None)}
        | _evals({c for c in cells() if c[0] >= 1})
        | REPORT
        | SELECTION
    )
    assert planned == expected


def test_a_failing_evaluation_touches_no_finished_one(project):
    """One task's eval file goes bad: its evaluations fail, naming the file; every other finished output
    stays as it was; once fixed, only the failed jobs (and the report) run."""
    eval_file = project / "data" / "toy" / "count" / "test.json"
    good = eval_file.read_text()
    results = project / RESULTS
    others = {
        p: (p.read_bytes(), p.stat().st_mtime_ns) for p in results.rglob("*.jsonl") if p.stem != "count"
    }
    others.update({p: (p.read_bytes(), p.stat().st_mtime_ns) for p in results.rglob("*.safetensors")})
    try:
        eval_file.write_text(good[: len(good) // 2])  # cut off mid-write
        done = snakemake(project, "--cores", "2", "--keep-going", check=False)
        assert done.returncode != 0
        log = (results / "logs" / "modalprompt" / "evaluate-stage-3-count.log").read_text()
        assert str(eval_file) in log and "Traceback" not in log
        for path, (data, mtime) in others.items():
            assert path.read_bytes() == data and path.stat().st_mtime_ns == mtime, path
    finally:
        eval_file.write_text(good)
    # the answer overlap read the broken eval file too
    expected = _evals({c for c in cells() if c[1] == "count"}) | REPORT | SELECTION | OVERLAP
    assert planned_jobs(project) == expected
    snakemake(project, "--cores", "2")
    assert planned_jobs(project) == set()


def test_slurm_profile_builds_the_same_dag(project, tmp_path):
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    write_config(fresh, base_config(fresh))
    local = snakemake(fresh, "-n", "--cores", "2").stdout
    slurm = snakemake(fresh, "-n", "--profile", str(ROOT / "profiles" / "slurm")).stdout

    def stats(text):
        return sorted(re.findall(r"^(\w+)\s+(\d+)$", text.split("Job stats:")[1], re.MULTILINE))

    assert stats(local) == stats(slurm)
    assert ("train", "3") in stats(slurm) and ("tiny_base", "1") in stats(slurm)


def test_original_layout_adds_a_conversion_step(tmp_path):
    (tmp_path / "models" / "orig").mkdir(parents=True)
    (tmp_path / "models" / "orig" / "config.json").write_text("{}")
    raw = base_config(tmp_path)
    raw["model"].update(source="original", original_llava="orig", llava="converted", clip="tiny/clip")
    write_config(tmp_path, raw)
    done = snakemake(tmp_path, "-n", "--cores", "1", check=False)
    assert "rule convert_llava:" in done.stdout, done.stderr[-2000:]


def test_missing_files_are_named_before_anything_runs(tmp_path):
    raw = base_config(tmp_path)
    raw["model"]["source"] = "hf"
    raw["pipeline"]["generate_data"] = "none"
    write_config(tmp_path, raw)
    done = snakemake(tmp_path, "-n", check=False)
    assert done.returncode != 0
    out = done.stdout + done.stderr
    assert "model.llava:" in out and "tasks[0].train_file:" in out and "does not exist" in out


def test_schema_violations_stop_the_dag(tmp_path):
    raw = base_config(tmp_path)
    raw["method"]["lam"] = 3
    write_config(tmp_path, raw)
    done = snakemake(tmp_path, "-n", check=False)
    out = done.stdout + done.stderr
    assert done.returncode != 0 and "method.lam = 3 is invalid: expected a number >= 0.0 and <= 1.0" in out


def test_lint_is_clean():
    done = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--lint"], cwd=ROOT,
                          env=_env(), capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0 and "Lints for" not in done.stdout + done.stderr, done.stdout[-3000:]


def test_package_and_env_pins_agree():
    import tomllib

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((ROOT / "envs" / "modalprompt.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert sorted(pip) == sorted(pyproject)


def test_rules_quote_every_value_they_put_in_a_shell():
    for path in (ROOT / "workflow" / "rules").glob("*.smk"):
        for field in re.findall(r"\{((?:params|input|output|log|wildcards)[^}]*)\}", path.read_text()):
            assert field.endswith(":q"), f"{path.name}: {{{field}}} reaches the shell unquoted"


def test_default_config_builds_the_full_minicoin_dag_with_all_methods(tmp_path):
    raw = yaml.safe_load((ROOT / "config.yaml").read_text())
    assert raw["paths"] == {"models": "models", "data": "data", "results": "results"}
    write_config(tmp_path, raw)  # an empty project: everything is planned, from data generation on
    done = snakemake(tmp_path, "-n")
    stats = dict(re.findall(r"^(\w+)\s+(\d+)$", done.stdout.split("Job stats:")[1], re.MULTILINE))
    tasks = 7
    cells = tasks * (tasks + 1) // 2 + (tasks - 1)  # lower triangle + forward cells
    # the shipped base stands in for pretraining: its manifest holds the default's settings
    assert stats["shipped_base"] == "1" and "pretrain_base" not in stats and "generic_corpus" not in stats
    assert "installing it" in done.stderr and stats["minicoin_task"] == "7"
    assert stats["train"] == str(2 * tasks)  # modalprompt and seq_prompt; the oracle reuses modalprompt's
    assert stats["evaluate"] == str(3 * cells + tasks)  # three prompted methods, and row 0 once
    assert stats["matrix"] == "4"

    raw["model"]["pretrain"]["caption_steps"] += 1  # another base: pretrained here, from its corpus
    write_config(tmp_path, raw)
    done = snakemake(tmp_path, "-n")
    stats = dict(re.findall(r"^(\w+)\s+(\d+)$", done.stdout.split("Job stats:")[1], re.MULTILINE))
    assert stats["generic_corpus"] == "1" and stats["pretrain_base"] == "1" and "shipped_base" not in stats
    assert "pretraining the base here (model.pretrain.caption_steps: shipped" in done.stderr


def test_ci_config_runs_the_whole_minicoin_dag(tmp_path):
    """config/ci.yaml: the default's DAG made small (data generation, pretraining, 4 methods, MLflow)."""
    raw = yaml.safe_load((ROOT / "config" / "ci.yaml").read_text())
    raw["paths"] = {"models": "models", "data": "data", "results": "results"}
    write_config(tmp_path, raw)
    done = snakemake(tmp_path, "--cores", "2")
    out = done.stdout + done.stderr
    results = tmp_path / "results" / raw["experiment"]
    tasks = [t["name"] for t in raw["tasks"]]
    for method in raw["pipeline"]["methods"]:
        matrix = (results / method / "matrix.csv").read_text()
        assert matrix.splitlines()[0] == ",".join(["stage", *tasks])
        # printed at the end as an aligned table: the same numbers, one decimal
        printed = out.split(f"{method}: accuracy matrix (%)")[1].splitlines()[1 : len(tasks) + 3]
        expected = [["stage", *tasks]] + [
            [row[0]] + [f"{float(v):.1f}" if v else "." for v in row[1:]]
            for row in (line.split(",") for line in matrix.splitlines()[1:])
        ]
        assert [line.split() for line in printed] == expected
        assert set(json.loads((results / method / "metrics.json").read_text())) >= {
            "avg",
            "bwt",
            "forgetting",
        }
    assert "mlflow ui --backend-store-uri" in out
    pretraining = json.loads((tmp_path / "models" / raw["model"]["llava"] / "pretraining.json").read_text())
    from modalprompt.config import PretrainConfig, from_dict, to_jsonable

    resolved = from_dict(PretrainConfig, raw["model"]["pretrain"], "config/ci.yaml")  # defaults filled in
    assert pretraining["settings"] == to_jsonable(resolved) and pretraining["threads"] == 1
    assert planned_jobs(tmp_path) == set()  # a second run has nothing to do


def test_a_method_reruns_only_for_the_settings_it_uses(tmp_path):
    """seq_prompt uses one prompt and no alignment terms, zero_shot no method setting at all: changing
    K, lam or the alignment weights reruns none of their jobs (their rerun keys hold what they use);
    changing the prompt length reruns seq_prompt's stages, and still none of zero_shot's jobs."""
    raw = base_config(tmp_path)
    raw["training"].update(epochs=1)
    raw["tasks"][2]["training"] = {}
    raw["pipeline"]["methods"] = ["seq_prompt", "zero_shot"]
    write_config(tmp_path, raw)
    snakemake(tmp_path, "--cores", "2")
    assert planned_jobs(tmp_path) == set()

    def planned_after(**method):
        changed = {**raw, "method": {**raw["method"], **method}}
        write_config(tmp_path, changed)
        try:
            return planned_jobs(tmp_path)
        finally:
            write_config(tmp_path, raw)

    assert planned_after(transfer_num=1, lam=0.9, image_loss_weight=0.3, text_loss_weight=2.0) == set()
    rerun = planned_after(prefix_length=5)
    assert {(rule, stage) for rule, stage, _ in rerun if rule == "train"} == {("train", s) for s in (1, 2, 3)}
    assert not any(stage == 0 for rule, stage, _ in rerun if rule in ("evaluate", "score"))
    stage_json = json.loads(
        (tmp_path / RESULTS / "seq_prompt" / "stage-1" / "checkpoint" / "stage.json").read_text()
    )
    used = stage_json["extra"]["settings"]["method"]
    assert (used["transfer_num"], used["image_loss_weight"], used["text_loss_weight"]) == (1, 0.0, 0.0)


def test_snakemake_report_holds_every_view_with_its_caption(project, tmp_path):
    """`snakemake --report`: one self-contained HTML with the heatmaps, the selection confusion, the
    forgetting curves and the metrics table, each with the caption that says what it shows."""
    report = tmp_path / "report.html"
    snakemake(project, "--report", str(report))
    html = report.read_text()
    for caption in (
        "Accuracy matrix of modalprompt: the accuracy (%) on each task",
        "Prompt selection of modalprompt after the last stage",
        "Forgetting curves, all methods side by side",
        "The metrics of every method in one table",
        "The continual-learning metrics of modalprompt",
        "Accuracy against cost, one point per method",
        "Answer overlap of the tasks beside modalprompt",
    ):
        assert caption in html, caption
    for name in ("heatmap.png", "selection_confusion.png", "forgetting.png", "metrics.csv", "metrics.json",
                 "accuracy_cost.png", "answer_overlap.png"):  # fmt: skip
        assert f'"filename": "{name}"' in html, name
    assert html.count("iVBORw0KGgo") >= 5  # the PNGs themselves are inside the file (base64), not links


def test_seeds_and_the_baselines_run_through_the_dag(tmp_path):
    """pipeline.seeds with LoRA and prompt-pool baselines: every stage and evaluation once per seed, row 0
    once, each method's metrics as mean and standard deviation, MLflow runs per seed and over the seeds with
    the environment fingerprint, and a second run does nothing."""
    from mlflow.tracking import MlflowClient

    raw = base_config(tmp_path)
    raw["tasks"] = raw["tasks"][:2]
    raw["training"].update(epochs=1)
    raw["lora"] = {"rank": 4, "alpha": 8.0, "training": {"lr": 0.005}}
    raw["l2p"] = {"pool_size": 4, "prompt_length": 2, "top_k": 2}
    raw["replay"] = {"buffer_size": 4}
    raw["pipeline"].update(methods=["replay", "multitask", "l2p"], seeds=[3, 5], warm_start=True)
    write_config(tmp_path, raw)
    jobs = planned_jobs(tmp_path)
    assert {j for j in jobs if j[0] == "train"} == {
        ("train", s, None) for s in (1, 2)
    }  # (x2 seeds, 3 methods)
    done = snakemake(tmp_path, "--cores", "2")
    results = tmp_path / RESULTS
    for seed in (3, 5):
        run = results / f"seed-{seed}"
        for method in ("replay", "multitask", "l2p"):
            meta = json.loads((run / method / "stage-2" / "checkpoint" / "stage.json").read_text())
            assert meta["extra"]["settings"]["training"]["seed"] == seed
            env = meta["extra"]["environment"]
            assert (
                env["world_size"] == 1 and env["dtype"] == "float32" and env["versions"]["peft"] == "0.21.2"
            )
        multitask = json.loads((run / "multitask" / "stage-2" / "checkpoint" / "stage.json").read_text())
        assert multitask["extra"]["trained_on"] == ["colors", "shapes"]
        replay = json.loads((run / "replay" / "stage-2" / "checkpoint" / "stage.json").read_text())
        assert replay["extra"]["records_per_task"]["colors"] == 4
    assert (results / "seed-3" / "zero_shot" / "stage-0" / "eval" / "colors.jsonl").is_file()
    assert not (results / "seed-5" / "zero_shot").exists()  # row 0 (the base) is evaluated once
    for method in ("replay", "multitask", "l2p"):
        metrics = json.loads((results / method / "metrics.json").read_text())
        per_seed = [json.loads((results / f"seed-{s}" / method / "metrics.json").read_text()) for s in (3, 5)]
        assert metrics["seeds"] == [3, 5]
        assert metrics["avg"] == pytest.approx((per_seed[0]["avg"] + per_seed[1]["avg"]) / 2, abs=1e-5)
        assert metrics["std"]["avg"] == pytest.approx(
            abs(per_seed[0]["avg"] - per_seed[1]["avg"]) / 2**0.5, abs=1e-5
        )
        assert (results / method / "matrix_std.csv").is_file()
        # the cost of one seed's run: the mean of the seeds' costs
        cost = json.loads((results / method / "cost.json").read_text())
        per_seed_cost = [
            json.loads((results / f"seed-{s}" / method / "cost.json").read_text()) for s in (3, 5)
        ]
        assert cost["seeds"] == [3, 5] and cost["total"]["device_hours"] == pytest.approx(
            sum(c["total"]["device_hours"] for c in per_seed_cost) / 2
        )
        assert (results / method / "answer_overlap.png").is_file()
    assert "+-" in done.stdout + done.stderr  # the printed table: mean +- standard deviation
    header = (results / "comparison" / "metrics.csv").read_text().splitlines()[0]
    assert "avg_std" in header
    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tiny-demo").experiment_id])
    summaries = {r.data.tags["method"]: r for r in runs if r.data.tags["kind"] == "summary"}
    assert set(summaries) == {"replay", "multitask", "l2p"}
    over = json.loads((results / "l2p" / "metrics.json").read_text())
    assert summaries["l2p"].data.metrics["avg_std"] == pytest.approx(over["std"]["avg"])
    l2p_cost = json.loads((results / "l2p" / "cost.json").read_text())
    assert summaries["l2p"].data.metrics["cost_total_device_hours"] == pytest.approx(
        l2p_cost["total"]["device_hours"]
    )
    trains = [r for r in runs if r.data.tags["kind"] == "train"]
    assert len(trains) == 2 * 3 * 2 and {r.data.tags["seed"] for r in trains} == {"3", "5"}
    assert all(
        r.data.params["env.versions.peft"] == "0.21.2" and "env.world_size" in r.data.params for r in trains
    )
    assert planned_jobs(tmp_path) == set()


FIELD_METHODS = ["o_lora", "moe_lora", "ewc", "lwf", "hide_llava"]


def test_the_field_methods_run_through_the_dag(tmp_path):
    """O-LoRA, MoELoRA, EWC, LwF and HiDe-LLaVA through Snakemake: every stage and evaluation, scores,
    matrices, metrics, cost and MLflow; HiDe-LLaVA's selection is reported; a second run does nothing."""
    from mlflow.tracking import MlflowClient

    raw = base_config(tmp_path)
    raw["tasks"] = raw["tasks"][:2]
    raw["training"].update(epochs=1)
    raw["lora"] = {"rank": 4, "alpha": 8.0, "training": {"lr": 0.005}}
    raw["o_lora"] = {"rank": 4}
    raw["moe_lora"] = {"experts": 2, "rank": 4, "alpha": 8.0}
    raw["hide_llava"] = {"rank": 4}
    raw["pipeline"].update(methods=FIELD_METHODS)
    write_config(tmp_path, raw)
    snakemake(tmp_path, "--cores", "2")
    results = tmp_path / RESULTS
    for method in FIELD_METHODS:
        for stage in (1, 2):
            meta = json.loads((results / method / f"stage-{stage}" / "checkpoint" / "stage.json").read_text())
            assert meta["extra"]["settings"]["method_name"] == method
        metrics = json.loads((results / method / "metrics.json").read_text())
        assert metrics["stages"] == 2 and metrics["avg"] is not None
        assert (metrics["selection_accuracy"] is not None) == (method == "hide_llava"), method
        cost = json.loads((results / method / "cost.json").read_text())
        assert cost["total"]["device_hours"] > 0
    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tiny-demo").experiment_id])
    assert {r.data.tags["method"] for r in runs if r.data.tags["kind"] == "summary"} == set(FIELD_METHODS)
    assert planned_jobs(tmp_path) == set()
