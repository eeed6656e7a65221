"""What one trained model is: plain, validated data (one entry of params.yaml's ``models``).

Defaults are the authors' final MNIST settings; the CIFAR10 entries of params.yaml
set theirs explicitly.  Unknown keys and wrong types are refused by pydantic with
the key named.
"""

from __future__ import annotations

import math
from typing import Literal, Optional

from pydantic import Field, model_validator

from . import Strict


class OptimizerSpec(Strict):
    name: Literal["adam", "sgd"] = "adam"
    lr: float = Field(1e-4, gt=0)  # the base learning rate (step 0)
    momentum: float = Field(0.9, ge=0, lt=1)  # sgd only
    weight_decay: float = Field(0.0, ge=0)
    # piecewise-constant learning rate: [[step, lr], ...] from that step on
    # (CIFAR10: [[20000, 0.09], [30000, 0.03], [40000, 0.009]])
    lr_steps: list[tuple[int, float]] = []

    def lr_at(self, step: int) -> float:
        lr = self.lr
        for at, value in self.lr_steps:
            if step >= at:
                lr = value
        return lr


class PGDTrainSpec(Strict):
    """PGD adversarial training (Madry et al.); PGDLS when ramp_fraction > 0."""

    eps: float = Field(gt=0)  # pixel units
    steps: int = Field(40, ge=1)  # attack steps
    step_size: Optional[float] = Field(None, gt=0)  # None: 2.5·eps/steps
    random_init: bool = True
    loss: Literal["ce", "margin", "soft_margin", "cw"] = "ce"
    # PGDLS: eps ramps linearly from 0 to eps over this fraction of training
    ramp_fraction: float = Field(0.0, ge=0, le=1)


class MMATrainSpec(Strict):
    """MMA training (Algorithm 2) with the final paper's hinge and clean-loss mix."""

    eps_min: float = Field(0.1, gt=0)  # the per-example ε is read as max(eps_min, stored)
    d_max: Optional[float] = Field(0.45, gt=0)  # hinge: no MMA loss where the margin ≥ d_max; None = ∞ (arXiv v1)
    eps_max: Optional[float] = Field(None, gt=0)  # largest length searched; None: 1.05·d_max
    clean_loss_coeff: float = Field(1 / 3, ge=0, le=1)  # c in (1−c)·L_MMA + c·L_clean; 0 = OMMA
    steps: int = Field(40, ge=1)  # AN-PGD's PGD steps
    step_size: Optional[float] = Field(None, gt=0)  # None: 2.5·ε/steps per example
    random_init: bool = True
    bisection_steps: int = Field(10, ge=1)
    eps_inc: Optional[float] = Field(None, gt=0)  # None: search up to eps_max (the authors' final code)
    attack_loss: Literal["ce", "margin", "soft_margin", "cw"] = "soft_margin"
    search_loss: Literal["margin", "soft_margin"] = "margin"
    split_loss: Literal["soft_margin", "margin"] = "soft_margin"  # correct = split loss < 0
    repgd: bool = False  # arXiv v1's second PGD at the found length

    @model_validator(mode="after")
    def _check(self):
        if self.d_max is None and self.eps_max is None:
            raise ValueError("mma.eps_max is required when d_max is null (no hinge)")
        # ε is read as max(eps_min, stored): above the hinge every example would be dropped
        if self.d_max is not None and self.eps_min > self.d_max:
            raise ValueError(f"eps_min = {self.eps_min}: must not exceed d_max ({self.d_max})")
        if self.resolved_eps_max <= self.eps_min:
            raise ValueError(f"eps_min = {self.eps_min}: must be below eps_max ({self.resolved_eps_max})")
        return self

    @property
    def resolved_eps_max(self) -> float:
        return self.eps_max if self.eps_max is not None else 1.05 * self.d_max

    @property
    def hinge(self) -> float:
        return math.inf if self.d_max is None else self.d_max


class ModelSpec(Strict):
    """One model of the grid."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")  # also a folder name and a DVC stage key
    dataset: Literal["mnist", "cifar10"]
    arch: Literal["lenet5_madry", "wrn28_4", "wrn10_1"]
    norm: Literal["linf", "l2"]
    method: Literal["std", "pgd", "mma"]
    pgd: Optional[PGDTrainSpec] = None
    mma: Optional[MMATrainSpec] = None
    optimizer: OptimizerSpec = OptimizerSpec()
    train_steps: int = Field(100_000, ge=1)
    batch_size: int = Field(50, ge=1)
    augment: bool = False  # CIFAR10: reflect-pad 4, random crop, horizontal flip
    train_limit: Optional[int] = Field(None, ge=1)  # first N training images only (smoke runs)
    seed: int = 0
    # model selection on the validation split (the first val_size training images)
    eval_every: int = Field(1000, ge=1)  # steps between validations
    val_limit: Optional[int] = Field(None, ge=1)  # validate on the first N validation images
    checkpoint_every: int = Field(500, ge=1)  # steps between resume checkpoints
    # steps between metric reads: training metrics stay on the device in between (no host
    # sync per step) and are logged as their mean over the steps since the last read;
    # also read at every validation and checkpoint
    log_every: int = Field(100, ge=1)

    @model_validator(mode="after")
    def _method_block(self):
        if self.method == "pgd" and self.pgd is None:
            raise ValueError(f"model {self.name}: method 'pgd' needs a 'pgd:' block (eps, steps, ...)")
        if self.method == "mma" and self.mma is None:
            raise ValueError(f"model {self.name}: method 'mma' needs an 'mma:' block (eps_min, d_max, ...)")
        if self.method == "std" and (self.pgd or self.mma):
            raise ValueError(f"model {self.name}: method 'std' takes no 'pgd:' or 'mma:' block")
        return self
