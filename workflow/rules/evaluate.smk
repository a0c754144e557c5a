# Evaluation of stage s's checkpoint (stages 1..s) on task j <= s; stage 0 is the base model without
# prompts (evaluated once, under zero_shot/). Scoring is its own (cheap, local) step, so a scorer change
# reruns only the scoring. Each method says whose checkpoints it loads and how it selects (methods/).
# An evaluation writes what it cost beside its predictions; its score file carries that cost on.


rule evaluate:
    input:
        base=BASE_FILES,
        eval_file=lambda w: EXP.task(w.task).eval_file,
        checkpoints=evaluation_checkpoints,
    output:
        predictions=str(layout.predictions_file(RUN, "{method}", "{stage}", "{task}")),
        cost=str(layout.eval_cost_file(RUN, "{method}", "{stage}", "{task}")),
    log:
        str(layout.log_file(RUN, "{method}", "evaluate-stage-{stage}-{task}")),
    benchmark:
        str(layout.benchmark_file(RUN, "{method}", "evaluate-stage-{stage}-{task}"))
    conda:
        CONDA_ENV
    threads: EXP.resources.evaluate.cpus
    resources:
        **evaluate_resources(),
    params:
        settings=lambda w: eval_settings(w.task, cell_method(w.method, w.stage)),
        checkpoints=lambda w, input: evaluation_folders(w),  # derived: no rerun key of its own
    shell:
        "modalprompt --warm {resources.warm:q} evaluate --settings {params.settings:q} --checkpoints {params.checkpoints:q}"
        " --out {output.predictions:q} --threads {threads} --progress-steps {resources.progress_steps:q}"
        " --progress-seconds {resources.progress_seconds:q} > {log:q} 2>&1"


rule score:
    input:
        predictions=rules.evaluate.output.predictions,
        cost=rules.evaluate.output.cost,
        eval_file=lambda w: EXP.task(w.task).eval_file,
        # CoIN's TextVQA answers (TextVQA_0.5.1_val.json); none for the other tasks
        answers=lambda w: [EXP.task(w.task).answers_file] if EXP.task(w.task).answers_file else [],
    output:
        str(layout.score_file(RUN, "{method}", "{stage}", "{task}")),
    log:
        str(layout.log_file(RUN, "{method}", "score-stage-{stage}-{task}")),
    conda:
        CONDA_ENV
    params:
        scorer=lambda w: str(EXP.task(w.task).scorer),
        max_samples=lambda w: max_samples_of(w.task),
    shell:
        "modalprompt score --scorer {params.scorer:q} --predictions {input.predictions:q}"
        " --eval-file {input.eval_file:q} --task {wildcards.task:q} --stage {wildcards.stage:q}"
        " --max-samples {params.max_samples:q} --answers-file {input.answers:q} --cost {input.cost:q}"
        " --out {output:q} > {log:q} 2>&1"
