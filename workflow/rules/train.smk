# spec: what the train job of one member (model × seed) reads from the params (its resolved
# settings).  Snakemake's params trigger reruns it only when that member's settings change
# (dvc.yaml needs the file to track one member).
rule spec:
    output:
        SPEC,
    params:
        file=params_file,
        settings=reads("spec"),
    log:
        "results/logs/spec/{name}/seed{seed}.log",
    conda:
        ENV
    shell:
        "mma spec train {wildcards.name} --seed {wildcards.seed} --params {params.file} > {log} 2>&1"


rule train:
    input:
        spec=SPEC,
        data=DATA,
    output:
        model=MODEL,
        metrics=TRAIN_METRICS,
        info=TRAIN_INFO,
        train_curve=report(PLOT["train"], category="Training curves", labels={"model": "{name}", "seed": "{seed}", "curve": "train"}),
        val_curve=report(PLOT["val"], category="Training curves", labels={"model": "{name}", "seed": "{seed}", "curve": "validation"}),
    params:
        file=params_file,
    log:
        "results/logs/train/{name}/seed{seed}.log",
    threads: THREADS
    resources:
        gpu=GPU,
        mem_mb=mem_mb,
        runtime=train_runtime,
    conda:
        ENV
    shell:
        "mma train {wildcards.name} --seed {wildcards.seed} --params {params.file} > {log} 2>&1"
