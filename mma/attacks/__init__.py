"""Attacks, one per file, all with the same argument names.

    fgsm(model, x, y, eps, *, norm="linf")                         -> x_adv
    pgd(model, x, y, eps, *, norm, steps, step_size, restarts,
        random_init, loss, select, l2_pgd)                         -> x_adv
    an_pgd(model, x, y, eps_init, *, norm, eps_max, ...)            -> (x_adv, eps)
    anpgd_for_test(model, x, y, *, norm, test_eps, ...)            -> (eps, adv_correct)

Inputs in [0, 1], ε in pixel units (float or per-example tensor), any nn.Module
returning logits.  ``ATTACKS`` (``registry``) names the kinds params.yaml's ``attacks:``
settings can use, and how each runs.
"""

from .an_pgd import an_pgd, boundary_search
from .core import LOSSES, NORMS, get_loss, lp_norm, margin_loss, soft_margin_loss
from .fgsm import fgsm
from .pgd import pgd
from .registry import ATTACKS, AttackKind, attack_kind
from .validation import anpgd_for_test

__all__ = [
    "ATTACKS",
    "AttackKind",
    "LOSSES",
    "NORMS",
    "an_pgd",
    "anpgd_for_test",
    "attack_kind",
    "boundary_search",
    "fgsm",
    "get_loss",
    "lp_norm",
    "margin_loss",
    "pgd",
    "soft_margin_loss",
]
