"""What one trained model is: plain, validated data (one entry of params.yaml's ``models``).

Defaults are the authors' final MNIST settings; the CIFAR10 entries of params.yaml
set theirs explicitly.  Unknown keys and wrong types are refused by pydantic with
the key named.
"""

from __future__ import annotations

import math
from typing import Literal, Optional

from pydantic import Field, model_validator

from . import Bool, Fraction, NonNegativeFinite, NonNegativeInt, PositiveFinite, PositiveInt, Strict, increasing


class OptimizerSpec(Strict):
    name: Literal["adam", "sgd"] = "adam"
    lr: PositiveFinite = 1e-4  # the base learning rate (step 0)
    momentum: NonNegativeFinite = Field(0.9, lt=1)  # sgd only
    weight_decay: NonNegativeFinite = 0.0
    # piecewise-constant learning rate: [[step, lr], ...] from that step on
    # (CIFAR10: [[20000, 0.09], [30000, 0.03], [40000, 0.009]])
    lr_steps: list[tuple[PositiveInt, PositiveFinite]] = []

    @model_validator(mode="after")
    def _check(self):
        increasing([at for at, _ in self.lr_steps], "lr_steps: the steps")
        return self

    def lr_at(self, step: int) -> float:
        lr = self.lr
        for at, value in self.lr_steps:
            if step >= at:
                lr = value
        return lr


class PGDTrainSpec(Strict):
    """PGD adversarial training (Madry et al.); PGDLS when ramp_fraction > 0."""

    eps: PositiveFinite  # pixel units
    steps: PositiveInt = 40  # attack steps
    step_size: Optional[PositiveFinite] = None  # None: 2.5·eps/steps
    random_init: Bool = True
    loss: Literal["ce", "margin", "soft_margin", "cw"] = "ce"
    # PGDLS: eps ramps linearly from 0 to eps over this fraction of training
    ramp_fraction: Fraction = 0.0


class MMATrainSpec(Strict):
    """MMA training (Algorithm 2) with the final paper's hinge and clean-loss mix."""

    eps_min: PositiveFinite = 0.1  # the per-example ε is read as max(eps_min, stored)
    d_max: Optional[PositiveFinite] = 0.45  # hinge: no MMA loss where the margin ≥ d_max; None = ∞ (arXiv v1)
    eps_max: Optional[PositiveFinite] = None  # largest length searched; None: 1.05·d_max
    clean_loss_coeff: Fraction = 1 / 3  # c in (1−c)·L_MMA + c·L_clean; 0 = OMMA
    steps: PositiveInt = 40  # AN-PGD's PGD steps
    step_size: Optional[PositiveFinite] = None  # None: 2.5·ε/steps per example
    random_init: Bool = True
    bisection_steps: PositiveInt = 10
    eps_inc: Optional[PositiveFinite] = None  # None: search up to eps_max (the authors' final code)
    # not "cw": flat past the boundary (zero gradient once fooled), an_pgd refuses it
    attack_loss: Literal["ce", "margin", "soft_margin"] = "soft_margin"
    # the boundary search's function (its zero crossing is the length found): the authors'
    # final code searches the soft logit margin (config.py, search_loss_fn = "slm"), which
    # crosses zero before the hard margin does, so the lengths it finds are shorter
    search_loss: Literal["margin", "soft_margin"] = "soft_margin"
    # correct = split loss < 0 on the clean logits; None: the search loss, as the authors'
    # trainer splits (trainer.py, train_one_batch: search_loss < 0)
    split_loss: Optional[Literal["soft_margin", "margin"]] = None
    repgd: Bool = False  # arXiv v1's second PGD at the found length

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
    def resolved_split_loss(self) -> str:
        return self.search_loss if self.split_loss is None else self.split_loss

    @property
    def hinge(self) -> float:
        return math.inf if self.d_max is None else self.d_max


class ModelSpec(Strict):
    """One model of the grid."""

    # also a folder name and a DVC stage key; in a params file also free of '.' (params._cross_check)
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$", max_length=100)
    dataset: Literal["mnist", "cifar10"]
    arch: Literal["lenet5_madry", "wrn28_4", "wrn10_1"]
    norm: Literal["linf", "l2"]
    method: Literal["std", "pgd", "mma"]
    pgd: Optional[PGDTrainSpec] = None
    mma: Optional[MMATrainSpec] = None
    optimizer: OptimizerSpec = OptimizerSpec()
    train_steps: PositiveInt = 100_000
    batch_size: PositiveInt = 50
    augment: Bool = False  # CIFAR10: reflect-pad 4, random crop, horizontal flip
    train_limit: Optional[PositiveInt] = None  # first N training images only (smoke runs)
    seed: NonNegativeInt = 0  # set per member from the grid's `seeds` (Params.member); a params entry sets none
    # model selection on the validation split (the first val_size training images)
    eval_every: PositiveInt = 1000  # steps between validations
    val_limit: Optional[PositiveInt] = None  # validate on the first N validation images
    checkpoint_every: PositiveInt = 500  # steps between resume checkpoints
    # steps between metric reads: training metrics stay on the device in between (no host
    # sync per step) and are logged as their mean over the steps since the last read;
    # also read at every validation and checkpoint
    log_every: PositiveInt = 100

    @model_validator(mode="after")
    def _method_block(self):
        if self.method == "pgd" and self.pgd is None:
            raise ValueError(f"model {self.name}: method 'pgd' needs a 'pgd:' block (eps, steps, ...)")
        if self.method == "mma" and self.mma is None:
            raise ValueError(f"model {self.name}: method 'mma' needs an 'mma:' block (eps_min, d_max, ...)")
        if self.method == "std" and (self.pgd or self.mma):
            raise ValueError(f"model {self.name}: method 'std' takes no 'pgd:' or 'mma:' block")
        return self
