"""The Boundary attack (Brendel, Rauber, Bethge 2018) via foolbox: Figure 3(b).

A decision-based, minimal-L2 attack: starting from a misclassified blend with
uniform noise, it walks along the decision boundary toward the clean image.  One
run gives each example's adversarial L2 distance d_i, so the robust accuracy at
every ε of the curve is mean(correct ∧ d_i > ε).  It is expensive, so it runs on
the first ``limit`` evaluated images (the paper: 1,000, as the authors did for CW-L2).
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor, nn

from mma.progress import progress

from ..config.evaluation import BoundaryParams


def boundary_distances(
    model: nn.Module, x: Tensor, y: Tensor, active: Tensor, params: BoundaryParams, *, seed: int, device
) -> Tensor:
    """(N,) float64 L2 distance of the adversarial found; 0 where misclassified without
    attack, inf where the attack failed, nan outside the first ``params.limit`` examples."""
    import foolbox as fb

    n = x.shape[0]
    m = n if params.limit is None else min(n, params.limit)
    out = torch.full((n,), math.nan, dtype=torch.float64)
    out[:m] = 0.0
    rows = active[:m].cpu().nonzero().squeeze(1)  # indexes CPU outputs and device inputs alike
    fmodel = fb.PyTorchModel(model.eval(), bounds=(0.0, 1.0), device=device)
    init_attack = fb.attacks.LinearSearchBlendedUniformNoiseAttack(
        directions=params.init_attempts, steps=params.init_steps
    )
    attack = fb.attacks.BoundaryAttack(
        steps=params.steps,
        spherical_step=params.spherical_step,
        source_step=params.source_step,
        step_adaptation=params.step_adaptation,
    )
    torch.manual_seed(seed)
    bs = params.batch_size
    with progress((len(rows) + bs - 1) // bs, f"Boundary attack ({params.steps} steps)") as advance:
        for i in range(0, len(rows), bs):
            idx = rows[i : i + bs]
            xb, yb = x[idx].to(device), y[idx].to(device)
            d = torch.full((len(idx),), math.inf, dtype=torch.float64)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # foolbox warns per batch when its init fails somewhere
                # the starting points are found here, not inside BoundaryAttack: foolbox raises
                # for the whole batch when any one start fails; an example without a start
                # keeps d = inf (the attack failed on it: robust at every ε, as for any attack)
                start = init_attack.run(fmodel, xb, yb)
                with torch.no_grad():
                    started = model(start).argmax(1) != yb
                if started.any():
                    adv = attack.run(fmodel, xb[started], yb[started], starting_points=start[started])
                    with torch.no_grad():
                        fooled = (model(adv).argmax(1) != yb[started]).cpu()
                    dist = (adv - xb[started]).flatten(1).double().norm(dim=1).cpu()
                    d[started.cpu()] = torch.where(fooled, dist, torch.full_like(dist, math.inf))
            out[idx] = d
            advance(1)
    return out
