"""Fast gradient (sign) method (Goodfellow et al., 2015): one step of size ε from x."""

from __future__ import annotations

from torch import Tensor, nn

from .pgd import pgd


def fgsm(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float | Tensor,
    *,
    norm: str = "linf",
    loss: str = "ce",
    l2_pgd: str = "advertorch",
) -> Tensor:
    """x + ε·sign(∇ loss) for Linf (x + ε·∇/‖∇‖₂ for L2), clipped to [0, 1].

    Exactly PGD with one step, step size ε and no random start; shapes and
    ranges as in :func:`mma.attacks.pgd` (whose ``l2_pgd`` only sets the L2 step's
    gradient floor here: one step from x never leaves the ball).
    """
    return pgd(
        model,
        x,
        y,
        eps,
        norm=norm,
        steps=1,
        step_size=eps,
        restarts=1,
        random_init=False,
        loss=loss,
        select="loss",
        l2_pgd=l2_pgd,
    )
