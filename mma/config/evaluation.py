"""The ``attacks:``, ``table1:``, ``evaluate:`` and ``report:`` sections of params.yaml.

Every default is the paper's protocol (arXiv 1812.02637, Table 1 and Figure 3, plus the
checks beyond it), so ``EvaluateParams()`` etc. are the paper's settings; the smoke and
quick profiles only change numbers.  ε is in pixel units of [0, 1].

``attacks`` names every attack setting once.  Table 1 (``table1``) and Figure 3
(``evaluate.curve_attack``) refer to them by name: the transfer stage makes a source's
sets from them, the evaluate stage runs the same settings white-box, and the report
finds each number by the settings' fields.  Model names here must be in ``models``
(a name that is not is refused with the key named).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from pydantic import Field, model_validator

from . import L2_PGD_DEFAULT, L2PGD, Bool, NonNegativeFinite, PositiveFinite, PositiveInt, Strict, increasing

Loss = Literal["ce", "cw", "mixed"]  # mixed: restarts alternate cross-entropy and CW loss
PaperAttack = Literal["fgsm", "pgd40x1", "pgd40x50", "pgd100x1", "pgd100x50"]


class AttackSetting(Strict):
    """One named attack setting: FGSM, or PGD with steps × restarts."""

    attack: Literal["fgsm", "pgd"] = "pgd"
    steps: PositiveInt = 100  # PGD steps per restart (FGSM: ignored, one step of size ε)
    restarts: PositiveInt = 1  # independent random starts (FGSM: ignored)
    loss: Optional[Loss] = None  # None: evaluate.loss
    step_size_factor: PositiveFinite = 2.5  # step size = factor·ε/steps (the paper's 2.5)
    random_init: Bool = True  # PGD starts uniformly inside the ε-ball
    l2_pgd: L2PGD = L2_PGD_DEFAULT  # L2 PGD's start and projection order (mma/config/__init__.py); Linf: no effect
    # the paper's setting this one stands in for in Table 1 (a profile's cheaper PGD-5×2 for
    # "pgd100x50"); None: the setting's own name if it is one of the paper's
    as_paper: Optional[PaperAttack] = None

    def label(self) -> str:
        """Table-1 style name, e.g. 'PGD-100×50' or 'FGSM'."""
        return "FGSM" if self.attack == "fgsm" else f"PGD-{self.steps}×{self.restarts}"


def paper_attacks() -> dict[str, AttackSetting]:
    """The paper's Table-1 attacks (Madry et al.'s PGD-40/100, 1 or 50 restarts, and FGSM)."""
    return {
        "fgsm": AttackSetting(attack="fgsm", steps=1, restarts=1, random_init=False),
        "pgd40x1": AttackSetting(steps=40, restarts=1),
        "pgd40x50": AttackSetting(steps=40, restarts=50),
        "pgd100x1": AttackSetting(steps=100, restarts=1),
        "pgd100x50": AttackSetting(steps=100, restarts=50),
    }


ALL_PAPER = ["fgsm", "pgd40x1", "pgd40x50", "pgd100x1", "pgd100x50"]


class Table1Source(Strict):
    """A source role of Table 1: the model whose attacks make the role's rows."""

    model: str  # a key of `models`
    attacks: list[str] = Field(min_length=1)  # names in `attacks`


def _paper_sources() -> dict[str, Table1Source]:
    # arXiv v1 Table 1: the MMA source has PGD-100 × {1, 50}; PGD and STD every attack
    return {
        "MMA": Table1Source(model="mnist-linf-mma-v1", attacks=["pgd100x1", "pgd100x50"]),
        "PGD": Table1Source(model="mnist-linf-pgd-0p3", attacks=ALL_PAPER),
        "STD": Table1Source(model="mnist-linf-std", attacks=ALL_PAPER),
    }


@dataclass(frozen=True)
class Table1Row:
    """One attack row of Table 1: ``attack`` (a name in ``attacks``) made on the ``role``'s
    source model at ``eps``."""

    eps: float
    role: str
    source: str  # the role's source model
    attack: str


