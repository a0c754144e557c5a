# Stage s trains task s's prompt and key network on top of the checkpoints of stages 1..s-1.
# params.settings holds exactly the resolved settings of this stage that the method uses: a change reruns
# this stage, and the later stages and evaluations rerun because their input checkpoints change.
# A stopped attempt (Slurm's warning signal, a crash, kill -9) leaves stage-<s>/resume/: the next attempt
# (Snakemake's retries, or the next `snakemake`) continues from it.


rule train:
    input:
        base=BASE_FILES,
        train_file=lambda w: task_of(w.stage).train_file,
        previous=lambda w: checkpoint_files(w.method, int(w.stage) - 1),
    output:
        meta=str(layout.checkpoint_files(RESULTS, "{method}", "{stage}")[0]),
        tensors=str(layout.checkpoint_files(RESULTS, "{method}", "{stage}")[1]),
        history=str(layout.history_file(RESULTS, "{method}", "{stage}")),
    log:
        str(layout.log_file(RESULTS, "{method}", "train-stage-{stage}")),
    benchmark:
        str(layout.benchmark_file(RESULTS, "{method}", "train-stage-{stage}"))
    wildcard_constraints:
        stage=r"[1-9]\d*",
        method="|".join(TRAINED) or "none",
    conda:
        CONDA_ENV
    threads: EXP.resources.train.cpus
    resources:
        **train_resources(),
    params:
        settings=lambda w: job_to_json(train_job(EXP, task_of(w.stage).name, w.method)),
        previous=lambda w, input: folders_of(input.previous),
        out=lambda w, output: Path(output.meta).parent,
        # the mid-stage state: not an output, so a failed or preempted attempt keeps it for the retry
        state=lambda w: layout.resume_dir(RESULTS, w.method, w.stage),
        launcher=train_launcher(),
    shell:
        "{params.launcher:q} --warm {resources.warm:q} train --settings {params.settings:q} --previous {params.previous:q}"
        " --out {params.out:q} --history {output.history:q} --state-dir {params.state:q}"
        " --save-every {resources.save_every_steps:q} --zero-stage {resources.zero_stage:q}"
        " --offload {resources.offload:q} --threads {threads} --progress-steps {resources.progress_steps:q}"
        " --progress-seconds {resources.progress_seconds:q} --tracking-uri {resources.tracking_uri:q}"
        " --tracking-experiment {resources.tracking_experiment:q} > {log:q} 2>&1"
