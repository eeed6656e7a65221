"""One optimisation step of the training loop: learning rate, batch step, backward,
finite check, optimiser step; and the optimiser it steps.

Two paths, chosen by ``compute`` (``mma.compute``):

* eager (default): the batch step as written; PGD and MMA compact their attacks to the
  rows that need them (the CPU's fastest).
* fixed-shape (``compute.fixed_shape``, implied by ``cuda_graphs``): the same step with
  masks and fixed iteration counts, nothing read back to the host (``mma.attacks.core.
  attack_path``).  On CUDA with ``cuda_graphs`` the whole step is one CUDA graph
  (``mma.graphs.GraphCache``): the first ``WARMUP_STEPS`` steps run eagerly on a side
  stream, the next one is captured and replayed, every later one copies its batch into
  the graph's static buffers and replays it.  The step number is a device tensor written
  before each step (PGDLS's ε ramp reads it), and so is the learning rate (the optimizer
  is graph-safe: ``capturable``, a tensor ``lr`` the schedule fills).  One batch shape is
  captured: ``mma.data.TensorBatcher`` drops the last partial batch of each epoch, so every
  batch has it; a batch of another shape (another batcher) runs the same step eagerly.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import compute as compute_
from ..compute import Compute
from ..config.model import ModelSpec
from ..graphs import GraphCache

WARMUP_STEPS = 3  # eager steps before the capture (torch's whole-network example warms up 3 iterations)


def make_optimizer(spec: ModelSpec, model: nn.Module, *, graph_safe: bool = False) -> torch.optim.Optimizer:
    """Adam or SGD as ``spec.optimizer`` says.  ``graph_safe`` (the graph path): the
    learning rate is a tensor on the parameters' device and Adam is ``capturable``, so a
    captured ``step()`` reads both from the device (``set_lr`` writes the schedule there)."""
    o = spec.optimizer
    lr = torch.tensor(o.lr, device=next(model.parameters()).device) if graph_safe else o.lr
    # fused: one pass over all parameters instead of ~10 per tensor.  Adam's step on
    # LeNet5-Madry's 3.3M parameters: 12 ms -> 1.2 ms at 2 CPU threads (17.8 -> 1.8 at 1),
    # and a few kernel launches instead of ~80 on a GPU, where a LeNet5 step is launch-bound
    if o.name == "adam":
        return torch.optim.Adam(
            model.parameters(), lr=lr, weight_decay=o.weight_decay, fused=True, capturable=graph_safe
        )
    # SGD has no step count to keep on the device: fused with a tensor lr, it is graph-safe
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=o.momentum, weight_decay=o.weight_decay, fused=True)


def keep_graph_safe(optimizer: torch.optim.Optimizer, graph_safe: bool) -> None:
    """After ``load_state_dict`` (which restores the saved groups' settings, whichever path
    saved them): the learning rate as this run's path keeps it, Adam's ``capturable`` too."""
    for group in optimizer.param_groups:
        lr = float(group["lr"])
        device = group["params"][0].device
        group["lr"] = torch.tensor(lr, device=device) if graph_safe else lr
        if "capturable" in group:
            group["capturable"] = graph_safe


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """The schedule's learning rate: written into a graph-safe optimizer's tensor (a
    replayed step reads it there), else set as a float."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


class TrainStep:
    """``step(x, y, idx, step) -> metrics``: one optimisation step of ``step_fn`` on ``net``
    (``model``'s parameters, ``optimizer``), eager or on the fixed-shape path and, on
    CUDA with ``compute.cuda_graphs``, replayed as one CUDA graph (module docstring).
    Metrics stay on the device; ``finite`` (``loop.FiniteCheck``) keeps the first
    non-finite step."""

    def __init__(
        self,
        spec: ModelSpec,
        net: nn.Module,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        step_fn,
        finite,
        compute: Compute,
        device: torch.device,
    ) -> None:
        self.spec, self.net, self.model, self.optimizer, self.step_fn = spec, net, model, optimizer, step_fn
        self.finite, self.compute = finite, compute
        # the step number on the device (fixed shapes); the graph, when captured
        self.step_t = torch.zeros((), dtype=torch.float64, device=device) if compute.fixed_shape else None
        self.graphs = GraphCache(warmup=WARMUP_STEPS, max_graphs=1, copy_outputs=False) if compute.cuda_graphs else None

    def __call__(self, x: Tensor, y: Tensor, idx: Tensor, step: int) -> dict:
        lr = self.spec.optimizer.lr_at(step)
        set_lr(self.optimizer, lr)
        if self.step_t is None:
            metrics = self._step(x, y, idx, step)
        else:
            self.step_t.fill_(step)
            inputs = (x, y, idx, self.step_t)
            metrics = (
                self.graphs(tuple(t.shape for t in inputs), self._step, inputs) if self.graphs else self._step(*inputs)
            )
        return {**metrics, "lr": lr}

    def _step(self, x: Tensor, y: Tensor, idx: Tensor, step: int | Tensor) -> dict:
        """What one step runs (and the graph captures): the batch step under the run's
        autocast, path and search, backward, the finite check, the optimiser step."""
        with compute_.autocast(self.compute), compute_.attack_path(self.compute):
            loss, metrics = self.step_fn(self.net, x, y, idx, step)
        self.optimizer.zero_grad(set_to_none=True)  # before a capture: the graph's backward allocates the grads
        loss.backward()
        self.finite.update(step, loss, self.model.parameters())
        self.optimizer.step()
        return metrics
