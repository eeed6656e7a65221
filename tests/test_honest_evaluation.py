"""Evaluation that cannot flatter (issue 11, section 3): numbers that a broken model or a
weak attack could inflate are refused or flagged.

* PGD-model validation counts an example robust only if it is also classified correctly
  without attack.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mma.train import ModelSpec, OptimizerSpec, PGDTrainSpec, validate


# --------------------------------------------------------------------------- validation of PGD models
class GridMemorizer(nn.Module):
    """Three classes on inputs in [0, 1]: class 2 where the mean pixel exceeds 0.9, else
    class 1 on the 8-bit grid (every pixel a multiple of 1/255: the clean images) and
    class 0 off it.  Its input gradient is zero, so PGD stays at its random start, which
    lies off the grid: the predictions flip from 1 to 0 under any perturbation."""

    def forward(self, x):
        flat = x.flatten(1)
        scaled = flat * 255
        on_grid = ((scaled - scaled.round()).abs() < 1e-3).all(1)
        cls = torch.where(flat.mean(1) > 0.9, 2, torch.where(on_grid, 1, 0))
        return 5.0 * F.one_hot(cls, 3).float() + 0.0 * flat.sum(1, keepdim=True)  # differentiable, gradient 0


def test_pgd_validation_counts_only_examples_also_correct_clean():
    spec = ModelSpec(name="toy-pgd", dataset="mnist", arch="lenet5_madry", norm="linf", method="pgd",
                     pgd=PGDTrainSpec(eps=0.1, steps=3), optimizer=OptimizerSpec(name="adam", lr=1e-3))
    x = torch.tensor([100, 120, 250], dtype=torch.float32)[:, None].expand(3, 4) / 255
    # A: wrong clean (1 ≠ 0), "right" at its adversarial point (0); B: right clean, fooled;
    # C: bright, right everywhere
    y = torch.tensor([0, 1, 2])
    model = GridMemorizer()
    assert model(x).argmax(1).tolist() == [1, 1, 2]
    torch.manual_seed(0)
    out = validate(spec, model, x, y)
    assert out["val_clean_acc"] == 2 / 3
    assert out["val_pgd_acc"] == 1 / 3  # C only; counting A (right at its adversarial point) gave 2/3
