"""How the report writes numbers and names (one definition each)."""

from __future__ import annotations

import math
from typing import Optional

DATASET_LABELS = {"mnist": "MNIST", "cifar10": "CIFAR10"}
PANELS = [("mnist", "linf", "(a) MNIST, Linf"), ("mnist", "l2", "(b) MNIST, L2"),
          ("cifar10", "linf", "(c) CIFAR10, Linf"), ("cifar10", "l2", "(d) CIFAR10, L2")]


def fmt(v: Optional[float]) -> str:
    """A percentage (or any number) with two decimals; '—' for missing or nan."""
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"
