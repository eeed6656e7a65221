"""The evaluation sections default to the paper's protocol; unknown keys are refused."""

import pydantic
import pytest

from mma.config.evaluation import EvaluateParams, ReportParams, Table1Params, paper_attacks
from mma.config.model import ModelSpec


def test_defaults_are_the_paper():
    attacks, t1, ev = paper_attacks(), Table1Params(), EvaluateParams()
    assert {n: (s.attack, s.steps, s.restarts) for n, s in attacks.items() if s.attack == "pgd"} == {
        "pgd40x1": ("pgd", 40, 1),
        "pgd40x50": ("pgd", 40, 50),
        "pgd100x1": ("pgd", 100, 1),
        "pgd100x50": ("pgd", 100, 50),
    }
    assert all(s.step_size_factor == 2.5 and s.random_init for s in attacks.values() if s.attack == "pgd")
    assert t1.eps == [0.3, 0.4, 0.5]
    assert t1.sources["MMA"].attacks == ["pgd100x1", "pgd100x50"] and t1.sources["MMA"].model == "mnist-linf-mma-v1"
    assert (
        t1.sources["PGD"].attacks
        == t1.sources["STD"].attacks
        == ["fgsm", "pgd40x1", "pgd40x50", "pgd100x1", "pgd100x50"]
    )
    assert ev.loss == "ce" and ev.test_limit is None and ev.curve_attack == "pgd100x1"
    grids = {t.key: t for t in ev.threat_models}
    assert grids["mnist-linf"].curve_eps == pytest.approx([0.05 * i for i in range(1, 11)])
    assert grids["mnist-l2"].curve_eps == pytest.approx([0.5 * i for i in range(1, 11)])
    assert grids["cifar10-linf"].curve_eps == pytest.approx([2 * i / 255 for i in range(1, 17)])
    assert grids["cifar10-l2"].curve_eps == pytest.approx([0.25 * i for i in range(1, 11)])
    assert [grids[k].headline_eps for k in ("mnist-linf", "mnist-l2", "cifar10-linf", "cifar10-l2")] == pytest.approx(
        [0.3, 2.0, 8 / 255, 0.5]
    )
    assert grids["mnist-l2"].boundary and ev.boundary.limit == 1000
    assert ev.autoattack.enabled and ev.autoattack.version == "standard" and not ev.autoattack.reduced
    assert ev.cascade == "per_attack"
    ReportParams()


def test_table1_rows_are_the_one_reading_of_the_grid():
    t1 = Table1Params()
    rows = t1.rows()
    assert len(rows) == 3 * (2 + 5 + 5)  # ε × (MMA's 2 attacks + PGD's 5 + STD's 5)
    assert [r.attack for r in t1.rows_made_on("mnist-linf-mma-v1")] == ["pgd100x1", "pgd100x50"] * 3
    assert {(r.role, r.source) for r in t1.whitebox_rows("mnist-linf-mma-0p45")} == {("MMA", "mnist-linf-mma-v1")}
    assert t1.whitebox_rows("not-a-column") == []


def test_strict_and_sources_for():
    with pytest.raises(pydantic.ValidationError):
        EvaluateParams(bogus=1)
    with pytest.raises(pydantic.ValidationError, match="not a role"):
        Table1Params(columns={"x": "NOPE"})
    with pytest.raises(pydantic.ValidationError, match="one role"):
        Table1Params(
            sources={"A": {"model": "m", "attacks": ["fgsm"]}, "B": {"model": "m", "attacks": ["fgsm"]}}, columns={}
        )
    blocks = {"std": {}, "pgd": {"pgd": {"eps": 0.3}}}
    models = [
        ModelSpec(name=n, dataset="mnist", arch="lenet5_madry", norm=norm, method=m, **blocks[m])
        for n, m, norm in [
            ("mnist-linf-std", "std", "linf"),
            ("mnist-linf-pgd-0p3", "pgd", "linf"),
            ("mnist-l2-pgd-1", "pgd", "l2"),
        ]
    ]
    t1 = Table1Params()
    assert t1.sources_for("mnist-linf-std", models) == ["mnist-linf-pgd-0p3"]  # v1 MMA not in this grid
    assert t1.sources_for("mnist-linf-pgd-0p3", models) == ["mnist-linf-std"]
    assert t1.sources_for("mnist-l2-pgd-1", models) == []
