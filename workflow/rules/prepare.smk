# Base-model preparation and the demo's data: steps of the DAG like any other.
from modalprompt import minicoin
from modalprompt.tiny import TOY_TASKS

MINICOIN_DIR = Path(EXP.paths.data) / "minicoin"

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


if EXP.pipeline.generate_data == Generator.TOY:

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


if EXP.model.source == ModelSource.PRETRAIN:

    rule generic_corpus:
        output:
            str(MINICOIN_DIR / "generic" / "train.json"),
        params:
            out=lambda w, output: Path(output[0]).parent.parent,
            size=EXP.benchmark.generic_size,
            test_size=EXP.benchmark.test_size,
            seed=EXP.benchmark.seed,
        conda:
            CONDA_ENV
        log:
            str(RESULTS / "logs" / "generic_corpus.log"),
        resources:
            **slurm_resources("prepare"),
        shell:
            "modalprompt make-minicoin {params.out:q} --generic-size {params.size:q} --test-size {params.test_size:q}"
            " --seed {params.seed:q}"
            " > {log:q} 2>&1"

    rule pretrain_base:
        input:
            corpus=rules.generic_corpus.output[0],
        output:
            llava=BASE_FILES[0],
            clip=BASE_FILES[1],
        params:
            corpus=lambda w, input: Path(input.corpus).parent,
            llava=lambda w, output: Path(output.llava).parent,
            clip=lambda w, output: Path(output.clip).parent,
            settings=job_to_json(EXP.model.pretrain),
        conda:
            CONDA_ENV
        log:
            str(RESULTS / "logs" / "pretrain_base.log"),
        benchmark:
            str(RESULTS / "benchmarks" / "pretrain_base.tsv")
        threads: EXP.resources.prepare.cpus
        resources:
            **slurm_resources("prepare"),
        shell:
            "modalprompt pretrain-base --corpus {params.corpus:q} --llava {params.llava:q} --clip {params.clip:q}"
            " --settings {params.settings:q} > {log:q} 2>&1"


if EXP.pipeline.generate_data == Generator.MINICOIN:

    rule minicoin_task:
        output:
            train=str(MINICOIN_DIR / "{task}" / "train.json"),
            test=str(MINICOIN_DIR / "{task}" / "test.json"),
        params:
            out=lambda w, output: Path(output.train).parent.parent,
            train_size=EXP.benchmark.train_size,
            test_size=EXP.benchmark.test_size,
            seed=EXP.benchmark.seed,
        wildcard_constraints:
            task="|".join(minicoin.TASKS),
        conda:
            CONDA_ENV
        log:
            str(RESULTS / "logs" / "minicoin-{task}.log"),
        resources:
            **slurm_resources("prepare"),
        shell:
            "modalprompt make-minicoin {params.out:q} --tasks {wildcards.task:q} --train-size {params.train_size:q}"
            " --test-size {params.test_size:q} --seed {params.seed:q} > {log:q} 2>&1"
