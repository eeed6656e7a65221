"""Table 1 (MNIST Linf) assembled from per-example results, beside the paper's numbers.

Rows are the paper's grid as configured (``table1.rows()``): natural accuracy, then per ε
every (source role, attack), then the row the paper lacks — the worst case over all
attacks of that ε per example.  Columns are ``table1.columns`` (target model → role): a
row whose role is the column's role is a white-box attack on the column's model
(restarts: robust only if every restart fails); any other row is the source's transfer
set (restarts chosen on the source).  Each cell is found by the record's fields, in each
seed's results; it shows the mean ± sd over seeds (``mma.report.spread``), the CSV also
every seed's value.
"""

from __future__ import annotations

import csv
import io

from ..config.evaluation import paper_attacks
from ..evaluation.records import attack_fields, record_key
from ..evaluation.results import Results
from .format import fmt, fmt_spread, seeds_note
from .reference import TABLE1_SOURCE, paper_table1
from .spread import Spread, over_seeds

PAPER_ROLES = ("MMA", "PGD")  # the paper's two target columns


def _cell(spread: Spread, **rest) -> dict:
    """A cell: our number over seeds (``ours`` = the mean, ``sd``: None with one seed) and the rest."""
    return {
        "ours": spread.mean if spread.n else None,
        "sd": spread.sd,
        "n_seeds": spread.n,
        "per_seed": {str(s): (None if v != v else v) for s, v in spread.values.items()},
        **rest,
    }


def build_table1(results: dict[str, dict[int, Results]], params) -> dict:
    """{"seeds": [...], "columns": [{model, role}], "rows": [{attack, eps, steps, restarts, source, setting,
    label, cells: {model: {ours, sd, n_seeds, per_seed, paper, kind, key}}}]}; ``results``: model → seed →
    results; ours is the mean over seeds, sd the sample sd (None with one seed); kind is white-box,
    transfer, natural or worst-case; key is the record's (``records.record_key``)."""
    paper_settings = paper_attacks()
    t1 = params.table1
    columns = [{"model": m, "role": r} for m, r in t1.columns.items() if m in results]
    rows = [_natural_row(results, columns)]
    by_eps: dict[float, list] = {}
    for row in t1.rows():
        by_eps.setdefault(row.eps, []).append(row)
    for eps, eps_rows in by_eps.items():
        rows += [_attack_row(results, columns, row, eps, params, paper_settings) for row in eps_rows]
        rows.append(_worst_case_row(results, columns, eps))
    return {"seeds": list(params.seeds), "columns": columns, "rows": rows}


def _paper(attack, eps, steps, restarts, source, role):
    """The paper's number for this cell; None for a column whose role the paper lacks."""
    return paper_table1(attack, eps, steps, restarts, source, role) if role in PAPER_ROLES else None


def _natural_row(results: dict[str, dict[int, Results]], columns: list[dict]) -> dict:
    """Clean accuracy of every column's model."""
    cells = {
        c["model"]: _cell(
            over_seeds(results[c["model"]], Results.clean_accuracy),
            kind="natural",
            key="clean",
            paper=_paper("Natural", None, None, None, "", c["role"]),
        )
        for c in columns
    }
    return {
        "attack": "Natural",
        "eps": None,
        "steps": None,
        "restarts": None,
        "source": "",
        "setting": "",
        "label": "Natural",
        "cells": cells,
    }


def _attack_row(results: dict[str, dict[int, Results]], columns: list[dict], row, eps: float, params, paper_settings):
    """One (source role, attack) row at ``eps``: white-box in the column of the row's role, the
    source's transfer set in the others (none in the source model's own column)."""
    ours_setting = params.attacks[row.attack]
    ps = paper_settings.get(ours_setting.as_paper or row.attack)
    attack = "FGSM" if ours_setting.attack == "fgsm" else "PGD"
    steps = ps.steps if ps and ps.attack == "pgd" else None
    restarts = ps.restarts if ps and ps.attack == "pgd" else None
    fields = attack_fields(ours_setting, params.evaluate.loss)
    cells = {}
    for c in columns:
        if c["role"] == row.role:
            wanted, kind = {"kind": "whitebox"}, "white-box"
        elif row.source == c["model"]:
            continue
        else:
            wanted, kind = {"kind": "transfer", "source": row.source}, "transfer"
        by_seed = results[c["model"]]
        found = {seed: res.find(eps=eps, **fields, **wanted) for seed, res in by_seed.items()}
        spread = Spread(
            {seed: float("nan") if found[seed] is None else res.accuracy(found[seed]) for seed, res in by_seed.items()}
        )
        record = next((r for r in found.values() if r is not None), None)
        cells[c["model"]] = _cell(
            spread,
            kind=kind,
            key=None if record is None else record_key(record),
            paper=_paper(attack, eps, steps, restarts, row.role, c["role"]) if ps else None,
        )
    return {
        "attack": attack,
        "eps": eps,
        "steps": steps,
        "restarts": restarts,
        "source": row.role,
        "setting": row.attack,
        "label": ours_setting.label(),
        "cells": cells,
    }


