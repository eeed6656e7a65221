"""The authors' validation measure of the margin: ``ANPGDForTest`` (anpgd.py), as
their train.py builds it (``get_adversaries``) and runs it after every epoch on the
validation split to pick the checkpoint with the largest mean margin.

Per example (shapes: x (B, ...), y (B,); lengths (B,) in pixel units):

1. x_adv = PGD(x, y) at the fixed radius ``test_eps`` with step ``test_eps_iter``,
   ``steps`` steps from a random start, ascending the soft logit margin (their
   ``test_pgdadv``: ``get_sum_loss_fn("slm")``), its final iterate;
2. the direction u = (x_adv − x) / test_eps (a unit vector only where PGD's
   perturbation has length test_eps);
3. ``bisection_steps`` bisections of the hard logit margin (advertorch's
   ``elementwise_margin``) along clip(x + η·u, 0, 1) in [0, eps_max], from
   η = eps_max/2, whose FIRST update reads the margin measured at x_adv (that is, at
   test_eps, not at eps_max/2: ``bisection_search(maxeps * 0.5, ..., logit_margin)``);
   the length is the last midpoint, on either side of the boundary.

Every example is searched, misclassified ones too (they end near 0 unless the ray
crosses back); their mean over all validation images is what their train.py compares.
Everything runs in eval mode with frozen weights (``ctx_noparamgrad_and_eval``); the
search's forwards are fp32.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .core import attack_mode, check_norm, expand_like, fp32, full_precision, margin_loss
from .pgd import pgd


def anpgd_for_test(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    norm: str,
    test_eps: float,
    test_eps_iter: float,
    steps: int,
    eps_max: float,
    bisection_steps: int = 10,
    l2_pgd: str = "advertorch",
) -> tuple[Tensor, Tensor]:
    """(lengths (B,), correct at x_adv (B,) bool): their ``ANPGDForTest.perturb``.

    The second output is their ``advacc`` per example: the prediction at the PGD point
    (radius test_eps) is the label, judged in fp32.  Their bisection's last forward
    (the margin at the returned midpoint, never read) is skipped: same lengths, one
    forward fewer.
    """
    check_norm(norm)
    x = x.detach()
    x_adv = pgd(
        model,
        x,
        y,
        test_eps,
        norm=norm,
        steps=steps,
        step_size=test_eps_iter,
        random_init=True,
        loss="soft_margin",
        select="loss",
        l2_pgd=l2_pgd,
    )
    u = (x_adv - x) / (test_eps + 1e-12)  # anpgd.py: batch_multiply(1. / (prev_eps + 1e-12), xadv - x)
    with attack_mode(model), torch.no_grad(), fp32(x.device):
        logits = full_precision(model(x_adv))
        margin = margin_loss(logits, y)
        hi_end = torch.full((x.shape[0],), float(eps_max), device=x.device, dtype=x.dtype)
        cur, lo, hi = hi_end / 2, torch.zeros_like(hi_end), hi_end.clone()
        for i in range(bisection_steps):
            fooled = margin >= 0
            lo = torch.maximum(torch.where(fooled, torch.zeros_like(cur), cur), lo)
            hi = torch.minimum(torch.where(fooled, cur, hi_end), hi)
            cur = (lo + hi) / 2
            if i < bisection_steps - 1:
                margin = margin_loss(full_precision(model((x + expand_like(cur, x) * u).clamp(0.0, 1.0))), y)
    return cur, logits.argmax(1) == y