class Table1Params(Strict):
    """Table 1 (MNIST Linf): rows are source role × attack × ε, columns are target models.

    A row whose role is the column's role is a white-box attack on the column's model;
    every other row is the source model's transfer set (restarts chosen on the source)."""

    eps: list[PositiveFinite] = Field([0.3, 0.4, 0.5], min_length=1)  # the rows' ε, pixel units
    sources: dict[str, Table1Source] = Field(default_factory=_paper_sources)  # role → source
    # target model → role (its white-box rows are those of that role)
    columns: dict[str, str] = {
        "mnist-linf-mma-v1": "MMA",
        "mnist-linf-pgd-0p3": "PGD",
        "mnist-linf-mma-0p45": "MMA",
        "mnist-linf-std": "STD",
    }

    @model_validator(mode="after")
    def _check(self):
        increasing(self.eps, "table1.eps: the rows' ε")
        models = [s.model for s in self.sources.values()]
        if len(set(models)) != len(models):
            raise ValueError(f"table1.sources: each model is the source of one role, got {models}")
        for model, role in self.columns.items():
            if role not in self.sources:
                raise ValueError(
                    f"table1.columns.{model} = {role!r}: not a role of table1.sources ({', '.join(self.sources)})"
                )
        return self

    def rows(self) -> list[Table1Row]:
        """Every attack row, by ε then role then attack: the one place the Table-1 grid is read."""
        return [
            Table1Row(eps=e, role=role, source=src.model, attack=a)
            for e in self.eps
            for role, src in self.sources.items()
            for a in src.attacks
        ]

    def rows_made_on(self, source: str) -> list[Table1Row]:
        """The rows whose transfer sets ``source`` makes."""
        return [r for r in self.rows() if r.source == source]

    def whitebox_rows(self, target: str) -> list[Table1Row]:
        """The rows ``target`` is attacked white-box on (those of its column's role)."""
        role = self.columns.get(target)
        return [r for r in self.rows() if r.role == role]

    def sources_for(self, target: str, models) -> list[str]:
        """Source models whose transfer sets ``target`` is evaluated on: those of the same
        dataset × norm that are in the grid, except ``target`` itself."""
        by_name = {m.name: m for m in models}
        t = by_name[target]
        return [
            s.model
            for s in self.sources.values()
            if s.model != target
            and s.model in by_name
            and (by_name[s.model].dataset, by_name[s.model].norm) == (t.dataset, t.norm)
        ]


class ThreatModel(Strict):
    """A dataset × norm: its Figure 3 panel, headline ε and margin range."""

    dataset: Literal["mnist", "cifar10"]
    norm: Literal["linf", "l2"]
    curve_eps: list[PositiveFinite] = Field(min_length=1)  # Figure 3's x-axis: white-box PGD robust accuracy at each ε
    headline_eps: PositiveFinite  # AutoAttack and the gradient-masking checks run here
    margin_eps_max: PositiveFinite  # margins are searched up to this length
    boundary: Bool = False  # Figure 3(b): the Boundary attack curve for this threat model
    unbounded_eps: PositiveFinite  # the "unbounded" attack of the masking checks (covers the image box)

    @model_validator(mode="after")
    def _check(self):
        increasing(self.curve_eps, "curve_eps")
        return self

    @property
    def key(self) -> str:
        return f"{self.dataset}-{self.norm}"


def _grid(start: float, stop: float, step: float, scale: float = 1.0) -> list[float]:
    n = round((stop - start) / step) + 1
    return [round((start + i * step) * scale, 10) for i in range(n)]


