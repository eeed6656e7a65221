"""AN-PGD's results pinned, so that work on its speed cannot change them.

Algorithm 1's output (each example's found length and x_adv) is a deterministic
function of the model, the inputs and the seed: any change to the search's probes,
their order or its decisions moves a found length by up to one search resolution
(2^-10 of the first bracket, ~1e-4 here).  The pins below were computed with the
code of commit 1e077ec (2026-11-27, before the MMA step's speed work) on a float64 MLP whose weights
and points come from fixed seeds, so the pins need no data files.  That code clamped the
returned point to [0, 1] and ran the torchattacks form of L2 PGD: those pins are kept
under ``clip_final=True, l2_pgd="torchattacks"``, and the defaults that replaced them (the
authors' unclipped point, advertorch's L2 start and order) are pinned beside them.

The tolerance, 1e-12 relative on weighted sums, is far below one resolution (a
changed probe shows by 8 orders of magnitude) and above the float64 rounding by
which two CPUs' matrix kernels may differ (they may sum in another order: ~1e-16
per logit, which moves a secant estimate by as little).  On the machine that
computed them the results were bitwise those pinned.
"""

from __future__ import annotations

import importlib

import pytest
import torch
from torch import nn

from mma.attacks import an_pgd

RTOL = 1e-12


def mlp_problem(n: int = 96, d: int = 16, k: int = 6, seed: int = 0):
    """A random float64 MLP (class regions of box size, margins nonlinear along a line),
    n points in [0.3, 0.7]^d that it classifies (labels = its predictions), their clean
    logits, and per-example first radii spread over [0.01, 0.35], so that some examples
    cross by eps_init, some further out and some not at all before eps_max."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(d, 48), nn.ReLU(), nn.Linear(48, 48), nn.ReLU(), nn.Linear(48, k)).double().eval()
    with torch.no_grad():  # hidden units that switch inside the box
        model[0].bias.copy_(-model[0].weight @ torch.full((d,), 0.5, dtype=torch.float64))
    g = torch.Generator().manual_seed(seed)
    x = 0.3 + 0.4 * torch.rand(n, d, generator=g, dtype=torch.float64)
    with torch.no_grad():
        logits = model(x)
    y = logits.argmax(1)
    eps_init = 0.01 + 0.34 * torch.rand(n, generator=g, dtype=torch.float64)
    return model, x, y, logits, eps_init


def checksums(x_adv: torch.Tensor, eps: torch.Tensor) -> tuple[float, float, float]:
    """Σ eps, Σ eps·(1 + i/n) and Σ x_adv·(1 + j/size): the weights make every element count."""
    w = 1 + torch.arange(len(eps), dtype=eps.dtype) / len(eps)
    flat = x_adv.flatten()
    v = 1 + torch.arange(len(flat), dtype=flat.dtype) / len(flat)
    return float(eps.sum()), float((eps * w).sum()), float((flat * v).sum())


# (norm, eps_max, clean logits passed, repgd, clip_final, l2_pgd) -> (Σ eps, Σ eps·w, Σ x_adv·v)
# MMA training's call (clean logits given: the g(0) shortcut), the margin evaluation's
# (none), both norms, and arXiv v1's second PGD (repgd) for x_adv; each under the defaults
# and under the earlier forms.  The clamp moves only x_adv (Linf lengths agree to the bit);
# advertorch's L2 start moves the lengths too.
PINS = {
    ("linf", 0.6, True, False, False, "advertorch"): (27.398312465982876, 41.1941762504216, 1236.057795154862),
    ("linf", 0.6, False, False, False, "advertorch"): (27.39738116328885, 41.192296619582876, 1236.052295855587),
    ("l2", 2.0, True, False, False, "advertorch"): (91.66257731207227, 137.27257905598975, 1215.4714262567732),
    ("l2", 2.0, False, True, False, "advertorch"): (91.65765252763538, 137.26642620542032, 1218.3997960719662),
    ("linf", 0.6, True, False, True, "torchattacks"): (27.398312465982876, 41.1941762504216, 1234.9980349276782),
    ("linf", 0.6, False, False, True, "torchattacks"): (27.39738116328885, 41.192296619582876, 1234.992546680056),
    ("l2", 2.0, True, False, True, "torchattacks"): (86.92264092242903, 130.01373957822875, 1211.7525425757133),
    ("l2", 2.0, False, True, True, "torchattacks"): (86.92723530595467, 130.02152140753938, 1223.8355730810993),
}


def run(
    norm: str,
    eps_max: float,
    clean: bool,
    repgd: bool,
    clip_final: bool = False,
    l2_pgd: str = "advertorch",
    seed: int = 7,
):
    model, x, y, logits, eps_init = mlp_problem()
    scale = 1.0 if norm == "linf" else 4.0  # L2 lengths are ~4x the Linf ones in 16-d
    torch.manual_seed(seed)
    x_adv, eps = an_pgd(
        model,
        x,
        y,
        scale * eps_init,
        norm=norm,
        eps_max=eps_max,
        steps=10,
        clean_logits=logits if clean else None,
        repgd=repgd,
        clip_final=clip_final,
        l2_pgd=l2_pgd,
    )
    return model, x, y, eps_init * scale, x_adv, eps


@pytest.mark.parametrize(
    "case", list(PINS), ids=lambda c: f"{c[0]}-clean_logits={c[2]}-repgd={c[3]}-clip_final={c[4]}-{c[5]}"
)
def test_an_pgd_results_are_pinned(case):
    norm, eps_max = case[:2]
    _, _, _, eps_init, x_adv, eps = run(*case)
    # the pinned problem exercises every branch of the search: crossings inside the first
    # radius, beyond it, and none up to eps_max (the in-between probes)
    assert (eps < eps_init).sum() >= 20 and (eps > eps_init).sum() >= 20 and (eps == eps_max).sum() >= 2
    assert checksums(x_adv, eps) == pytest.approx(PINS[case], rel=RTOL, abs=0)


def test_a_moved_probe_breaks_the_pin(monkeypatch):
    """The pins see a change as small as one probe placed elsewhere: the first probe past
    eps_init 20 % instead of 10 % beyond the line's crossing moves the checksums by far
    more than the tolerance (while each length stays within the search's resolution)."""
    module = importlib.import_module("mma.attacks.an_pgd")
    case = ("linf", 0.6, True, False, False, "advertorch")
    monkeypatch.setattr(module, "OVERSHOOT", 1.2)
    _, _, _, _, x_adv, eps = run(*case)
    moved = checksums(x_adv, eps)
    assert abs(moved[1] - PINS[case][1]) > 1e3 * RTOL * abs(PINS[case][1])
    monkeypatch.undo()
    _, _, _, _, x_adv, again = run(*case)
    assert (eps - again).abs().max() <= 0.6 / 2**10  # both are the crossing, to the resolution
