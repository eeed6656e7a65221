"""The report over training seeds and numbers on the same rows, on
hand-made per-example results whose numbers are computed by hand below: Table 1's mean ± sd
strings and CSV cells, Figure 3's min–max band, the "not distinguishable at this budget"
rule, and AutoAttack beside the clean and PGD accuracy of its own rows."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import pytest
import torch
import yaml

from mma.config.params import load_params
from mma.evaluation.records import Record, attack_fields, attack_record
from mma.evaluation.results import NOT_RUN, Results
from mma.report.spread import DISTINGUISHABLE, NOT_DISTINGUISHABLE, SPREAD_UNKNOWN, Spread, verdict

ROOT = Path(__file__).resolve().parents[1]
MMA, PGD, STD = "mnist-linf-mma-0p45", "mnist-linf-pgd-0p3", "mnist-linf-std"
SD_75_100 = math.sqrt(((75 - 87.5) ** 2 + (100 - 87.5) ** 2) / (2 - 1))  # sample sd of {75, 100}: 17.677...


def params_with_seeds(tmp_path: Path, seeds: list[int]):
    doc = yaml.safe_load((ROOT / "presets" / "smoke.yaml").read_text())
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({**doc, "seeds": seeds}, sort_keys=False))
    return load_params(tmp_path / "p.yaml")


def results(clean: list[int], records: dict[Record, list[int]] = {}) -> Results:  # noqa: B006 - read only
    """Per-example results of 4 test images: clean correctness and each record's survived count."""
    res = Results(torch.arange(len(clean)) % 10, torch.tensor(clean, dtype=torch.bool))
    for r, survived in records.items():
        res.add(r, torch.tensor(survived))
    return res


def whitebox(params, setting: str, eps: float, n: int = 4) -> Record:
    return attack_record("whitebox", params.attacks[setting], eps, loss=params.evaluate.loss, n=n, seed=params.seed)


def two_seed_grid(params) -> dict:
    """MMA: clean 75 / 100 %, white-box PGD-5×1 at ε 0.3 50 / 75 %; PGD: clean 50 / 50 %;
    STD: clean 25 / 0 %."""
    wb = whitebox(params, "pgd5x1", 0.3)
    return {
        MMA: {0: results([1, 1, 1, 0], {wb: [1, 0, 1, 0]}), 1: results([1, 1, 1, 1], {wb: [1, 1, 1, 0]})},
        PGD: {0: results([1, 1, 0, 0]), 1: results([1, 1, 0, 0])},
        STD: {0: results([1, 0, 0, 0]), 1: results([0, 0, 0, 0])},
    }


def _md_row(md: str, start: str) -> list[str]:
    line = next(line for line in md.splitlines() if line.startswith(start))
    return [c.strip() for c in line.strip("|").split("|")]


# --------------------------------------------------------------------------- Table 1
def test_table1_shows_mean_and_sample_sd_over_seeds_and_every_seed_in_the_csv(tmp_path):
    from mma.report.table1 import build_table1, table1_csv, table1_markdown

    params = params_with_seeds(tmp_path, [0, 1])
    table = build_table1(two_seed_grid(params), params)
    md = table1_markdown(table, notes=[])
    # | Natural | ε | source | ran | MMA ours | paper | PGD ours | paper | STD ours | paper |
    natural = _md_row(md, "| Natural |")
    assert natural[4] == "87.50 ± 17.68" and natural[6] == "50.00 ± 0.00" and natural[8] == "12.50 ± 17.68"
    pgd5 = next(r for r in table["rows"] if r["setting"] == "pgd5x1" and r["eps"] == 0.3 and r["source"] == "MMA")
    assert pgd5["cells"][MMA]["ours"] == pytest.approx(62.5) and pgd5["cells"][MMA]["sd"] == pytest.approx(SD_75_100)
    worst = next(r for r in table["rows"] if r["attack"].startswith("Worst") and r["eps"] == 0.3)
    assert worst["cells"][MMA]["per_seed"] == {"0": 50.0, "1": 75.0}
    assert "**62.50 ± 17.68**" in _md_row(md, "| Worst case (all attacks) | 0.3 |")[4]
    assert "Mean ± sample standard deviation (ddof = 1) over 2 training seeds (0, 1)" in md

    rows = list(csv.DictReader(io.StringIO(table1_csv(table))))
    nat = rows[0]
    assert (nat[MMA], nat[f"{MMA}_sd"], nat[f"{MMA}_n_seeds"], nat[f"{MMA}_seed0"], nat[f"{MMA}_seed1"]) == (
        "87.5",
        f"{round(SD_75_100, 4)}",
        "2",
        "75.0",
        "100.0",
    )
    assert (nat[STD], nat[f"{STD}_sd"], nat[f"{STD}_seed0"], nat[f"{STD}_seed1"]) == ("12.5", "17.6777", "25.0", "0.0")
    w04 = next(r for r in rows if r["attack"].startswith("Worst") and r["eps"] == "0.4")
    assert (w04[MMA], w04[f"{MMA}_sd"], w04[f"{MMA}_n_seeds"]) == ("", "", "0")  # nothing ran at 0.4: no number


