"""One function per pipeline stage; the ``mma`` CLI calls them and dvc.yaml /
the Snakefile call the CLI.  Each ``run(params, ...)`` reads only its params
section(s), writes only the paths of ``mma.paths`` and returns its summary metrics.

    data      mma.stages.data.run(params, *, tracker)              -> data/...
    train     mma.stages.train.run(params, name, seed, *, device, tracker)    -> results/models/NAME/seedS/
    transfer  mma.stages.transfer.run(params, role, seed, *, device, tracker) -> results/transfer/ROLE/seedS/
    evaluate  mma.stages.evaluate.run(params, name, seed, *, device, tracker) -> results/eval/NAME/seedS/
    report    mma.stages.report.run(params, *, tracker)            -> results/report/

``files`` holds what they share: the identity check of every file read from another
stage, the per-model locks (results/.locks/), output folders swapped in whole, and the
writability check the CLI makes before any work.
"""
