# Evaluation of stage s's checkpoint (stages 1..s) on task j <= s; stage 0 is the base model without
# prompts (evaluated once, under zero_shot/). Scoring is its own (cheap, local) step, so a scorer change
# reruns only the scoring. The oracle evaluates modalprompt's checkpoints with each sample's own task forced.


rule evaluate:
    input:
        base=BASE_FILES,
        eval_file=lambda w: EXP.task(w.task).eval_file,
        checkpoints=lambda w: checkpoint_files(w.method, w.stage),
    output:
        str(RESULTS / "{method}" / "stage-{stage}" / "eval" / "{task}.jsonl"),
    params:
        settings=lambda w: job_to_json(eval_job(EXP, w.task, eval_strategy(w.method, w.stage))),
        checkpoints=lambda w, input: folders_of(input.checkpoints),
    conda:
        CONDA_ENV
    log:
        str(RESULTS / "logs" / "{method}" / "evaluate-stage-{stage}-{task}.log"),
    benchmark:
        str(RESULTS / "benchmarks" / "{method}" / "evaluate-stage-{stage}-{task}.tsv")
    threads: EXP.resources.evaluate.cpus
    resources:
        **slurm_resources("evaluate"),
    shell:
        "modalprompt evaluate --settings {params.settings:q} --checkpoints {params.checkpoints:q}"
        " --out {output:q} --threads {threads} --quiet > {log:q} 2>&1"


rule score:
    input:
        predictions=rules.evaluate.output[0],
        eval_file=lambda w: EXP.task(w.task).eval_file,
        # CoIN's TextVQA answers (TextVQA_0.5.1_val.json); none for the other tasks
        answers=lambda w: [EXP.task(w.task).answers_file] if EXP.task(w.task).answers_file else [],
    output:
        str(RESULTS / "{method}" / "stage-{stage}" / "eval" / "{task}.score.json"),
    params:
        scorer=lambda w: str(EXP.task(w.task).scorer),
        max_samples=lambda w: EXP.evaluation_for(w.task).max_samples or 0,
    conda:
        CONDA_ENV
    log:
        str(RESULTS / "logs" / "{method}" / "score-stage-{stage}-{task}.log"),
    shell:
        "modalprompt score --scorer {params.scorer:q} --predictions {input.predictions:q}"
        " --eval-file {input.eval_file:q} --task {wildcards.task:q} --stage {wildcards.stage:q}"
        " --max-samples {params.max_samples:q} --answers-file {input.answers:q} --out {output:q} > {log:q} 2>&1"
