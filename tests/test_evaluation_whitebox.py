"""The white-box cascade equals the naive loop; cumulative and per-attack cascades give
the same worst case; FGSM is one record; within one run restarts nest, while ×1 and ×R
are separate runs with independent starts."""

import pytest
import torch
from torch import nn

from mma.attacks import pgd
from mma.config.evaluation import AttackSetting, ChecksParams, EvaluateParams, Table1Params, Table1Source, ThreatModel
from mma.config.model import ModelSpec
from mma.config.params import Params
from mma.evaluation.protocol import evaluate_model, whitebox_attacks
from mma.evaluation.records import attack_fields
from mma.evaluation.whitebox import predict, restart_loss, seed_for, survival


def toy(seed=0, n=90, dtype=torch.float64):
    """A small MLP on 1x6x6 inputs and labels it mostly gets right (some wrong on purpose)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 24), nn.ReLU(), nn.Linear(24, 10)).to(dtype).eval()
    x = torch.rand(n, 1, 6, 6, dtype=dtype)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[::9] = (y[::9] + 1) % 10  # misclassified without attack
    return model, x, y


def naive_survival(model, x, y, eps, s: AttackSetting, *, norm, loss, seed, batch_size):
    """Every restart on every example of the batch, no skipping, no tricks."""
    n, R = len(x), s.restarts
    out = torch.full((n,), R, dtype=torch.int16)
    broken = torch.zeros(n, dtype=torch.bool)
    for b, i in enumerate(range(0, n, batch_size)):
        xb, yb = x[i : i + batch_size], y[i : i + batch_size]
        for r in range(R):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed_for(seed, b, r))
                x_adv = pgd(
                    model,
                    xb,
                    yb,
                    eps,
                    norm=norm,
                    steps=s.steps,
                    step_size=s.step_size_factor * eps / s.steps,
                    restarts=1,
                    random_init=True,
                    loss=restart_loss(loss, r),
                    select="target",
                )
            fooled = model(x_adv).argmax(1) != yb
            first = fooled & ~broken[i : i + batch_size]
            out[i : i + batch_size][first] = r
            broken[i : i + batch_size] |= fooled
    return out


@pytest.mark.parametrize("norm,eps", [("linf", 0.06), ("l2", 0.4)])
@pytest.mark.parametrize("loss", ["ce", "mixed"])
def test_cascade_equals_naive_loop(norm, eps, loss):
    model, x, y = toy()
    pred = predict(model, x, 32)
    active = pred == y
    s = AttackSetting(steps=6, restarts=4)
    fast = survival(
        model,
        x,
        y,
        eps,
        s,
        norm=norm,
        loss=loss,
        seed=3,
        active=active,
        clean_pred=pred,
        batch_size=32,
        show_progress=False,
    )
    slow = naive_survival(model, x, y, eps, s, norm=norm, loss=loss, seed=3, batch_size=32)
    assert torch.equal(fast[active], slow[active])
    assert (fast[~active] == -1).all()
    assert 0 < int((fast[active] == 0).sum()) < int(active.sum())  # a non-trivial attack
    assert int((fast[active] == s.restarts).sum()) > 0


def test_restarts_nest_and_subset_independent():
    """×1 is the first restart of ×R, and an example's outcome does not depend on which
    other examples are attacked (starts are drawn for the whole batch)."""
    model, x, y = toy(1)
    pred = predict(model, x, 45)
    active = pred == y
    kw = dict(norm="linf", loss="ce", seed=5, clean_pred=pred, batch_size=45, show_progress=False)
    many = survival(model, x, y, 0.05, AttackSetting(steps=5, restarts=3), active=active, **kw)
    one = survival(model, x, y, 0.05, AttackSetting(steps=5, restarts=1), active=active, **kw)
    assert torch.equal((many[active] >= 1), (one[active] >= 1))
    half = active.clone()
    half[::2] = False
    part = survival(model, x, y, 0.05, AttackSetting(steps=5, restarts=3), active=half, **kw)
    assert torch.equal(part[half], many[half])


def tiny_params(cascade):
    """Model "t" as Table 1's PGD column: every attack white-box at ε 0.05 and 0.1."""
    attacks = {
        "fgsm": AttackSetting(attack="fgsm"),
        "pgd40x1": AttackSetting(steps=3),
        "pgd40x50": AttackSetting(steps=3, restarts=3),
        "pgd100x1": AttackSetting(steps=5),
        "pgd100x50": AttackSetting(steps=5, restarts=3),
    }
    tm = ThreatModel(
        dataset="mnist",
        norm="linf",
        curve_eps=[0.025, 0.05, 0.1],
        headline_eps=0.05,
        margin_eps_max=0.5,
        unbounded_eps=1.0,
    )
    ev = EvaluateParams(
        threat_models=[tm],
        cascade=cascade,
        checks=ChecksParams(unbounded_steps=5, more_steps=8, more_restarts=4),
        batch_size=32,
        autoattack={"enabled": False},
        margins={"enabled": False},
    )
    table1 = Table1Params(
        eps=[0.05, 0.1], sources={"PGD": Table1Source(model="t", attacks=list(attacks))}, columns={"t": "PGD"}
    )
    model = ModelSpec(name="t", dataset="mnist", arch="lenet5_madry", norm="linf", method="std")
    return tm, Params(models=[model], attacks=attacks, table1=table1, evaluate=ev)


