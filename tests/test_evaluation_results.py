"""Worst case over attacks, per-restart accuracies, Table 1 assembly — from synthetic
per-example results whose numbers are computed by hand."""

import torch

from mma.evaluation.config import AttackSetting, EvaluateParams, TransferParams, TransferSource
from mma.evaluation.results import NOT_RUN, RecordInfo, Results
from mma.evaluation.table1 import build_table1, table1_csv, table1_markdown


def t(*v):
    return torch.tensor(v, dtype=torch.int16)


def make(y_ok=(1, 1, 1, 1, 0)):
    ok = torch.tensor(y_ok, dtype=torch.bool)
    return Results(torch.zeros(len(y_ok), dtype=torch.long), ok)


def test_restarts_and_worst_case_by_hand():
    r = make()  # 5 examples, the last misclassified without attack
    # PGD ×3: example 0 broken at restart 0, 1 at restart 2, 2 and 3 survive all three
    r.add(RecordInfo("wb/pgd/0.3", "whitebox", 0.3, restarts=3), t(0, 2, 3, 3, NOT_RUN))
    r.add(RecordInfo("tr/src/fgsm/0.3", "transfer", 0.3), t(1, 1, 0, 1, 1))  # breaks example 2
    r.add(RecordInfo("wb/pgd/0.4", "whitebox", 0.4, restarts=1), t(0, 0, 1, 1, 1))
    assert r.accuracy("wb/pgd/0.3", 1) == 60.0  # examples 1, 2, 3
    assert r.accuracy("wb/pgd/0.3", 2) == 60.0
    assert r.accuracy("wb/pgd/0.3") == 40.0  # ×3: examples 2, 3
    # the misclassified example counts as broken by every attack, even one that "missed" it
    assert r.accuracy("tr/src/fgsm/0.3") == 60.0  # 0, 1, 3
    # worst case at 0.3: survive ×3 PGD (2, 3) and the transfer set (0, 1, 3) -> only 3
    assert r.worst_case(0.3).tolist() == [False, False, False, True, False]
    assert r.worst_case_accuracy(0.3) == 20.0
    assert r.worst_case_accuracy(0.4) == 40.0  # ε are never mixed
    assert r.clean_accuracy() == 80.0


def test_not_run_semantics_cascade_and_subset():
    r = make((1, 1, 1, 1))
    r.add(RecordInfo("tr/a/x/0.3", "transfer", 0.3), t(0, 1, 1, 1))
    # cumulative cascade: the next attack skipped example 0 (already broken): NOT_RUN = broken
    r.add(RecordInfo("wb/p/0.3", "whitebox", 0.3), t(NOT_RUN, 1, 0, 1))
    # subset attack (e.g. Boundary on the first 2): NOT_RUN = did not run, changes nothing
    r.add(RecordInfo("boundary/0.3", "boundary", 0.3, subset=True), t(1, 0, NOT_RUN, NOT_RUN))
    assert r.worst_case(0.3).tolist() == [False, False, False, True]
    assert r.accuracy("boundary/0.3") == 50.0  # over the 2 examples it ran on
    assert r.accuracy("wb/p/0.3") == 50.0  # cumulative: robust to this and everything before


def test_roundtrip_weights_only(tmp_path):
    from mma.io import load_tensors, save_tensors

    r = make()
    r.add(RecordInfo("wb/pgd/0.3", "whitebox", 0.3, restarts=3, extra={"curve": True}), t(0, 2, 3, 3, 0))
    r.values["margin"] = torch.rand(5, dtype=torch.float64)
    r.summary["margins"] = {"margin/mean": 0.5}
    save_tensors(tmp_path / "p.pt", r.to_tensors())
    r2 = Results.from_tensors(load_tensors(tmp_path / "p.pt"))
    assert r2.infos == r.infos and torch.equal(r2.survived["wb/pgd/0.3"], r.survived["wb/pgd/0.3"])
    assert r2.summary == r.summary and torch.equal(r2.values["margin"], r.values["margin"])


