"""What each batch trains on: STD, PGD / PGDLS.  (MMA, Algorithm 2, is in ``mma.py``.)

A batch step is called as ``step_fn(model, x, y, idx, step) -> (loss, metrics)``
with the model in train mode; ``idx`` are the examples' positions in the training
split (MMA's per-example ε store is indexed by them).  ``step`` is an int, or on the
fixed-shape path (``mma.attacks.core.attack_path``: CUDA graphs, which replay the step's
kernels) a 0-dim float64 tensor on the device, written before each step: a schedule
computed from it gives the same values without a host read.  Steps that hold state
(MMA) expose ``state_dict()`` / ``load_state_dict()`` for checkpoints.

Metrics never leave the device here (no ``.item()``: a host sync per step on a GPU).
A value is a 0-dim tensor or float (the loop logs its mean over the steps since the
last read), or a pair ``(total, count)`` of tensors (logged as Σtotal / Σcount over
those steps: a per-example mean, e.g. of the ε found for the attacked examples).
Losses are computed on fp32 logits (``full_precision``), also under bf16 autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attacks import pgd
from ..attacks.core import full_precision
from ..config.model import ModelSpec, PGDTrainSpec


class StdStep:
    """Plain training: clean cross-entropy."""

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, idx: Tensor, step: int):
        logits = full_precision(model(x))
        loss = F.cross_entropy(logits, y)
        return loss, {"loss": loss.detach(), "train_acc": (logits.detach().argmax(1) == y).float().mean()}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class PGDStep:
    """Madry et al.'s adversarial training on PGD(ε) examples; PGDLS ramps ε from 0
    to its final value over ``ramp_fraction`` of the training steps."""

    def __init__(self, spec: PGDTrainSpec, norm: str, total_steps: int, *, l2_pgd: str = "advertorch"):
        self.spec, self.norm, self.total_steps, self.l2_pgd = spec, norm, total_steps, l2_pgd

    def eps_at(self, step: int | Tensor) -> float | Tensor:
        """ε at ``step``; a float64 tensor for a tensor ``step`` (the same float64 operations)."""
        ramp = self.spec.ramp_fraction * self.total_steps
        if ramp <= 0:
            return self.spec.eps
        if isinstance(step, Tensor):
            return self.spec.eps * torch.clamp(step / ramp, max=1.0)
        return self.spec.eps * min(1.0, step / ramp)

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, idx: Tensor, step: int | Tensor):
        eps = self.eps_at(step)
        s = self.spec
        # a tensor ε (fixed shapes) always runs the attack: at ε = 0 (PGDLS's step 0) PGD
        # returns x exactly, having drawn a random start the eager step does not draw
        if isinstance(eps, Tensor) or eps > 0:
            # step_size scales with the ramped ε (2.5·ε/steps) unless fixed in params
            step_size = None if s.step_size is None else s.step_size * eps / s.eps
            x = pgd(
                model,
                x,
                y,
                eps,
                norm=self.norm,
                steps=s.steps,
                step_size=step_size,
                random_init=s.random_init,
                loss=s.loss,
                select="loss",
                l2_pgd=self.l2_pgd,
            )
        logits = full_precision(model(x))
        loss = F.cross_entropy(logits, y)
        return loss, {"loss": loss.detach(), "adv_acc": (logits.detach().argmax(1) == y).float().mean(), "eps": eps}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def make_step(spec: ModelSpec, num_train: int, device: torch.device | str):
    """The batch step named by ``spec.method``."""
    if spec.method == "std":
        return StdStep()
    if spec.method == "pgd":
        return PGDStep(spec.pgd, spec.norm, spec.train_steps, l2_pgd=spec.l2_pgd)
    from .mma import MMAStep

    return MMAStep(spec.mma, spec.norm, num_train, device=device, l2_pgd=spec.l2_pgd)
