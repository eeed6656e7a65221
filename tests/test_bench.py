"""`mma bench` plumbing: interleaving, summaries, ratios, the table and the JSON.

No timed assertions: the benchmark reports speed, these tests check that what it
reports is computed correctly (and that a whole tiny run holds together on real MNIST).
"""

from __future__ import annotations

import json
import math

import pytest
from conftest import mnist_source

from mma import bench


def test_interleaved_rotates_the_order_and_discards_warmup():
    calls: list[str] = []
    before: list[tuple[str, int]] = []
    cases = {k: (lambda k=k: calls.append(k)) for k in "abc"}
    times = bench.interleaved(cases, rounds=3, warmup=1, before=lambda name, r: before.append((name, r)))
    assert calls == list("abcbcacababc")  # round r starts at case r mod 3
    assert before[:3] == [("a", 0), ("b", 0), ("c", 0)] and before[-1] == ("c", 3)
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}  # warm-up round dropped
    assert all(t >= 0 for v in times.values() for t in v)


def test_summary_is_median_and_spread():
    assert bench.summary([3.0, 1.0, 2.0, 10.0, 4.0]) == {"median": 3.0, "min": 1.0, "max": 10.0, "n": 5}


def fake_results() -> dict:
    """A result dict as ``run`` builds it, with round numbers."""

    def t(median):
        return {"median": median, "min": median * 0.9, "max": median * 1.2, "n": 5}

    return {
        "quick": True,
        "settings": {"train_steps": [40, 10], "train_batches": [50, 128], "restarts": 50},
        "machine": {"device": "cpu", "cpu": "test cpu", "threads": 2, "torch": "x"},
        "pretrain": {"steps": 200, "test_acc": 0.96},
        "train": {
            "frac_attacked": 0.94,
            "times": {
                "std-b50": t(0.05),
                "pgd40-b50": t(1.0),
                "mma40-b50": t(1.02),
                "pgd40-b128": t(2.0),
                "mma40-b128": t(2.2),
                "pgd10-b50": t(0.3),
                "mma10-b50": t(0.36),
            },
        },
        "attack": {"steps": 100, "batch": 128, "times": {"ours": t(4.0), "torchattacks": t(5.0)}},
        "job": {"steps": 10, "batch": 128, "eps": 0.02, "times": {"ours": t(2.0), "torchattacks": t(1.9)}},
        "restarts": {
            "large": {
                "eps": 0.2,
                "survive_first_restart": 0.1,
                "speedup": 8.0,
                "times": {"naive": t(8.0), "early_exit": t(1.0)},
            },
            "small": {
                "eps": 0.05,
                "survive_first_restart": 0.9,
                "speedup": 0.97,
                "times": {"naive": t(1.0), "early_exit": t(1.03)},
            },
        },
    }


def test_ratios_and_targets():
    res = fake_results()
    r = bench.ratios(res)
    assert r["mma_over_pgd_step"] == pytest.approx(1.02)
    assert r["mma_over_pgd_step_b128"] == pytest.approx(1.1)
    assert r["mma10_over_pgd10_step"] == pytest.approx(1.2)
    assert r["pgd_over_std_step"] == pytest.approx(20.0)
    assert r["pgd_over_torchattacks"] == pytest.approx(1.25)  # theirs takes longer: ours is faster
    assert r["pgd_job_over_torchattacks"] == pytest.approx(0.95)
    assert r["restart_speedup"] == 8.0 and r["restart_speedup_most_survive"] == 0.97
    verdict = {k: bench.met(r[k], target, d) for k, target, d in bench.TARGETS}
    assert verdict == {
        "mma_over_pgd_step": True,
        "mma_over_pgd_step_b128": False,
        "mma10_over_pgd10_step": False,
        "pgd_over_torchattacks": True,
        "pgd_job_over_torchattacks": False,
        "restart_speedup": True,
        "restart_speedup_most_survive": False,
    }


def test_table_shows_every_case_and_ratio():
    res = fake_results()
    res["ratios"] = bench.ratios(res)
    table = bench.format_table(res)
    for case in ("std-b50", "mma40-b128", "torchattacks", "early_exit", "robust-acc job"):
        assert case in table
    for key, _, _ in bench.TARGETS:
        assert key in table
    assert "1.020" in table and "<=1.03" in table and "NO" in table


TINY = bench.Settings(
    rounds=1,
    warmup=0,
    pretrain_acc=0.0,
    pretrain_max_steps=25,
    pretrain_eval=200,
    train_steps=(2, 1),
    train_batches=(50, 64),
    attack_batch=16,
    attack_steps=2,
    restart_examples=16,
    restarts=3,
    restart_steps=2,
    eps_large=0.3,
    eps_small=0.01,
    switch_images=32,
    job_steps=2,
    switch_train_steps=1,
)


@pytest.mark.slow
def test_tiny_run_end_to_end(tmp_path, monkeypatch, capsys):
    """A whole run on real MNIST with tiny settings: the JSON has every ratio's key as
    numbers, the table is printed, early exit kept the robust accuracy (asserted
    inside the run), and nothing but the JSON is written."""
    monkeypatch.setenv("MMA_DATA_SOURCE", str(mnist_source()))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "bench.json"
    res = bench.run(quick=True, device="cpu", json_path=out, data_root=tmp_path / "no-data-here", settings=TINY)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json"]  # MNIST went to a temporary folder
    saved = json.loads(out.read_text())
    for key in (
        "mma_over_pgd_step",
        "pgd_over_torchattacks",
        "pgd_job_over_torchattacks",
        "restart_speedup",
        "mma10_over_pgd10_step",
        "restart_speedup_most_survive",
        "mma_over_pgd_step_b64",
    ):
        assert isinstance(saved[key], float) and math.isfinite(saved[key]) and saved[key] > 0, key
    assert set(saved["targets_met"]) <= {k for k, _, _ in bench.TARGETS}
    assert saved["settings"]["restarts"] == 3
    assert set(saved["train"]["times"]) == {
        "std-b50",
        "pgd2-b50",
        "mma2-b50",
        "pgd2-b64",
        "mma2-b64",
        "pgd1-b50",
        "mma1-b50",
        "mma2-b50-warm",
    }
    for label in ("large", "small"):
        r = saved["restarts"][label]
        assert 0.0 <= r["robust_acc"] <= r["survive_first_restart"] <= 1.0  # more restarts never help the model
    assert 0.0 < saved["train"]["frac_attacked"] <= 1.0
    assert res["table"] in capsys.readouterr().out
