"""Worst case over attacks, per-restart accuracies, Table 1 assembly — from synthetic
per-example results whose numbers are computed by hand."""

import torch

from mma.config.evaluation import AttackSetting, Table1Params, Table1Source
from mma.config.model import ModelSpec
from mma.config.params import Params
from mma.evaluation.records import Record, attack_record
from mma.evaluation.results import NOT_RUN, Results
from mma.report.table1 import build_table1, table1_csv, table1_markdown


def t(*v):
    return torch.tensor(v, dtype=torch.int16)


def rec(kind, eps, restarts=1, n=None, **fields):
    return Record(kind=kind, attack=fields.pop("attack", "pgd"), eps=eps, restarts=restarts, n=n or N[0], **fields)


N = [5]


def make(y_ok=(1, 1, 1, 1, 0)):
    ok = torch.tensor(y_ok, dtype=torch.bool)
    N[0] = len(y_ok)
    return Results(torch.zeros(len(y_ok), dtype=torch.long), ok)


def test_restarts_and_worst_case_by_hand():
    r = make()  # 5 examples, the last misclassified without attack
    # PGD ×3: example 0 broken at restart 0, 1 at restart 2, 2 and 3 survive all three
    pgd3 = rec("whitebox", 0.3, restarts=3)
    r.add(pgd3, t(0, 2, 3, 3, NOT_RUN))
    fgsm = rec("transfer", 0.3, attack="fgsm", source="src")
    r.add(fgsm, t(1, 1, 0, 1, 1))  # breaks example 2
    r.add(rec("whitebox", 0.4), t(0, 0, 1, 1, 1))
    assert r.accuracy(pgd3) == 40.0  # ×3: examples 2, 3
    assert r.accuracy_on(pgd3, torch.ones(5, dtype=torch.bool)) == 40.0
    # the misclassified example counts as broken by every attack, even one that "missed" it
    assert r.accuracy(fgsm) == 60.0  # 0, 1, 3
    # worst case at 0.3: survive ×3 PGD (2, 3) and the transfer set (0, 1, 3) -> only 3
    assert r.worst_case(0.3).tolist() == [False, False, False, True, False]
    assert r.worst_case_accuracy(0.3) == 20.0
    assert r.worst_case_accuracy(0.4) == 40.0  # ε are never mixed
    assert r.clean_accuracy() == 80.0


def test_not_run_semantics_cascade_and_subset():
    r = make((1, 1, 1, 1))
    r.add(rec("transfer", 0.3, source="a"), t(0, 1, 1, 1))
    # cumulative cascade: the next attack skipped example 0 (already broken): NOT_RUN = broken
    p = rec("whitebox", 0.3)
    r.add(p, t(NOT_RUN, 1, 0, 1))
    # subset attack (e.g. Boundary on the first 2): NOT_RUN = did not run, changes nothing
    b = rec("boundary", 0.3, attack="boundary", n=2)
    r.add(b, t(1, 0, NOT_RUN, NOT_RUN))
    assert r.worst_case(0.3).tolist() == [False, False, False, True]
    assert r.accuracy(b) == 50.0  # over the 2 examples it ran on
    assert r.accuracy(p) == 50.0  # cumulative: robust to this and everything before


def test_roundtrip_weights_only(tmp_path):
    from mma.io import load_tensors, save_tensors

    r = make()
    pgd3 = rec("whitebox", 0.3, restarts=3, loss="ce", seed=7)
    r.add(pgd3, t(0, 2, 3, 3, 0))
    r.values["margin"] = torch.rand(5, dtype=torch.float64)
    r.summary["margins"] = {"margin/mean": 0.5}
    save_tensors(tmp_path / "p.pt", r.to_tensors())
    r2 = Results.from_tensors(load_tensors(tmp_path / "p.pt"))
    assert r2.records == r.records and torch.equal(r2.survived[pgd3], r.survived[pgd3])
    assert r2.summary == r.summary and torch.equal(r2.values["margin"], r.values["margin"])


