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
        matrix=report(
            str(layout.method_dir(RESULTS, "{method}") / "matrix.csv"),
            caption="../report/matrix.rst",
            category="Accuracy matrices",
            subcategory="{method}",
            labels={"method": "{method}", "figure": "matrix (CSV)"},
        ),
        selection=str(layout.method_dir(RESULTS, "{method}") / "selection.csv"),
        metrics=report(
            str(layout.method_dir(RESULTS, "{method}") / "metrics.json"),
            caption="../report/metrics.rst",
            category="Metrics",
            labels={"method": "{method}", "figure": "metrics (JSON)"},
        ),
        # the same, with every cell scored as the published evaluation code scores it (README: scoring)
        matrix_published=str(layout.method_dir(RESULTS, "{method}") / "matrix_published.csv"),
        metrics_published=str(layout.method_dir(RESULTS, "{method}") / "metrics_published.json"),
        heatmap=report(
            str(layout.method_dir(RESULTS, "{method}") / "heatmap.png"),
            caption="../report/heatmap.rst",
            category="Accuracy matrices",
            subcategory="{method}",
            labels={"method": "{method}", "figure": "heatmap"},
        ),
    log:
        str(layout.log_file(RESULTS, "{method}", "matrix")),
    conda:
        CONDA_ENV
    params:
        tasks=TASKS,
        out=lambda w, output: Path(output.matrix).parent,
        title=lambda w: f"{EXP.experiment}: {w.method}",
    shell:
        "modalprompt matrix --method {wildcards.method:q} --tasks {params.tasks:q} --scores {input.scores:q}"
        " --out-dir {params.out:q} --title {params.title:q} > {log:q} 2>&1"


rule confusion:
    input:
        [str(layout.predictions_file(RESULTS, "{method}", len(TASKS), task)) for task in TASKS],
    output:
        table=str(layout.method_dir(RESULTS, "{method}") / "selection_confusion.csv"),
        figure=report(
            str(layout.method_dir(RESULTS, "{method}") / "selection_confusion.png"),
            caption="../report/confusion.rst",
            category="Prompt selection",
            labels={"method": "{method}", "figure": "selection confusion"},
        ),
    log:
        str(layout.log_file(RESULTS, "{method}", "confusion")),
    wildcard_constraints:
        method="|".join(SELECTING) or "none",
    conda:
        CONDA_ENV
    params:
        tasks=TASKS,
        out=lambda w, output: Path(output.table).parent,
        title=lambda w: f"{EXP.experiment}: {w.method}, prompt ranked first after stage {len(TASKS)}",
    shell:
        "modalprompt confusion --tasks {params.tasks:q} --predictions {input:q} --out-dir {params.out:q}"
        " --title {params.title:q} > {log:q} 2>&1"


rule compare:
    input:
        [summary_files(method) for method in METHOD_NAMES],
    output:
        forgetting=report(
            str(COMPARISON_DIR / "forgetting.png"),
            caption="../report/forgetting.rst",
            category="Methods compared",
            labels={"figure": "forgetting curves"},
        ),
        metrics=report(
            str(COMPARISON_DIR / "metrics.csv"),
            caption="../report/comparison.rst",
            category="Methods compared",
            labels={"figure": "metrics of all methods"},
        ),
    log:
        str(layout.log_file(RESULTS, None, "compare")),
    conda:
        CONDA_ENV
    params:
        results=RESULTS,
        methods=METHOD_NAMES,
        out=COMPARISON_DIR,
        title=f"{EXP.experiment}: each task's accuracy across stages",
    shell:
        "modalprompt compare --results {params.results:q} --methods {params.methods:q} --out-dir {params.out:q}"
        " --title {params.title:q} > {log:q} 2>&1"


rule track:
    input:
        summary=[summary_files(method) for method in METHOD_NAMES],
        views=REPORT_VIEWS,
        stages=[
            str(f) for method in TRAINED for s in STAGES for f in layout.checkpoint_files(RESULTS, method, s)
        ],
        histories=[str(layout.history_file(RESULTS, method, s)) for method in TRAINED for s in STAGES],
    output:
        TRACKING_FILE,
    log:
        str(layout.log_file(RESULTS, None, "track")),
    conda:
        CONDA_ENV
    params:
        uri=EXP.tracking_uri,
        experiment=EXP.tracking.experiment or EXP.experiment,
        results=lambda w, output: Path(output[0]).parent,
        methods=sorted(set(METHOD_NAMES) | set(TRAINED)),
        tasks=TASKS,
    shell:
        "modalprompt track --uri {params.uri:q} --experiment {params.experiment:q} --results {params.results:q}"
        " --methods {params.methods:q} --tasks {params.tasks:q} --out {output:q} > {log:q} 2>&1"
