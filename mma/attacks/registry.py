"""The attack kinds a setting of params.yaml's ``attacks:`` can name (``AttackSetting.attack``),
in one table.  The evaluation (the white-box cascade, the transfer sets) asks an entry what
the kind needs instead of branching on its name.

    kind   what one run is                                   restarts  gradient steps
    fgsm   one step of size ε from x (no random start)       1         1
    pgd    ``setting.steps`` steps of factor·ε/steps from a   setting   steps × restarts
           random start in the ball (or from x)

A run returns x_adv (B, ...) in [0, 1] inside the ε-ball of x; ``eps`` a float or a
per-example (B,) tensor, pixel units.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import Tensor, nn

from .core import step_size
from .fgsm import fgsm
from .pgd import pgd


@dataclass(frozen=True)
class AttackKind:
    """One kind of attack: how to run one restart of a setting, and what that costs."""

    name: str
    # (model, x, y, eps, setting, *, norm, loss, select) -> x_adv: one restart of ``setting``
    # (``select``: pgd's "target" or "loss", see mma.attacks.pgd)
    run: Callable[..., Tensor]
    # True: draws no random numbers, so every restart gives the same x_adv (one run stands for
    # all of them) and rows may be attacked on their own, without the rest of their batch
    deterministic: bool

    def restarts(self, setting) -> int:
        """The restarts of ``setting`` that can differ (a deterministic kind's: 1)."""
        return 1 if self.deterministic else setting.restarts

    def gradient_steps(self, setting) -> int:
        """Gradient steps per example of the whole setting (its cost)."""
        return 1 if self.deterministic else setting.steps * setting.restarts


def _run_fgsm(model: nn.Module, x: Tensor, y: Tensor, eps, setting, *, norm: str, loss: str, select: str) -> Tensor:
    return fgsm(
        model, x, y, eps, norm=norm, loss=loss, l2_pgd=setting.l2_pgd
    )  # one step: the restarts cannot differ, select is moot


def _run_pgd(model: nn.Module, x: Tensor, y: Tensor, eps, setting, *, norm: str, loss: str, select: str) -> Tensor:
    return pgd(
        model,
        x,
        y,
        eps,
        norm=norm,
        steps=setting.steps,
        step_size=step_size(eps, setting.steps, setting.step_size_factor),
        restarts=1,
        random_init=setting.random_init,
        loss=loss,
        select=select,
        l2_pgd=setting.l2_pgd,
    )


ATTACKS: dict[str, AttackKind] = {
    "fgsm": AttackKind("fgsm", _run_fgsm, deterministic=True),
    "pgd": AttackKind("pgd", _run_pgd, deterministic=False),
}


def attack_kind(name: str) -> AttackKind:
    """The registry's entry for ``name`` (KeyError naming the kinds there are otherwise;
    params.yaml's schema refuses any other name before a stage gets here)."""
    try:
        return ATTACKS[name]
    except KeyError:
        raise KeyError(f"unknown attack kind {name!r}; the kinds are {', '.join(ATTACKS)}") from None
