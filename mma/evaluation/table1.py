"""Table 1 (MNIST Linf) assembled from per-example results, beside the paper's numbers.

Rows are the paper's grid as configured: natural accuracy, then per ε every (source
role, setting) of ``transfer.sources``, then the row the paper lacks — the worst case
over all attacks of that ε per example.  Columns are ``evaluate.table1_columns``
(target model → role): a row whose source role is the column's role is a white-box
attack on the column's model (restarts: robust only if every restart fails); any
other row is the source's transfer set (restarts chosen on the source).
"""

from __future__ import annotations

import csv
import io
import math
from typing import Optional

from .config import EvaluateParams, TransferParams, _paper_settings
from .reference import TABLE1_SOURCE, paper_table1
from .results import Results, eps_key

PAPER_ROLES = ("MMA", "PGD")  # the paper's two target columns


def _fmt(v: Optional[float]) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"


def build_table1(results: dict[str, Results], ev: EvaluateParams, tr: TransferParams) -> dict:
    """{"columns": [{model, role}], "rows": [{attack, eps, steps, restarts, source, setting, label,
    cells: {model: {ours, paper, kind, key}}}]}; kind is white-box, transfer, natural or worst-case."""
    paper_settings = _paper_settings()
    columns = [{"model": m, "role": r} for m, r in ev.table1_columns.items() if m in results]
    rows = []

    def paper(attack, eps, steps, restarts, source, role):
        return paper_table1(attack, eps, steps, restarts, source, role) if role in PAPER_ROLES else None

    cells = {c["model"]: {"ours": results[c["model"]].clean_accuracy(), "kind": "natural", "key": "clean",
                          "paper": paper("Natural", None, None, None, "", c["role"])} for c in columns}
    rows.append({"attack": "Natural", "eps": None, "steps": None, "restarts": None, "source": "", "setting": "",
                 "label": "Natural", "cells": cells})
    eps_all = sorted({e for s in tr.sources for e in s.eps})
    for eps in eps_all:
        for src in tr.sources:
            if eps not in src.eps:
                continue
            for sname in src.settings:
                ours_setting = tr.settings[sname]
                ps = paper_settings.get(ours_setting.as_paper or sname)
                attack = "FGSM" if ours_setting.attack == "fgsm" else "PGD"
                steps = ps.steps if ps and ps.attack == "pgd" else None
                restarts = ps.restarts if ps and ps.attack == "pgd" else None
                cells = {}
                for c in columns:
                    res = results[c["model"]]
                    if c["role"] == src.role:
                        key, kind = f"wb/{sname}/{eps_key(eps)}", "white-box"
                    elif src.model == c["model"]:
                        continue
                    else:
                        key, kind = f"tr/{src.model}/{sname}/{eps_key(eps)}", "transfer"
                    ours = res.accuracy(key) if key in res.infos else None
                    p = paper(attack, eps, steps, restarts, src.role, c["role"]) if ps else None
                    cells[c["model"]] = {"ours": ours, "paper": p, "kind": kind, "key": key}
                rows.append({"attack": attack, "eps": eps, "steps": steps, "restarts": restarts, "source": src.role,
                             "setting": sname, "label": ours_setting.label(), "cells": cells})
        cells = {c["model"]: {"ours": results[c["model"]].worst_case_accuracy(eps), "paper": None,
                              "kind": "worst-case", "key": f"worst/{eps_key(eps)}"} for c in columns}
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
            ours = _fmt(cell["ours"])
            if cell["kind"] == "worst-case":
                ours = f"**{ours}**"
            cells += [ours + mark, _fmt(cell["paper"])]
        lines.append(f"| {name} | {eps} | {r['source']} | {r['label']} | " + " | ".join(cells) + " |")
    lines += ["", f"Paper numbers: {TABLE1_SOURCE}. (wb) = white-box on the column's model (an example counts as "
              "robust only if it survives every restart); other cells are transfer sets made on the source model "
              "(restarts chosen on the source). The worst-case row counts an example only if it survives every "
              "attack of that ε that ran on it (the number a robustness claim should quote)."]
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"
