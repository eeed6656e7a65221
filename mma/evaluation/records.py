"""What an evaluated number is: one frozen ``Record`` per attack outcome, built here only.

A record names everything the number depends on — the kind of evaluation, the attack and
its settings, ε, the source model of a transfer set, how many test images it covers and
the evaluation's seed — so two numbers are comparable exactly when their records say so.
Its string form (MLflow metric names, json) comes from ``record_key`` and goes back
through ``parse_key``; no other module formats or splits keys.  Checks, Table 1, Figure 3
and the summary find records by their fields (``matches``), never by parsing labels.

Key grammar: ``KIND/ATTACK/eps:E[/FIELD:VALUE...]`` with the fields below in order and
defaults left out, e.g. ``whitebox/pgd/eps:0.3/steps:100/restarts:50/loss:ce/n:10000/seed:0``.
Model names cannot hold "/" or ":" (the schema's pattern), so the grammar is unambiguous
and MLflow accepts it as a metric name.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

KINDS = ("whitebox", "transfer", "autoattack", "boundary")


@dataclass(frozen=True)
class Record:
    kind: str  # whitebox | transfer | autoattack | boundary
    attack: str  # fgsm | pgd | boundary | the AutoAttack attacks run, joined by "_"
    eps: float  # pixel units
    steps: int = 1  # per restart (AutoAttack: its APGD/FAB iterations if reduced, else 1)
    restarts: int = 1  # R: survived == R means robust to the whole attack
    loss: str = ""  # ce | cw | mixed ("" where the attack has none of its own)
    step_factor: float = 2.5  # PGD's step size is step_factor·ε/steps
    clean_start: bool = False  # PGD started at the clean image (no random start)
    l2_pgd: str = "advertorch"  # L2 PGD's start and projection order (mma.attacks.core.L2_FORMS)
    source: str = ""  # transfer: the model the set was made on
    n: int = 0  # test images covered: the first n of those evaluated
    seed: int = 0  # the evaluation's seed (params.seed)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"record kind {self.kind!r}: expected one of {', '.join(KINDS)}")

    def matches(self, **wanted) -> bool:
        """True if every given field has the given value (ε compared to 1e-9)."""
        for name, value in wanted.items():
            mine = getattr(self, name)
            if name == "eps" and value is not None:
                if abs(mine - float(value)) > 1e-9:
                    return False
            elif mine != value:
                return False
        return True


_DEFAULTS = {f.name: f.default for f in fields(Record)}
_TYPES = {
    "eps": float,
    "steps": int,
    "restarts": int,
    "loss": str,
    "step_factor": float,
    "clean_start": lambda v: {"true": True, "false": False}[v],
    "l2_pgd": str,
    "source": str,
    "n": int,
    "seed": int,
}
_OPTIONAL = [f.name for f in fields(Record) if f.name not in ("kind", "attack", "eps")]


def _text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(float(value)) if isinstance(value, float) else str(value)


def record_key(r: Record) -> str:
    """The record as a string: ``KIND/ATTACK/eps:E`` then every non-default field."""
    parts = [r.kind, r.attack, f"eps:{_text(r.eps)}"]
    parts += [f"{name}:{_text(getattr(r, name))}" for name in _OPTIONAL if getattr(r, name) != _DEFAULTS[name]]
    return "/".join(parts)


def parse_key(key: str) -> Record:
    """The inverse of ``record_key``."""
    kind, attack, *rest = key.split("/")
    values = {}
    for part in rest:
        name, _, text = part.partition(":")
        if name not in _TYPES:
            raise ValueError(f"record key {key!r}: unknown field {name!r}")
        values[name] = _TYPES[name](text)
    return Record(kind=kind, attack=attack, **values)


def attack_fields(setting, loss: str) -> dict:
    """The identifying fields of an attack setting (``config.evaluation.AttackSetting``);
    ``loss`` is used where the setting names none."""
    if setting.attack == "fgsm":
        return {
            "attack": "fgsm",
            "steps": 1,
            "restarts": 1,
            "loss": setting.loss or loss,
            "step_factor": _DEFAULTS["step_factor"],
            "clean_start": False,
            "l2_pgd": setting.l2_pgd,
        }
    return {
        "attack": "pgd",
        "steps": setting.steps,
        "restarts": setting.restarts,
        "loss": setting.loss or loss,
        "step_factor": setting.step_size_factor,
        "clean_start": not setting.random_init,
        "l2_pgd": setting.l2_pgd,
    }


def attack_record(
    kind: str, setting, eps: float, *, loss: str, n: int, seed: int, source: str = "", restarts: int | None = None
) -> Record:
    """The record of ``setting`` (white-box or a transfer set) at ``eps``; ``restarts``
    overrides the setting's (the first r restarts of a longer run)."""
    f = attack_fields(setting, loss)
    if restarts is not None:
        f["restarts"] = restarts
    return Record(kind=kind, eps=float(eps), source=source, n=n, seed=seed, **f)


def label(r: Record) -> str:
    """For people: 'PGD-100×50 (ce)', 'FGSM (ce)', 'AutoAttack (apgd-ce, apgd-t)', 'Boundary (25000 steps)'."""
    if r.kind == "autoattack":
        return f"AutoAttack ({r.attack.replace('_', ', ')})"
    if r.kind == "boundary":
        return f"Boundary attack ({r.steps} steps)"
    name = "FGSM" if r.attack == "fgsm" else f"PGD-{r.steps}×{r.restarts}"
    extras = [r.loss] if r.loss else []
    if r.attack == "pgd" and r.step_factor != _DEFAULTS["step_factor"]:
        extras.append(f"step {r.step_factor:g}·ε/{r.steps}")
    if r.clean_start and r.attack == "pgd":
        extras.append("no random start")
    if r.l2_pgd != _DEFAULTS["l2_pgd"]:
        extras.append(f"L2 as {r.l2_pgd}")
    text = name + (f" ({', '.join(extras)})" if extras else "")
    return text + (f" from {r.source}" if r.source else "")
