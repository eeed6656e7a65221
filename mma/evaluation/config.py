"""The ``transfer:``, ``evaluate:`` and ``report:`` sections of params.yaml.

Every default is the paper's protocol (arXiv 1812.02637, Table 1 and Figure 3, plus
the checks issue 4 adds), so ``TransferParams()`` etc. are the paper's settings; the
smoke and quick profiles only change numbers.  ε is in pixel units of [0, 1].
Model names are strings matching ``models[].name``; an entry naming a model that is
not in the grid is skipped (the grid's MNIST-L2/CIFAR10 parts are switches).
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

Loss = Literal["ce", "cw", "mixed"]  # mixed: restarts alternate cross-entropy and CW loss


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AttackSetting(Strict):
    """One named attack setting: FGSM, or PGD with steps × restarts."""

    attack: Literal["fgsm", "pgd"] = "pgd"
    steps: int = Field(100, ge=1)  # PGD steps per restart (FGSM: ignored, one step of size ε)
    restarts: int = Field(1, ge=1)  # independent random starts (FGSM: ignored)
    loss: Optional[Loss] = None  # None: the section's `loss`
    step_size_factor: float = Field(2.5, gt=0)  # step size = factor·ε/steps (the paper's 2.5)
    random_init: bool = True  # PGD starts uniformly inside the ε-ball
    # the paper's setting this one stands in for in Table 1 (e.g. "pgd100x50"; a profile's
    # cheaper PGD-5×2); None: the setting's own name if it is one of the paper's
    as_paper: Optional[Literal["fgsm", "pgd40x1", "pgd40x50", "pgd100x1", "pgd100x50"]] = None

    def label(self) -> str:
        """Table-1 style name, e.g. 'PGD-100×50' or 'FGSM'."""
        return "FGSM" if self.attack == "fgsm" else f"PGD-{self.steps}×{self.restarts}"


def _paper_settings() -> dict[str, AttackSetting]:
    return {
        "fgsm": AttackSetting(attack="fgsm", steps=1, restarts=1, random_init=False),
        "pgd40x1": AttackSetting(steps=40, restarts=1),
        "pgd40x50": AttackSetting(steps=40, restarts=50),
        "pgd100x1": AttackSetting(steps=100, restarts=1),
        "pgd100x50": AttackSetting(steps=100, restarts=50),
    }


TABLE1_EPS = [0.3, 0.4, 0.5]
ALL_SETTINGS = ["fgsm", "pgd40x1", "pgd40x50", "pgd100x1", "pgd100x50"]


class TransferSource(Strict):
    """A source model of Table 1 and the attacks made on it (one set per setting × ε)."""

    role: str  # Table 1's source label: "MMA", "PGD" or "STD"
    model: str  # a models[].name
    settings: list[str]  # names in `settings`
    eps: list[float] = TABLE1_EPS  # pixel units


class TransferParams(Strict):
    """Adversarial test sets made on source models (restarts chosen on the source)."""

    settings: dict[str, AttackSetting] = Field(default_factory=_paper_settings)  # named attack settings
    # Table 1 (MNIST Linf): MMA source PGD-100 × {1, 50}; PGD and STD sources FGSM, PGD 40/100 × {1, 50}
    sources: list[TransferSource] = [
        TransferSource(role="MMA", model="mnist-linf-mma-v1", settings=["pgd100x1", "pgd100x50"]),
        TransferSource(role="PGD", model="mnist-linf-pgd-0.3", settings=ALL_SETTINGS),
        TransferSource(role="STD", model="mnist-linf-std", settings=ALL_SETTINGS),
    ]
    loss: Loss = "ce"  # loss of settings with loss None (the paper: cross-entropy)
    test_limit: Optional[int] = Field(None, ge=1)  # first N test images; None = all 10,000
    batch_size: int = Field(500, ge=1)  # examples per attack batch

    @model_validator(mode="after")
    def _check(self):
        for s in self.sources:
            unknown = [n for n in s.settings if n not in self.settings]
            if unknown:
                raise ValueError(f"transfer.sources[{s.model}]: unknown settings {unknown}; defined: {sorted(self.settings)}")
        roles = [s.role for s in self.sources]
        if len(set(roles)) != len(roles):
            raise ValueError(f"transfer.sources: each role must appear once, got {roles}")
        return self

    def source(self, model: str) -> Optional[TransferSource]:
        return next((s for s in self.sources if s.model == model), None)

    def sources_in(self, models) -> list[str]:
        """The source models that are in the grid (one transfer stage each)."""
        names = {m.name for m in models}
        return [s.model for s in self.sources if s.model in names]

    def role_model(self, role: str) -> Optional[str]:
        return next((s.model for s in self.sources if s.role == role), None)


class ThreatModel(Strict):
    """A dataset × norm: its Figure 3 panel, headline ε and margin range."""

    dataset: Literal["mnist", "cifar10"]
    norm: Literal["linf", "l2"]
    curve_eps: list[float]  # Figure 3's x-axis: white-box PGD robust accuracy at each ε
    headline_eps: float = Field(gt=0)  # AutoAttack and the gradient-masking checks run here
    margin_eps_max: float = Field(gt=0)  # margins are searched up to this length
    boundary: bool = False  # Figure 3(b): the Boundary attack curve for this threat model
    unbounded_eps: float = Field(gt=0)  # the "unbounded" attack of the masking checks (covers the image box)

    @property
    def key(self) -> str:
        return f"{self.dataset}-{self.norm}"


def _grid(start: float, stop: float, step: float, scale: float = 1.0) -> list[float]:
    n = round((stop - start) / step) + 1
    return [round((start + i * step) * scale, 10) for i in range(n)]


def _paper_threat_models() -> list[ThreatModel]:
    return [
        ThreatModel(dataset="mnist", norm="linf", curve_eps=_grid(0.05, 0.5, 0.05), headline_eps=0.3,
                    margin_eps_max=1.0, unbounded_eps=1.0),
        ThreatModel(dataset="mnist", norm="l2", curve_eps=_grid(0.5, 5.0, 0.5), headline_eps=2.0,
                    margin_eps_max=10.0, boundary=True, unbounded_eps=28.0),
        ThreatModel(dataset="cifar10", norm="linf", curve_eps=_grid(2, 32, 2, 1 / 255), headline_eps=8 / 255,
                    margin_eps_max=64 / 255, unbounded_eps=1.0),
        ThreatModel(dataset="cifar10", norm="l2", curve_eps=_grid(0.25, 2.5, 0.25), headline_eps=0.5,
                    margin_eps_max=5.0, unbounded_eps=56.0),
    ]


class BoundaryParams(Strict):
    """The Boundary attack (Brendel et al. 2018) via foolbox: a minimal-L2 decision attack."""

    limit: Optional[int] = Field(1000, ge=1)  # first N test images (the paper: 1,000, as for CW-L2)
    steps: int = Field(25000, ge=1)  # foolbox's default
    spherical_step: float = Field(0.01, gt=0)
    source_step: float = Field(0.01, gt=0)
    step_adaptation: float = Field(1.5, gt=1)
    init_attempts: int = Field(1000, ge=1)  # random-noise directions tried for a starting point (foolbox's default)
    init_steps: int = Field(50, ge=1)  # blending steps per direction (foolbox's default for the Boundary attack)
    batch_size: int = Field(100, ge=1)


class AutoAttackParams(Strict):
    """AutoAttack, standard version (APGD-CE, APGD-T, FAB-T, Square) at the headline ε."""

    enabled: bool = True
    version: Literal["standard", "rand", "plus", "custom"] = "standard"
    attacks: list[str] = []  # only for version custom, e.g. ["apgd-ce", "apgd-t"] (cheaper; flagged in the report)
    limit: Optional[int] = Field(None, ge=1)  # first N test images; None = all evaluated
    batch_size: int = Field(500, ge=1)
    # cheaper-than-standard overrides for smoke runs (the report then says "reduced"): None = the version's own
    n_iter: Optional[int] = Field(None, ge=1)  # APGD/FAB iterations (standard: 100)
    n_queries: Optional[int] = Field(None, ge=1)  # Square queries (standard: 5000)

    @property
    def reduced(self) -> bool:
        return self.version != "standard" or self.n_iter is not None or self.n_queries is not None


class MarginParams(Strict):
    """Per-example margin (minimal perturbation length) estimates and their cross-checks."""

    enabled: bool = True
    limit: Optional[int] = Field(None, ge=1)  # first N test images; None = all evaluated
    an_pgd_steps: int = Field(100, ge=1)  # AN-PGD's PGD steps (Algorithm 1)
    bisection_steps: int = Field(10, ge=1)  # resolution margin_eps_max / 2**bisection_steps
    cross_check: Literal["fab", "none"] = "fab"  # minimal-norm attack: FAB (exact on linear models)
    fab_steps: int = Field(100, ge=1)
    fab_restarts: int = Field(1, ge=1)
    disagree_rtol: float = Field(0.1, ge=0)  # estimates disagree when they differ by > rtol · the smaller + one grid step


class ChecksParams(Strict):
    """Gradient-masking checks (Carlini et al. 2019) at each threat model's headline ε."""

    enabled: bool = True
    limit: Optional[int] = Field(None, ge=1)  # first N test images; None = all evaluated
    unbounded_steps: int = Field(100, ge=1)  # PGD at unbounded_eps must reach ~0 %
    more_steps: int = Field(1000, ge=1)  # PGD with many more steps than the curve attack
    more_restarts: int = Field(10, ge=1)  # and with more restarts


