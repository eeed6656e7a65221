"""Per-example evaluation results of one model, and what is computed from them.

Every attack outcome is a *record*: a key, its metadata (kind, ε, setting, source,
restarts) and a per-example int16 tensor ``survived`` of shape (N,):

* ``survived[i] = k`` (0 ≤ k ≤ R): example i withstood the first k of the attack's R
  restarts (k = R: robust to the whole attack; 0: broken by the first restart, or
  misclassified without any attack).  Robust accuracy of the attack with its first
  r restarts is ``mean(survived ≥ r)``: one 50-restart run gives both ×1 and ×50.
* ``survived[i] = -1``: not attacked here because a cheaper attack of the same ε had
  already broken it (cumulative cascade) or it is outside the attack's subset
  (``subset`` records, e.g. the Boundary attack on the first 1,000 images).

The worst case at ε counts an example robust only if it survived every record of
that ε that ran on it (and is classified correctly without attack).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Iterable, Optional

import torch
from torch import Tensor

NOT_RUN = -1


def eps_key(eps: float) -> str:
    """ε as it appears in record keys and json (stable across float noise)."""
    return f"{float(eps):.6g}"


@dataclass(frozen=True)
class RecordInfo:
    key: str
    kind: str  # "whitebox" | "transfer" | "boundary" | "autoattack" | "check"
    eps: float  # pixel units
    restarts: int = 1  # R: survived == R means robust to the whole attack
    setting: str = ""  # a settings name, or the attack's name
    label: str = ""  # e.g. "PGD-100×50 (ce)"
    source: str = ""  # the source model of a transfer set ("" = white-box on the model itself)
    loss: str = ""
    subset: bool = False  # run on a subset of the evaluated examples only
    extra: dict = field(default_factory=dict)


class Results:
    """All records of one model plus its clean predictions (N evaluated test images)."""

    def __init__(self, y: Tensor, clean_correct: Tensor):
        self.y = y.cpu()
        self.clean_correct = clean_correct.cpu().bool()
        self.infos: dict[str, RecordInfo] = {}
        self.survived: dict[str, Tensor] = {}
        self.values: dict[str, Tensor] = {}  # per-example floats (margins, boundary norms)
        self.summary: dict[str, dict] = {}  # small summaries (e.g. margins: mean, median, disagreement)

    @property
    def n(self) -> int:
        return int(self.y.shape[0])

    # ------------------------------------------------------------------ records
    def add(self, info: RecordInfo, survived: Tensor) -> None:
        s = survived.cpu().to(torch.int16)
        if s.shape != (self.n,):
            raise ValueError(f"record {info.key}: expected shape ({self.n},), got {tuple(s.shape)}")
        # an example misclassified without attack is never robust, whatever the attack did
        s = torch.where(self.clean_correct | (s == NOT_RUN), s, torch.zeros_like(s))
        self.infos[info.key] = info
        self.survived[info.key] = s

    def robust(self, key: str, restarts: Optional[int] = None) -> Tensor:
        """(N,) bool: robust to the record's attack with its first ``restarts`` restarts
        (None: all).  NOT_RUN counts as not robust (see ``worst_case`` for why that is right)."""
        r = self.infos[key].restarts if restarts is None else restarts
        if r > self.infos[key].restarts:
            raise ValueError(f"record {key} ran {self.infos[key].restarts} restarts, asked for {r}")
        return self.survived[key] >= r

    def accuracy(self, key: str, restarts: Optional[int] = None) -> float:
        """Robust accuracy (%) over the examples the record ran on."""
        s = self.survived[key]
        ran = s != NOT_RUN if self.infos[key].subset else torch.ones_like(s, dtype=torch.bool)
        if ran.sum() == 0:
            return float("nan")
        return 100.0 * int((self.robust(key, restarts) & ran).sum()) / int(ran.sum())

    def clean_accuracy(self) -> float:
        return 100.0 * int(self.clean_correct.sum()) / self.n

    def keys_at(self, eps: float, kinds: Iterable[str] | None = None) -> list[str]:
        k = eps_key(eps)
        return [key for key, i in self.infos.items() if eps_key(i.eps) == k and (kinds is None or i.kind in kinds)]

    def worst_case(self, eps: float, kinds: Iterable[str] | None = None) -> Tensor:
        """(N,) bool: correct without attack and survived every record at ε that ran on it.

        A NOT_RUN entry of a full-set record means a cheaper attack of that ε already
        broke the example (the cascade), so it needs no more; a NOT_RUN entry of a
        subset record means the attack did not run there and changes nothing."""
        ok = self.clean_correct.clone()
        for key in self.keys_at(eps, kinds):
            s, info = self.survived[key], self.infos[key]
            ran = s != NOT_RUN
            if info.subset:
                ok &= ~ran | (s >= info.restarts)
            else:
                ok &= ran & (s >= info.restarts)
        return ok

    def ran(self, key: str) -> Tensor:
        """(N,) bool: the examples the record covers (all of them unless it is a subset record)."""
        s = self.survived[key]
        return s != NOT_RUN if self.infos[key].subset else torch.ones_like(s, dtype=torch.bool)

    def accuracy_on(self, key: str, rows: Tensor, restarts: Optional[int] = None) -> float:
        """Robust accuracy (%) over ``rows`` only (to compare two attacks on the same examples)."""
        if rows.sum() == 0:
            return float("nan")
        return 100.0 * int((self.robust(key, restarts) & rows).sum()) / int(rows.sum())

    def covered(self, eps: float, kinds: Iterable[str] | None = None) -> Tensor:
        """(N,) bool: the examples some record at ε covers (all, if any full-set record exists)."""
        keys = self.keys_at(eps, kinds)
        rows = torch.zeros(self.n, dtype=torch.bool)
        for key in keys:
            rows |= self.ran(key)
        return rows

    def worst_case_accuracy(self, eps: float, kinds: Iterable[str] | None = None) -> float:
        """Worst-case robust accuracy (%) over the examples the attacks of ε cover (all test
        images, unless every attack of that ε ran on a subset only)."""
        rows = self.covered(eps, kinds)
        if rows.sum() == 0:
            return float("nan")
        return 100.0 * int((self.worst_case(eps, kinds) & rows).sum()) / int(rows.sum())

    def eps_values(self) -> list[float]:
        return sorted({i.eps for i in self.infos.values()})

    # ------------------------------------------------------------------ files
    def to_tensors(self) -> dict:
        """A weights-only-loadable dict (tensors, numbers, strings, lists, dicts)."""
        return {
            "y": self.y,
            "clean_correct": self.clean_correct,
            "survived": dict(self.survived),
            "values": dict(self.values),
            "summary": dict(self.summary),
            "infos": {k: asdict(v) for k, v in self.infos.items()},
        }

    @classmethod
    def from_tensors(cls, obj: dict) -> "Results":
        r = cls(obj["y"], obj["clean_correct"])
        for key, info in obj["infos"].items():
            r.infos[key] = RecordInfo(**info)
            r.survived[key] = obj["survived"][key]
        r.values = dict(obj.get("values", {}))
        r.summary = dict(obj.get("summary", {}))
        return r
