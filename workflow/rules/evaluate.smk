# inputs: what evaluate reads besides its model and the data: the params' values and the
# hashes of its transfer sets (dvc.yaml's `inputs` stage; here the evaluate job's inputs are
# already exactly the transfer sets of the model's threat model)
rule inputs:
    input:
        transfer=transfer_sets,
    output:
        EVAL_SPEC,
    params:
        file=params_file,
        settings=reads("inputs"),
    log:
        "results/logs/inputs/{name}/seed{seed}.log",
    conda:
        ENV
    shell:
        "mma spec evaluate {wildcards.name} --seed {wildcards.seed} --params {params.file} > {log} 2>&1"


rule evaluate:
    input:
        model=MODEL,
        data=DATA,
        transfer=transfer_sets,
        inputs=EVAL_SPEC,
    output:
        directory(EVAL),
        metrics=METRICS,
        curve=report(PLOT["robust_vs_eps"], category="Robust accuracy vs eps", labels={"model": "{name}", "seed": "{seed}"}),
    params:
        file=params_file,
    log:
        "results/logs/evaluate/{name}/seed{seed}.log",
    threads: THREADS
    resources:
        gpu=GPU,
        mem_mb=mem_mb,
        runtime=eval_runtime,
    conda:
        ENV
    shell:
        "mma evaluate {wildcards.name} --seed {wildcards.seed} --params {params.file} > {log} 2>&1"
