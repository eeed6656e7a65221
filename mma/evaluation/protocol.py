"""The evaluation protocol of one target model: which attacks run, in which order, on
which examples, producing one ``Results``.

Per ε the attacks form a cascade (see ``config.EvaluateParams.cascade``): transfer sets
first (a forward pass each), then white-box attacks from the cheapest.  White-box
settings that differ only in their number of restarts (PGD-100×1 and PGD-100×50) share
one run: restart r draws the same random start in both, so ×1 is the first restart of
×50 and its number is read off the same run.  Clean predictions are computed once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor, nn

from .config import AttackSetting, EvaluateParams, ThreatModel, TransferParams
from .results import NOT_RUN, RecordInfo, Results, eps_key
from .whitebox import predict, seed_for, survival


@dataclass
class Planned:
    """One white-box run (the most restarts asked for) and the records read off it."""

    eps: float
    setting: AttackSetting  # with the largest restarts of its group
    kind: str
    records: list[tuple[str, int, str, dict]] = field(default_factory=list)  # (key, restarts, setting name, extra)
    limit: Optional[int] = None  # first N examples only (a group of check attacks only: checks.limit)

    @property
    def cost(self) -> float:
        return 1 if self.setting.attack == "fgsm" else self.setting.steps * self.setting.restarts


def _signature(s: AttackSetting, loss: str) -> tuple:
    return (s.attack, s.steps, s.loss or loss, s.step_size_factor, s.random_init)


def whitebox_plan(name: str, tm: ThreatModel, ev: EvaluateParams, tr: TransferParams) -> list[Planned]:
    """Every white-box attack of ``name``: its Table-1 rows (role in evaluate.table1_columns:
    the settings and ε of transfer.sources' entry of that role), the Figure-3 curve, and the
    masking checks at the headline ε; grouped so shared runs run once."""
    wanted: list[tuple[float, str, AttackSetting, str, dict]] = []  # (eps, setting name, setting, kind, extra)
    role = ev.table1_columns.get(name)
    src = next((s for s in tr.sources if s.role == role), None) if role else None
    if src is not None:
        for sname in src.settings:
            if sname not in ev.settings:
                raise ValueError(f"transfer.sources[{src.model}] setting {sname!r} is not in evaluate.settings "
                                 f"(white-box rows of {name} need it): add it there")
            for e in src.eps:
                wanted.append((e, sname, ev.settings[sname], "whitebox", {"table1": True}))
    curve = ev.settings[ev.curve_setting]
    for e in tm.curve_eps:
        wanted.append((e, ev.curve_setting, curve, "whitebox", {"curve": True}))
    if ev.checks.enabled:
        h = tm.headline_eps
        more_steps = curve.model_copy(update={"steps": ev.checks.more_steps, "restarts": 1, "attack": "pgd"})
        more_restarts = curve.model_copy(update={"restarts": ev.checks.more_restarts, "attack": "pgd"})
        unbounded = curve.model_copy(update={"steps": ev.checks.unbounded_steps, "restarts": 1, "attack": "pgd"})
        wanted.append((h, f"{ev.curve_setting}-steps{ev.checks.more_steps}", more_steps, "check",
                       {"check": "more_steps", "base": ev.curve_setting}))
        wanted.append((h, f"{ev.curve_setting}-restarts{ev.checks.more_restarts}", more_restarts, "check",
                       {"check": "more_restarts", "base": ev.curve_setting}))
        wanted.append((tm.unbounded_eps, f"{ev.curve_setting}-unbounded", unbounded, "check", {"check": "unbounded"}))

    groups: dict[tuple, Planned] = {}
    for e, sname, s, kind, extra in wanted:
        sig = (eps_key(e), _signature(s, ev.loss))
        key = f"wb/{sname}/{eps_key(e)}"
        g = groups.get(sig)
        if g is None:
            g = groups[sig] = Planned(eps=e, setting=s, kind=kind)
        elif s.restarts > g.setting.restarts:
            g.setting = s
        if kind == "whitebox":
            g.kind = "whitebox"
        old = next((r for r in g.records if r[0] == key), None)
        if old:
            old[3].update(extra)
        else:
            g.records.append((key, 1 if s.attack == "fgsm" else s.restarts, sname, dict(extra)))
    for g in groups.values():
        if all(r[3].get("check") for r in g.records):
            g.limit = ev.checks.limit
    return sorted(groups.values(), key=lambda g: (g.eps, g.cost))


def evaluate_model(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    name: str,
    tm: ThreatModel,
    ev: EvaluateParams,
    tr: TransferParams,
    seed: int,
    transfer_sets: list[tuple[dict, Tensor]] = (),
    timings: Optional[dict] = None,
    show_progress: bool = True,
) -> Results:
    """All attacks on one model.  x: (N, ...) float in [0, 1] on the model's device;
    transfer_sets: (info dict with source/setting/label/eps/restarts/loss, uint8 images (N, ...))."""
    import time

    timings = {} if timings is None else timings
    device = x.device
    bs = ev.batch_size
    clean_pred = predict(model, x, bs)
    res = Results(y, clean_pred == y)
    cumulative = ev.cascade == "cumulative"

    def active_at(e: float) -> Tensor:
        base = res.clean_correct
        return (base & res.worst_case(e)) if cumulative else base

    # transfer sets: a forward pass each, on every example (cheap, and each row's own number)
    t0 = time.monotonic()
    for info, x_u8 in transfer_sets:
        if x_u8.shape[0] < x.shape[0]:
            raise ValueError(f"transfer set {info['source']}/{info['file']} has {x_u8.shape[0]} images, the evaluation "
                             f"{x.shape[0]}: rerun `mma transfer {info['source']}` with transfer.test_limit ≥ evaluate.test_limit")
        with torch.no_grad():
            pred = predict(model, x_u8[: x.shape[0]].to(device).float().div_(255), bs)
        key = f"tr/{info['source']}/{info['setting']}/{eps_key(info['eps'])}"
        res.add(RecordInfo(key=key, kind="transfer", eps=float(info["eps"]), restarts=1, setting=info["setting"],
                           label=info["label"], source=info["source"], loss=info.get("loss", "")),
                (pred == y).to(torch.int16).cpu())
    timings["transfer"] = time.monotonic() - t0

    t0 = time.monotonic()
    for g in whitebox_plan(name, tm, ev, tr):
        active = active_at(g.eps)
        if g.limit is not None:
            active = active & (torch.arange(len(active)) < g.limit)
        s = survival(model, x, y, g.eps, g.setting, norm=tm.norm, loss=ev.loss,
                     seed=seed_for(seed, name, "wb", _signature(g.setting, ev.loss), eps_key(g.eps)),
                     active=active.to(device), clean_pred=clean_pred, batch_size=bs,
                     description=f"{name}: {g.setting.label()} ε={g.eps:.4g}", show_progress=show_progress)
        if g.limit is not None:  # inside the subset, not attacked = not robust (misclassified, or broken earlier)
            head = s[: g.limit]
            head[head == NOT_RUN] = 0
        for key, r, sname, extra in g.records:
            sub = torch.where(s == NOT_RUN, s, s.clamp(max=r))
            label = AttackSetting.label(g.setting.model_copy(update={"restarts": r}))
            res.add(RecordInfo(key=key, kind=g.kind if not extra.get("check") else "check", eps=float(g.eps),
                               restarts=r, setting=sname, label=label, loss=g.setting.loss or ev.loss,
                               subset=_is_subset(g.limit, len(y)), extra=extra), sub)
    timings["whitebox"] = time.monotonic() - t0
    n = x.shape[0]

    if ev.autoattack.enabled:  # its own number (beside the published anchors): every correct example
        from .autoattack import autoattack_robust

        t0 = time.monotonic()
        s, attacks = autoattack_robust(model, x, y, res.clean_correct.to(device), ev.autoattack, eps=tm.headline_eps,
                                       norm=tm.norm, seed=seed_for(seed, name, "aa"), device=device)
        res.add(RecordInfo(key=f"aa/{eps_key(tm.headline_eps)}", kind="autoattack", eps=tm.headline_eps,
                           setting=f"autoattack-{ev.autoattack.version}", label=f"AutoAttack ({ev.autoattack.version}: "
                           f"{', '.join(attacks)})", subset=_is_subset(ev.autoattack.limit, n),
                           extra={"attacks": attacks}), s)
        timings["autoattack"] = time.monotonic() - t0

    if tm.boundary:
        from .boundary import boundary_distances

        t0 = time.monotonic()
        d = boundary_distances(model, x, y, res.clean_correct.to(device), ev.boundary, seed=seed_for(seed, name, "ba"),
                               device=device)
        res.values["boundary_l2"] = d
        for e in tm.curve_eps:
            s = torch.where(torch.isnan(d), torch.full_like(d, NOT_RUN), (d > e).double()).to(torch.int16)
            res.add(RecordInfo(key=f"boundary/{eps_key(e)}", kind="boundary", eps=float(e), setting="boundary",
                               label=f"Boundary attack ({ev.boundary.steps} steps)",
                               subset=_is_subset(ev.boundary.limit, n), extra={"curve": True}), s)
        timings["boundary"] = time.monotonic() - t0

    if ev.margins.enabled:
        t0 = time.monotonic()
        margin_summary = _margins(model, x, y, res, name=name, tm=tm, ev=ev, seed=seed, device=device)
        res.summary["margins"] = margin_summary
        timings["margins"] = time.monotonic() - t0
    return res


def _is_subset(limit: Optional[int], n: int) -> bool:
    return limit is not None and limit < n


def _margins(model, x, y, res: Results, *, name, tm: ThreatModel, ev: EvaluateParams, seed, device) -> dict:
    """Margins of the first ``margins.limit`` examples (values nan beyond); summary dict."""
    from .margins import anpgd_margins, combine, fab_margins, sweep_bounds

    n = x.shape[0]
    m = n if ev.margins.limit is None else min(n, ev.margins.limit)
    by_eps = {e: res.robust(f"wb/{ev.curve_setting}/{eps_key(e)}", 1) for e in tm.curve_eps}
    upper, lower = sweep_bounds(by_eps)
    active = res.clean_correct.clone()
    active[m:] = False
    eps_init = torch.where(torch.isfinite(upper), upper, torch.full_like(upper, max(tm.curve_eps)))
    estimates = {"anpgd": anpgd_margins(model, x, y, active.to(device), eps_init, norm=tm.norm,
                                        eps_max=tm.margin_eps_max, params=ev.margins, batch_size=ev.batch_size,
                                        seed=seed_for(seed, name, "anpgd"))}
    if ev.margins.cross_check == "fab":
        estimates["fab"] = fab_margins(model, x, y, active.to(device), norm=tm.norm, eps_max=tm.margin_eps_max,
                                       params=ev.margins, batch_size=ev.batch_size, seed=seed_for(seed, name, "fab"),
                                       device=device)
    margin, summary = combine(active, estimates, upper, lower, eps_max=tm.margin_eps_max, rtol=ev.margins.disagree_rtol)
    nan = torch.full((n,), math.nan, dtype=torch.float64)
    keep = torch.arange(n) < m
    for k, v in {**{f"margin_{k}": v for k, v in estimates.items()}, "margin": margin,
                 "margin_sweep_upper": upper}.items():
        res.values[k] = torch.where(keep, v, nan)
    summary["limit"] = float(m)
    return summary
