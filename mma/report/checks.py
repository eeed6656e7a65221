"""Gradient-masking checks (Carlini et al. 2019, "On Evaluating Adversarial Robustness"),
each a pass/flag with its numbers, computed from one model's evaluation results.

* monotone: the white-box curve's robust accuracy never rises with ε (each point is its
  own run).  The Boundary curve is not checked: one run gives each example a distance d
  and the curve is mean(d > ε), non-increasing by construction, so the check could not fail.
* unbounded: PGD at an ε covering the whole image box reaches ~0 %.
* more_attack: more steps or more restarts never leave the model *more* robust, and (for
  the curve attack, whose numbers Figure 3 reports alone) they do not find much more than
  it: a larger gain says the curve attack has not converged (masked gradients, too few
  steps or restarts) and overstates robustness.  Every attack is its own run with its own
  random starts (``evaluation.protocol``): a ×R run that contained the ×1 run could never
  be beaten by it.  Compared on the examples both attacks ran on.
* transfer: no transfer set is stronger than the strongest white-box attack of its ε on
  the same images (the paper's own Table 1 fails this for MMA: transfer from the PGD
  model 92.86 % vs white-box PGD-100×50 93.64 % at 0.3 — a sign of masked gradients; we
  flag, never hide).

Every comparison of two runs is paired (the same images) and noise-aware: two independent
runs of equally strong attacks differ by a few images on a few hundred (two seeds of the
quick preset flagged 6 and 7 of 48 checks at 1–4 points on 200 images with a bare 0.1-point
tolerance).  A difference flags only if it exceeds its tolerance in percent points *and* the
images that went the unexpected way outnumber those that went the other way beyond chance:
the one-sided exact McNemar test (binomial, p = 1/2, over the discordant images) at
``report.significance``.  Each check shows both counts and its p-value.
"""

from __future__ import annotations

from math import comb

from torch import Tensor

from ..evaluation.records import attack_fields, label
from ..evaluation.results import NOT_RUN, Results


def _entry(model, check, ok, detail, **numbers) -> dict:
    return {"model": model, "check": check, "status": "pass" if ok else "flag", "detail": detail, **numbers}


def one_sided_mcnemar(against: int, towards: int) -> float:
    """P(X ≥ ``against``) for X ~ Binomial(``against`` + ``towards``, 1/2): the chance that,
    of the images two equally strong runs disagree on, at least ``against`` go the unexpected
    way.  1.0 when they agree on every image."""
    n = against + towards
    return sum(comb(n, k) for k in range(against, n + 1)) / 2**n


def _discordant(res: Results, expected_weaker, expected_stronger, rows: Tensor) -> tuple[int, int]:
    """(against, towards) on ``rows``: images robust under the run expected to be stronger
    but broken by the other one, and the reverse."""
    weak, strong = res.robust(expected_weaker) & rows, res.robust(expected_stronger) & rows
    return int((strong & ~weak).sum()), int((weak & ~strong).sum())


def _noise(against: int, towards: int) -> tuple[float, str]:
    p = one_sided_mcnemar(against, towards)
    return p, f"{against} images went the unexpected way, {towards} the expected one; McNemar p = {p:.2g}"


def masking_checks(name: str, res: Results, tm, params) -> list[dict]:
    """The checks of model ``name`` (threat model ``tm``), tolerances from ``params.report``."""
    tol, ev = params.report, params.evaluate
    curve = attack_fields(params.curve_attack(), ev.loss)
    out = _monotone_check(name, res, tm, curve, tol)
    if ev.checks.enabled:
        out += _stronger_attack_checks(name, res, tm, curve, params)
    out += _table1_pair_checks(name, res, params)
    out += _transfer_vs_whitebox_checks(name, res, tol)
    return out


