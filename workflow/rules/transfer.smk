rule transfer:
    input:
        model=MODEL,
        data=DATA,
    output:
        directory(TRANSFER),
    params:
        file=params_file,
        settings=SETTINGS["transfer"],
    log:
        "results/logs/transfer/{name}.log",
    threads: THREADS
    resources:
        gpu=GPU,
        mem_mb=mem_mb,
        runtime=eval_runtime,
    conda:
        ENV
    shell:
        "mma transfer {wildcards.name} --params {params.file} > {log} 2>&1"
