"""The evaluation protocol of one target model: which attacks run, in which order, on
which examples, producing one ``Results``.

Per ε the attacks form a cascade (see ``EvaluateParams.cascade``): transfer sets first
(a forward pass each), then white-box attacks from the cheapest.  Every white-box
setting is its own run with its own random starts, including settings that differ only
in their number of restarts (PGD-100×1 and PGD-100×50): were ×1 the first restart of
×50, "×50 leaves the model no more robust than ×1" would hold by construction and its
check could never fail.  The masking checks' attacks run on every correctly classified
example whatever the cascade, so they are compared with the curve attack on equal terms.
Clean predictions are computed once.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Optional

import torch
from torch import Tensor, nn

from ..attacks import attack_kind
from ..config.evaluation import AttackSetting, EvaluateParams, ThreatModel
from .finite import finite_logits
from .records import Record, attack_fields, attack_record, parse_key
from .results import NOT_RUN, Results, eps_key
from .whitebox import predict, seed_for, survival, whitebox_seed


@dataclass(frozen=True)
class WhiteboxAttack:
    """One white-box attack the protocol asks for: ``setting`` at ``eps`` on the first
    ``limit`` images (None: all evaluated).  ``independent``: on every correctly classified
    example even in a cumulative cascade (a check compared with another attack must not
    start where that one left off)."""

    eps: float
    setting: AttackSetting
    limit: Optional[int] = None
    independent: bool = False


def whitebox_attacks(name: str, tm: ThreatModel, params) -> list[WhiteboxAttack]:
    """Every white-box attack on model ``name``: its Table-1 rows (``table1.whitebox_rows``),
    Figure 3's curve at every curve ε, and the masking checks at the headline ε."""
    ev = params.evaluate
    out = [WhiteboxAttack(r.eps, params.attacks[r.attack]) for r in params.table1.whitebox_rows(name)]
    curve = params.curve_attack()
    out += [WhiteboxAttack(e, curve) for e in tm.curve_eps]
    if ev.checks.enabled:
        checks = ev.check_attacks(curve)
        out += [
            WhiteboxAttack(tm.headline_eps, checks["more_steps"], ev.checks.limit, independent=True),
            WhiteboxAttack(tm.headline_eps, checks["more_restarts"], ev.checks.limit, independent=True),
            WhiteboxAttack(tm.unbounded_eps, checks["unbounded"], ev.checks.limit, independent=True),
        ]
    return out


@dataclass
class Planned:
    """One white-box run: the attacks asking for the same setting at the same ε."""

    eps: float
    setting: AttackSetting
    limit: Optional[int] = None  # the first N examples only (when every attack of the group asks for that)
    full: bool = False  # some attack of the group wants every example
    independent: bool = False  # some attack of the group must see every correct example (see WhiteboxAttack)

    @property
    def cost(self) -> float:
        return attack_kind(self.setting.attack).gradient_steps(self.setting)


def whitebox_plan(attacks: list[WhiteboxAttack], loss: str) -> list[Planned]:
    """The attacks grouped so that equal settings at equal ε run once, cheapest first."""
    groups: dict[tuple, Planned] = {}
    for a in attacks:
        sig = (eps_key(a.eps), *attack_fields(a.setting, loss).values())
        g = groups.setdefault(sig, Planned(eps=a.eps, setting=a.setting))
        g.independent |= a.independent
        if a.limit is None:
            g.full = True
        else:
            g.limit = max(g.limit or 0, a.limit)
    for g in groups.values():
        if g.full:
            g.limit = None
    return sorted(groups.values(), key=lambda g: (g.eps, g.cost))


def transfer_record(entry: dict, n: int) -> Record:
    """The record of a transfer set (an entry of a source's manifest) evaluated on n images."""
    return replace(parse_key(entry["record"]), n=n)