def test_table1_assembly_by_hand():
    settings = {"fgsm": AttackSetting(attack="fgsm"), "pgd100x1": AttackSetting(steps=7),
                "pgd100x50": AttackSetting(steps=7, restarts=2)}
    tr = TransferParams(settings=settings, sources=[
        TransferSource(role="MMA", model="m", settings=["pgd100x1", "pgd100x50"], eps=[0.3]),
        TransferSource(role="PGD", model="p", settings=["fgsm", "pgd100x50"], eps=[0.3]),
    ])
    ev = EvaluateParams(settings=settings, table1_columns={"m": "MMA", "p": "PGD"})
    m, p = make((1, 1, 1, 1)), make((1, 1, 1, 0))
    # target m: white-box PGD ×2 (its own rows), transfer sets from p
    m.add(RecordInfo("wb/pgd100x1/0.3", "whitebox", 0.3, restarts=1), t(1, 1, 0, 1))
    m.add(RecordInfo("wb/pgd100x50/0.3", "whitebox", 0.3, restarts=2), t(2, 1, 0, 2))
    m.add(RecordInfo("tr/p/fgsm/0.3", "transfer", 0.3), t(1, 1, 1, 1))
    m.add(RecordInfo("tr/p/pgd100x50/0.3", "transfer", 0.3), t(0, 1, 1, 1))
    # target p: white-box FGSM and PGD, transfer from m
    p.add(RecordInfo("wb/fgsm/0.3", "whitebox", 0.3), t(1, 0, 1, 1))
    p.add(RecordInfo("wb/pgd100x50/0.3", "whitebox", 0.3, restarts=2), t(2, 0, 2, 0))
    p.add(RecordInfo("tr/m/pgd100x1/0.3", "transfer", 0.3), t(1, 1, 1, 1))
    p.add(RecordInfo("tr/m/pgd100x50/0.3", "transfer", 0.3), t(1, 1, 0, 1))
    table = build_table1({"m": m, "p": p}, ev, tr)
    got = {(r["attack"], r["source"], r["setting"]): {k: c["ours"] for k, c in r["cells"].items()} for r in table["rows"]}
    assert got[("Natural", "", "")] == {"m": 100.0, "p": 75.0}
    assert got[("PGD", "MMA", "pgd100x1")] == {"m": 75.0, "p": 75.0}  # p's example 3 is misclassified
    assert got[("PGD", "MMA", "pgd100x50")] == {"m": 50.0, "p": 50.0}
    assert got[("FGSM", "PGD", "fgsm")] == {"m": 100.0, "p": 50.0}
    assert got[("PGD", "PGD", "pgd100x50")] == {"m": 75.0, "p": 50.0}
    # worst case, m: wb×1 {0,1,3}, wb×2 {0,3}, tr fgsm all, tr pgd {1,2,3} -> {3};  p: {0,2}∩{0,2}∩all∩{0,1,3}∩correct{0,1,2} -> {0}
    assert got[("Worst case (all attacks)", "all", "")] == {"m": 25.0, "p": 25.0}
    row = next(r for r in table["rows"] if r["source"] == "MMA" and r["setting"] == "pgd100x50")
    assert row["cells"]["m"]["kind"] == "white-box" and row["cells"]["p"]["kind"] == "transfer"
    # the paper's numbers beside ours (Table 1: PGD-100×50 from MMA at 0.3: 93.64 MMA, 96.71 PGD)
    assert row["cells"]["m"]["paper"] == 93.64 and row["cells"]["p"]["paper"] == 96.71
    assert row["label"] == "PGD-7×2" and row["steps"] == 100 and row["restarts"] == 50
    md = table1_markdown(table, notes=["White-box loss: ce"])
    assert "93.64" in md and "PGD-7×2" in md and "Worst case" in md and "White-box loss: ce" in md
    csv = table1_csv(table).splitlines()
    assert csv[0].startswith("attack,eps,steps,restarts,source,our_setting,m,m_kind,paper_m,p,p_kind,paper_p")
    assert len(csv) == 1 + len(table["rows"])


def test_worst_case_over_subset_only_eps():
    r = make((1, 1, 1, 1))
    # at ε 1 only a subset attack ran (the first two images): the worst case is over those two
    r.add(RecordInfo("wb/x-unbounded/1", "check", 1.0, subset=True), t(0, 1, NOT_RUN, NOT_RUN))
    assert r.worst_case_accuracy(1.0) == 50.0
    assert r.accuracy_on("wb/x-unbounded/1", torch.tensor([True, True, False, False])) == 50.0