def _monotone_check(name: str, res: Results, tm, curve: dict, tol) -> list[dict]:
    """Monotone in ε: the white-box curve (the Boundary curve is monotone by construction);
    each neighbouring pair of points compared on the images both ran on."""
    family = "white-box curve"
    recs = sorted(
        (r for e in tm.curve_eps if (r := res.find(kind="whitebox", eps=e, **curve)) is not None), key=lambda r: r.eps
    )
    if len(recs) < 2:
        return []
    pts = [(r.eps, res.accuracy(r)) for r in recs]
    rises = []
    for lo, hi in zip(recs, recs[1:]):
        rows = res.ran(lo) & res.ran(hi)
        x, y = res.accuracy_on(lo, rows), res.accuracy_on(hi, rows)
        p, counts = _noise(*_discordant(res, lo, hi, rows))  # the larger ε is expected to break more
        if y > x + tol.monotone_tol and p < tol.significance:
            rises.append(f"ε {lo.eps:g}→{hi.eps:g}: {x:.2f}→{y:.2f} % on {int(rows.sum())} images ({counts})")
    detail = (
        f"{family}: accuracy rises with ε at " + ", ".join(rises)
        if rises
        else f"{family}: no significant rise over {len(pts)} ε ({pts[0][1]:.2f} % → {pts[-1][1]:.2f} %)"
    )
    return [_entry(name, f"monotone/{family}", not rises, detail, curve=[list(p) for p in pts])]


def _stronger_attack_checks(name: str, res: Results, tm, curve: dict, params) -> list[dict]:
    """The configured checks (``evaluate.checks``): the unbounded ε reaches ~0 %, and more steps /
    restarts than the curve attack never help the model."""
    tol, ev = params.report, params.evaluate
    out = []
    checks = {k: attack_fields(s, ev.loss) for k, s in ev.check_attacks(params.curve_attack()).items()}
    # unbounded ε
    r = res.find(kind="whitebox", eps=tm.unbounded_eps, **checks["unbounded"])
    if r is not None:
        acc = res.accuracy(r)
        out.append(
            _entry(
                name,
                "unbounded",
                acc <= tol.unbounded_max,
                f"{label(r)} at ε {r.eps:g} (covers the image box), {r.n} images: {acc:.2f} % robust "
                f"(must be ≤ {tol.unbounded_max:g} %)",
                accuracy=acc,
                eps=r.eps,
            )
        )
    # more steps / restarts never help the model
    base = res.find(kind="whitebox", eps=tm.headline_eps, **curve)
    for check in ("more_steps", "more_restarts"):
        strong = res.find(kind="whitebox", eps=tm.headline_eps, **checks[check])
        if base is None or strong is None or strong == base:
            continue
        out.append(_compare(name, f"more_attack/{check}", res, base, strong, tol, gain_tol=tol.more_attack_gain_tol))
    return out


def _table1_pair_checks(name: str, res: Results, params) -> list[dict]:
    """Table 1's white-box PGD pairs: more steps (same restarts), more restarts (same steps)."""
    ev, out = params.evaluate, []
    table1 = [
        attack_fields(params.attacks[r.attack], ev.loss) | {"eps": r.eps} for r in params.table1.whitebox_rows(name)
    ]
    pgd = [r for f in table1 if f["attack"] == "pgd" for r in res.select(kind="whitebox", **f)]
    for a in pgd:
        for b in pgd:
            same = a.matches(eps=b.eps, loss=b.loss, step_factor=b.step_factor, clean_start=b.clean_start)
            more_steps = b.steps > a.steps and b.restarts == a.restarts
            more_restarts = b.steps == a.steps and b.restarts > a.restarts
            if same and (more_steps or more_restarts):
                out.append(_compare(name, "more_attack/table1", res, a, b, params.report))
    return out


