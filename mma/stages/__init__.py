"""One module per pipeline stage; the ``mma`` CLI calls them and dvc.yaml /
the Snakefile call the CLI.  Each module declares its ``CONTRACT`` (``contract``: what it
reads from the params, the code it runs, what it reads from other stages and what it
writes) and ``run(params, ...)``, which reads only that, writes only the paths of
``mma.paths`` and returns its summary metrics.

    data      mma.stages.data.run(params, *, tracker)              -> data/...
    train     mma.stages.train.run(params, name, seed, *, device, tracker)    -> results/models/NAME/seedS/
    transfer  mma.stages.transfer.run(params, role, seed, *, device, tracker) -> results/transfer/ROLE/seedS/
    evaluate  mma.stages.evaluate.run(params, name, seed, *, device, tracker) -> results/eval/NAME/seedS/
    report    mma.stages.report.run(params, *, tracker)            -> results/report/

``files`` holds what they share: the identity check of every file read from another
stage, the per-model locks (results/.locks/), output folders swapped in whole, and the
writability check the CLI makes before any work.  No module here imports torch at import
time (the Snakefile reads the contracts).
"""

from . import data, evaluate, report, train, transfer
from .contract import Contract

MODULES = {"data": data, "train": train, "transfer": transfer, "evaluate": evaluate, "report": report}
CONTRACTS: dict[str, Contract] = {name: module.CONTRACT for name, module in MODULES.items()}

# Every stage of dvc.yaml (rule of the Snakefile) whose params (job params) are a contract's
# record: a stage's own, or, for a bookkeeping stage (spec, source, inputs), the record of the
# stage it writes for; train, transfer and evaluate depend on their bookkeeping file instead.
RECORDED = {(c.bookkeeping.stage if c.bookkeeping else c.stage): c for c in CONTRACTS.values()}
