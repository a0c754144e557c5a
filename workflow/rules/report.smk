# The accuracy matrix and its metrics, then MLflow. MLflow only records: nothing reads it to decide
# what runs; rerunning `track` replaces the runs whose files changed.


localrules:
    score,
    matrix,
    confusion,
    compare,
    track,


rule matrix:
    input:
        scores=lambda w: score_files(w.method),
    output:
        [str(RESULTS / "{method}" / name) for name in layout.SUMMARY_FILES],
    params:
        tasks=TASKS,
        out=lambda w, output: Path(output[0]).parent,
        title=lambda w: f"{EXP.experiment}: {w.method}",
        # the base model does not change: zero_shot's row 0 stands for every stage
        repeat=lambda w: len(TASKS) if w.method == Strategy.ZERO_SHOT else 0,
    conda:
        CONDA_ENV
    log:
        str(RESULTS / "logs" / "{method}" / "matrix.log"),
    shell:
        "modalprompt matrix --tasks {params.tasks:q} --scores {input.scores:q} --out-dir {params.out:q}"
        " --title {params.title:q} --repeat-base {params.repeat:q} > {log:q} 2>&1"


rule confusion:
    input:
        [str(layout.predictions_file(RESULTS, "{method}", len(TASKS), task)) for task in TASKS],
    output:
        [str(RESULTS / "{method}" / name) for name in layout.CONFUSION_FILES],
    params:
        tasks=TASKS,
        out=lambda w, output: Path(output[0]).parent,
        title=lambda w: f"{EXP.experiment}: {w.method}, prompt ranked first after stage {len(TASKS)}",
    wildcard_constraints:
        method="|".join(SELECTING) or "none",
    conda:
        CONDA_ENV
    log:
        str(RESULTS / "logs" / "{method}" / "confusion.log"),
    shell:
        "modalprompt confusion --tasks {params.tasks:q} --predictions {input:q} --out-dir {params.out:q}"
        " --title {params.title:q} > {log:q} 2>&1"


rule compare:
    input:
        [summary_files(method) for method in METHODS],
    output:
        [str(COMPARISON_DIR / name) for name in layout.COMPARISON_FILES],
    params:
        results=RESULTS,
        methods=METHODS,
        out=COMPARISON_DIR,
        title=f"{EXP.experiment}: each task's accuracy across stages",
    conda:
        CONDA_ENV
    log:
        str(RESULTS / "logs" / "compare.log"),
    shell:
        "modalprompt compare --results {params.results:q} --methods {params.methods:q} --out-dir {params.out:q}"
        " --title {params.title:q} > {log:q} 2>&1"


rule track:
    input:
        summary=[summary_files(method) for method in METHODS],
        views=REPORT_VIEWS,
        stages=[f for method in TRAINED for s in STAGES for f in checkpoint_files(method, s)[-2:]],
        histories=[str(layout.history_file(RESULTS, method, s)) for method in TRAINED for s in STAGES],
    output:
        TRACKING_FILE,
    params:
        uri=EXP.tracking_uri,
        experiment=EXP.tracking.experiment or EXP.experiment,
        results=lambda w, output: Path(output[0]).parent,
        methods=sorted(set(METHODS) | set(TRAINED)),
        tasks=TASKS,
    conda:
        CONDA_ENV
    log:
        str(RESULTS / "logs" / "track.log"),
    shell:
        "modalprompt track --uri {params.uri:q} --experiment {params.experiment:q} --results {params.results:q}"
        " --methods {params.methods:q} --tasks {params.tasks:q} --out {output:q} > {log:q} 2>&1"