def _worst_case_row(results: dict[str, dict[int, Results]], columns: list[dict], eps: float) -> dict:
    """The row the paper lacks: per example, the worst case over every attack of ``eps``."""
    cells = {
        c["model"]: _cell(
            over_seeds(results[c["model"]], lambda res: res.worst_case_accuracy(eps)),
            paper=None,
            kind="worst-case",
            key=None,
        )
        for c in columns
    }
    return {
        "attack": "Worst case (all attacks)",
        "eps": eps,
        "steps": None,
        "restarts": None,
        "source": "all",
        "setting": "",
        "label": "every attack of this ε",
        "cells": cells,
    }


def _num(v) -> str | float:
    return "" if v is None or v != v else round(v, 4)


def table1_csv(table: dict) -> str:
    """Wide CSV: the paper's columns, our setting, then per target our mean over seeds, its sample
    sd (empty with one seed), the number of seeds, each seed's value, the kind and the paper's number."""
    buf = io.StringIO()
    w = csv.writer(buf)
    seeds = table["seeds"]
    head = ["attack", "eps", "steps", "restarts", "source", "our_setting"]
    for c in table["columns"]:
        m = c["model"]
        head += [m, f"{m}_sd", f"{m}_n_seeds", *(f"{m}_seed{s}" for s in seeds), f"{m}_kind", f"paper_{m}"]
    w.writerow(head)
    for r in table["rows"]:
        line = [
            r["attack"],
            "" if r["eps"] is None else r["eps"],
            r["steps"] or "",
            r["restarts"] or "",
            r["source"],
            r["label"],
        ]
        for c in table["columns"]:
            cell = r["cells"].get(c["model"])
            if cell is None:
                line += [""] * (5 + len(seeds))
            else:
                line += [
                    _num(cell["ours"]),
                    _num(cell["sd"]),
                    cell["n_seeds"],
                    *(_num(cell["per_seed"].get(str(s))) for s in seeds),
                    cell["kind"],
                    "" if cell["paper"] is None else cell["paper"],
                ]
        w.writerow(line)
    return buf.getvalue()


def table1_markdown(table: dict, *, notes: list[str]) -> str:
    cols = table["columns"]
    head = (
        "| Attack | ε | Source | Ours ran | "
        + " | ".join(f"{c['model']} ({c['role']}) ours | paper" for c in cols)
        + " |"
    )
    sep = "|" + "---|" * (4 + 2 * len(cols))
    lines = ["# Table 1: MNIST, Linf — robust accuracy (%)", "", seeds_note(table["seeds"]), "", head, sep]
    for r in table["rows"]:
        if r["attack"] == "FGSM" or r["attack"] == "Natural" or r["attack"].startswith("Worst"):
            name = r["attack"]
        else:
            name = f"PGD-{r['steps']}×{r['restarts']}" if r["steps"] else r["label"]
        eps = "" if r["eps"] is None else f"{r['eps']:g}"
        cells = []
        for c in cols:
            cell = r["cells"].get(c["model"])
            if cell is None:
                cells += ["", ""]
                continue
            mark = " (wb)" if cell["kind"] == "white-box" else ""
            ours = fmt_spread(cell["ours"], cell["sd"])
            if cell["kind"] == "worst-case":
                ours = f"**{ours}**"
            cells += [ours + mark, fmt(cell["paper"])]
        lines.append(f"| {name} | {eps} | {r['source']} | {r['label']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Paper numbers: {TABLE1_SOURCE}. (wb) = white-box on the column's model (an example counts as "
        "robust only if it survives every restart); other cells are transfer sets made on the source model "
        "(restarts chosen on the source). The worst-case row counts an example only if it survives every "
        "attack of that ε that ran on it (the number a robustness claim should quote).",
    ]
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def table1_notes(results: dict[str, dict[int, Results]], params) -> list[str]:
    """What every reader of Table 1 must know: the loss, the images, what ran instead of the paper."""
    ev = params.evaluate
    n_eval = sorted({r.n for by_seed in results.values() for r in by_seed.values()})
    aa_note = (
        "standard"
        if not ev.autoattack.reduced
        else (f"REDUCED ({ev.autoattack.version}, n_iter={ev.autoattack.n_iter}, n_queries={ev.autoattack.n_queries})")
    )
    spread = (
        'Whether two columns differ by more than their seed spread: summary.md, "Differences between '
        'models within the seed spread".'
        if len(params.seeds) > 1
        else "One training seed: the seed spread is unknown, so no difference is claimed to exceed it."
    )
    return [
        spread,
        f"Attack loss (white-box and transfer sets): **{ev.loss}**"
        + (" (restarts alternate cross-entropy and CW)" if ev.loss == "mixed" else "")
        + f"; cascade: {ev.cascade}.",
        f"Test images evaluated: {', '.join(map(str, n_eval))} (evaluate.test_limit = {ev.test_limit}).",
        "Our attack settings are in the 'Ours ran' column; the paper's steps × restarts in the first column.",
        f"AutoAttack: {aa_note}; Boundary attack: "
        + (
            f"first {ev.boundary.limit} images, {ev.boundary.steps} steps."
            if any(t.boundary for t in ev.threat_models)
            else "not run (no threat model asks for it)."
        ),
    ]
