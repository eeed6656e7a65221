# spec: the resolved settings of one model.  Snakemake's params trigger reruns it only
# when that model's settings change (dvc.yaml needs the file to track one list element).
rule spec:
    output:
        SPEC,
    params:
        file=PARAMS,
        record=lambda wildcards: spec_record(P, wildcards.name),
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
    params:
        file=PARAMS,
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
