"""The Boundary attack wrapper: never below the true minimal L2 distance, and an example
without a starting point is a failed attack (inf), not a crash of the whole batch."""

import math

import torch
from torch import nn

from mma.config.evaluation import BoundaryParams
from mma.evaluation.boundary import boundary_distances


def _linear(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 10)).double().float()


def test_distances_are_never_below_the_analytic_margin():
    model = _linear()
    x = torch.rand(8, 1, 4, 4) * 0.5 + 0.25
    y = model(x).argmax(1)
    w = model[1].weight.detach()
    f = model(x).detach()
    fy = f.gather(1, y[:, None])
    gaps = (fy - f) / (w[y][:, None, :] - w[None]).norm(dim=2).clamp_min(1e-12)
    gaps[torch.arange(8), y] = math.inf
    margin = gaps.min(1).values.double()  # minimal L2 distance to another class, ignoring the box
    params = BoundaryParams(limit=8, steps=300, init_attempts=20, init_steps=20, batch_size=4)
    d = boundary_distances(model, x, y, torch.ones(8, dtype=torch.bool), params, seed=0, device="cpu")
    assert torch.isfinite(d).all()
    assert (d >= margin - 1e-5).all()


def test_examples_without_a_start_get_inf_and_the_rest_still_run():
    model = _linear()
    x = torch.rand(6, 1, 4, 4)
    y = model(x).argmax(1)
    const = nn.Sequential(nn.Flatten(), nn.Linear(16, 10))
    const[1].weight.data.zero_()
    const[1].bias.data = torch.arange(10.0)  # always class 9: nothing can be made adversarial
    params = BoundaryParams(limit=6, steps=50, init_attempts=5, init_steps=5, batch_size=3)
    d = boundary_distances(const, x, torch.full((6,), 9), torch.ones(6, dtype=torch.bool), params, seed=0, device="cpu")
    assert torch.isinf(d).all()
    # the limit: rows past it are not attacked (nan)
    params = BoundaryParams(limit=4, steps=50, init_attempts=20, init_steps=20, batch_size=3)
    d = boundary_distances(model, x, y, torch.ones(6, dtype=torch.bool), params, seed=0, device="cpu")
    assert torch.isfinite(d[:4]).all() and torch.isnan(d[4:]).all()
