"""The paper's reference numbers (package data in ``reference/``, see its SOURCE.md):
Table 1 of arXiv 1812.02637 v1 and the final paper's anchors.  The only hand-typed
numbers of the evaluation live in those two CSV files."""

from __future__ import annotations

import csv
from functools import lru_cache
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent / "reference"
TABLE1_CSV = HERE / "table1_mnist_linf.csv"
ANCHORS_CSV = HERE / "final_paper_anchors.csv"
TABLE1_SOURCE = "Ding et al., arXiv 1812.02637 v1, Table 1 (MNIST, Linf)"


def _read(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@lru_cache(maxsize=None)
def table1_rows() -> tuple[dict, ...]:
    """The paper's Table 1 rows: attack, eps (float|None), steps, restarts (int|None),
    source ('' for natural), acc_mma_model, acc_pgd_model (float %)."""
    out = []
    for r in _read(TABLE1_CSV):
        out.append(
            {
                "attack": r["attack"],
                "eps": float(r["eps"]) if r["eps"] else None,
                "steps": int(r["steps"]) if r["steps"] else None,
                "restarts": int(r["restarts"]) if r["restarts"] else None,
                "source": r["source"],
                "MMA": float(r["acc_mma_model"]),
                "PGD": float(r["acc_pgd_model"]),
            }
        )
    return tuple(out)


def paper_table1(
    attack: str, eps: Optional[float], steps: Optional[int], restarts: Optional[int], source: str, column_role: str
) -> Optional[float]:
    """The paper's number for a row and a target column role ("MMA" or "PGD"); None if absent."""
    for r in table1_rows():
        if r["attack"].lower() != attack.lower() or r["source"] != source:
            continue
        if eps is not None and (r["eps"] is None or abs(r["eps"] - eps) > 1e-9):
            continue
        if attack.lower() == "pgd" and (r["steps"] != steps or r["restarts"] != restarts):
            continue
        return r.get(column_role)
    return None


@lru_cache(maxsize=None)
def anchors() -> tuple[dict, ...]:
    """Final-paper anchors: source, dataset, norm, model, metric, eps (float), value_percent (float)."""
    return tuple({**r, "eps": float(r["eps"]), "value_percent": float(r["value_percent"])} for r in _read(ANCHORS_CSV))