def _paper_threat_models() -> list[ThreatModel]:
    return [
        ThreatModel(
            dataset="mnist",
            norm="linf",
            curve_eps=_grid(0.05, 0.5, 0.05),
            headline_eps=0.3,
            margin_eps_max=1.0,
            unbounded_eps=1.0,
        ),
        ThreatModel(
            dataset="mnist",
            norm="l2",
            curve_eps=_grid(0.5, 5.0, 0.5),
            headline_eps=2.0,
            margin_eps_max=10.0,
            boundary=True,
            unbounded_eps=28.0,
        ),
        ThreatModel(
            dataset="cifar10",
            norm="linf",
            curve_eps=_grid(2, 32, 2, 1 / 255),
            headline_eps=8 / 255,
            margin_eps_max=64 / 255,
            unbounded_eps=1.0,
        ),
        ThreatModel(
            dataset="cifar10",
            norm="l2",
            curve_eps=_grid(0.25, 2.5, 0.25),
            headline_eps=0.5,
            margin_eps_max=5.0,
            unbounded_eps=56.0,
        ),
    ]


class BoundaryParams(Strict):
    """The Boundary attack (Brendel et al. 2018) via foolbox: a minimal-L2 decision attack."""

    limit: Optional[PositiveInt] = 1000  # first N test images (the paper: 1,000, as for CW-L2)
    steps: PositiveInt = 25000  # foolbox's default
    spherical_step: PositiveFinite = 0.01
    source_step: PositiveFinite = 0.01
    step_adaptation: PositiveFinite = Field(1.5, gt=1)
    init_attempts: PositiveInt = 1000  # random-noise directions tried for a starting point (foolbox's default)
    init_steps: PositiveInt = 50  # blending steps per direction (foolbox's default for the Boundary attack)
    batch_size: PositiveInt = 100


class AutoAttackParams(Strict):
    """AutoAttack, standard version (APGD-CE, APGD-T, FAB-T, Square) at the headline ε."""

    enabled: Bool = True
    version: Literal["standard", "rand", "plus", "custom"] = "standard"
    attacks: list[str] = []  # only for version custom, e.g. ["apgd-ce", "apgd-t"] (cheaper; flagged in the report)
    limit: Optional[PositiveInt] = None  # first N test images; None = all evaluated
    batch_size: PositiveInt = 500
    # cheaper-than-standard overrides for smoke runs (the report then says "reduced"): None = the version's own
    n_iter: Optional[PositiveInt] = None  # APGD/FAB iterations (standard: 100)
    n_queries: Optional[PositiveInt] = None  # Square queries (standard: 5000)

    @property
    def reduced(self) -> bool:
        return self.version != "standard" or self.n_iter is not None or self.n_queries is not None


class MarginParams(Strict):
    """Per-example margin (minimal perturbation length) estimates and their cross-checks."""

    enabled: Bool = True
    limit: Optional[PositiveInt] = None  # first N test images; None = all evaluated
    an_pgd_steps: PositiveInt = 100  # AN-PGD's PGD steps (Algorithm 1)
    # AN-PGD's attack loss here: the hard logit margin (max_{j≠y} f_j − f_y) aims PGD at the nearest
    # boundary; the soft margin (training's choice) blends the other classes and overstates the margin
    an_pgd_loss: Literal["margin", "soft_margin", "ce"] = "margin"
    # AN-PGD's L2 PGD form (mma/config/__init__.py; Linf: no effect).  Not the authors' default: this
    # estimate is ours (their code measures no test margins), and from advertorch's start on the ε-sphere
    # PGD's direction keeps more of its random part: on a linear model whose margin is known, L2
    # AN-PGD's median overstatement is 1.8 % (90th percentile 10 %) against 0.9 % (2.9 %) with
    # torchattacks' start (tests/test_evaluation_margins.py)
    an_pgd_l2_pgd: L2PGD = "torchattacks"
    bisection_steps: PositiveInt = 10  # resolution margin_eps_max / 2**bisection_steps
    cross_check: Literal["fab", "none"] = "fab"  # minimal-norm attack: FAB (exact on linear models)
    fab_steps: PositiveInt = 100
    fab_restarts: PositiveInt = 1
    disagree_rtol: NonNegativeFinite = (
        0.1  # estimates disagree when they differ by > rtol · the smaller + one grid step
    )


