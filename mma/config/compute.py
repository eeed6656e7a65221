"""The ``compute:`` section of params.yaml: the speed switches.  What they do, and how
``auto`` is resolved per device, is mma/compute.py's (it applies them)."""

from __future__ import annotations

from typing import Literal, Union

from . import Bool, Strict


class ComputeParams(Strict):
    """params.yaml ``compute:``: the speed switches (see the module docstring)."""

    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: as measured per device (resolve)
    channels_last: Union[Literal["auto"], Bool] = "auto"  # auto: as measured per device (resolve)
    compile: Bool = False  # torch.compile the model: minutes of compile time, measured gain only on GPU
    cuda_graphs: Bool = False  # CUDA graphs via torch.compile(mode="reduce-overhead"); ignored off CUDA