def test_table1_assembly_by_hand():
    attacks = {
        "fgsm": AttackSetting(attack="fgsm"),
        "pgd100x1": AttackSetting(steps=7),
        "pgd100x50": AttackSetting(steps=7, restarts=2),
    }
    table1 = Table1Params(
        eps=[0.3],
        sources={
            "MMA": Table1Source(model="m", attacks=["pgd100x1", "pgd100x50"]),
            "PGD": Table1Source(model="p", attacks=["fgsm", "pgd100x50"]),
        },
        columns={"m": "MMA", "p": "PGD"},
    )
    models = [ModelSpec(name=n, dataset="mnist", arch="lenet5_madry", norm="linf", method="std") for n in "mp"]
    params = Params(models=models, attacks=attacks, table1=table1)
    m, p = make((1, 1, 1, 1)), make((1, 1, 1, 0))

    def add(res, kind, name, survived, source=""):
        res.add(attack_record(kind, attacks[name], 0.3, loss="ce", n=4, seed=0, source=source), survived)

    # target m: white-box PGD ×1 and ×2 (its own rows), transfer sets from p (survived = R or 0)
    add(m, "whitebox", "pgd100x1", t(1, 1, 0, 1))
    add(m, "whitebox", "pgd100x50", t(2, 1, 0, 2))
    add(m, "transfer", "fgsm", t(1, 1, 1, 1), "p")
    add(m, "transfer", "pgd100x50", t(0, 2, 2, 2), "p")
    # target p: white-box FGSM and PGD, transfer from m
    add(p, "whitebox", "fgsm", t(1, 0, 1, 1))
    add(p, "whitebox", "pgd100x50", t(2, 0, 2, 0))
    add(p, "transfer", "pgd100x1", t(1, 1, 1, 1), "m")
    add(p, "transfer", "pgd100x50", t(2, 2, 0, 2), "m")
    table = build_table1({"m": {0: m}, "p": {0: p}}, params)  # one seed each
    got = {
        (r["attack"], r["source"], r["setting"]): {k: c["ours"] for k, c in r["cells"].items()} for r in table["rows"]
    }
    assert got[("Natural", "", "")] == {"m": 100.0, "p": 75.0}
    assert got[("PGD", "MMA", "pgd100x1")] == {"m": 75.0, "p": 75.0}  # p's example 3 is misclassified
    assert got[("PGD", "MMA", "pgd100x50")] == {"m": 50.0, "p": 50.0}
    assert got[("FGSM", "PGD", "fgsm")] == {"m": 100.0, "p": 50.0}
    assert got[("PGD", "PGD", "pgd100x50")] == {"m": 75.0, "p": 50.0}
    # worst case, m: wb×1 {0,1,3}, wb×2 {0,3}, tr fgsm all, tr pgd {1,2,3} -> {3};
    #             p: {0,2}∩{0,2}∩all∩{0,1,3}∩correct{0,1,2} -> {0}
    assert got[("Worst case (all attacks)", "all", "")] == {"m": 25.0, "p": 25.0}
    row = next(r for r in table["rows"] if r["source"] == "MMA" and r["setting"] == "pgd100x50")
    assert row["cells"]["m"]["kind"] == "white-box" and row["cells"]["p"]["kind"] == "transfer"
    # the paper's numbers beside ours (Table 1: PGD-100×50 from MMA at 0.3: 93.64 MMA, 96.71 PGD)
    assert row["cells"]["m"]["paper"] == 93.64 and row["cells"]["p"]["paper"] == 96.71
    assert row["label"] == "PGD-7×2" and row["steps"] == 100 and row["restarts"] == 50
    md = table1_markdown(table, notes=["White-box loss: ce"])
    assert "93.64" in md and "PGD-7×2" in md and "Worst case" in md and "White-box loss: ce" in md
    csv = table1_csv(table).splitlines()
    assert csv[0] == (
        "attack,eps,steps,restarts,source,our_setting,m,m_sd,m_n_seeds,m_seed0,m_kind,paper_m,"
        "p,p_sd,p_n_seeds,p_seed0,p_kind,paper_p"
    )
    assert len(csv) == 1 + len(table["rows"])


def test_worst_case_over_subset_only_eps():
    r = make((1, 1, 1, 1))
    # at ε 1 only a subset attack ran (the first two images): the worst case is over those two
    unbounded = rec("whitebox", 1.0, n=2)
    r.add(unbounded, t(0, 1, NOT_RUN, NOT_RUN))
    assert r.worst_case_accuracy(1.0) == 50.0
    assert r.accuracy_on(unbounded, torch.tensor([True, True, False, False])) == 50.0