class ChecksParams(Strict):
    """Gradient-masking checks (Carlini et al. 2019) at each threat model's headline ε."""

    enabled: Bool = True
    limit: Optional[PositiveInt] = None  # first N test images; None = all evaluated
    unbounded_steps: PositiveInt = 100  # PGD at unbounded_eps must reach ~0 %
    more_steps: PositiveInt = 1000  # PGD with many more steps than the curve attack
    more_restarts: PositiveInt = 10  # and with more restarts


class EvaluateParams(Strict):
    """Per target model: natural accuracy, white-box attacks, transfer sets, curves,
    AutoAttack, Boundary attack, margins and masking checks.  ``test_limit``,
    ``batch_size`` and ``loss`` are the transfer stage's too (its sets must cover the
    images evaluated)."""

    # every attack's loss unless its setting names one (the paper's default CE; the
    # authors' own evaluation: mixed)
    loss: Loss = "ce"
    curve_attack: str = "pgd100x1"  # Figure 3's white-box attack (a name in `attacks`) at every curve ε
    threat_models: list[ThreatModel] = Field(default_factory=_paper_threat_models)
    boundary: BoundaryParams = BoundaryParams()
    autoattack: AutoAttackParams = AutoAttackParams()
    margins: MarginParams = MarginParams()
    checks: ChecksParams = ChecksParams()
    # per_attack: every attack runs on every correctly classified example (each Table-1 row is
    # that attack's own number, as the paper's); cumulative: an attack runs only on examples
    # no earlier attack of its ε broke (cheaper; rows become "this and all earlier"); the worst
    # case is the same either way.  Restarts 2…R always run only on examples still robust.
    cascade: Literal["per_attack", "cumulative"] = "per_attack"
    test_limit: Optional[PositiveInt] = None  # first N test images; None = all 10,000
    batch_size: PositiveInt = 500  # examples per attack batch

    @model_validator(mode="after")
    def _check(self):
        keys = [t.key for t in self.threat_models]
        if len(set(keys)) != len(keys):
            raise ValueError(f"evaluate.threat_models: each dataset × norm once, got {keys}")
        return self

    def threat_model(self, dataset: str, norm: str) -> Optional[ThreatModel]:
        return next((t for t in self.threat_models if t.dataset == dataset and t.norm == norm), None)

    def check_attacks(self, curve: AttackSetting) -> dict[str, AttackSetting]:
        """The masking checks' attacks, derived from the curve attack: more steps, more
        restarts, and the unbounded-ε run (which must reach ~0 %)."""
        c = self.checks
        return {
            "more_steps": curve.model_copy(update={"attack": "pgd", "steps": c.more_steps, "restarts": 1}),
            "more_restarts": curve.model_copy(update={"attack": "pgd", "restarts": c.more_restarts}),
            "unbounded": curve.model_copy(update={"attack": "pgd", "steps": c.unbounded_steps, "restarts": 1}),
        }


class ReportParams(Strict):
    """Table 1, Figure 3, margin plots and the summary with the masking checks."""

    # The checks compare two runs on the same images; a difference flags only if it exceeds its
    # tolerance (% points) AND the one-sided exact McNemar test over the images the runs disagree
    # on rejects "equally strong" at `significance` (report/checks.py)
    significance: PositiveFinite = Field(0.01, lt=1)
    monotone_tol: NonNegativeFinite = 0.5  # % points a curve may rise with ε before it is flagged
    unbounded_max: NonNegativeFinite = 1.0  # % robust allowed at unbounded ε
    more_attack_tol: NonNegativeFinite = 0.1  # % points more steps/restarts may "help" the model
    # % points the masking checks' stronger attacks (more steps, more restarts; independent starts)
    # may lower the curve attack's robust accuracy before the curve attack is flagged as not converged
    more_attack_gain_tol: NonNegativeFinite = 2.0
    transfer_tol: NonNegativeFinite = 0.0  # % points transfer may beat white-box before it is flagged
    dpi: PositiveInt = Field(150, ge=50, le=1200)  # figure resolution
