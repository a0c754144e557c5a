# The accuracy matrix, its metrics and what the method cost, then MLflow. MLflow only records: nothing
# reads it to decide what runs; rerunning `track` replaces the runs whose files changed. The tasks' answer
# overlap comes from the task files alone, and is set against each method's forgetting.


localrules:
    score,
    matrix,
    confusion,
    compare,
    answer_overlap,
    overlap_forgetting,
    track,


rule matrix:
    input:
        scores=lambda w: score_files(w.method, seed_of(w)),
        stages=lambda w: trained_stage_files(w.method, seed_of(w)),
    output:
        matrix=report(
            str(layout.method_dir(RUN, "{method}") / "matrix.csv"),
            caption="../report/matrix.rst",
            category="Accuracy matrices",
            subcategory="{method}",
            labels={"method": "{method}", "figure": "matrix (CSV)"},
        ),
        selection=str(layout.method_dir(RUN, "{method}") / "selection.csv"),
        metrics=report(
            str(layout.method_dir(RUN, "{method}") / "metrics.json"),
            caption="../report/metrics.rst",
            category="Metrics",
            labels={"method": "{method}", "figure": "metrics (JSON)"},
        ),
        # the same, with every cell scored as the published evaluation code scores it (docs/scoring.md)
        matrix_published=str(layout.method_dir(RUN, "{method}") / "matrix_published.csv"),
        metrics_published=str(layout.method_dir(RUN, "{method}") / "metrics_published.json"),
        heatmap=report(
            str(layout.method_dir(RUN, "{method}") / "heatmap.png"),
            caption="../report/heatmap.rst",
            category="Accuracy matrices",
            subcategory="{method}",
            labels={"method": "{method}", "figure": "heatmap"},
        ),
        # what training and evaluating each stage cost (modalprompt/cost.py)
        cost=str(layout.method_dir(RUN, "{method}") / layout.COST_FILE),
    log:
        str(layout.log_file(RUN, "{method}", "matrix")),
    conda:
        CONDA_ENV
    params:
        tasks=TASKS,
        out=lambda w, output: Path(output.matrix).parent,
        title=lambda w: f"{EXP.experiment}: {w.method}",
    shell:
        "modalprompt matrix --method {wildcards.method:q} --tasks {params.tasks:q} --scores {input.scores:q}"
        " --stages {input.stages:q} --out-dir {params.out:q} --title {params.title:q} > {log:q} 2>&1"


rule confusion:
    input:
        [str(layout.predictions_file(RUN, "{method}", len(TASKS), task)) for task in TASKS],
    output:
        table=str(layout.method_dir(RUN, "{method}") / "selection_confusion.csv"),
        figure=report(
            str(layout.method_dir(RUN, "{method}") / "selection_confusion.png"),
            caption="../report/confusion.rst",
            category="Prompt selection",
            labels={"method": "{method}", "figure": "selection confusion"},
        ),
    log:
        str(layout.log_file(RUN, "{method}", "confusion")),
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


if SEEDS:

    localrules:
        aggregate,

    rule aggregate:
        input:
            lambda w: [f for seed in SEEDS for f in summary_files(w.method, seed)],
        output:
            [
                (
                    report(
                        str(layout.method_dir(RESULTS, "{method}") / name),
                        caption="../report/aggregate.rst",
                        category="Over seeds",
                        labels={"method": "{method}", "figure": name},
                    )
                    if name in ("metrics.json", "heatmap.png")
                    else str(layout.method_dir(RESULTS, "{method}") / name)
                )
                for name in layout.AGGREGATE_FILES
            ],
        log:
            str(layout.log_file(RESULTS, "{method}", "aggregate")),
        conda:
            CONDA_ENV
        params:
            seeds=SEEDS,
            folders=lambda w: [layout.method_dir(layout.run_dir(RESULTS, s), w.method) for s in SEEDS],
            out=lambda w: layout.method_dir(RESULTS, w.method),
            title=lambda w: f"{EXP.experiment}: {w.method}",
        shell:
            "modalprompt aggregate --seeds {params.seeds:q} --folders {params.folders:q} --out-dir {params.out:q}"
            " --title {params.title:q} > {log:q} 2>&1"


rule compare:
    input:
        [final_files(method) for method in METHOD_NAMES],
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
        accuracy_cost=report(
            str(COMPARISON_DIR / "accuracy_cost.png"),
            caption="../report/cost.rst",
            category="Methods compared",
            labels={"figure": "accuracy against cost"},
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


rule answer_overlap:
    input:
        train_files=[task.train_file for task in EXP.tasks],
        eval_files=[task.eval_file for task in EXP.tasks],
    output:
        str(RESULTS / layout.ANSWER_OVERLAP_FILE),
    log:
        str(layout.log_file(RESULTS, None, "answer-overlap")),
    conda:
        CONDA_ENV
    params:
        tasks=TASKS,
        # each task's scorer normalises its answers; only the questions its evaluation scores count
        scorers=[str(task.scorer) for task in EXP.tasks],
        max_samples=[max_samples_of(task) for task in TASKS],
    shell:
        "modalprompt answer-overlap --tasks {params.tasks:q} --train-files {input.train_files:q}"
        " --eval-files {input.eval_files:q} --scorers {params.scorers:q} --max-samples {params.max_samples:q}"
        " --out {output:q} > {log:q} 2>&1"


rule overlap_forgetting:
    input:
        overlap=rules.answer_overlap.output[0],
        matrix=str(layout.method_dir(RESULTS, "{method}") / "matrix.csv"),
    output:
        figure=report(
            str(layout.method_dir(RESULTS, "{method}") / "answer_overlap.png"),
            caption="../report/overlap.rst",
            category="Accuracy matrices",
            subcategory="{method}",
            labels={"method": "{method}", "figure": "answer overlap and forgetting"},
        ),
        table=str(layout.method_dir(RESULTS, "{method}") / "overlap_forgetting.json"),
    log:
        str(layout.log_file(RESULTS, "{method}", "overlap-forgetting")),
    conda:
        CONDA_ENV
    params:
        out=lambda w, output: Path(output.table).parent,
        title=lambda w: f"{EXP.experiment}: {w.method}",
    shell:
        "modalprompt overlap-forgetting --overlap {input.overlap:q} --matrix {input.matrix:q}"
        " --out-dir {params.out:q} --title {params.title:q} > {log:q} 2>&1"


rule track:
    input:
        summary=[summary_files(method, seed) for seed in RUN_SEEDS for method in METHOD_NAMES],
        over_seeds=[final_files(method) for method in METHOD_NAMES] if SEEDS else [],
        views=REPORT_VIEWS,
        stages=[
            f
            for seed in RUN_SEEDS
            for method in TRAINED
            for f in stage_files(layout.run_dir(RESULTS, seed), method, STAGES)
        ],
        histories=[
            str(layout.history_file(layout.run_dir(RESULTS, seed), method, s))
            for seed in RUN_SEEDS
            for method in TRAINED
            for s in STAGES
        ],
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
        seeds=["--seeds", *SEEDS] if SEEDS else [],
    shell:
        "modalprompt track --uri {params.uri:q} --experiment {params.experiment:q} --results {params.results:q}"
        " --methods {params.methods:q} --tasks {params.tasks:q} {params.seeds:q} --out {output:q} > {log:q} 2>&1"
