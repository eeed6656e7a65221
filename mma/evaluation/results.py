"""Per-example evaluation results of one model, and what is computed from them.

Every attack outcome is a ``records.Record`` (what ran: kind, attack, ε, restarts,
source, the n test images it covers) with a per-example int16 tensor ``survived`` of
shape (N,):

* ``survived[i] = k`` (0 ≤ k ≤ R): example i withstood the first k of the attack's R
  restarts (k = R: robust to the whole attack; 0: broken by the first restart, or
  misclassified without any attack).  Robust accuracy of the attack with its first
  r restarts is ``mean(survived ≥ r)``.
* ``survived[i] = -1``: not attacked here because a cheaper attack of the same ε had
  already broken it (cumulative cascade) or it lies beyond the record's first n
  images (a subset record, e.g. the Boundary attack on the first 1,000 images).

The worst case at ε counts an example robust only if it survived every record of
that ε that ran on it (and is classified correctly without attack).
"""

from __future__ import annotations

from typing import Iterable, Optional

import torch
from torch import Tensor

from .records import Record, parse_key, record_key

NOT_RUN = -1


def eps_key(eps: float) -> str:
    """ε as a json key of per-ε summaries (stable across float noise)."""
    return f"{float(eps):.6g}"


class Results:
    """All records of one model plus its clean predictions (N evaluated test images)."""

    def __init__(self, y: Tensor, clean_correct: Tensor):
        self.y = y.cpu()
        self.clean_correct = clean_correct.cpu().bool()
        self.survived: dict[Record, Tensor] = {}
        self.values: dict[str, Tensor] = {}  # per-example floats (margins, boundary norms)
        self.summary: dict[str, dict] = {}  # small summaries (e.g. margins: mean, median, disagreement)

    @property
    def n(self) -> int:
        return int(self.y.shape[0])

    # ------------------------------------------------------------------ records
    @property
    def records(self) -> list[Record]:
        return list(self.survived)

    def add(self, record: Record, survived: Tensor) -> None:
        s = survived.cpu().to(torch.int16)
        if s.shape != (self.n,):
            raise ValueError(f"record {record_key(record)}: expected shape ({self.n},), got {tuple(s.shape)}")
        if not 0 < record.n <= self.n:
            raise ValueError(f"record {record_key(record)}: covers {record.n} of {self.n} evaluated images")
        # an example misclassified without attack is never robust, whatever the attack did
        s = torch.where(self.clean_correct | (s == NOT_RUN), s, torch.zeros_like(s))
        self.survived[record] = s

    def select(self, **fields) -> list[Record]:
        """The records whose fields have the given values (see ``Record.matches``)."""
        return [r for r in self.survived if r.matches(**fields)]

    def find(self, **fields) -> Optional[Record]:
        """The one record with these fields, None if there is none."""
        found = self.select(**fields)
        if len(found) > 1:
            raise ValueError(f"{len(found)} records match {fields}: {[record_key(r) for r in found]}")
        return found[0] if found else None

    def is_subset(self, r: Record) -> bool:
        return r.n < self.n

    def robust(self, r: Record) -> Tensor:
        """(N,) bool: robust to all of the record's restarts.  NOT_RUN counts as not robust
        (see ``worst_case`` for why that is right)."""
        return self.survived[r] >= r.restarts

    def ran(self, r: Record) -> Tensor:
        """(N,) bool: the examples the record covers (its first n)."""
        return torch.arange(self.n) < r.n

    def accuracy(self, r: Record) -> float:
        """Robust accuracy (%) over the examples the record covers."""
        return self.accuracy_on(r, self.ran(r))

    def accuracy_on(self, r: Record, rows: Tensor) -> float:
        """Robust accuracy (%) over ``rows`` only (to compare two attacks on the same examples)."""
        if rows.sum() == 0:
            return float("nan")
        return 100.0 * int((self.robust(r) & rows).sum()) / int(rows.sum())

    def clean_accuracy(self) -> float:
        return 100.0 * int(self.clean_correct.sum()) / self.n

    def at(self, eps: float, kinds: Iterable[str] | None = None) -> list[Record]:
        return [r for r in self.survived if r.matches(eps=eps) and (kinds is None or r.kind in kinds)]

    def worst_case(self, eps: float, kinds: Iterable[str] | None = None) -> Tensor:
        """(N,) bool: correct without attack and survived every record at ε that ran on it.

        A NOT_RUN entry of a full-set record means a cheaper attack of that ε already
        broke the example (the cascade), so it needs no more; a NOT_RUN entry of a
        subset record means the attack did not run there and changes nothing."""
        ok = self.clean_correct.clone()
        for r in self.at(eps, kinds):
            s = self.survived[r]
            ran = s != NOT_RUN
            if self.is_subset(r):
                ok &= ~ran | (s >= r.restarts)
            else:
                ok &= ran & (s >= r.restarts)
        return ok

    def covered(self, eps: float, kinds: Iterable[str] | None = None) -> Tensor:
        """(N,) bool: the examples some record at ε covers (all, if any full-set record exists)."""
        rows = torch.zeros(self.n, dtype=torch.bool)
        for r in self.at(eps, kinds):
            rows |= self.ran(r)
        return rows

    def worst_case_accuracy(self, eps: float, kinds: Iterable[str] | None = None) -> float:
        """Worst-case robust accuracy (%) over the examples the attacks of ε cover (all test
        images, unless every attack of that ε ran on a subset only)."""
        rows = self.covered(eps, kinds)
        if rows.sum() == 0:
            return float("nan")
        return 100.0 * int((self.worst_case(eps, kinds) & rows).sum()) / int(rows.sum())

    def eps_values(self) -> list[float]:
        return sorted({r.eps for r in self.survived})

    # ------------------------------------------------------------------ files
    def to_tensors(self) -> dict:
        """A weights-only-loadable dict (tensors, numbers, strings, lists, dicts)."""
        return {
            "y": self.y,
            "clean_correct": self.clean_correct,
            "survived": {record_key(r): s for r, s in self.survived.items()},
            "values": dict(self.values),
            "summary": dict(self.summary),
        }

    @classmethod
    def from_tensors(cls, obj: dict) -> "Results":
        res = cls(obj["y"], obj["clean_correct"])
        res.survived = {parse_key(k): s for k, s in obj["survived"].items()}
        res.values = dict(obj.get("values", {}))
        res.summary = dict(obj.get("summary", {}))
        return res
