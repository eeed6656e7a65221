# spec: the resolved settings of one model.  Snakemake's params trigger reruns it only
# when that model's settings change (dvc.yaml needs the file to track one model).
rule spec:
    output:
        SPEC,
    params:
        file=params_file,
        record=spec_settings,
    log:
        "results/logs/spec/{name}.log",
    conda:
        ENV
    shell:
        "mma spec {wildcards.name} --params {params.file} > {log} 2>&1"


rule train:
    input:
        spec=SPEC,
        data=DATA,
    output:
        model=MODEL,
        metrics=TRAIN_METRICS,
        info=TRAIN_INFO,
        train_curve=report(PLOT["train"], category="Training curves", labels={"model": "{name}", "curve": "train"}),
        val_curve=report(PLOT["val"], category="Training curves", labels={"model": "{name}", "curve": "validation"}),
    params:
        file=params_file,
    log:
        "results/logs/train/{name}.log",
    threads: THREADS
    resources:
        gpu=GPU,
        mem_mb=mem_mb,
        runtime=train_runtime,
    conda:
        ENV
    shell:
        "mma train {wildcards.name} --params {params.file} > {log} 2>&1"