def test_table1_with_one_seed_shows_the_value_alone(tmp_path):
    from mma.report.table1 import build_table1, table1_csv, table1_markdown

    params = params_with_seeds(tmp_path, [0])
    grid = {name: {0: by_seed[0]} for name, by_seed in two_seed_grid(params).items()}
    table = build_table1(grid, params)
    md = table1_markdown(table, notes=[])
    assert _md_row(md, "| Natural |")[4] == "75.00" and "±" not in md.split("| Natural |", 1)[1].splitlines()[0]
    assert "One training seed (0)" in md
    nat = next(csv.DictReader(io.StringIO(table1_csv(table))))
    assert (nat[MMA], nat[f"{MMA}_sd"], nat[f"{MMA}_n_seeds"], nat[f"{MMA}_seed0"]) == ("75.0", "", "1", "75.0")
    assert f"{MMA}_seed1" not in nat


# --------------------------------------------------------------------------- the rule
@pytest.mark.parametrize(
    "a, b, expected",
    [
        ({0: 50.0, 1: 75.0}, {0: 50.0, 1: 50.0}, NOT_DISTINGUISHABLE),  # |62.5 − 50| = 12.5 ≤ 17.68 + 0
        ({0: 100.0, 1: 100.0}, {0: 0.0, 1: 25.0}, DISTINGUISHABLE),  # |100 − 12.5| = 87.5 > 0 + 17.68
        ({0: 10.0, 1: 20.0}, {0: 20.0, 1: 30.0}, NOT_DISTINGUISHABLE),  # |15 − 25| = 10 ≤ 7.07 + 7.07
        ({0: 10.0, 1: 12.0}, {0: 20.0, 1: 22.0}, DISTINGUISHABLE),  # |11 − 21| = 10 > 1.41 + 1.41
        ({0: 50.0}, {0: 90.0}, SPREAD_UNKNOWN),  # one seed: nothing claimed, however large the gap
        ({0: 50.0, 1: 60.0}, {0: 90.0, 1: float("nan")}, SPREAD_UNKNOWN),  # one seed measured on a side
    ],
)
def test_not_distinguishable_rule(a, b, expected):
    assert verdict(Spread(a), Spread(b)) == expected
    assert verdict(Spread(b), Spread(a)) == expected  # symmetric


def test_spread_is_the_sample_sd_and_unknown_with_one_seed():
    s = Spread({0: 75.0, 1: 100.0, 2: float("nan")})
    assert (s.n, s.mean, s.low, s.high) == (2, 87.5, 75.0, 100.0) and s.sd == pytest.approx(SD_75_100)
    assert Spread({3: 42.0}).sd is None and Spread({}).n == 0 and math.isnan(Spread({}).mean)


def test_summary_says_which_differences_are_within_the_seed_spread(tmp_path):
    """Worst case at ε 0.3 (the only record): MMA 50 / 75 %; PGD model 50 / 50 % → within the
    spread; STD 0 / 0 % against MMA → distinguishable; one seed → spread unknown."""
    from mma.report.summary import comparisons, summary_markdown

    params = params_with_seeds(tmp_path, [0, 1])
    specs = dict(params.models)
    wb = whitebox(params, "pgd5x1", 0.3)
    grid = {
        MMA: {0: results([1, 1, 1, 0], {wb: [1, 0, 1, 0]}), 1: results([1, 1, 1, 1], {wb: [1, 1, 1, 0]})},
        PGD: {0: results([1, 1, 1, 1], {wb: [1, 1, 0, 0]}), 1: results([1, 1, 1, 1], {wb: [0, 0, 1, 1]})},
        STD: {0: results([1, 1, 1, 1], {wb: [0, 0, 0, 0]}), 1: results([1, 1, 1, 1], {wb: [0, 0, 0, 0]})},
    }
    found = {(c["a"], c["b"]): c for c in comparisons(grid, specs)}
    assert set(found) == {(MMA, PGD), (MMA, STD), (PGD, STD)}
    assert found[(MMA, PGD)]["verdict"] == NOT_DISTINGUISHABLE and found[(MMA, PGD)]["n"] == [4]
    assert found[(MMA, STD)]["verdict"] == DISTINGUISHABLE and found[(PGD, STD)]["verdict"] == DISTINGUISHABLE
    md = summary_markdown(
        {
            "seeds": [0, 1],
            "loss": "ce",
            "cascade": False,
            "data": {},
            "autoattack": [],
            "comparisons": list(found.values()),
            "comparison_rule": "r",
            "margins": {},
            "checks": [],
            "paper_checks": [],
        }
    )
    assert f"| 0.3 | {MMA} | {PGD} | 62.50 ± 17.68 | 50.00 ± 0.00 | 4 | not distinguishable at this budget |" in md
    one = {name: {0: by_seed[0]} for name, by_seed in grid.items()}
    assert {c["verdict"] for c in comparisons(one, specs)} == {SPREAD_UNKNOWN}


