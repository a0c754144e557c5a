# Base-model preparation and the demo's data: steps of the DAG like any other.
from modalprompt.tiny import TOY_TASKS

if EXP.model.source == ModelSource.TINY:

    rule tiny_base:
        output:
            llava=BASE_FILES[0],
            clip=BASE_FILES[1],
        params:
            llava=lambda w, output: Path(output.llava).parent,
            clip=lambda w, output: Path(output.clip).parent,
        conda:
            CONDA_ENV
        log:
            str(RESULTS / "logs" / "tiny_base.log"),
        benchmark:
            str(RESULTS / "benchmarks" / "tiny_base.tsv")
        threads: EXP.resources.prepare.cpus
        resources:
            **slurm_resources("prepare"),
        shell:
            "modalprompt make-tiny-base {params.llava:q} {params.clip:q} > {log:q} 2>&1"


if EXP.model.source == ModelSource.ORIGINAL:

    rule convert_llava:
        input:
            source=f"{EXP.model.original_llava}/config.json",
            clip=BASE_FILES[1],
        output:
            BASE_FILES[0],
        params:
            source=lambda w, input: Path(input.source).parent,
            target=lambda w, output: Path(output[0]).parent,
            clip=lambda w, input: Path(input.clip).parent,
        conda:
            CONDA_ENV
        log:
            str(RESULTS / "logs" / "convert_llava.log"),
        benchmark:
            str(RESULTS / "benchmarks" / "convert_llava.tsv")
        threads: EXP.resources.prepare.cpus
        resources:
            **slurm_resources("prepare"),
        shell:
            "modalprompt convert-llava {params.source:q} {params.target:q} --clip {params.clip:q} > {log:q} 2>&1"


if EXP.pipeline.toy_data:

    rule toy_data:
        output:
            [f"{EXP.paths.data}/toy/{name}/{f}" for name in TOY_TASKS for f in ("train.json", "test.json")],
        params:
            folder=lambda w, output: Path(output[0]).parent.parent,
        conda:
            CONDA_ENV
        log:
            str(RESULTS / "logs" / "toy_data.log"),
        resources:
            **slurm_resources("prepare"),
        shell:
            "modalprompt make-toy-data {params.folder:q} > {log:q} 2>&1"
