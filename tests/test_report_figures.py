"""The report's figures: legends in the units of their axes."""

from __future__ import annotations


def test_cifar_linf_margin_legend_uses_the_axis_units():
    import torch

    from mma.report.figures import margin_label

    v = torch.tensor([0.1, 0.112, 0.2], dtype=torch.float64) * 255.0
    label = margin_label("cifar10-linf-mma-32", "margin", v, 255.0)
    assert "mean 35/255," in label and "median 28.6/255" in label
    assert "mean 0.137," in margin_label("m", "margin", v / 255.0, 1.0)