def test_numbers_on_other_rows_are_not_compared(tmp_path):
    params = params_with_seeds(tmp_path, [0, 1])
    from mma.report.summary import comparisons

    specs = dict(params.models)
    grid = {
        MMA: {s: results([1, 1, 1, 1], {whitebox(params, "pgd5x1", 0.3): [1, 1, 1, 1]}) for s in (0, 1)},
        PGD: {s: results([1, 1, 1, 1, 1], {whitebox(params, "pgd5x1", 0.3, n=5): [1, 1, 1, 1, 1]}) for s in (0, 1)},
    }
    (c,) = comparisons(grid, specs)
    assert c["verdict"] == "not compared: other rows (n [4, 5])"


# --------------------------------------------------------------------------- same rows
def test_autoattack_is_shown_beside_clean_and_pgd_of_its_own_rows(tmp_path):
    """4 images, AutoAttack on the first 2.  clean [1,1,0,1]: 75 % of 4, 100 % of the first 2;
    PGD (the curve attack at the headline ε) survived [1,1,0,0]: 50 % of 4, 100 % of the first 2;
    AutoAttack survived [1,0,-,-]: 50 % of 2."""
    from mma.report.summary import autoattack_rows, summary_markdown

    params = params_with_seeds(tmp_path, [0])
    specs = dict(params.models)
    tm = params.evaluate.threat_model("mnist", "linf")
    pgd = attack_record(
        "whitebox", params.curve_attack(), tm.headline_eps, loss=params.evaluate.loss, n=4, seed=params.seed
    )
    aa = Record(kind="autoattack", attack="apgd-ce_apgd-t", eps=tm.headline_eps, n=2)
    grid = {MMA: {0: results([1, 1, 0, 1], {pgd: [1, 1, 0, 0], aa: [1, 0, NOT_RUN, NOT_RUN]})}}
    (row,) = autoattack_rows(grid, specs, params)
    assert (row["clean"]["mean"], row["clean_n"], row["pgd"]["mean"], row["pgd_n"]) == (75.0, 4, 50.0, 4)
    assert (row["autoattack"]["mean"], row["autoattack_n"]) == (50.0, 2)
    assert (row["same_rows_clean"]["mean"], row["same_rows_pgd"]["mean"]) == (100.0, 100.0)
    assert (row["worst_case"]["mean"], row["worst_case_n"]) == (25.0, 4)  # image 0 only survives both, of 4
    md = summary_markdown(
        {
            "seeds": [0],
            "loss": "ce",
            "cascade": False,
            "data": {},
            "autoattack": [row],
            "comparisons": [],
            "comparison_rule": "r",
            "margins": {},
            "checks": [],
            "paper_checks": [],
        }
    )
    line = next(line for line in md.splitlines() if line.startswith(f"| {MMA} |"))
    assert "| 75.00 (n=4) |" in line and "| 50.00 (n=4; PGD-5×1" in line
    assert "| 50.00 (n=2; same rows: clean 100.00, PGD 100.00) (reduced" in line and "| 25.00 (n=4) |" in line


# --------------------------------------------------------------------------- Figure 3
def test_figure3_draws_the_mean_with_a_min_max_band(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mma.report.figures import _draw, figure3, seed_curves

    params = params_with_seeds(tmp_path, [0, 1])
    fields = {"kind": "whitebox", **attack_fields(params.attacks["pgd5x1"], params.evaluate.loss)}
    recs = {e: whitebox(params, "pgd5x1", e) for e in (0.1, 0.3)}
    by_seed = {
        0: results([1, 1, 1, 1], {recs[0.1]: [1, 1, 1, 1], recs[0.3]: [1, 0, 0, 0]}),
        1: results([1, 1, 1, 1], {recs[0.1]: [1, 1, 1, 0], recs[0.3]: [1, 1, 1, 0]}),
    }
    pts = seed_curves(by_seed, [0.1, 0.2, 0.3], **fields)
    assert pts == [(0.1, 87.5, 75.0, 100.0), (0.3, 50.0, 25.0, 75.0)]  # (ε, mean, min, max); 0.2 not evaluated
    fig, ax = plt.subplots()
    _draw(ax, pts, 1.0, "m", 2)
    (band,) = ax.collections
    ys = band.get_paths()[0].vertices[:, 1]
    assert (ys.min(), ys.max()) == (25.0, 100.0)
    assert ax.get_lines()[0].get_label() == "m; mean of 2 seeds, band: min–max"
    plt.close(fig)
    fig, ax = plt.subplots()
    _draw(ax, pts[:1], 1.0, "m", 1)  # one seed: the line only
    assert not ax.collections and ax.get_lines()[0].get_label() == "m"
    plt.close(fig)
    grid = {MMA: by_seed}
    panels = figure3(grid, dict(params.models), params, tmp_path / "figure3.png", dpi=40)
    assert panels["(a) MNIST, Linf"] == [MMA]
    assert (tmp_path / "figure3.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