def run(model, x, y, tm, params):
    return evaluate_model(
        model,
        x,
        y,
        name="t",
        tm=tm,
        ev=params.evaluate,
        whitebox=whitebox_attacks("t", tm, params),
        curve=params.curve_attack(),
        seed=0,
        show_progress=False,
    )


def wb(res, name, eps, params, **override):
    """The white-box record of attack ``name`` at ``eps`` (fields overridden by ``override``)."""
    return res.find(kind="whitebox", eps=eps, **{**attack_fields(params.attacks[name], "ce"), **override})


def test_cumulative_cascade_same_worst_case():
    model, x, y = toy(2)
    out = {}
    for cascade in ("per_attack", "cumulative"):
        tm, params = tiny_params(cascade)
        out[cascade] = run(model, x, y, tm, params)
    a, b = out["per_attack"], out["cumulative"]
    assert set(a.records) == set(b.records)
    for e in (0.025, 0.05, 0.1):
        assert torch.equal(a.worst_case(e), b.worst_case(e)), e
    # per-attack: every record ran on every correct example; cumulative skipped some
    assert all(int((s == -1).sum()) == int((~a.clean_correct).sum()) for s in a.survived.values())
    assert sum(int((s == -1).sum()) for s in b.survived.values()) > sum(
        int((s == -1).sum()) for s in a.survived.values()
    )
    # the first attack of an ε sees the same examples either way
    first = wb(a, "fgsm", 0.05, params)
    assert torch.equal(a.survived[first], b.survived[first])
    # ×1 and ×3 are separate runs, each with every restart it names
    x1, x3 = wb(a, "pgd100x1", 0.05, params), wb(a, "pgd100x50", 0.05, params)
    assert x1 != x3 and int(a.survived[x1].max()) == 1 and int(a.survived[x3].max()) == 3


def test_restart_counts_draw_independent_starts():
    """×1 is not the first restart of ×R: their seeds differ (so ×R can be beaten by ×1),
    and everything else about the seed stays as before (same setting, same seed)."""
    from mma.evaluation.whitebox import whitebox_seed

    one, many = AttackSetting(steps=5), AttackSetting(steps=5, restarts=3)
    assert whitebox_seed(0, "t", one, "ce", 0.05) != whitebox_seed(0, "t", many, "ce", 0.05)
    assert whitebox_seed(0, "t", one, "ce", 0.05) == whitebox_seed(0, "t", AttackSetting(steps=5), "ce", 0.05)


def test_check_attacks_honour_their_limit():
    model, x, y = toy(3)
    tm, params = tiny_params("per_attack")
    ev = params.evaluate.model_copy(
        update={"checks": ChecksParams(limit=30, unbounded_steps=3, more_steps=8, more_restarts=4)}
    )
    params = params.model_copy(update={"evaluate": ev})
    res = run(model, x, y, tm, params)
    more_steps = wb(res, "pgd100x1", 0.05, params, steps=8)
    s = res.survived[more_steps]
    assert more_steps.n == 30 and res.is_subset(more_steps) and (s[30:] == -1).all() and (s[:30] != -1).all()
    by_hand = 100.0 * int(((s[:30] >= 1) & res.clean_correct[:30]).sum()) / 30
    assert res.accuracy(more_steps) == by_hand
    # the more-restarts check is its own run (independent of Table 1's), on its limit too
    assert wb(res, "pgd100x1", 0.05, params, restarts=4).n == 30
