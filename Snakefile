# The pipeline for Snakemake: the same stages, commands and outputs as dvc.yaml (a test
# checks that).  Run a preset with `snakemake --cores 2 --configfile presets/smoke.yaml`;
# rules only call the `mma` CLI, with the params file Snakemake was given.
configfile: "params.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/transfer.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        REPORT_FILES,
        expand(TRANSFER, role=ROLES, seed=SEEDS),  # every source's sets, used or not (as dvc repro makes them)
    default_target: True


onstart:
    # The MLflow experiment, created once before any job starts: parallel jobs each creating
    # it against a tracking server can put runs under "Default" (docs/cluster.md)
    # One id for every job of this invocation (MLflow tag mma.pipeline_run): jobs inherit the
    # environment (local jobs directly, SLURM jobs through sbatch's default --export=ALL)
    import uuid

    from mma.tracking import PIPELINE_ENV, open_store

    os.environ.setdefault(PIPELINE_ENV, f"snakemake:{uuid.uuid4().hex[:12]}")
    open_store(P.experiment)
