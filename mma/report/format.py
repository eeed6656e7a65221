"""How the report writes numbers and names (one definition each)."""

from __future__ import annotations

import math
from typing import Optional

DATASET_LABELS = {"mnist": "MNIST", "cifar10": "CIFAR10", "cifar10-synthetic": "CIFAR10 (synthetic stand-in)"}
PANELS = [
    ("mnist", "linf", "(a) MNIST, Linf"),
    ("mnist", "l2", "(b) MNIST, L2"),
    ("cifar10", "linf", "(c) CIFAR10, Linf"),
    ("cifar10", "l2", "(d) CIFAR10, L2"),
]


def panel_title(title: str, params) -> str:
    """A panel's title naming the data it shows: a synthetic CIFAR10 stand-in says so."""
    if params.data.cifar10_source == "synthetic":
        return title.replace("CIFAR10", DATASET_LABELS["cifar10-synthetic"])
    return title


def fmt(v: Optional[float]) -> str:
    """A percentage (or any number) with two decimals; '—' for missing or nan."""
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"


def fmt_spread(mean: Optional[float], sd: Optional[float]) -> str:
    """A number over seeds: "92.05 ± 0.31" (mean ± sample sd); one seed (sd None): the value
    alone, never "± 0" (``mma.report.spread``)."""
    if sd is None or fmt(mean) == "—":
        return fmt(mean)
    return f"{fmt(mean)} ± {fmt(sd)}"


def seeds_note(seeds: list[int]) -> str:
    """What the report's numbers are, over the grid's training seeds."""
    if len(seeds) == 1:
        return f"One training seed ({seeds[0]}): each number is that model's; its seed spread is unknown."
    return (
        f"Mean ± sample standard deviation (ddof = 1) over {len(seeds)} training seeds "
        f"({', '.join(map(str, seeds))}); per-seed values in table1.csv and summary.json."
    )