class EvaluateParams(Strict):
    """Per target model: natural accuracy, white-box attacks, transfer sets, curves,
    AutoAttack, Boundary attack, margins and masking checks."""

    settings: dict[str, AttackSetting] = Field(default_factory=_paper_settings)  # white-box settings by name
    loss: Loss = "ce"  # white-box PGD loss (the paper's default CE; the authors' own evaluation: mixed)
    curve_setting: str = "pgd100x1"  # Figure 3's white-box attack at every ε on the curve grid
    threat_models: list[ThreatModel] = Field(default_factory=_paper_threat_models)
    # Table 1 columns: target model → its role; rows whose source role equals it run white-box on
    # the target, the others read the source's transfer set (see transfer.sources)
    table1_columns: dict[str, str] = {
        "mnist-linf-mma-v1": "MMA", "mnist-linf-pgd-0.3": "PGD", "mnist-linf-mma-0.45": "MMA", "mnist-linf-std": "STD",
    }
    boundary: BoundaryParams = BoundaryParams()
    autoattack: AutoAttackParams = AutoAttackParams()
    margins: MarginParams = MarginParams()
    checks: ChecksParams = ChecksParams()
    # per_attack: every attack runs on every correctly classified example (each Table-1 row is
    # that attack's own number, as the paper's); cumulative: an attack runs only on examples
    # no earlier attack of its ε broke (cheaper; rows become "this and all earlier"); the worst
    # case is the same either way.  Restarts 2…R always run only on examples still robust.
    cascade: Literal["per_attack", "cumulative"] = "per_attack"
    test_limit: Optional[int] = Field(None, ge=1)  # first N test images; None = all 10,000
    batch_size: int = Field(500, ge=1)  # examples per attack batch

    @model_validator(mode="after")
    def _check(self):
        if self.curve_setting not in self.settings:
            raise ValueError(f"evaluate.curve_setting {self.curve_setting!r} is not in evaluate.settings {sorted(self.settings)}")
        keys = [t.key for t in self.threat_models]
        if len(set(keys)) != len(keys):
            raise ValueError(f"evaluate.threat_models: each dataset × norm once, got {keys}")
        return self

    def threat_model(self, dataset: str, norm: str) -> Optional[ThreatModel]:
        return next((t for t in self.threat_models if t.dataset == dataset and t.norm == norm), None)

    def sources_for(self, name: str, models, transfer: Optional[TransferParams] = None) -> list[str]:
        """Source models whose transfer sets ``name`` is evaluated on (for dependency
        declarations): the Table-1 sources (``transfer.sources``, paper defaults when
        None) of the same dataset × norm that are in the grid, except ``name`` itself."""
        transfer = transfer if transfer is not None else TransferParams()
        by_name = {m.name: m for m in models}
        target = by_name.get(name)
        if target is None:
            raise KeyError(f"model {name!r} is not in models: {sorted(by_name)}")
        out = []
        for s in transfer.sources:
            src = by_name.get(s.model)
            if src is None or s.model == name:
                continue
            if (src.dataset, src.norm) == (target.dataset, target.norm):
                out.append(s.model)
        return out


class ReportParams(Strict):
    """Table 1, Figure 3, margin plots and the summary with the masking checks."""

    monotone_tol: float = Field(0.5, ge=0)  # % points a curve may rise with ε before it is flagged
    unbounded_max: float = Field(1.0, ge=0)  # % robust allowed at unbounded ε
    more_attack_tol: float = Field(0.1, ge=0)  # % points more steps/restarts may "help" the model (seed noise: ~10 of 10k images)
    transfer_tol: float = Field(0.0, ge=0)  # % points transfer may beat white-box before it is flagged
    dpi: int = Field(150, ge=50)  # figure resolution
