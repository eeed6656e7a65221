"""Numbers over training seeds, and the one rule that says whether two of them differ.

Every model is trained once per seed of ``seeds`` (params.yaml), so each number the report
prints is a set of per-seed values: shown as the mean ± the sample standard deviation
(ddof = 1) over the seeds; with one seed, the value alone (its spread is unknown, never
"± 0").

**Not distinguishable at this budget** (``verdict``): two models' numbers at the same ε, on
the same test images, whose means differ by no more than the sum of their standard deviations,

    |mean_a − mean_b| ≤ sd_a + sd_b,

are reported as "not distinguishable at this budget" (this many seeds, steps and test
images); a larger difference as "distinguishable".  It is a deliberately coarse screen (about
one standard deviation each way), not a significance test.  With fewer than two seeds for
either model nothing is claimed: "1 seed: spread unknown".
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Optional

DISTINGUISHABLE = "distinguishable"
NOT_DISTINGUISHABLE = "not distinguishable at this budget"
SPREAD_UNKNOWN = "1 seed: spread unknown"
RULE = "|mean_a − mean_b| ≤ sd_a + sd_b (sample sd over seeds) → not distinguishable at this budget"


@dataclass(frozen=True)
class Spread:
    """One number over seeds: ``values`` maps each seed to its value (nan: not measured)."""

    values: dict[int, float]

    @property
    def measured(self) -> list[float]:
        return [v for v in self.values.values() if v is not None and not math.isnan(v)]

    @property
    def n(self) -> int:
        """How many seeds measured it."""
        return len(self.measured)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.measured) if self.measured else float("nan")

    @property
    def sd(self) -> Optional[float]:
        """Sample standard deviation (ddof = 1); None with fewer than two seeds (unknown)."""
        return statistics.stdev(self.measured) if self.n >= 2 else None

    @property
    def low(self) -> float:
        return min(self.measured) if self.measured else float("nan")

    @property
    def high(self) -> float:
        return max(self.measured) if self.measured else float("nan")

    def to_json(self) -> dict:
        return {
            "mean": self.mean,
            "sd": self.sd,
            "n_seeds": self.n,
            "per_seed": {str(s): v for s, v in self.values.items()},
        }


def over_seeds(by_seed: dict, value) -> Spread:
    """The Spread of ``value(results)`` over ``by_seed`` (seed → one model's results)."""
    return Spread({seed: value(res) for seed, res in by_seed.items()})


def verdict(a: Spread, b: Spread) -> str:
    """The module's rule, in words: distinguishable, not distinguishable at this budget, or
    (fewer than two seeds on a side) spread unknown."""
    if a.sd is None or b.sd is None:
        return SPREAD_UNKNOWN
    return NOT_DISTINGUISHABLE if abs(a.mean - b.mean) <= a.sd + b.sd else DISTINGUISHABLE
