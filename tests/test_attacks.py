"""Attacks: known answers on linear classifiers, invariants on a trained conv net,
agreement with torchattacks / foolbox.

Known answer: for f(x) = W x + b with no box constraint active, the minimal
perturbation that moves x from class y to class j is (f_y − f_j)/‖w_y − w_j‖_*
(the dual norm: ‖·‖₂ for L2, ‖·‖₁ for Linf); the minimal one overall is the min
over j.  The data below lie in [0.3, 0.7]^d and the searches move no coordinate
far, so the box [0, 1] never binds (the tests check the returned points are
strictly inside it).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mma.attacks import an_pgd, fgsm, get_loss, lp_norm, pgd

DUAL = {"l2": 2, "linf": 1}  # the norm of w that turns a logit gap into an input distance


# --------------------------------------------------------------------------- linear models
def linear_model(w: torch.Tensor, b: torch.Tensor) -> nn.Module:
    """A float64 linear classifier with weights (K, D) and biases (K,)."""
    model = nn.Linear(w.shape[1], w.shape[0]).double()
    with torch.no_grad():
        model.weight.copy_(w)
        model.bias.copy_(b)
    return model.eval()


def analytic_margin(model: nn.Linear, x: torch.Tensor, y: torch.Tensor, norm: str) -> torch.Tensor:
    """min_{j≠y} (f_y − f_j)/‖w_y − w_j‖_dual per example (B,)."""
    with torch.no_grad():
        f = model(x)
        w = model.weight
        gap = f.gather(1, y[:, None]) - f  # (B, K)
        dist = w[y][:, None, :] - w[None, :, :]  # (B, K, D): w_y − w_j
        dist = gap / dist.norm(p=DUAL[norm], dim=2).clamp_min(1e-300)
        dist[torch.arange(len(y)), y] = float("inf")
        return dist.min(dim=1).values


def binary_problem(norm: str, n: int = 64, d: int = 64, seed: int = 0):
    """A 2-class linear model and n points at controlled distances from its hyperplane:
    margins spread evenly over [0.05, 0.10] (Linf) / [0.2, 0.4] (L2), each point on a
    random side and labelled with the side's class.  Points start at [0.3, 0.7]^d and
    are moved along the normal; |w_i| ∈ [0.5, 1.5] keeps every coordinate's move small."""
    g = torch.Generator().manual_seed(seed)
    w = (torch.rand(d, generator=g, dtype=torch.float64) + 0.5) * torch.where(
        torch.rand(d, generator=g) < 0.5, -1.0, 1.0
    ).double()
    zero = torch.zeros((), dtype=torch.float64)
    model = linear_model(torch.stack([torch.zeros_like(w), w]), torch.stack([zero, -0.5 * w.sum()]))
    lo, hi = (0.05, 0.10) if norm == "linf" else (0.2, 0.4)
    target = torch.linspace(lo, hi, n, dtype=torch.float64)  # the wanted margins
    side = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0).double()
    z = 0.5 + (torch.rand(n, d, generator=g, dtype=torch.float64) - 0.5) * 0.1  # near the centre
    # the logit gap f_1 − f_0 = w·x − w·1/2; along the normal direction v it changes by (w·v) per unit
    gap = z @ w - 0.5 * w.sum()
    v = w / w.norm() if norm == "l2" else w.sign()  # the steepest direction in each norm (unit norm)
    x = z + ((side * target * w.norm(p=DUAL[norm]) - gap) / (w @ v))[:, None] * v
    y = (side > 0).long()
    assert 0.3 < x.min() and x.max() < 0.7
    margin = analytic_margin(model, x, y, norm)
    torch.testing.assert_close(margin, target, rtol=1e-9, atol=0)  # the construction is what it says
    return model, x, y, margin


