rule evaluate:
    input:
        model=MODEL,
        data=DATA,
        transfer=transfer_sets,
    output:
        directory(EVAL),
    params:
        file=PARAMS,
        settings=SETTINGS["evaluate"],
    log:
        "results/logs/evaluate/{name}.log",
    threads: THREADS
    resources:
        gpu=GPU,
        mem_mb=mem_mb,
        runtime=eval_runtime,
    conda:
        ENV
    shell:
        "mma evaluate {wildcards.name} --params {params.file} > {log} 2>&1"
