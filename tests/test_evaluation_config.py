"""The evaluation sections default to the paper's protocol; unknown keys are refused."""

import pydantic
import pytest

from mma.evaluation.config import EvaluateParams, ReportParams, TransferParams


def test_defaults_are_the_paper():
    tr, ev = TransferParams(), EvaluateParams()
    assert {n: (s.attack, s.steps, s.restarts) for n, s in tr.settings.items() if s.attack == "pgd"} == {
        "pgd40x1": ("pgd", 40, 1), "pgd40x50": ("pgd", 40, 50), "pgd100x1": ("pgd", 100, 1),
        "pgd100x50": ("pgd", 100, 50)}
    assert all(s.step_size_factor == 2.5 and s.random_init for s in tr.settings.values() if s.attack == "pgd")
    src = {s.role: s for s in tr.sources}
    assert src["MMA"].settings == ["pgd100x1", "pgd100x50"] and src["MMA"].eps == [0.3, 0.4, 0.5]
    assert src["PGD"].settings == src["STD"].settings == ["fgsm", "pgd40x1", "pgd40x50", "pgd100x1", "pgd100x50"]
    assert tr.loss == ev.loss == "ce" and tr.test_limit is None and ev.test_limit is None
    grids = {t.key: t for t in ev.threat_models}
    assert grids["mnist-linf"].curve_eps == pytest.approx([0.05 * i for i in range(1, 11)])
    assert grids["mnist-l2"].curve_eps == pytest.approx([0.5 * i for i in range(1, 11)])
    assert grids["cifar10-linf"].curve_eps == pytest.approx([2 * i / 255 for i in range(1, 17)])
    assert grids["cifar10-l2"].curve_eps == pytest.approx([0.25 * i for i in range(1, 11)])
    assert [grids[k].headline_eps for k in ("mnist-linf", "mnist-l2", "cifar10-linf", "cifar10-l2")] == \
        pytest.approx([0.3, 2.0, 8 / 255, 0.5])
    assert grids["mnist-l2"].boundary and ev.boundary.limit == 1000
    assert ev.autoattack.enabled and ev.autoattack.version == "standard" and not ev.autoattack.reduced
    assert ev.cascade == "per_attack"
    ReportParams()


def test_strict_and_sources_for():
    from mma.train.config import ModelSpec

    with pytest.raises(pydantic.ValidationError):
        EvaluateParams(bogus=1)
    with pytest.raises(pydantic.ValidationError):
        TransferParams(sources=[{"role": "MMA", "model": "x", "settings": ["nope"]}])
    blocks = {"std": {}, "pgd": {"pgd": {"eps": 0.3}}}
    models = [ModelSpec(name=n, dataset="mnist", arch="lenet5_madry", norm=norm, method=m, **blocks[m])
              for n, m, norm in [("mnist-linf-std", "std", "linf"), ("mnist-linf-pgd-0.3", "pgd", "linf"),
                                 ("mnist-l2-pgd-1", "pgd", "l2")]]
    ev, tr = EvaluateParams(), TransferParams()
    assert ev.sources_for("mnist-linf-std", models, tr) == ["mnist-linf-pgd-0.3"]  # v1 MMA not in this grid
    assert ev.sources_for("mnist-linf-pgd-0.3", models, tr) == ["mnist-linf-std"]
    assert ev.sources_for("mnist-l2-pgd-1", models, tr) == []
    assert tr.sources_in(models) == ["mnist-linf-pgd-0.3", "mnist-linf-std"]