def multiclass_problem(norm: str, n: int = 200, d: int = 64, k: int = 10, seed: int = 0):
    """A 10-class linear model whose boundaries all pass near the centre of the box,
    and n correctly classified points near the centre (spread ±0.05 per coordinate),
    so every margin is a few hundredths and the box never binds."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(k, d, generator=g, dtype=torch.float64)
    b = -(w @ torch.full((d,), 0.5, dtype=torch.float64)) + 0.05 * torch.randn(k, generator=g, dtype=torch.float64)
    model = linear_model(w, b)
    x = 0.5 + (torch.rand(n, d, generator=g, dtype=torch.float64) - 0.5) * 0.1
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y, analytic_margin(model, x, y, norm)


def is_fooled(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x_adv).argmax(1) != y


# --------------------------------------------------------------------------- known answers
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("init_frac, repgd", [(0.5, False), (1.5, False), (0.5, True)])
def test_an_pgd_recovers_binary_linear_margin(norm, init_frac, repgd):
    """eps_init = 0.5×margin: the first PGD cannot fool any example, and the search
    direction must come from its last iterate (a clean-input "direction" is zero)."""
    model, x, y, margin = binary_problem(norm)
    eps_max = 2 * margin.max().item()
    torch.manual_seed(0)
    x_adv, eps = an_pgd(model, x, y, init_frac * margin, norm=norm, eps_max=eps_max, steps=40, repgd=repgd)
    assert 0 < x_adv.min() and x_adv.max() < 1  # the box did not bind
    rel = (eps - margin) / margin
    print(
        f"\n[binary {norm}, eps_init={init_frac}×margin, repgd={repgd}] an_pgd/analytic − 1: "
        f"min {rel.min():+.2e} median {rel.median():+.2e} max {rel.max():+.2e}"
    )
    assert rel.abs().max() < 0.05
    if repgd:  # a fresh PGD at the found length: inside that ball (an L2 PGD just past the
        # margin need not cross it: its last iterate is ~1 % off the normal, measured)
        assert (lp_norm(x_adv - x, norm) <= eps * (1 + 1e-9)).all()
    else:  # the returned point is across the boundary, at the returned length
        assert is_fooled(model, x_adv, y).all()
        torch.testing.assert_close(lp_norm(x_adv - x, norm), eps, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_margin_loss_brackets_the_binary_linear_margin(norm):
    model, x, y, margin = binary_problem(norm)
    torch.manual_seed(0)
    below = pgd(model, x, y, 0.95 * margin, norm=norm, steps=40, loss="margin", restarts=3)
    above = pgd(model, x, y, 1.05 * margin, norm=norm, steps=40, loss="margin")
    assert not is_fooled(model, below, y).any()  # nothing exists inside the margin
    assert is_fooled(model, above, y).all()  # and PGD finds the way out just beyond it


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("attack_loss, logit_scale", [("margin", 1.0), ("soft_margin", 50.0)])
def test_an_pgd_on_ten_class_linear_model(norm, attack_loss, logit_scale):
    """The soft margin's gradient mixes every other class by its softmax weight, so its
    direction depends on the logit scale (the margins do not): at scale 1 all ten logits
    are within ~1 of each other near the centre and soft-margin PGD heads for an average
    of the boundaries (+30 % median, measured); at a trained net's scale (logit gaps of
    ~10-20 at the boundary's distance) it follows the nearest one.  The hard margin is
    scale-free."""
    model, x, y, margin = multiclass_problem(norm)
    with torch.no_grad():
        model.weight.mul_(logit_scale)
        model.bias.mul_(logit_scale)
    eps_max = 2 * margin.max().item()
    bisection_steps = 10
    resolution = eps_max / 2**bisection_steps
    torch.manual_seed(0)
    x_adv, eps = an_pgd(
        model,
        x,
        y,
        margin.median().item(),
        norm=norm,
        eps_max=eps_max,
        steps=40,
        bisection_steps=bisection_steps,
        attack_loss=attack_loss,
    )
    assert 0 < x_adv.min() and x_adv.max() < 1  # the box did not bind
    rel = eps / margin - 1
    q = torch.quantile(rel, torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0], dtype=rel.dtype))
    print(
        f"\n[10-class {norm}, {attack_loss}, logit scale {logit_scale:g}] an_pgd/analytic − 1 over {len(y)} "
        f"points: min {q[0]:+.4f} p10 {q[1]:+.4f} median {q[2]:+.4f} p90 {q[3]:+.4f} max {q[4]:+.4f}; "
        f"within 5 %: {(rel < 0.05).float().mean():.0%}"
    )
    # no perturbation shorter than the analytic minimum exists: an_pgd never reports one
    assert (eps >= margin - resolution).all()
    assert rel.median() < 0.05
    assert is_fooled(model, x_adv, y).all()


def test_an_pgd_refuses_the_cw_loss():
    """Past the boundary the CW loss (the margin clamped at 0) is flat: its gradient is
    exactly zero where an example is fooled, so a PGD that crossed early stops moving and
    its last iterate says nothing about where the boundary is.  an_pgd refuses it."""
    model, x, y, margin = binary_problem("linf")
    beyond = pgd(model, x, y, 1.5 * margin, steps=40, loss="margin", select="loss")
    assert is_fooled(model, beyond, y).all()
    z = beyond.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(get_loss("cw")(model(z), y).sum(), z)
    assert torch.equal(grad, torch.zeros_like(grad))
    (grad,) = torch.autograd.grad(get_loss("margin")(model(z), y).sum(), z)
    assert (grad.abs().sum(1) > 0).all()  # the losses an_pgd accepts still point somewhere
    with pytest.raises(ValueError, match="attack_loss 'cw' is not supported.*soft_margin"):
        an_pgd(model, x, y, 0.5 * margin, eps_max=2 * margin.max().item(), steps=5, attack_loss="cw")


# --------------------------------------------------------------------------- invariants (trained conv net)
EPS = {"linf": 0.075, "l2": 1.0}  # robust accuracy of the fixture model is mid-range here (measured ~50 %)


@pytest.fixture(scope="module")
def batch(eval_batch):
    """200 correctly classified MNIST test images: enough for the invariants, cheap."""
    return eval_batch[0][:200], eval_batch[1][:200]


def robust_mask(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x_adv).argmax(1) == y


def attack_loss_values(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    with torch.no_grad():
        return get_loss(loss)(model(x), y)


@pytest.mark.parametrize(
    "norm, grid", [("linf", [0.0, 0.025, 0.05, 0.075, 0.1, 0.15]), ("l2", [0.0, 0.5, 1.0, 1.5, 2.0, 3.0])]
)
def test_robust_accuracy_non_increasing_in_eps(trained_convnet, batch, norm, grid):
    x, y = batch
    acc = []
    for eps in grid:
        torch.manual_seed(0)
        acc.append(
            robust_mask(trained_convnet, pgd(trained_convnet, x, y, eps, norm=norm, steps=20), y).float().mean().item()
        )
    print(f"\n[{norm}] robust accuracy over ε {grid}: {[round(a, 3) for a in acc]}")
    assert acc[0] == 1.0  # ε = 0 is the clean input, and eval_batch is the correctly classified part
    assert all(b <= a for a, b in zip(acc, acc[1:]))
    assert acc[-1] < 0.5 * acc[1]  # the grid spans a real drop (the test can fail)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_more_restarts_never_raise_robust_accuracy(trained_convnet, batch, norm):
    """A weak 2-step attack, so that random starts matter."""
    x, y = batch
    robust = {}
    for restarts in (1, 2, 4):
        torch.manual_seed(1)
        x_adv = pgd(trained_convnet, x, y, EPS[norm], norm=norm, steps=2, restarts=restarts)
        robust[restarts] = robust_mask(trained_convnet, x_adv, y)
    print(
        f"\n[{norm}] robust accuracy by restarts: "
        + ", ".join(f"{r}: {m.float().mean():.3f}" for r, m in robust.items())
    )
    # same seed: the first restarts are the same attacks, so the robust sets are nested
    assert not (robust[2] & ~robust[1]).any()
    assert not (robust[4] & ~robust[2]).any()
    if norm == "linf":  # restarts do find more here (an L2 random start in 784-d is nearly
        assert robust[4].sum() < robust[1].sum()  # orthogonal to the gradient: no gain, measured)
    assert robust[4].sum() <= robust[1].sum()


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("restarts", [1, 3])
def test_early_exit_gives_the_same_result(trained_convnet, batch, norm, restarts):
    """Float64, because early exit changes the batch size of each forward and CPU
    kernels may then round differently.  Linf takes the sign of the gradient, so it
    is bitwise equal; L2 keeps the gradient's last bits (~1e-16 apart, measured)."""
    model = copy.deepcopy(trained_convnet).double()
    x, y = batch[0].double(), batch[1]
    out = {}
    # early exit checked at every iteration, every 3rd (GPU-style: one host sync per
    # check), and never
    for key, early_exit, every in ((1, True, 1), (3, True, 3), ("naive", False, 1)):
        torch.manual_seed(2)
        out[key] = pgd(
            model, x, y, EPS[norm], norm=norm, steps=10, restarts=restarts, early_exit=early_exit, exit_every=every
        )
    full = robust_mask(model, out["naive"], y)
    assert 0 < full.sum() < len(y)  # some examples exit early, some run to the end
    for key in (1, 3):
        assert torch.equal(robust_mask(model, out[key], y), full)
        if norm == "linf":
            assert torch.equal(out[key], out["naive"])
        else:
            torch.testing.assert_close(out[key], out["naive"], rtol=0, atol=1e-12)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fgsm_is_one_step_pgd_from_x(trained_convnet, batch, norm):
    x, y = batch
    eps = EPS[norm] / 2
    x_fgsm = fgsm(trained_convnet, x, y, eps, norm=norm)
    x_pgd = pgd(trained_convnet, x, y, eps, norm=norm, steps=1, step_size=eps, random_init=False, select="loss")
    assert torch.equal(x_fgsm, x_pgd)
    # and both are the textbook formula
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(nn.functional.cross_entropy(trained_convnet(xr), y, reduction="sum"), xr)
    direction = g.sign() if norm == "linf" else g / g.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    torch.testing.assert_close(x_fgsm, (x + eps * direction).clamp(0, 1), rtol=0, atol=1e-6)


