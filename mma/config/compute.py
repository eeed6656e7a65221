"""The ``compute:`` section of params.yaml: the speed switches.  What they do, and how
``auto`` is resolved per device, is mma/compute.py's (it applies them)."""

from __future__ import annotations

from typing import Literal, Union

from pydantic import model_validator

from . import Bool, Strict

SEARCHES = ("secant", "bisection")  # AN-PGD's boundary searches (mma.attacks.an_pgd.boundary_search)


class ComputeParams(Strict):
    """params.yaml ``compute:``: the speed switches (see the module docstring)."""

    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: as measured per device (resolve)
    channels_last: Union[Literal["auto"], Bool] = "auto"  # auto: as measured per device (resolve)
    compile: Bool = False  # torch.compile the model: minutes of compile time, measured gain only on GPU
    cuda_graphs: Union[Literal["auto"], Bool] = "auto"  # the graph path on CUDA; auto: off until measured (resolve)
    search: Literal["auto", "secant", "bisection"] = "auto"  # AN-PGD's boundary search; auto: per device (resolve)

    @model_validator(mode="after")
    def _graph_path(self):
        if self.cuda_graphs is True and self.search == "secant":
            raise ValueError(
                "search = 'secant' cannot run in a CUDA graph (its loop ends when every "
                "bracket has closed, a host read): with cuda_graphs: true set search to bisection "
                "or auto"
            )
        if self.cuda_graphs is True and self.compile:
            raise ValueError("compile and cuda_graphs: choose one (the graph path captures the eager model's kernels)")
        return self