def evaluate_model(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    name: str,
    tm: ThreatModel,
    ev: EvaluateParams,
    whitebox: list[WhiteboxAttack],
    curve: AttackSetting,
    seed: int,
    transfer_sets: list[tuple[dict, Tensor]] = (),
    timings: Optional[dict] = None,
    show_progress: bool = True,
) -> Results:
    """All attacks on one model.  x: (N, ...) float in [0, 1] on the model's device;
    whitebox: see ``whitebox_attacks``; curve: Figure 3's attack (its ε-sweep seeds the margins);
    transfer_sets: (manifest entry, uint8 images (≥ N, ...)).  ``timings`` receives each
    phase's wall seconds (transfer, whitebox, then autoattack, boundary, margins when they run)."""
    timings = {} if timings is None else timings
    model = finite_logits(model, name)  # every forward below: non-finite logits stop the evaluation
    device = x.device
    clean_pred = predict(model, x, ev.batch_size)
    res = Results(y, clean_pred == y)

    t0 = time.monotonic()
    _add_transfer_sets(res, model, x, y, transfer_sets, batch_size=ev.batch_size)
    timings["transfer"] = time.monotonic() - t0

    t0 = time.monotonic()
    _add_whitebox(
        res, model, x, y, clean_pred, name=name, tm=tm, ev=ev, whitebox=whitebox, seed=seed, show_progress=show_progress
    )
    timings["whitebox"] = time.monotonic() - t0

    # these two time themselves: their lazy imports stay out of timings
    if ev.autoattack.enabled:  # its own number (beside the published anchors): every correct example
        _add_autoattack(res, model, x, y, name=name, tm=tm, ev=ev, seed=seed, timings=timings)
    if tm.boundary:
        _add_boundary(res, model, x, y, name=name, tm=tm, ev=ev, seed=seed, timings=timings)
    if ev.margins.enabled:
        t0 = time.monotonic()
        margin_summary = _margins(model, x, y, res, name=name, tm=tm, ev=ev, curve=curve, seed=seed, device=device)
        res.summary["margins"] = margin_summary
        timings["margins"] = time.monotonic() - t0
    model.check()  # a GPU gradient step's flag not read yet
    return res


def _add_transfer_sets(
    res: Results, model, x: Tensor, y: Tensor, transfer_sets: list[tuple[dict, Tensor]], *, batch_size: int
) -> None:
    """One record per transfer set: a forward pass each, on every example (cheap, and each
    row's own number).  A set with fewer images than the evaluation is refused (ValueError)."""
    n = x.shape[0]
    for entry, x_u8 in transfer_sets:
        record = transfer_record(entry, n)
        if x_u8.shape[0] < n:
            raise ValueError(
                f"transfer set {record.source}/{entry['file']} has {x_u8.shape[0]} images, the evaluation "
                f"{n}: rerun `mma transfer {record.source}` with the same evaluate.test_limit"
            )
        with torch.no_grad():
            pred = predict(model, x_u8[:n].to(x.device).float().div_(255), batch_size)
        # restarts were chosen on the source: robust to the set (survived = R) = still correct
        res.add(record, (pred == y).to(torch.int16).cpu() * record.restarts)


def _add_whitebox(
    res: Results,
    model,
    x: Tensor,
    y: Tensor,
    clean_pred: Tensor,
    *,
    name: str,
    tm: ThreatModel,
    ev: EvaluateParams,
    whitebox: list[WhiteboxAttack],
    seed: int,
    show_progress: bool,
) -> None:
    """One record per run of ``whitebox_plan``, cheapest first within each ε, each on the
    examples ``_attacked`` picks."""
    n = x.shape[0]
    for g in whitebox_plan(whitebox, ev.loss):
        m = n if g.limit is None else min(n, g.limit)
        active = _attacked(res, g, ev.cascade == "cumulative") & (torch.arange(n) < m)
        s = survival(
            model,
            x,
            y,
            g.eps,
            g.setting,
            norm=tm.norm,
            loss=ev.loss,
            seed=whitebox_seed(seed, name, g.setting, ev.loss, g.eps),
            active=active.to(x.device),
            clean_pred=clean_pred,
            batch_size=ev.batch_size,
            description=f"{name}: {g.setting.label()} ε={g.eps:.4g}",
            show_progress=show_progress,
        )
        if m < n:  # inside the subset, not attacked = not robust (misclassified, or broken earlier)
            head = s[:m]
            head[head == NOT_RUN] = 0
        res.add(attack_record("whitebox", g.setting, g.eps, loss=ev.loss, n=m, seed=seed), s)


def _attacked(res: Results, g: Planned, cumulative: bool) -> Tensor:
    """(N,) bool: the examples run ``g`` may attack (before its limit): the correctly
    classified ones; in a cumulative cascade only those no earlier record at ``g.eps``
    broke, unless ``g`` is independent."""
    if g.independent or not cumulative:
        return res.clean_correct
    return res.clean_correct & res.worst_case(g.eps)


