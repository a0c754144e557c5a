# Base-model preparation and the demo's data: steps of the DAG like any other.
import sys

from modalprompt.bench import minicoin, shipped
from modalprompt.bench.toy import TOY_TASKS
from modalprompt.config import tiny_family

MINICOIN_DIR = Path(EXP.paths.data) / "minicoin"

if EXP.model.source == ModelSource.TINY:

    rule tiny_base:
        output:
            llava=BASE_FILES[0],
            clip=BASE_FILES[1],
        log:
            str(layout.log_file(RESULTS, None, "tiny_base")),
        benchmark:
            str(layout.benchmark_file(RESULTS, None, "tiny_base"))
        conda:
            CONDA_ENV
        threads: EXP.resources.prepare.cpus
        resources:
            **slurm_resources("prepare"),
        params:
            llava=lambda w, output: Path(output.llava).parent,
            clip=lambda w, output: Path(output.clip).parent,
            family=tiny_family(EXP.model.family),
        shell:
            "modalprompt make-tiny-base {params.llava:q} {params.clip:q} --family {params.family:q} > {log:q} 2>&1"


if EXP.model.source == ModelSource.ORIGINAL:

    rule convert_llava:
        input:
            source=f"{EXP.model.original_llava}/config.json",
            clip=BASE_FILES[1],
        output:
            BASE_FILES[0],
        log:
            str(layout.log_file(RESULTS, None, "convert_llava")),
        benchmark:
            str(layout.benchmark_file(RESULTS, None, "convert_llava"))
        conda:
            CONDA_ENV
        threads: EXP.resources.prepare.cpus
        resources:
            **slurm_resources("prepare"),
        params:
            source=lambda w, input: Path(input.source).parent,
            target=lambda w, output: Path(output[0]).parent,
            clip=lambda w, input: Path(input.clip).parent,
        shell:
            "modalprompt convert-llava {params.source:q} {params.target:q} --clip {params.clip:q} > {log:q} 2>&1"


if EXP.pipeline.generate_data == Generator.TOY:

    rule toy_data:
        output:
            [f"{EXP.paths.data}/toy/{name}/{f}" for name in TOY_TASKS for f in ("train.json", "test.json")],
        log:
            str(layout.log_file(RESULTS, None, "toy_data")),
        conda:
            CONDA_ENV
        resources:
            **slurm_resources("prepare"),
        params:
            folder=lambda w, output: Path(output[0]).parent.parent,
        shell:
            "modalprompt make-toy-data {params.folder:q} > {log:q} 2>&1"


# source: pretrain installs the base shipped with the package when model.pretrain (and the corpus's settings)
# equal its manifest, and pretrains one here otherwise (modalprompt/bench/shipped.py); the log says which.
SHIPPED_DIFFERS = (
    shipped.difference(EXP.model.pretrain, EXP.benchmark)
    if EXP.model.source == ModelSource.PRETRAIN
    else "source is not pretrain"
)
if EXP.model.source == ModelSource.PRETRAIN and workflow.is_main_process:
    print(
        (
            "modalprompt: model.pretrain equals the shipped base's manifest: installing it"
            if SHIPPED_DIFFERS is None
            else f"modalprompt: pretraining the base here ({SHIPPED_DIFFERS})"
        ),
        file=sys.stderr,
    )

if EXP.model.source == ModelSource.PRETRAIN and SHIPPED_DIFFERS is None:

    rule shipped_base:
        output:
            llava=BASE_FILES[0],
            clip=BASE_FILES[1],
        log:
            str(layout.log_file(RESULTS, None, "shipped_base")),
        benchmark:
            str(layout.benchmark_file(RESULTS, None, "shipped_base"))
        conda:
            CONDA_ENV
        resources:
            **slurm_resources("prepare"),
        params:
            llava=lambda w, output: Path(output.llava).parent,
            clip=lambda w, output: Path(output.clip).parent,
            files=shipped.files_digest(),  # a package with another shipped base reinstalls it
        shell:
            "modalprompt install-base --llava {params.llava:q} --clip {params.clip:q} > {log:q} 2>&1"


if EXP.model.source == ModelSource.PRETRAIN and SHIPPED_DIFFERS is not None:

    rule generic_corpus:
        output:
            str(MINICOIN_DIR / "generic" / "train.json"),
        log:
            str(layout.log_file(RESULTS, None, "generic_corpus")),
        conda:
            CONDA_ENV
        resources:
            **slurm_resources("prepare"),
        params:
            out=lambda w, output: Path(output[0]).parent.parent,
            size=EXP.benchmark.generic_size,
            test_size=EXP.benchmark.test_size,
            seed=EXP.benchmark.seed,
            grounding_weight=EXP.benchmark.generic_grounding_weight,
        shell:
            "modalprompt make-minicoin {params.out:q} --generic-size {params.size:q} --test-size {params.test_size:q}"
            " --grounding-weight {params.grounding_weight:q} --seed {params.seed:q}"
            " > {log:q} 2>&1"

    rule pretrain_base:
        input:
            corpus=rules.generic_corpus.output[0],
        output:
            llava=BASE_FILES[0],
            clip=BASE_FILES[1],
        log:
            str(layout.log_file(RESULTS, None, "pretrain_base")),
        benchmark:
            str(layout.benchmark_file(RESULTS, None, "pretrain_base"))
        conda:
            CONDA_ENV
        threads: shipped.PRETRAIN_THREADS  # whatever it is given (the weights depend on it): the rest stay free
        resources:
            **slurm_resources("prepare"),
        params:
            corpus=lambda w, input: Path(input.corpus).parent,
            llava=lambda w, output: Path(output.llava).parent,
            clip=lambda w, output: Path(output.clip).parent,
            settings=job_to_json(EXP.model.pretrain),
        shell:
            "modalprompt pretrain-base --corpus {params.corpus:q} --llava {params.llava:q} --clip {params.clip:q}"
            " --settings {params.settings:q} > {log:q} 2>&1"


if EXP.pipeline.generate_data == Generator.MINICOIN:

    rule minicoin_task:
        output:
            train=str(MINICOIN_DIR / "{task}" / "train.json"),
            test=str(MINICOIN_DIR / "{task}" / "test.json"),
        log:
            str(layout.log_file(RESULTS, None, "minicoin-{task}")),
        wildcard_constraints:
            task="|".join(minicoin.TASKS),
        conda:
            CONDA_ENV
        resources:
            **slurm_resources("prepare"),
        params:
            out=lambda w, output: Path(output.train).parent.parent,
            train_size=EXP.benchmark.train_size,
            test_size=EXP.benchmark.test_size,
            seed=EXP.benchmark.seed,
        shell:
            "modalprompt make-minicoin {params.out:q} --tasks {wildcards.task:q} --train-size {params.train_size:q}"
            " --test-size {params.test_size:q} --seed {params.seed:q} > {log:q} 2>&1"
