"""Attacks, one per file, all with the same argument names.

    fgsm(model, x, y, eps, *, norm="linf")                         -> x_adv
    pgd(model, x, y, eps, *, norm, steps, step_size, restarts,
        random_init, loss, select)                                 -> x_adv
    an_pgd(model, x, y, eps_init, *, norm, eps_max, ...)            -> (x_adv, eps)

Inputs in [0, 1], ε in pixel units (float or per-example tensor), any nn.Module
returning logits.  ``ATTACKS`` (``registry``) names the kinds params.yaml's ``attacks:``
settings can use, and how each runs.
"""

from .an_pgd import an_pgd, boundary_search
from .core import LOSSES, NORMS, get_loss, lp_norm, margin_loss, soft_margin_loss
from .fgsm import fgsm
from .pgd import pgd
from .registry import ATTACKS, AttackKind, attack_kind

__all__ = [
    "ATTACKS",
    "AttackKind",
    "LOSSES",
    "NORMS",
    "an_pgd",
    "attack_kind",
    "boundary_search",
    "fgsm",
    "get_loss",
    "lp_norm",
    "margin_loss",
    "pgd",
    "soft_margin_loss",
]
