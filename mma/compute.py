"""How tensors are computed: the helpers that apply the ``compute:`` section of params.yaml
(its schema, ``ComputeParams``, is in mma/config/compute.py).  Speed only: every switch keeps
the algorithms as they are.

    precision      fp32 | bf16 | auto   bf16: autocast for the attacks' gradient steps and
                                        the training forward/backward; kept in fp32: every
                                        loss (computed on fp32 logits), AN-PGD's boundary
                                        search (its sign decisions at 2^-10 resolution),
                                        the forwards that judge an attack, the metrics
    channels_last  true | false | auto  NHWC memory format for the model's conv weights
    compile        bool                 torch.compile the model (eager by default)
    cuda_graphs    bool                 CUDA, STD/PGD training only: compile with mode="reduce-overhead"
                                        (captures the fixed-shape forward/backward as
                                        CUDA graphs; torch re-captures when a shape changes)

``auto`` is resolved per device by :func:`resolve` from measurements
(docs/performance.md); the resolved values are recorded in the model file and in
the train stage's metrics.json, the section as written in MLflow's params.

torch is imported by the helpers that need it.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from .config import Bool
from .config.compute import ComputeParams


@dataclass(frozen=True)
class Compute:
    """The switches resolved for one device (no "auto" left)."""

    device: str = "cpu"  # the device type: cpu or cuda
    precision: str = "fp32"
    channels_last: bool = False
    compile: Bool = False
    cuda_graphs: Bool = False

    def record(self) -> dict:
        return asdict(self)

    @property
    def bf16(self) -> bool:
        return self.precision == "bf16"


FP32 = Compute()  # the plain defaults (what a caller that passes nothing gets)


CPUINFO = Path("/proc/cpuinfo")  # where the CPU's flags are read (Linux)


def cpu_has_bf16() -> bool:
    """True if the CPU computes bf16 in hardware (AVX512-BF16 or AMX-BF16 in ``CPUINFO``'s
    flags); without it (an AVX2-only CPU, or AVX-512 without BF16) bf16 autocast on a CPU is
    emulated and many times slower than fp32 (docs/performance.md)."""
    with contextlib.suppress(OSError):
        for line in CPUINFO.read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return bool(flags & {"avx512_bf16", "amx_bf16"})
    return False


GRAPHED_METHODS = ("std", "pgd")  # cuda_graphs applies to these training steps only (see resolve)


def resolve(params: ComputeParams | None, device, method: str | None = None) -> Compute:
    """The switches for ``device`` ("cpu", "cuda", "cuda:1" or a torch.device) and, for a
    training stage, its ``method`` (None: the attacks of transfer/evaluate).

    "auto", as measured per device (docs/performance.md, "The switches"):
      precision: bf16 on a CPU with bf16 hardware (``cpu_has_bf16``: faster there, results
        within binomial noise); fp32 on every other CPU (bf16 is emulated there, many times
        slower) and on CUDA (bf16 measured slower on the launch-bound steps).
      channels_last: on for every CPU (faster with and without bf16 hardware); off on CUDA.
    cuda_graphs (never auto) is kept for STD and PGD training on CUDA only: the MMA step
    and the evaluation attacks keep a forward's outputs while the same graph replays,
    which failed on an H200 with torch 2.11 ("tensor output of CUDAGraphs that has been
    overwritten", tests/test_gpu.py); there it is turned off with a warning and the
    resolved (recorded) value says so.
    """
    p = params or ComputeParams()
    kind = str(device).split(":")[0]
    precision = p.precision
    if precision == "auto":
        precision = "bf16" if kind == "cpu" and cpu_has_bf16() else "fp32"
    channels_last = p.channels_last
    if channels_last == "auto":
        channels_last = kind == "cpu"
    cuda_graphs = p.cuda_graphs and kind == "cuda"
    if cuda_graphs and method not in GRAPHED_METHODS:
        import warnings

        what = f"{method.upper()} training" if method else "the attacks of transfer/evaluate"
        warnings.warn(f"compute.cuda_graphs is off for {what}: it works for STD and PGD training only "
                      "(docs/performance.md, 'make gpu-check on an H200')", stacklevel=2)
        cuda_graphs = False
    return Compute(device=kind, precision=precision, channels_last=bool(channels_last), compile=p.compile,
                   cuda_graphs=cuda_graphs)


# --------------------------------------------------------------------------- applying them
def prepare(model, c: Compute):
    """The model to run: ``model`` itself in channels_last if asked (in place; the
    state_dict is unchanged, so files save and load as before), compiled if asked.
    Save ``model``, run the returned one (a compiled wrapper shares its parameters)."""
    import torch

    if c.channels_last:
        model.to(memory_format=torch.channels_last)  # only 4-D weights change layout
    if c.compile or c.cuda_graphs:
        return torch.compile(model, mode="reduce-overhead" if c.cuda_graphs else "default")
    return model


def autocast(c: Compute):
    """torch.autocast to bf16 when ``c`` says so (a no-op context otherwise): wrap the
    training forward/backward.  Losses take ``logits.float()``; the boundary search
    turns autocast off for its own forwards."""
    import torch

    return torch.autocast(c.device, dtype=torch.bfloat16, enabled=c.bf16)


@contextlib.contextmanager
def attacks(c: Compute) -> Iterator[None]:
    """Within the body, every attack's gradient steps run in ``c``'s precision (bf16:
    autocast); the forwards that judge an attack's result stay fp32 (see
    ``mma.attacks.core.attack_precision``).  For evaluation and transfer stages."""
    import torch

    from .attacks.core import attack_precision

    with attack_precision(torch.bfloat16 if c.bf16 else None):
        yield
