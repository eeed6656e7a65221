# source: what the transfer job of a Table-1 role and seed reads: the params' values and the
# hash of the role's seed-S source model file (dvc.yaml's source stage; here the transfer job
# could name the model file itself, but both tools keep the same stages and files)
rule source:
    input:
        model=source_model,
    output:
        SOURCE,
    params:
        file=params_file,
        settings=reads("source"),
    log:
        "results/logs/source/{role}/seed{seed}.log",
    conda:
        ENV
    shell:
        "mma spec transfer {wildcards.role} --seed {wildcards.seed} --params {params.file} > {log} 2>&1"


rule transfer:
    input:
        model=source_model,
        source=SOURCE,
        data=DATA,
    output:
        directory(TRANSFER),
    params:
        file=params_file,
    log:
        "results/logs/transfer/{role}/seed{seed}.log",
    threads: THREADS
    resources:
        gpu=GPU,
        mem_mb=mem_mb,
        runtime=eval_runtime,
    conda:
        ENV
    shell:
        "mma transfer --role {wildcards.role} --seed {wildcards.seed} --params {params.file} > {log} 2>&1"
