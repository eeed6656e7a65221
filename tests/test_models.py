"""Models: the architectures the paper uses, and the registry that names them."""

from __future__ import annotations

import pytest
import torch

from mma.models import MODELS, LeNet5Madry, WideResNet, build_model


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_lenet5_madry_shape_and_size():
    torch.manual_seed(0)
    model = LeNet5Madry()
    out = model(torch.rand(3, 1, 28, 28))
    assert out.shape == (3, 10)
    # conv 1→32 5x5 (832) + conv 32→64 5x5 (51,264) + FC 3136→1024 (3,212,288) + FC 1024→10 (10,250)
    assert n_params(model) == 3_274_634
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (1, 32, (5, 5), (2, 2)),
        (32, 64, (5, 5), (2, 2)),
    ]
    fcs = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(f.in_features, f.out_features) for f in fcs] == [(3136, 1024), (1024, 10)]


def test_wrn28_4_shape_and_widths():
    torch.manual_seed(0)
    model = build_model("wrn28_4", num_classes=10, in_channels=3).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert {c.out_channels for c in convs} == {16, 64, 128, 256}
    # 28 = 6·4 + 4: 4 blocks per group × 3 groups × 2 convs + the stem conv = 25 3x3 convs
    assert sum(c.kernel_size == (3, 3) for c in convs) == 25
    assert model.fc.in_features == 256


def test_wrn_standardises_each_image():
    """Per-image standardisation first: a model's output is unchanged by an affine
    change of brightness/contrast of the whole image (pixel space stays [0, 1])."""
    torch.manual_seed(0)
    model = build_model("wrn10_1").eval()
    x = torch.rand(2, 3, 32, 32) * 0.5
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(0.2 + 1.5 * x), rtol=1e-4, atol=1e-4)


def test_registry():
    assert {"lenet5_madry", "wrn28_4"} <= set(MODELS)
    assert isinstance(build_model("lenet5_madry"), LeNet5Madry)
    assert isinstance(build_model("wrn10_1"), WideResNet)
    assert build_model("lenet5_madry", num_classes=7)(torch.rand(1, 1, 28, 28)).shape == (1, 7)
    with pytest.raises(ValueError, match="unknown model 'resnet50'.*lenet5_madry"):
        build_model("resnet50")
    with pytest.raises(ValueError, match="6n\\+4"):
        WideResNet(depth=27)