def _transfer_vs_whitebox_checks(name: str, res: Results, tol) -> list[dict]:
    """Transfer not stronger than white-box, on the images the transfer sets cover (a subset
    white-box run, e.g. a check on checks.limit images, is not compared with a full set)."""
    out = []
    for eps in res.eps_values():
        tr = [(res.accuracy(r), r) for r in res.select(kind="transfer", eps=eps)]
        if not tr:
            continue
        ta, ti = min(tr, key=lambda t: t[0])
        rows = res.ran(ti)
        wbs = [
            (res.accuracy_on(r, rows), r) for r in res.select(kind="whitebox", eps=eps) if bool(res.ran(r)[rows].all())
        ]
        if not wbs:
            continue
        wa, wi = min(wbs, key=lambda t: t[0])
        p, counts = _noise(*_discordant(res, ti, wi, rows))  # white-box is expected to break more
        stronger = ta < wa - tol.transfer_tol and p < tol.significance
        out.append(
            _entry(
                name,
                "transfer_vs_whitebox",
                not stronger,
                f"ε {eps:g}, {int(rows.sum())} images: strongest transfer {label(ti)} {ta:.2f} % vs strongest "
                f"white-box {label(wi)} {wa:.2f} % ({counts})"
                + (" — transfer is stronger: possible gradient masking" if stronger else ""),
                transfer_accuracy=ta,
                whitebox_accuracy=wa,
                eps=eps,
                p_value=p,
            )
        )
    return out


def _compare(name, check, res: Results, base, strong, tol, *, gain_tol=None) -> dict:
    """The stronger attack must not leave the model more robust than the base one (more than
    ``tol.more_attack_tol``) nor, with ``gain_tol``, find more than ``gain_tol`` % points
    more than it (the base has not converged) — each only where the discordant images say it
    beyond chance (``tol.significance``).  Compared on the examples both covered and
    both attacked: an example a cumulative cascade skipped in either (broken earlier) is left out."""
    skipped = res.clean_correct & ((res.survived[base] == NOT_RUN) | (res.survived[strong] == NOT_RUN))
    rows = res.ran(base) & res.ran(strong) & ~skipped
    a, b = res.accuracy_on(base, rows), res.accuracy_on(strong, rows)
    against, towards = _discordant(res, base, strong, rows)
    p_weaker, p_gains = one_sided_mcnemar(against, towards), one_sided_mcnemar(towards, against)
    weaker = b > a + tol.more_attack_tol and p_weaker < tol.significance
    gains = gain_tol is not None and b < a - gain_tol and p_gains < tol.significance
    detail = (
        f"ε {base.eps:g}, {int(rows.sum())} images: {label(base)} {a:.2f} % vs {label(strong)} {b:.2f} % "
        f"(robust only under the stronger: {against}, only under the base: {towards}; "
        f"one-sided McNemar p = {p_weaker:.2g} for 'weaker', {p_gains:.2g} for 'gains')"
    )
    if weaker:
        detail += " — the stronger attack left the model more robust (an unreliable attack)"
    if gains:
        detail += (
            f" — the stronger attack breaks {a - b:.2f} % points more than the base (> {gain_tol:g}): the base "
            "has not converged (masked gradients, too few steps or restarts) and overstates robustness"
        )
    return _entry(
        name,
        check,
        not (weaker or gains),
        detail,
        base_accuracy=a,
        stronger_accuracy=b,
        eps=base.eps,
        robust_only_under_stronger=against,
        robust_only_under_base=towards,
    )


def paper_table1_transfer_check(tol) -> list[dict]:
    """The same transfer check on the paper's own Table 1 numbers (to show what it catches)."""
    from .reference import table1_rows

    out = []
    rows = table1_rows()
    for role in ("MMA", "PGD"):
        for eps in sorted({r["eps"] for r in rows if r["eps"] is not None}):
            wb = [r for r in rows if r["eps"] == eps and r["source"] == role]
            tr = [r for r in rows if r["eps"] == eps and r["source"] not in ("", role)]
            if not wb or not tr:
                continue
            w, t = min(wb, key=lambda r: r[role]), min(tr, key=lambda r: r[role])
            ok = t[role] >= w[role] - tol.transfer_tol
            out.append(
                _entry(
                    f"paper {role} model",
                    "transfer_vs_whitebox",
                    ok,
                    f"paper Table 1, ε {eps:g}: transfer {t['attack']}-{t['steps'] or ''}×{t['restarts'] or ''} "
                    f"from {t['source']} {t[role]:.2f} % vs white-box {w['attack']}-{w['steps'] or ''}×"
                    f"{w['restarts'] or ''} {w[role]:.2f} %",
                    transfer_accuracy=t[role],
                    whitebox_accuracy=w[role],
                    eps=eps,
                )
            )
    return out
