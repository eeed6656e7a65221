"""The data stage: prepare and verify every dataset the grid uses (``data.datasets``).

MNIST comes from ``$MMA_DATA_SOURCE`` if set, else ``data.mnist_source``, else a
torchvision download; CIFAR10 from ``data.cifar10_source`` (null: download,
"synthetic": generated CIFAR-shaped data for smoke runs, or a folder).  Either way
the files are checked against known checksums (``mma.data``); the stage logs which
source it used.  It reads the ``data`` section and ``seed`` (``CONTRACT``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..config.data import mnist_source
from ..config.params import Params
from .contract import Contract

CONTRACT = Contract(
    stage="data",
    target=None,
    reads=("data", "seed"),  # seed: the synthetic CIFAR10's
    code=("mma/stages/data.py", "mma/data.py", "mma/config/data.py"),
    outputs=lambda params, target, seed: [Path(params.data.root)],
)


def run(params: Params, *, tracker=None) -> dict[str, float]:
    from ..data import prepare_cifar10, prepare_mnist

    d = params.data
    metrics: dict[str, float] = {}
    for dataset in d.datasets:
        if dataset == "mnist":
            source, origin = mnist_source(params.data)
            print(f"data: mnist from {source or 'torchvision download'} (chosen by {origin})", file=sys.stderr)
            summary = prepare_mnist(d.root, source)
        else:
            source, origin = d.cifar10_source, "data.cifar10_source"
            print(f"data: cifar10 from {source or 'torchvision download'} (chosen by {origin})", file=sys.stderr)
            summary = prepare_cifar10(
                d.root, source, synthetic_train=d.synthetic_train, synthetic_test=d.synthetic_test, seed=params.seed
            )
        if "rebuilt" in summary:  # the earlier copy was damaged (or made with other settings): say so
            print(
                f"data: {dataset}: the prepared copy could not be used ({summary['rebuilt']}); rebuilt it from "
                f"{summary['source']}",
                file=sys.stderr,
            )
        if tracker is not None:
            tracker.set_tags({f"mma.data.{dataset}.source": summary["source"], f"mma.data.{dataset}.chosen_by": origin})
            tracker.log_params({f"data.{dataset}.{name}": digest for name, digest in summary["files"].items()})
        metrics[f"{dataset}_files"] = float(len(summary["files"]))
    return metrics