def _add_autoattack(
    res: Results, model, x: Tensor, y: Tensor, *, name: str, tm: ThreatModel, ev: EvaluateParams, seed: int, timings
) -> None:
    """AutoAttack's record at the headline ε, run on every correctly classified example."""
    from .autoattack import autoattack_robust

    t0 = time.monotonic()
    s, attacks = autoattack_robust(
        model,
        x,
        y,
        res.clean_correct.to(x.device),
        ev.autoattack,
        eps=tm.headline_eps,
        norm=tm.norm,
        seed=seed_for(seed, name, "aa"),
        device=x.device,
    )
    res.add(
        Record(
            kind="autoattack",
            attack="_".join(attacks),
            eps=float(tm.headline_eps),
            steps=ev.autoattack.n_iter or 1,
            n=_covered(ev.autoattack.limit, x.shape[0]),
            seed=seed,
        ),
        s,
    )
    timings["autoattack"] = time.monotonic() - t0


def _add_boundary(
    res: Results, model, x: Tensor, y: Tensor, *, name: str, tm: ThreatModel, ev: EvaluateParams, seed: int, timings
) -> None:
    """The boundary attack's L2 distances (``res.values["boundary_l2"]``, nan where it did
    not run) and one record per curve ε: robust where the distance exceeds ε."""
    from .boundary import boundary_distances

    t0 = time.monotonic()
    d = boundary_distances(
        model, x, y, res.clean_correct.to(x.device), ev.boundary, seed=seed_for(seed, name, "ba"), device=x.device
    )
    res.values["boundary_l2"] = d
    for e in tm.curve_eps:
        s = torch.where(torch.isnan(d), torch.full_like(d, NOT_RUN), (d > e).double()).to(torch.int16)
        res.add(
            Record(
                kind="boundary",
                attack="boundary",
                eps=float(e),
                steps=ev.boundary.steps,
                n=_covered(ev.boundary.limit, x.shape[0]),
                seed=seed,
            ),
            s,
        )
    timings["boundary"] = time.monotonic() - t0


def _covered(limit: Optional[int], n: int) -> int:
    """How many of the n evaluated images an attack with ``limit`` covers."""
    return n if limit is None else min(n, limit)


def _margins(
    model, x, y, res: Results, *, name, tm: ThreatModel, ev: EvaluateParams, curve: AttackSetting, seed, device
) -> dict:
    """Margins of the first ``margins.limit`` examples (values nan beyond); summary dict."""
    from .margins import anpgd_margins, combine, fab_margins, sweep_bounds

    n = x.shape[0]
    m = n if ev.margins.limit is None else min(n, ev.margins.limit)
    fields = attack_fields(curve, ev.loss)
    by_eps = {e: res.robust(res.find(kind="whitebox", eps=e, **fields)) for e in tm.curve_eps}
    upper, lower = sweep_bounds(by_eps)
    active = res.clean_correct.clone()
    active[m:] = False
    eps_init = torch.where(torch.isfinite(upper), upper, torch.full_like(upper, max(tm.curve_eps)))
    estimates = {
        "anpgd": anpgd_margins(
            model,
            x,
            y,
            active.to(device),
            eps_init,
            norm=tm.norm,
            eps_max=tm.margin_eps_max,
            params=ev.margins,
            batch_size=ev.batch_size,
            seed=seed_for(seed, name, "anpgd"),
        )
    }
    if ev.margins.cross_check == "fab":
        estimates["fab"] = fab_margins(
            model,
            x,
            y,
            active.to(device),
            norm=tm.norm,
            eps_max=tm.margin_eps_max,
            params=ev.margins,
            batch_size=ev.batch_size,
            seed=seed_for(seed, name, "fab"),
            device=device,
        )
    margin, summary = combine(active, estimates, upper, lower, eps_max=tm.margin_eps_max, rtol=ev.margins.disagree_rtol)
    nan = torch.full((n,), math.nan, dtype=torch.float64)
    keep = torch.arange(n) < m
    for k, v in {
        **{f"margin_{k}": v for k, v in estimates.items()},
        "margin": margin,
        "margin_sweep_upper": upper,
    }.items():
        res.values[k] = torch.where(keep, v, nan)
    summary["limit"] = float(m)
    return summary
