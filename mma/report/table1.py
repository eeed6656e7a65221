"""Table 1 (MNIST Linf) assembled from per-example results, beside the paper's numbers.

Rows are the paper's grid as configured (``table1.rows()``): natural accuracy, then per ε
every (source role, attack), then the row the paper lacks — the worst case over all
attacks of that ε per example.  Columns are ``table1.columns`` (target model → role): a
row whose role is the column's role is a white-box attack on the column's model
(restarts: robust only if every restart fails); any other row is the source's transfer
set (restarts chosen on the source).  Each cell is found by the record's fields.
"""

from __future__ import annotations

import csv
import io

from ..config.evaluation import paper_attacks
from ..evaluation.records import attack_fields, record_key
from ..evaluation.results import Results
from .format import fmt
from .reference import TABLE1_SOURCE, paper_table1

PAPER_ROLES = ("MMA", "PGD")  # the paper's two target columns


def build_table1(results: dict[str, Results], params) -> dict:
    """{"columns": [{model, role}], "rows": [{attack, eps, steps, restarts, source, setting, label,
    cells: {model: {ours, paper, kind, key}}}]}; kind is white-box, transfer, natural or worst-case;
    key is the record's (``records.record_key``)."""
    paper_settings = paper_attacks()
    t1 = params.table1
    columns = [{"model": m, "role": r} for m, r in t1.columns.items() if m in results]
    rows = []

    def paper(attack, eps, steps, restarts, source, role):
        return paper_table1(attack, eps, steps, restarts, source, role) if role in PAPER_ROLES else None

    cells = {c["model"]: {"ours": results[c["model"]].clean_accuracy(), "kind": "natural", "key": "clean",
                          "paper": paper("Natural", None, None, None, "", c["role"])} for c in columns}
    rows.append({"attack": "Natural", "eps": None, "steps": None, "restarts": None, "source": "", "setting": "",
                 "label": "Natural", "cells": cells})
    by_eps: dict[float, list] = {}
    for row in t1.rows():
        by_eps.setdefault(row.eps, []).append(row)
    for eps, eps_rows in by_eps.items():
        for row in eps_rows:
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
                res = results[c["model"]]
                record = res.find(eps=eps, **fields, **wanted)
                cells[c["model"]] = {"ours": None if record is None else res.accuracy(record),
                                     "paper": paper(attack, eps, steps, restarts, row.role, c["role"]) if ps else None,
                                     "kind": kind, "key": None if record is None else record_key(record)}
            rows.append({"attack": attack, "eps": eps, "steps": steps, "restarts": restarts, "source": row.role,
                         "setting": row.attack, "label": ours_setting.label(), "cells": cells})
        cells = {c["model"]: {"ours": results[c["model"]].worst_case_accuracy(eps), "paper": None,
                              "kind": "worst-case", "key": None} for c in columns}
        rows.append({"attack": "Worst case (all attacks)", "eps": eps, "steps": None, "restarts": None, "source": "all",
                     "setting": "", "label": "every attack of this ε", "cells": cells})
    return {"columns": columns, "rows": rows}


def table1_csv(table: dict) -> str:
    """Wide CSV: the paper's columns, our setting, then per target our number and the paper's."""
    buf = io.StringIO()
    w = csv.writer(buf)
    head = ["attack", "eps", "steps", "restarts", "source", "our_setting"]
    for c in table["columns"]:
        head += [f"{c['model']}", f"{c['model']}_kind", f"paper_{c['model']}"]
    w.writerow(head)
    for r in table["rows"]:
        line = [r["attack"], "" if r["eps"] is None else r["eps"], r["steps"] or "", r["restarts"] or "", r["source"],
                r["label"]]
        for c in table["columns"]:
            cell = r["cells"].get(c["model"])
            if cell is None:
                line += ["", "", ""]
            else:
                line += ["" if cell["ours"] is None else round(cell["ours"], 4), cell["kind"],
                         "" if cell["paper"] is None else cell["paper"]]
        w.writerow(line)
    return buf.getvalue()


def table1_markdown(table: dict, *, notes: list[str]) -> str:
    cols = table["columns"]
    head = "| Attack | ε | Source | Ours ran | " + " | ".join(f"{c['model']} ({c['role']}) ours | paper" for c in cols) + " |"
    sep = "|" + "---|" * (4 + 2 * len(cols))
    lines = ["# Table 1: MNIST, Linf — robust accuracy (%)", "", head, sep]
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
            ours = fmt(cell["ours"])
            if cell["kind"] == "worst-case":
                ours = f"**{ours}**"
            cells += [ours + mark, fmt(cell["paper"])]
        lines.append(f"| {name} | {eps} | {r['source']} | {r['label']} | " + " | ".join(cells) + " |")
    lines += ["", f"Paper numbers: {TABLE1_SOURCE}. (wb) = white-box on the column's model (an example counts as "
              "robust only if it survives every restart); other cells are transfer sets made on the source model "
              "(restarts chosen on the source). The worst-case row counts an example only if it survives every "
              "attack of that ε that ran on it (the number a robustness claim should quote)."]
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def table1_notes(results: dict[str, Results], params) -> list[str]:
    """What every reader of Table 1 must know: the loss, the images, what ran instead of the paper."""
    ev = params.evaluate
    n_eval = sorted({r.n for r in results.values()})
    aa_note = "standard" if not ev.autoattack.reduced else (
        f"REDUCED ({ev.autoattack.version}, n_iter={ev.autoattack.n_iter}, n_queries={ev.autoattack.n_queries})")
    return [f"Attack loss (white-box and transfer sets): **{ev.loss}**"
            + (" (restarts alternate cross-entropy and CW)" if ev.loss == "mixed" else "") + f"; cascade: {ev.cascade}.",
            f"Test images evaluated: {', '.join(map(str, n_eval))} (evaluate.test_limit = {ev.test_limit}).",
            "Our attack settings are in the 'Ours ran' column; the paper's steps × restarts in the first column.",
            f"AutoAttack: {aa_note}; Boundary attack: "
            + (f"first {ev.boundary.limit} images, {ev.boundary.steps} steps."
               if any(t.boundary for t in ev.threat_models) else "not run (no threat model asks for it).")]
