"""What one trained model is: plain, validated data (one entry of params.yaml's ``models``).

Defaults are the authors' final MNIST settings; the CIFAR10 entries of params.yaml
set theirs explicitly.  Model selection's validation attack defaults to theirs per
dataset × norm (``AUTHORS_TEST_EPS``, ``AUTHORS_NB_ITER``).  Unknown keys and wrong types are refused by pydantic with
the key named.
"""

from __future__ import annotations

import math
from typing import Literal, Optional, Union

from pydantic import Field, model_validator

from . import (
    L2_PGD_DEFAULT,
    L2PGD,
    Bool,
    Fraction,
    NonNegativeFinite,
    NonNegativeInt,
    PositiveFinite,
    PositiveInt,
    Strict,
    increasing,
)

EPS_MAX_OVER_D_MAX = 1.05  # the search's upper end above the hinge (train.py: attack_maxeps = hinge_maxeps * 1.05)

# The authors' validation attack per dataset × norm (config.py): (test_eps, test_eps_iter)
AUTHORS_TEST_EPS = {
    ("mnist", "linf"): (0.3, 0.01),
    ("mnist", "l2"): (2.0, 0.125),
    ("cifar10", "linf"): (8 / 255, 2 / 255),
    ("cifar10", "l2"): (1.0, 0.25),
}
AUTHORS_NB_ITER = {"mnist": 40, "cifar10": 10}  # config.py: MNIST.nb_iter, CIFAR10.nb_iter (validation PGD's too)
# the largest hinge d_max of their run scripts (run_*_training.sh): the search range of a model
# with no hinge of its own (STD, PGD) is EPS_MAX_OVER_D_MAX times it
AUTHORS_LARGEST_HINGE = {
    ("mnist", "linf"): 0.45,
    ("mnist", "l2"): 6.0,
    ("cifar10", "linf"): 32 / 255,
    ("cifar10", "l2"): 3.0,
}


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
    # the training point x + ε·u: false = unclipped, as the authors' code returns it (anpgd.py,
    # ANPGD.perturb), the point the paper's models trained on; true = clamped to the image box
    # [0, 1] (a valid image; docs/faithfulness.md, row 4, says when one might want it)
    clip_final: Bool = False

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
        return self.eps_max if self.eps_max is not None else EPS_MAX_OVER_D_MAX * self.d_max

    @property
    def resolved_split_loss(self) -> str:
        return self.search_loss if self.split_loss is None else self.split_loss

    @property
    def hinge(self) -> float:
        return math.inf if self.d_max is None else self.d_max


class SelectionSpec(Strict):
    """Model selection: which validated checkpoint becomes the model, and how it is judged.

    The defaults are the final paper's (Setup: "we monitor the average margin from AN-PGD on
    the validation set and choose the model with largest average margin from the sequence of
    checkpoints during training"), for every method, measured as the authors' code measures
    it: ``ANPGDForTest`` (anpgd.py, built in train.py ``get_adversaries``), here
    ``mma.attacks.validation.anpgd_for_test``.  A None resolves per dataset × norm
    (``ModelSpec.resolved_selection``).
    """

    # "best": the largest mean margin over the validation images, the highest PGD robust
    # accuracy at the training ε (PGD models: their training attack), or the highest clean accuracy
    metric: Literal["mean_margin", "pgd_acc", "clean_acc"] = "mean_margin"
    # the margin's measure.  "authors": PGD at test_eps with step test_eps_iter (soft-margin loss),
    # direction (x_adv − x)/test_eps, `bisection_steps` hard-margin bisections of [0, eps_max] from
    # eps_max/2 whose first update reads the margin at x_adv; every image searched, misclassified
    # ones too.  "an_pgd": Algorithm 1 as MMA training runs it (``an_pgd`` from eps_max/2, `steps`
    # steps of 2.5·ε/steps, an MMA model's attack loss, else the soft margin; hard-margin search),
    # misclassified images count 0
    margin_attack: Literal["authors", "an_pgd"] = "authors"
    test_eps: Optional[PositiveFinite] = None  # None: config.py's (MNIST Linf 0.3, L2 2; CIFAR10 Linf 8/255, L2 1)
    test_eps_iter: Optional[PositiveFinite] = None  # None: config.py's (0.01, 0.125; 2/255, 0.25)
    steps: Optional[PositiveInt] = None  # the validation PGD's steps; None: config.py's nb_iter (MNIST 40, CIFAR10 10)
    # the search's upper end; None: an MMA model's own ε_max (theirs: attack_maxeps), another
    # model's 1.05 × the largest hinge of the authors' run scripts for its dataset × norm
    eps_max: Optional[PositiveFinite] = None
    bisection_steps: PositiveInt = 10  # config.py: num_search_steps


# ModelSpec keys that cannot change a trained model (how often it is checkpointed or its
# metrics are read): left out of the train stage's record (mma.stages.train), so editing them
# neither reruns a train stage nor discards a resume checkpoint.
NO_RESULT_KEYS = ("checkpoint_every", "log_every")


class ModelSpec(Strict):
    """One model of the grid."""

    # also a folder name and a DVC stage key; in a params file also free of '.' (config.params._cross_check)
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
    # model selection on the validation split (the first val_size training images): validate every
    # `eval_every` steps, or "epoch" (the authors' cadence, train.py: once per pass over the
    # training split, ⌊N / batch_size⌋ steps, 1,100 for MNIST at 50), and after the last step;
    # keep the best checkpoint by `selection`
    eval_every: Union[Literal["epoch"], PositiveInt] = "epoch"
    selection: SelectionSpec = SelectionSpec()
    val_limit: Optional[PositiveInt] = None  # validate on the first N validation images
    l2_pgd: L2PGD = L2_PGD_DEFAULT  # L2 PGD's form in the training and validation attacks (mma/config/__init__.py)
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
        if self.selection.metric == "pgd_acc" and self.method != "pgd":
            raise ValueError(
                f"model {self.name}: selection.metric 'pgd_acc' needs method 'pgd' (its training "
                "attack is the validation attack); use mean_margin or clean_acc"
            )
        return self

    @property
    def resolved_selection(self) -> SelectionSpec:
        """``selection`` with every None replaced by the value it stands for."""
        s, key = self.selection, (self.dataset, self.norm)
        test_eps, test_eps_iter = AUTHORS_TEST_EPS[key]
        own = self.mma.resolved_eps_max if self.mma is not None else EPS_MAX_OVER_D_MAX * AUTHORS_LARGEST_HINGE[key]
        return s.model_copy(
            update={
                "test_eps": test_eps if s.test_eps is None else s.test_eps,
                "test_eps_iter": test_eps_iter if s.test_eps_iter is None else s.test_eps_iter,
                "steps": AUTHORS_NB_ITER[self.dataset] if s.steps is None else s.steps,
                "eps_max": own if s.eps_max is None else s.eps_max,
            }
        )

    def eval_interval(self, steps_per_epoch: int) -> int:
        """Steps between validations, with an epoch of ``steps_per_epoch`` steps."""
        return max(1, steps_per_epoch) if self.eval_every == "epoch" else self.eval_every
