rule report:
    input:
        expand(EVAL, name=MODELS, seed=SEEDS),
    output:
        report_outputs(),
    params:
        file=params_file,
        settings=reads("report"),
    log:
        "results/logs/report.log",
    conda:
        ENV
    shell:
        "mma report --params {params.file} > {log} 2>&1"
