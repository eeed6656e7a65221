"""Records: what an evaluated number is.  Its key is built and parsed in one place and
round-trips exactly; selection works by fields; no other module splits keys."""

import re
from pathlib import Path

import pytest

from mma.config.evaluation import AttackSetting
from mma.evaluation.records import Record, attack_fields, attack_record, label, parse_key, record_key

ROOT = Path(__file__).resolve().parents[1]

RECORDS = [
    Record(kind="whitebox", attack="pgd", eps=0.3, steps=100, restarts=50, loss="ce", n=10000, seed=0),
    Record(kind="whitebox", attack="fgsm", eps=0.1, loss="cw", n=64),
    Record(
        kind="transfer",
        attack="pgd",
        eps=8 / 255,
        steps=10,
        restarts=2,
        loss="mixed",
        step_factor=1.25,
        clean_start=True,
        source="cifar10-linf-mma-0p125.v2_b",
        n=500,
        seed=3,
    ),
    Record(kind="whitebox", attack="pgd", eps=2.0, steps=100, loss="ce", l2_pgd="torchattacks", n=1000),
    Record(kind="autoattack", attack="apgd-ce_apgd-t", eps=0.0313725490, steps=5, n=20, seed=0),
    Record(kind="boundary", attack="boundary", eps=2.5, steps=25000, n=1000),
]


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: r.kind + "-" + r.attack)
def test_key_round_trips_and_is_a_valid_mlflow_name(record):
    key = record_key(record)
    assert parse_key(key) == record
    assert record_key(parse_key(key)) == key
    # MLflow metric names: alphanumerics, _ - . space : / only (the stage prefixes "robust/")
    assert re.fullmatch(r"[A-Za-z0-9_\-. :/]+", key), key
    assert len(f"robust/{key}") < 250


def test_key_leaves_out_defaults_and_reads_them_back():
    r = Record(kind="whitebox", attack="pgd", eps=0.3, steps=40, n=100)
    assert record_key(r) == "whitebox/pgd/eps:0.3/steps:40/n:100"
    assert parse_key("whitebox/pgd/eps:0.3/steps:40/n:100").step_factor == 2.5
    with pytest.raises(ValueError, match="unknown field"):
        parse_key("whitebox/pgd/eps:0.3/bogus:1")
    with pytest.raises(ValueError, match="record kind"):
        Record(kind="wb", attack="pgd", eps=0.3)


def test_attack_fields_identify_what_ran():
    # FGSM ignores steps/restarts/random start: two spellings of it are one record
    a = attack_record("whitebox", AttackSetting(attack="fgsm", steps=100), 0.3, loss="ce", n=10, seed=0)
    b = attack_record(
        "whitebox", AttackSetting(attack="fgsm", steps=1, random_init=False), 0.3, loss="ce", n=10, seed=0
    )
    assert a == b and label(a) == "FGSM (ce)"
    # the setting's own loss wins over the default; restarts can be read off a longer run
    s = AttackSetting(steps=20, restarts=5, loss="cw", random_init=False, step_size_factor=1.0)
    r = attack_record("transfer", s, 0.3, loss="ce", n=10, seed=0, source="src", restarts=1)
    assert (r.loss, r.restarts, r.clean_start, r.step_factor) == ("cw", 1, True, 1.0)
    assert label(r) == "PGD-20×1 (cw, step 1·ε/20, no random start) from src"
    assert r.matches(eps=0.3 + 1e-12, **attack_fields(s.model_copy(update={"restarts": 1}), "ce"))
    assert not r.matches(eps=0.31)
    # the L2 form is part of what ran: the default stays out of the key, the other is named
    assert "l2_pgd" not in record_key(r)
    t = attack_record("whitebox", s.model_copy(update={"l2_pgd": "torchattacks"}), 2.0, loss="ce", n=10, seed=0)
    assert record_key(t).endswith("/l2_pgd:torchattacks/n:10") and "L2 as torchattacks" in label(t)
    assert not t.matches(**attack_fields(s, "ce"))


def test_no_module_splits_keys_or_labels_by_hand():
    """Only records.parse_key takes a key apart (data travels as records, not strings)."""
    offenders = []
    for path in (ROOT / "mma").rglob("*.py"):
        if path.name == "records.py":
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\.(r?split|partition)\((['\"])[/×\-]\2", line):
                offenders.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not offenders, offenders
