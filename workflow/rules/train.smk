# Stage s trains what its method trains for task s (ModalPrompt: the prompt and key network) on top of the
# checkpoints of the earlier stages the method reads (methods.Method.training_inputs), and for replay and
# multitask on the earlier tasks' records too. With pipeline.seeds, once per seed, in seed-<s>/.
# params.settings holds exactly the resolved settings of this stage that the method uses: a change reruns
# this stage, and the later stages and evaluations rerun because their input checkpoints change.
# A stopped attempt (Slurm's warning signal, a crash, kill -9) leaves stage-<s>/resume/: the next attempt
# (Snakemake's retries, or the next `snakemake`) continues from it.


rule train:
    input:
        base=BASE_FILES,
        train_file=lambda w: task_of(w.stage).train_file,
        previous=training_checkpoints,
        earlier_train_files=earlier_train_files,
    output:
        meta=str(layout.checkpoint_files(RUN, "{method}", "{stage}")[0]),
        tensors=str(layout.checkpoint_files(RUN, "{method}", "{stage}")[1]),
        history=str(layout.history_file(RUN, "{method}", "{stage}")),
    log:
        str(layout.log_file(RUN, "{method}", "train-stage-{stage}")),
    benchmark:
        str(layout.benchmark_file(RUN, "{method}", "train-stage-{stage}"))
    wildcard_constraints:
        stage=r"[1-9]\d*",
        method="|".join(TRAINED) or "none",
    conda:
        CONDA_ENV
    threads: EXP.resources.train.cpus
    resources:
        **train_resources(),
    params:
        settings=lambda w: train_settings(int(w.stage), w.method, seed_of(w)),
        seed=lambda w: ["--seed", w.seed] if SEEDS else [],  # the key of its live MLflow run
        previous=lambda w, input: training_folders(w),  # derived: no rerun key of its own
        out=lambda w, output: Path(output.meta).parent,
        # the mid-stage state: not an output, so a failed or preempted attempt keeps it for the retry
        state=lambda w: layout.resume_dir(run_of(w), w.method, w.stage),
        launcher=train_launcher(),
    shell:
        "{params.launcher:q} --warm {resources.warm:q} train --settings {params.settings:q} --previous {params.previous:q}"
        " --out {params.out:q} --history {output.history:q} --state-dir {params.state:q}"
        " --save-every {resources.save_every_steps:q} --zero-stage {resources.zero_stage:q}"
        " --offload {resources.offload:q} --threads {threads} --progress-steps {resources.progress_steps:q}"
        " --progress-seconds {resources.progress_seconds:q} --tracking-uri {resources.tracking_uri:q}"
        " --tracking-experiment {resources.tracking_experiment:q} {params.seed:q} > {log:q} 2>&1"
