"""Transfer sets: 8-bit rounding toward the clean pixel stays inside the ε-ball (Linf and
L2), the file is compressed and loads weights-only, restarts are chosen on the source, and
the sets of one family (PGD-S×1, ×R) come from one run."""

import pytest
import torch
from torch import nn

from mma.attacks import lp_norm
from mma.config.evaluation import AttackSetting
from mma.evaluation.transfer import build_set, build_sets, load_set, quantize_toward, save_set
from mma.io import load_tensors


def ball_points(clean_u8, eps, norm, g):
    x = clean_u8.double() / 255
    d = torch.rand(x.shape, generator=g, dtype=torch.float64) * 2 - 1
    if norm == "linf":
        # on the sphere and inside it, plus exact corners
        d = torch.where(torch.rand(x.shape, generator=g) < 0.5, d.sign(), d) * eps
    else:
        d = (
            d
            / lp_norm(d, "l2").view(-1, 1, 1, 1)
            * eps
            * torch.rand(x.shape[0], 1, 1, 1, generator=g, dtype=torch.float64).sqrt()
        )
    return (x + d).clamp(0, 1).float()  # float32, as attacks return


@pytest.mark.parametrize("norm,eps", [("linf", 0.3), ("linf", 2 / 255), ("linf", 8 / 255), ("l2", 2.0), ("l2", 0.5)])
def test_rounding_stays_in_ball(norm, eps):
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(0, 256, (200, 1, 12, 12), generator=g, dtype=torch.uint8)
    clean[:20] = 0
    clean[20:40] = 255  # box edges
    x_adv = ball_points(clean, eps, norm, g)
    q = quantize_toward(x_adv, clean, eps, norm)
    assert q.dtype == torch.uint8
    delta = (q.double() - clean.double()) / 255
    assert (lp_norm(delta, norm) <= eps + 1e-12).all()
    # toward the clean pixel: never further than the float perturbation, and close to it
    d_float = x_adv.double() * 255 - clean.double()
    assert ((q.double() - clean.double()).abs() <= d_float.abs() + 1e-4).all()
    assert ((q.double() - clean.double()) - d_float).abs().max() < 1.0 + 1e-6


def test_set_file_roundtrip_compressed(tmp_path):
    g = torch.Generator().manual_seed(1)
    x = torch.zeros(300, 1, 28, 28, dtype=torch.uint8)
    x[:, :, 10:18, 10:18] = torch.randint(0, 256, (300, 1, 8, 8), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 10, (300,), generator=g)
    save_set(tmp_path / "s.pt", x, y, {"source": "a", "eps": 0.3})
    assert (tmp_path / "s.pt").stat().st_size < x.numel() / 3  # compressed
    load_tensors(tmp_path / "s.pt")  # weights-only loadable
    x2, meta = load_set(tmp_path / "s.pt")
    assert torch.equal(x2, x) and torch.equal(meta["y"], y) and meta["eps"] == 0.3


def test_build_set_in_ball_and_fools_source():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    x = torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8)
    with torch.no_grad():
        y = model(x.float() / 255).argmax(1)
    for s in (AttackSetting(attack="fgsm", random_init=False), AttackSetting(steps=5, restarts=3)):
        adv = build_set(model, x, y, 0.1, s, norm="linf", loss="ce", seed=0, batch_size=25, device="cpu")
        assert ((adv.int() - x.int()).abs() <= int(0.1 * 255)).all()
        with torch.no_grad():
            acc = (model(adv.float() / 255).argmax(1) == y).float().mean()
        assert acc < 0.9
    again = build_set(
        model,
        x,
        y,
        0.1,
        AttackSetting(steps=5, restarts=3),
        norm="linf",
        loss="ce",
        seed=0,
        batch_size=25,
        device="cpu",
    )
    assert torch.equal(again, adv)  # seeded: the same set every run


def test_sets_of_one_family_are_the_first_restarts_of_one_run():
    """PGD-5×1, ×2 and ×3 made together equal each made alone with the same seed (the ×R set
    is the best-by-source-loss of the first R restarts), and a later restart changes some
    images (so the equality is not that of three copies)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    x = torch.randint(0, 256, (60, 1, 8, 8), dtype=torch.uint8)
    with torch.no_grad():
        y = model(x.float() / 255).argmax(1)
    settings = [AttackSetting(steps=5, restarts=r) for r in (1, 2, 3)]
    kw = dict(norm="linf", loss="ce", seed=7, batch_size=25, device="cpu")
    together = build_sets(model, x, y, 0.1, settings, **kw)
    alone = [build_set(model, x, y, 0.1, s, **kw) for s in settings]
    for a, b in zip(together, alone):
        assert torch.equal(a, b)
    assert not torch.equal(together[0], together[2])
    with pytest.raises(ValueError, match="different families"):
        build_sets(model, x, y, 0.1, [AttackSetting(steps=5), AttackSetting(steps=6, restarts=2)], **kw)
