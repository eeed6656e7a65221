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
    cuda_graphs    true | false | auto  CUDA only: the graph path.  Each training step (attack,
                                        loss, backward, optimizer step) is one captured CUDA
                                        graph, and so is each evaluation attack per (batch
                                        shape, setting); they run on the fixed-shape path
                                        (masks, fixed iteration counts, no host read)
    search         secant | bisection | auto
                                        AN-PGD's boundary search: bracketed secant steps on
                                        the rows still open (fewest forward rows), or the
                                        authors' plain bisection (fixed passes over all
                                        rows; the graph path's); the same resolution

``auto`` is resolved per device by :func:`resolve` from measurements
(docs/performance.md); the resolved values are recorded in the model file and in
the train stage's metrics.json, the section as written in MLflow's params.

torch is imported by the helpers that need it.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from .config import Bool
from .config.compute import SEARCHES, ComputeParams


@dataclass(frozen=True)
class Compute:
    """The switches resolved for one device (no "auto" left).

    ``cuda_graphs`` captures on CUDA; it implies ``fixed_shape`` (the path a graph can
    replay), which also runs eagerly on any device (how a CPU tests it).  ``search``
    "" picks per path and device: bisection on the fixed-shape path and on CUDA, secant
    elsewhere; the fixed-shape path runs bisection only."""

    device: str = "cpu"  # the device type: cpu or cuda
    precision: str = "fp32"
    channels_last: bool = False
    compile: Bool = False
    cuda_graphs: Bool = False
    search: str = ""
    fixed_shape: Bool = False

    def __post_init__(self) -> None:
        fixed = self.fixed_shape or self.cuda_graphs
        search = self.search or ("bisection" if fixed or self.device == "cuda" else "secant")
        if search not in SEARCHES:
            raise ValueError(f"unknown search {search!r}: expected one of {', '.join(SEARCHES)}")
        if fixed and search != "bisection":
            raise ValueError(
                "the fixed-shape path (cuda_graphs) runs the bisection search: the secant search "
                "reads the device to end its loop"
            )
        object.__setattr__(self, "fixed_shape", fixed)
        object.__setattr__(self, "search", search)

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


def resolve(params: ComputeParams | None, device) -> Compute:
    """The switches for ``device`` ("cpu", "cuda", "cuda:1" or a torch.device).

    "auto", as measured per device (docs/performance.md, "The switches"):
      precision: bf16 on a CPU with bf16 hardware (``cpu_has_bf16``: faster there, results
        within binomial noise); fp32 on every other CPU (bf16 is emulated there, many times
        slower) and on CUDA (bf16 measured slower on the launch-bound eager steps).
      channels_last: on for every CPU (faster with and without bf16 hardware); off on CUDA.
      cuda_graphs: off everywhere.  The graph path has not been timed on a GPU yet; it
        becomes on for CUDA once `make gpu-check` measures it faster with the same results.
        Off CUDA, cuda_graphs: true is ignored (resolved to false).
      search: bisection on CUDA (fixed passes over all rows and no host read: what a CUDA
        graph replays), secant on a CPU, where rows cost arithmetic (~4.5-6 forward rows
        per example against bisection's 11, docs/performance.md).
    """
    p = params or ComputeParams()
    kind = str(device).split(":")[0]
    precision = p.precision
    if precision == "auto":
        precision = "bf16" if kind == "cpu" and cpu_has_bf16() else "fp32"
    channels_last = p.channels_last
    if channels_last == "auto":
        channels_last = kind == "cpu"
    cuda_graphs = p.cuda_graphs is True and kind == "cuda"
    search = "" if p.search == "auto" else p.search
    return Compute(
        device=kind,
        precision=precision,
        channels_last=bool(channels_last),
        compile=p.compile,
        cuda_graphs=cuda_graphs,
        search=search,
    )


# --------------------------------------------------------------------------- applying them
def prepare(model, c: Compute):
    """The model to run: ``model`` itself in channels_last if asked (in place; the
    state_dict is unchanged, so files save and load as before), compiled if asked.
    Save ``model``, run the returned one (a compiled wrapper shares its parameters).
    The graph path (``c.cuda_graphs``) captures the model as it is: ``mma.graphs``."""
    import torch

    if c.channels_last:
        model.to(memory_format=torch.channels_last)  # only 4-D weights change layout
    if c.compile:
        return torch.compile(model)
    return model


def autocast(c: Compute):
    """torch.autocast to bf16 when ``c`` says so (a no-op context otherwise): wrap the
    training forward/backward.  Losses take ``logits.float()``; the boundary search
    turns autocast off for its own forwards.  On the graph path autocast caches no
    casts (torch's rule for autocast in a captured region)."""
    import torch

    return torch.autocast(c.device, dtype=torch.bfloat16, enabled=c.bf16, cache_enabled=not c.cuda_graphs)


def attack_path(c: Compute):
    """The attacks' path and boundary search as ``c`` says (``mma.attacks.core.attack_path``):
    wrap the training step."""
    from .attacks.core import attack_path as path

    return path(fixed_shape=c.fixed_shape, search=c.search)


@contextlib.contextmanager
def attacks(c: Compute) -> Iterator[None]:
    """Within the body, every attack's gradient steps run in ``c``'s precision (bf16:
    autocast); the forwards that judge an attack's result stay fp32 (see
    ``mma.attacks.core.attack_precision``); attacks take ``c``'s path and search, and on
    the graph path each attack call is captured, one CUDA graph per (batch shape,
    setting) (``mma.graphs.capture_attacks``).  For evaluation and transfer stages."""
    import torch

    from .attacks.core import attack_precision
    from .graphs import capture_attacks

    graphs = capture_attacks() if c.cuda_graphs else contextlib.nullcontext()
    with attack_precision(torch.bfloat16 if c.bf16 else None), attack_path(c), graphs:
        yield


def eager(c: Compute) -> Compute:
    """``c`` without the graph path (the compacting path, ``c``'s search unless it was the
    graph path's): for work that changes shapes, e.g. validation between training steps."""
    return dataclasses.replace(c, cuda_graphs=False, fixed_shape=False)
