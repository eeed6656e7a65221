"""Per-example margins: the shortest perturbation that changes the prediction (the
quantity MMA maximises), estimated three ways and cross-checked.

* ``anpgd``: AN-PGD (the paper's Algorithm 1): PGD, then a search for the decision
  boundary along PGD's direction.  It looks along ONE direction, so on its own it can
  only overstate the margin.  Here it starts at the PGD ε-sweep's first breaking ε
  (not at ε_max/2), so the direction it searches is one where PGD already succeeded,
  and its PGD ascends the hard logit margin (``margins.an_pgd_loss``), the function whose
  zero set is the boundary: the soft margin of training aims at a blend of classes and
  overstates the margin (tests/test_evaluation_margins.py measures both on a linear model).
* ``fab``: FAB (Croce & Hein 2020) from the reference AutoAttack package, a
  minimal-norm attack that recovers the exact margin of a linear model.
* ``sweep``: the PGD ε-sweep of Figure 3, per example: the smallest ε on the grid at
  which PGD broke it (an upper bound of the margin; ∞ if none) and the grid step below.

The reported margin is the smallest of the three (every one is an achieved
adversarial length, i.e. an upper bound); the disagreement rates say how often the
one-direction estimate overstated what the others found.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mma.attacks import an_pgd, lp_norm
from mma.attacks.core import NORM_LABELS
from mma.progress import progress

from ..config.evaluation import MarginParams


def sweep_bounds(survived_by_eps: dict[float, Tensor]) -> tuple[Tensor, Tensor]:
    """From PGD robust flags at each grid ε: (upper, lower) per example — the smallest
    grid ε that broke it (inf if none) and the largest grid ε below that (0 if none)."""
    grid = sorted(survived_by_eps)
    n = next(iter(survived_by_eps.values())).shape[0]
    upper = torch.full((n,), math.inf, dtype=torch.float64)
    for e in reversed(grid):  # ends at the smallest breaking ε
        upper = torch.where(~survived_by_eps[e].bool(), torch.full_like(upper, e), upper)
    lower = torch.zeros(n, dtype=torch.float64)
    for e in grid:
        lower = torch.where(upper > e, torch.full_like(lower, e), lower)
    return upper, lower


def anpgd_margins(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    active: Tensor,
    eps_init: Tensor,
    *,
    norm: str,
    eps_max: float,
    params: MarginParams,
    batch_size: int,
    seed: int,
) -> Tensor:
    """(N,) float64: AN-PGD length, 0 where misclassified without attack (capped at eps_max)."""
    out = torch.zeros(x.shape[0], dtype=torch.float64)
    rows = active.cpu().nonzero().squeeze(1)  # indexes CPU outputs and device inputs alike
    torch.manual_seed(seed)
    with progress((len(rows) + batch_size - 1) // batch_size, "margins: AN-PGD") as advance:
        for i in range(0, len(rows), batch_size):
            idx = rows[i : i + batch_size]
            e0 = eps_init[idx].clamp(max=eps_max).to(x.device, x.dtype)
            _, eps = an_pgd(
                model,
                x[idx],
                y[idx],
                e0,
                norm=norm,
                eps_max=eps_max,
                steps=params.an_pgd_steps,
                bisection_steps=params.bisection_steps,
                attack_loss=params.an_pgd_loss,
                l2_pgd=params.an_pgd_l2_pgd,
            )
            out[idx] = eps.double().cpu()
            advance(1)
    return out


def fab_margins(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    active: Tensor,
    *,
    norm: str,
    eps_max: float,
    params: MarginParams,
    batch_size: int,
    seed: int,
    device,
) -> Tensor:
    """(N,) float64: FAB's minimal adversarial length (best over restarts); 0 where
    misclassified without attack, inf where FAB found nothing."""
    from pyautoattack.fab_pt import FABAttack_PT

    out = torch.zeros(x.shape[0], dtype=torch.float64)
    rows = active.cpu().nonzero().squeeze(1)  # indexes CPU outputs and device inputs alike
    fab = FABAttack_PT(
        model.eval(),
        norm=NORM_LABELS[norm],
        n_restarts=params.fab_restarts,
        n_iter=params.fab_steps,
        eps=eps_max,
        seed=seed % (2**31),
        device=device,
    )
    torch.manual_seed(seed)
    with progress((len(rows) + batch_size - 1) // batch_size, "margins: FAB") as advance:
        for i in range(0, len(rows), batch_size):
            idx = rows[i : i + batch_size]
            xb, yb = x[idx], y[idx]
            best = torch.full((len(idx),), math.inf, dtype=torch.float64)
            for r in range(params.fab_restarts):
                adv = fab.attack_single_run(xb, yb, use_rand_start=r > 0)
                with torch.no_grad():
                    fooled = (model(adv).argmax(1) != yb).cpu()
                d = lp_norm(adv - xb, norm).double().cpu()
                best = torch.where(fooled & (d < best), d, best)
            out[idx] = best
            advance(1)
    return out


def combine(
    active: Tensor,
    estimates: dict[str, Tensor],
    sweep_upper: Tensor,
    sweep_lower: Tensor,
    *,
    eps_max: float,
    rtol: float,
) -> tuple[Tensor, dict]:
    """(margin per example, summary).  margin = min over the estimates and the sweep's
    upper bound (capped at eps_max); summary over correctly classified examples: mean,
    median of each estimate and of the margin, and disagreement rates (%):
    ``over_sweep/NAME`` — the estimate exceeds a length at which PGD already broke the
    example (it overstated); ``NAME_vs_OTHER`` — the two differ by more than rtol·smaller
    plus one sweep grid step."""
    a = active.bool()
    stack = [v.clamp(max=eps_max) for v in estimates.values()] + [sweep_upper.clamp(max=eps_max)]
    margin = torch.stack(stack).amin(0)
    margin = torch.where(a, margin, torch.zeros_like(margin))
    summary: dict[str, float] = {"n_correct": float(a.sum())}

    def stats(name, v):
        v = v[a]
        if v.numel():
            summary[f"{name}/mean"] = float(v.mean())
            summary[f"{name}/median"] = float(v.median())

    stats("margin", margin)
    for name, v in estimates.items():
        stats(name, v.clamp(max=eps_max))
        over = (v > sweep_upper + 1e-9) & a
        summary[f"over_sweep/{name}"] = 100.0 * float(over.sum()) / max(1, int(a.sum()))
    names = list(estimates)
    step = (sweep_upper - sweep_lower).where(torch.isfinite(sweep_upper), torch.zeros_like(sweep_upper))
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            u, v = estimates[names[i]].clamp(max=eps_max), estimates[names[j]].clamp(max=eps_max)
            diff = (u - v).abs() > rtol * torch.minimum(u, v) + step
            summary[f"disagree/{names[i]}_vs_{names[j]}"] = 100.0 * float((diff & a).sum()) / max(1, int(a.sum()))
    return margin, summary
