rule data:
    output:
        directory(DATA),
    params:
        file=params_file,
        settings=reads("data"),
    log:
        "results/logs/data.log",
    threads: 1
    conda:
        ENV
    shell:
        "mma data --params {params.file} > {log} 2>&1"