def _per_example_eps(norm: str, n: int) -> torch.Tensor:
    return EPS[norm] * torch.linspace(0.2, 1.5, n)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("per_example", [False, True])
def test_outputs_stay_in_box_and_ball(trained_convnet, batch, norm, per_example):
    x, y = batch
    eps = _per_example_eps(norm, len(y)) if per_example else torch.full((len(y),), EPS[norm])
    eps_arg = eps if per_example else EPS[norm]
    torch.manual_seed(3)
    outputs = {
        "pgd target": pgd(trained_convnet, x, y, eps_arg, norm=norm, steps=10, restarts=2),
        "pgd loss": pgd(trained_convnet, x, y, eps_arg, norm=norm, steps=10, restarts=2, select="loss", loss="cw"),
        "pgd big steps": pgd(trained_convnet, x, y, eps_arg, norm=norm, steps=3, step_size=3 * eps, loss="soft_margin"),
        "fgsm": fgsm(trained_convnet, x, y, eps_arg, norm=norm),
    }
    torch.manual_seed(4)
    x_an, eps_an = an_pgd(trained_convnet, x, y, eps_arg, norm=norm, eps_max=2 * EPS[norm], steps=10, clip_final=True)
    torch.manual_seed(4)
    x_raw, eps_raw = an_pgd(trained_convnet, x, y, eps_arg, norm=norm, eps_max=2 * EPS[norm], steps=10)
    for name, x_adv in outputs.items():
        assert x_adv.shape == x.shape and x_adv.dtype == x.dtype, name
        assert x_adv.min() >= 0 and x_adv.max() <= 1, name
        dist = lp_norm(x_adv - x, norm)
        assert (dist <= eps * (1 + 1e-5) + 1e-6).all(), f"{name}: {(dist / eps).max():.6f}×ε"
        if name.startswith("pgd"):  # the ball is used, not just respected (FGSM's L2 step loses to the box)
            assert (dist >= 0.9 * eps).float().mean() > 0.5, name
    assert x_an.min() >= 0 and x_an.max() <= 1
    assert not (x_an.requires_grad or eps_an.requires_grad)  # no autograd graph leaves the attack
    assert (eps_an <= 2 * EPS[norm] + 1e-6).all()
    assert (lp_norm(x_an - x, norm) <= eps_an * (1 + 1e-5) + 1e-6).all()
    # the default is the authors' unclipped point: the same search, x + ε·u itself (length ε exactly),
    # which the box clamp turns into the clipped one
    assert torch.equal(eps_raw, eps_an) and torch.equal(x_raw.clamp(0, 1), x_an)
    torch.testing.assert_close(lp_norm(x_raw - x, norm), eps_raw, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("loss", ["ce", "margin"])
def test_select_loss_returns_each_examples_best_restart(trained_convnet, batch, norm, loss):
    """Restart r's random start is the r-th draw of torch's RNG, so single-restart runs
    from the same seed reproduce every restart; the multi-restart result must be, per
    example, the one with the highest loss."""
    x, y = batch
    restarts = 3
    torch.manual_seed(4)
    combined = pgd(trained_convnet, x, y, EPS[norm], norm=norm, steps=5, restarts=restarts, select="loss", loss=loss)
    torch.manual_seed(4)
    singles = torch.stack(
        [pgd(trained_convnet, x, y, EPS[norm], norm=norm, steps=5, select="loss", loss=loss) for _ in range(restarts)]
    )  # (R, B, ...)
    values = torch.stack([attack_loss_values(trained_convnet, s, y, loss) for s in singles])  # (R, B)
    assert (values.argmax(0) != 0).any()  # the later restarts win somewhere: selection is exercised
    best = singles[values.argmax(0), torch.arange(len(y))]
    assert torch.equal(combined, best)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("random_init", [False, True])
def test_unfooled_examples_get_the_last_iterate(trained_convnet, batch, norm, random_init):
    x, y = batch
    torch.manual_seed(5)
    target = pgd(trained_convnet, x, y, EPS[norm] / 2, norm=norm, steps=10, random_init=random_init, early_exit=False)
    torch.manual_seed(5)
    last = pgd(trained_convnet, x, y, EPS[norm] / 2, norm=norm, steps=10, random_init=random_init, select="loss")
    robust = robust_mask(trained_convnet, target, y)
    assert robust.any() and not robust.all()
    assert torch.equal(target[robust], last[robust])  # the last iterate of the (only) restart
    assert (lp_norm(target[robust] - x[robust], norm) > 0.5 * EPS[norm] / 2).all()  # far from the clean input


def _state(model: nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_attacks_leave_model_state_alone(trained_convnet, batch):
    """Train mode, mixed requires_grad flags and BatchNorm running statistics all come
    back as they were; no parameter gradient is accumulated."""
    x, y = batch[0][:64], batch[1][:64]
    model = nn.Sequential(copy.deepcopy(trained_convnet), nn.BatchNorm1d(10), nn.Dropout(0.5))
    for p in model.parameters():
        p.requires_grad_(True)
    model[0][0].bias.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    model.train()
    before = _state(model)
    runs = [
        lambda: pgd(model, x, y, 0.1, steps=3, restarts=2),
        lambda: pgd(model, x, y, 1.0, norm="l2", steps=3, select="loss", restarts=2),
        lambda: fgsm(model, x, y, 0.1),
        lambda: an_pgd(model, x, y, 0.05, eps_max=0.2, steps=3),
        lambda: an_pgd(model, x, y, 0.5, norm="l2", eps_max=2.0, steps=3, repgd=True),
    ]
    for run in runs:
        run()
        assert model.training and all(m.training for m in model.modules())
        assert [p.requires_grad for p in model.parameters()] == flags
        assert all(p.grad is None for p in model.parameters())
        after = _state(model)
        assert all(torch.equal(before[k], after[k]) for k in before)  # BN statistics untouched (eval mode)
    # and in eval mode it stays in eval mode
    model.eval()
    pgd(model, x, y, 0.1, steps=2)
    assert not any(m.training for m in model.modules())


def test_attacks_are_deterministic_given_the_seed(trained_convnet, batch):
    x, y = batch[0][:64], batch[1][:64]
    runs = []
    for _ in range(2):
        torch.manual_seed(6)
        runs.append(
            (
                pgd(trained_convnet, x, y, 0.05, steps=5, restarts=2),
                an_pgd(trained_convnet, x, y, 0.05, eps_max=0.2, steps=5)[1],
            )
        )
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


# --------------------------------------------------------------------------- the registry of attack kinds
def test_the_registry_holds_exactly_the_kinds_params_can_name():
    """params.yaml's schema (torch-free) and the registry list the same kinds; an unknown
    name is refused with the kinds named."""
    from typing import get_args

    from mma.attacks import ATTACKS, attack_kind
    from mma.config.evaluation import AttackSetting

    assert set(get_args(AttackSetting.model_fields["attack"].annotation)) == set(ATTACKS)
    assert all(kind.name == name for name, kind in ATTACKS.items())
    with pytest.raises(KeyError, match="'cw-l2'; the kinds are fgsm, pgd"):
        attack_kind("cw-l2")


def test_each_kinds_cost_counts_its_restarts_and_steps():
    from mma.attacks import attack_kind
    from mma.config.evaluation import AttackSetting

    fgsm_kind, pgd_kind = attack_kind("fgsm"), attack_kind("pgd")
    setting = AttackSetting(attack="fgsm", steps=7, restarts=3)  # FGSM ignores both
    assert (fgsm_kind.restarts(setting), fgsm_kind.gradient_steps(setting)) == (1, 1)
    setting = AttackSetting(steps=7, restarts=3)
    assert (pgd_kind.restarts(setting), pgd_kind.gradient_steps(setting)) == (3, 21)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("name", ["fgsm", "pgd"])
def test_every_registered_kind_attacks_inside_box_and_ball_and_is_as_random_as_it_says(
    trained_convnet, batch, name, norm
):
    """One restart of each kind on the trained net, per-example ε: inside [0, 1] and the
    ε-ball, fools some examples; a deterministic kind gives the same x_adv under another
    seed, a random one does not."""
    from mma.attacks import ATTACKS
    from mma.config.evaluation import AttackSetting

    x, y = batch[0][:64], batch[1][:64]
    kind = ATTACKS[name]
    setting = AttackSetting(attack=name, steps=5)
    eps = _per_example_eps(norm, len(y))
    runs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        runs.append(kind.run(trained_convnet, x, y, eps, setting, norm=norm, loss="ce", select="loss"))
    x_adv = runs[0]
    assert x_adv.shape == x.shape and x_adv.min() >= 0 and x_adv.max() <= 1
    assert (lp_norm(x_adv - x, norm) <= eps * (1 + 1e-5) + 1e-6).all()
    assert 0 < (~robust_mask(trained_convnet, x_adv, y)).sum() < len(y)
    assert torch.equal(runs[0], runs[1]) is kind.deterministic


# --------------------------------------------------------------------------- peer agreement
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("random_init", [False, True])
def test_pgd_agrees_with_torchattacks_and_foolbox(trained_convnet, eval_batch, norm, random_init):
    """Same ε, steps, step size and loss (cross-entropy) on the same ~440 correctly
    classified MNIST test images: robust accuracies within 1 percentage point.  (Ours
    counts an example as broken if any iterate fools the model, the peers look at the
    last iterate only, so ours may be a little lower, never meaningfully higher.)"""
    torchattacks = pytest.importorskip("torchattacks")
    fb = pytest.importorskip("foolbox")
    model = trained_convnet
    x, y = eval_batch
    eps, steps = EPS[norm], 20
    alpha = 2.5 * eps / steps

    def accuracy(x_adv):
        return robust_mask(model, x_adv, y).float().mean().item()

    torch.manual_seed(0)
    ours = accuracy(pgd(model, x, y, eps, norm=norm, steps=steps, step_size=alpha, random_init=random_init))
    peer_cls = torchattacks.PGD if norm == "linf" else torchattacks.PGDL2
    torch.manual_seed(0)
    ta = accuracy(peer_cls(model, eps=eps, alpha=alpha, steps=steps, random_start=random_init)(x, y))
    fb_cls = fb.attacks.LinfPGD if norm == "linf" else fb.attacks.L2PGD
    torch.manual_seed(0)
    _, _, success = fb_cls(abs_stepsize=alpha, steps=steps, random_start=random_init)(
        fb.PyTorchModel(model, bounds=(0, 1)), x, y, epsilons=eps
    )
    foolbox = 1 - success.float().mean().item()
    print(
        f"\n[peer {norm} ε={eps} steps={steps} random_init={random_init}, n={len(y)}] robust accuracy: "
        f"mma {ours:.4f}  torchattacks {ta:.4f}  foolbox {foolbox:.4f}"
    )
    assert 0.2 <= ours <= 0.8  # a mid-range model: agreement at 0 % or 100 % would say nothing
    assert abs(ours - ta) <= 0.01
    assert abs(ours - foolbox) <= 0.01


@pytest.mark.parametrize("random_init", [False, True])
def test_l2_torchattacks_form_is_torchattacks_pgdl2(random_init):
    """pgd(l2_pgd="torchattacks") is torchattacks' PGDL2 iterate for iterate (its start: a
    normal direction, a uniform length; each step scaled into the ball, then clamped to the
    box), on sparse images and large steps where the ball and the box bind together.
    (The default form, advertorch's, is checked by hand in tests/test_faithfulness.py.)"""
    torchattacks = pytest.importorskip("torchattacks")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(12, 1, 8, 8, generator=g)
    x = torch.where(torch.rand(12, 1, 8, 8, generator=g) < 0.7, 0.0, x)
    y = torch.arange(12) % 10
    torch.manual_seed(3)
    ours = pgd(
        model,
        x,
        y,
        1.5,
        norm="l2",
        steps=4,
        step_size=0.9,
        random_init=random_init,
        select="loss",
        l2_pgd="torchattacks",
    )
    torch.manual_seed(3)
    theirs = torchattacks.PGDL2(model, eps=1.5, alpha=0.9, steps=4, random_start=random_init)(x, y)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    torch.manual_seed(3)
    default = pgd(model, x, y, 1.5, norm="l2", steps=4, step_size=0.9, random_init=random_init, select="loss")
    assert (default - theirs).abs().max() > 1e-3  # the advertorch form differs here: the test can fail


# --------------------------------------------------------------------------- a non-convex class region
class Band(nn.Module):
    """Two classes in 2-D: class 1 is the band |x₁ − 0.55| < 0.15, class 0 both sides of it
    (logits f₀ = 0, f₁ = 0.15 − |x₁ − 0.55|)."""

    def forward(self, x):
        return torch.stack([torch.zeros_like(x[:, 0]), 0.15 - (x[:, 0] - 0.55).abs()], 1)


@pytest.mark.parametrize("clean_logits", [False, True])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_an_pgd_finds_a_crossing_whose_far_side_is_correct_again(norm, clean_logits):
    """From x₁ = 0.1 the boundary is 0.3 away (at x₁ = 0.4); past the band (x₁ > 0.7) the
    class is right again, so at ε_max = 0.8 (x₁ = 0.9) the far end of the search
    interval is classified correctly.  The crossing inside the interval must still be
    found, as the authors' bisection finds it (its first probe is the interval's
    midpoint, x₁ = 0.55): an example 0.3 from the boundary must not be reported as
    robust up to ε_max (MMA would then drop it from the loss, stored at ε_max).  With the
    clean logits passed (MMA training's shortcut) the line through g(0) and g(0.1) points
    past the far end, and the crossing in between must still be found."""
    model = Band()
    g = torch.Generator().manual_seed(0)
    x = torch.stack([torch.full((16,), 0.1), 0.2 + 0.6 * torch.rand(16, generator=g)], 1).double()
    y = torch.zeros(16, dtype=torch.long)
    torch.manual_seed(0)
    x_adv, eps = an_pgd(
        model, x, y, 0.1, norm=norm, eps_max=0.8, steps=20, clean_logits=model(x) if clean_logits else None
    )
    print(f"\n[band {norm}] an_pgd lengths: {eps.min():.4f} .. {eps.max():.4f} (true minimal 0.3)")
    assert (eps >= 0.3 - 0.8 / 2**10).all()
    assert (eps <= 0.3 * 1.05).all()
    assert is_fooled(model, x_adv, y).all()


# --------------------------------------------------------------------------- the boundary search
def _mlp_rays(n: int = 300, d: int = 12, seed: int = 0):
    """A random float64 MLP (margins nonlinear along a line), the points it classifies,
    Linf-unit directions that climb the margin (its gradient's sign with a random third
    of the coordinates flipped, so the crossings lie at assorted distances), and each
    ray's first-bracket middle in [0.02, 0.3]."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(d, 32), nn.ReLU(), nn.Linear(32, 5)).double().eval()
    with torch.no_grad():  # hidden units switching inside the box, class regions of box size
        model[0].bias.copy_(-model[0].weight @ torch.full((d,), 0.5, dtype=torch.float64))
        model[2].bias.zero_()
    x = (0.3 + 0.4 * torch.rand(n, d, generator=g, dtype=torch.float64)).requires_grad_(True)
    logits = model(x)
    y = logits.argmax(1)
    (grad,) = torch.autograd.grad(get_loss("margin")(logits, y).sum(), x)
    flip = torch.where(torch.rand(n, d, generator=g) < 1 / 3, -1.0, 1.0).double()
    u = grad.sign() * flip
    eps_mid = 0.02 + 0.28 * torch.rand(n, generator=g, dtype=torch.float64)
    return model, x.detach(), y, u, eps_mid


def _g(model, x, y, u, eta):
    with torch.no_grad():
        return get_loss("margin")(model((x + eta[:, None] * u).clamp(0, 1)), y)


def _reference_crossing(model, x, y, u, eps_hi: float, points: int = 4001):
    """By brute force: on each ray's η grid over [0, eps_hi], the rows with exactly one
    sign change of the margin (that crossing refined by 60 plain bisections) and the
    rows that never cross."""
    eta = torch.linspace(0, eps_hi, points, dtype=torch.float64)
    vals = torch.stack([_g(model, x, y, u, torch.full((len(y),), float(e), dtype=torch.float64)) for e in eta], 1)
    adv = vals >= 0
    changes = (adv[:, 1:] != adv[:, :-1]).sum(1)
    single = (changes == 1) & ~adv[:, 0]
    never = ~adv.any(1)
    first = adv.to(torch.int8).argmax(1).clamp_min(1)
    lo, hi = eta[first - 1], eta[first]
    for _ in range(60):
        mid = (lo + hi) / 2
        up = _g(model, x, y, u, mid) >= 0
        lo, hi = torch.where(up, lo, mid), torch.where(up, mid, hi)
    return single, hi, never


@pytest.mark.parametrize("search", ["secant", "bisection"])
@pytest.mark.parametrize("with_g_zero", [False, True])
def test_boundary_search_brackets_the_crossing_to_its_resolution(with_g_zero, search):
    """On rays with one crossing in [0, eps_hi] (by brute force), the returned length is
    adversarial, within the first bracket's width / 2^10 above the true crossing; rays
    that never cross get eps_hi; both searches.  With g(0) given, the secant search
    evaluates fewer rows in all."""
    from mma.attacks import boundary_search

    model, x, y, u, eps_mid = _mlp_rays()
    eps_hi = torch.full_like(eps_mid, 1.0)
    single, crossing, never = _reference_crossing(model, x, y, u, 1.0)
    # enough rays of each kind to mean something: crossing before and after eps_mid, never
    assert (single & (crossing <= eps_mid)).sum() > 30 and (single & (crossing > eps_mid)).sum() > 30
    assert never.sum() > 10
    calls = []
    inner = model.forward

    def counting(pts):
        calls.append(pts.shape[0])
        return inner(pts)

    model.forward = counting
    g_zero = _g(model, x, y, u, torch.zeros_like(eps_mid)) if with_g_zero else None
    calls.clear()
    hi = boundary_search(model, x, y, u, eps_mid, eps_hi, g_zero=g_zero, search=search)
    rows_used = sum(calls)
    model.forward = inner
    width = torch.where(crossing <= eps_mid, eps_mid, eps_hi - eps_mid)  # the first bracket's width
    err = (hi - crossing)[single]
    assert (err >= 0).all()  # never below the crossing: the adversarial side
    assert (err <= (width / 2**10)[single] * 1.0001).all()
    assert (_g(model, x, y, u, hi)[single] >= 0).all()
    assert (hi[never] == 1.0).all()
    print(
        f"\n[{search} boundary search, g_zero={with_g_zero}] {rows_used / len(y):.2f} forward rows per ray, "
        f"{int(single.sum())} single-crossing rays, "
        f"max error {float((err / width[single]).max()) * 1024:.3f} of a resolution"
    )
    if search == "bisection":
        assert rows_used == 11 * len(y)  # the authors' cost: 1 + 10 passes over every row
    elif with_g_zero:
        # the rows at η = 0 are never evaluated, and the saving is real on this problem
        model.forward = counting
        calls.clear()
        boundary_search(model, x, y, u, eps_mid, eps_hi)
        model.forward = inner
        assert rows_used < sum(calls)


def test_last_restart_makes_no_forward_after_its_last_step(trained_convnet, batch):
    """White-box PGD's last restart does not check its final iterate (that check cannot
    change x_adv; the caller judges it): k steps cost k forwards, earlier restarts k + 1."""
    x, y = batch

    class Counting(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net, self.calls = net, 0

        def forward(self, z):
            self.calls += 1
            return self.net(z)

    model = Counting(copy.deepcopy(trained_convnet))
    pgd(model, x, y, 0.001, steps=5, restarts=1)  # ε too small to fool anything: no early exit
    assert model.calls == 5
    model.calls = 0
    pgd(model, x, y, 0.001, steps=5, restarts=3)
    assert model.calls == 6 + 6 + 5
