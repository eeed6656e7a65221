"""Algorithm 1 of the paper: Adaptive-Norm PGD (AN-PGD).

An approximate *minimal* perturbation per example:

1. δ₁ = PGD(x, y, ε_init)                       (one PGD, per-example ε_init)
2. u = δ₁ / ‖δ₁‖                                (the direction PGD found)
3. if x + ε_init·u is still classified correctly: search the zero crossing of
   the logit margin along u in [ε_init, min(ε_init + ε_inc, ε_max)];
   else in [0, ε_init]
4. δ* = ε_new·u (the authors' final code), or PGD(x, y, ε_new) again
   (arXiv v1, line 8: ``repgd=True``, the cost of a second PGD).

The search (``boundary_search``) is a bracketed false-position method with a
bisection fallback: the margin is nearly linear along a line, so most examples
converge in one or two forward passes instead of the 10 fixed bisections of the
authors' code, and the bracket keeps it as safe as bisection.  It runs under
``torch.no_grad`` on the examples whose bracket is still wide, with no Python
loop over examples.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .core import attack_mode, check_norm, expand_like, get_loss, lp_norm, per_example
from .pgd import pgd


def an_pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps_init: float | Tensor,
    *,
    norm: str = "linf",
    eps_max: float,
    eps_inc: float | None = None,
    steps: int = 40,
    step_size: float | Tensor | None = None,
    random_init: bool = True,
    bisection_steps: int = 10,
    attack_loss: str = "soft_margin",
    search_loss: str = "margin",
    repgd: bool = False,
) -> tuple[Tensor, Tensor]:
    """Approximate minimal adversarial perturbation (the paper's Algorithm 1).

    Args:
        model: classifier returning logits (eval mode, frozen weights during the attack).
        x: clean inputs (B, ...) in [0, 1]; y: labels (B,).  Meant for correctly
            classified examples (MMA attacks only those).
        eps_init: the first PGD's radius, float or per-example (B,) tensor.
        norm: "linf" or "l2".
        eps_max: the largest length returned.
        eps_inc: search up to min(ε_init + ε_inc, ε_max) when the first PGD fails;
            None searches up to ε_max (the authors' final code).
        steps, step_size, random_init: of the PGD (step_size None: 2.5·ε/steps).
        bisection_steps: the search's resolution is the bracket width / 2**bisection_steps
            (that of the authors' bisection) and its iteration cap.
        attack_loss: the PGD's loss (soft logit margin by default, as the authors).
        search_loss: the function whose zero crossing is the boundary ("margin").
        repgd: run PGD again at the found length (arXiv v1) instead of scaling u.

    Returns:
        (x_adv, eps): x_adv (B, ...) in [0, 1]; eps (B,) the found length.  When a
        crossing is found, ``eps`` is on the adversarial side of the boundary (to the
        search's resolution), so it never underestimates the margin along u; when
        none is found up to the upper end, eps is that upper end.
    """
    check_norm(norm)
    x = x.detach()
    eps0 = per_example(eps_init, x).clamp(max=eps_max)
    delta = pgd(
        model, x, y, eps0, norm=norm, steps=steps, step_size=step_size, random_init=random_init,
        loss=attack_loss, select="loss",
    ) - x
    # the direction comes from PGD's last iterate, fooled or not (never a zero vector
    # unless the gradient itself vanished)
    u = delta / expand_like(lp_norm(delta, norm).clamp_min(1e-12), delta)
    upper = eps_max if eps_inc is None else torch.clamp(eps0 + eps_inc, max=eps_max)
    upper = per_example(upper, x)
    eps = boundary_search(model, x, y, u, eps0, upper, bisection_steps=bisection_steps, loss=search_loss)
    if repgd:
        x_adv = pgd(
            model, x, y, eps, norm=norm, steps=steps, step_size=None, random_init=random_init,
            loss=attack_loss, select="loss",
        )
    else:
        x_adv = (x + expand_like(eps, x) * u).clamp(0.0, 1.0)
    return x_adv.detach(), eps


@torch.no_grad()
def boundary_search(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    u: Tensor,
    eps_mid: Tensor,
    eps_hi: Tensor,
    *,
    bisection_steps: int = 10,
    loss: str = "margin",
) -> Tensor:
    """Zero crossing of ``loss`` along the ray x + η·u (clipped to [0, 1]).

    g(η) = loss(model(clip(x + η·u)), y); g < 0 means correctly classified.
    The bracket is [0, eps_mid] when g(eps_mid) ≥ 0, else [eps_mid, eps_hi] when
    g(eps_hi) ≥ 0; when neither end crosses, the answer is eps_hi.  Inside a
    bracket [lo, hi] with g(lo) < 0 ≤ g(hi), false position proposes a root c and
    g is evaluated just below and just above c (one forward of 2n rows): for a
    nearly linear g that closes the bracket to the tolerance in one iteration.  An
    iteration that does not halve the bracket is followed by a bisection.

    Returns the (B,) upper end of each final bracket (the adversarial side).
    """
    loss_fn = get_loss(loss)

    def g(rows: Tensor, eta: Tensor) -> Tensor:
        pts = (x[rows] + expand_like(eta, u[rows]) * u[rows]).clamp(0.0, 1.0)
        return loss_fn(model(pts), y[rows])

    with attack_mode(model):
        n = x.shape[0]
        all_rows = torch.arange(n, device=x.device)
        lo = torch.zeros(n, device=x.device, dtype=x.dtype)
        hi = eps_hi.to(x.dtype).clone()
        g_mid = g(all_rows, eps_mid)
        g_lo, g_hi = g_mid.clone(), g_mid.clone()
        lower = (g_mid >= 0).nonzero().squeeze(1)  # crossed by eps_mid: bracket [0, eps_mid]
        upper = (g_mid < 0).nonzero().squeeze(1)  # not yet: bracket [eps_mid, eps_hi]
        lo[upper] = eps_mid[upper]
        hi[lower] = eps_mid[lower]
        if lower.numel():
            g_lo[lower] = g(lower, lo[lower])
            wrong = lower[g_lo[lower] >= 0]  # misclassified already at x: length 0
            lo[wrong] = 0.0
            hi[wrong] = 0.0
        if upper.numel():
            g_hi[upper] = g(upper, hi[upper])
            none = upper[g_hi[upper] < 0]  # no crossing up to eps_hi: the answer is eps_hi
            lo[none] = hi[none]

        tol = (hi - lo).clamp_min(0) / (2.0**bisection_steps)
        tol = torch.maximum(tol, torch.full_like(tol, 1e-7))
        bisect_next = torch.zeros(n, dtype=torch.bool, device=x.device)
        for _ in range(2 * max(1, bisection_steps)):  # the fallback halves at least every other pass
            live = ((hi - lo) > tol).nonzero().squeeze(1)
            if live.numel() == 0:
                break
            l, h, gl, gh, t = lo[live], hi[live], g_lo[live], g_hi[live], tol[live]
            width = h - l
            secant = l - gl * width / (gh - gl).clamp_min(1e-12)
            c = torch.where(bisect_next[live], (l + h) / 2, secant)
            c = torch.minimum(torch.maximum(c, l + t / 2), h - t / 2)
            below, above = c - t / 2, c + t / 2
            vals = g(torch.cat([live, live]), torch.cat([below, above]))
            v_below, v_above = vals[: live.numel()], vals[live.numel():]
            # new bracket: [l, below] if below already crosses, [above, h] if above
            # does not yet, else [below, above]
            new_h = torch.where(v_below >= 0, below, torch.where(v_above >= 0, above, h))
            new_gh = torch.where(v_below >= 0, v_below, torch.where(v_above >= 0, v_above, gh))
            new_l = torch.where(v_below >= 0, l, torch.where(v_above >= 0, below, above))
            new_gl = torch.where(v_below >= 0, gl, torch.where(v_above >= 0, v_below, v_above))
            bisect_next[live] = (new_h - new_l) > width / 2
            lo[live], hi[live], g_lo[live], g_hi[live] = new_l, new_h, new_gl, new_gh
    return hi


def default_tolerance(eps_max: float, bisection_steps: int = 10) -> float:
    """The resolution of a plain bisection over [0, eps_max] (for reporting)."""
    return eps_max / math.pow(2.0, bisection_steps)
