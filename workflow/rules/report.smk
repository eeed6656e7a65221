rule report:
    input:
        expand(EVAL, name=MODELS),
    output:
        REPORT_FILES,
    params:
        file=PARAMS,
        settings=SETTINGS["report"],
    log:
        "results/logs/report.log",
    conda:
        ENV
    shell:
        "mma report --params {params.file} > {log} 2>&1"
