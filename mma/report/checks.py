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
"""

from __future__ import annotations

from ..evaluation.records import attack_fields, label
from ..evaluation.results import NOT_RUN, Results
from .figures import curve_points


def _entry(model, check, ok, detail, **numbers) -> dict:
    return {"model": model, "check": check, "status": "pass" if ok else "flag", "detail": detail, **numbers}


def masking_checks(name: str, res: Results, tm, params) -> list[dict]:
    """The checks of model ``name`` (threat model ``tm``), tolerances from ``params.report``."""
    tol, ev = params.report, params.evaluate
    curve = attack_fields(params.curve_attack(), ev.loss)
    out = []
    # monotone in ε: the white-box curve (the Boundary curve is monotone by construction)
    family = "white-box curve"
    pts = curve_points(res, tm.curve_eps, kind="whitebox", **curve)
    if len(pts) >= 2:
        rises = [(a, b, x, y) for (a, x), (b, y) in zip(pts, pts[1:]) if y > x + tol.monotone_tol]
        detail = (f"{family}: accuracy rises with ε at " + ", ".join(f"ε {a:g}→{b:g}: {x:.2f}→{y:.2f} %" for a, b, x, y in rises)
                  if rises else f"{family}: non-increasing over {len(pts)} ε ({pts[0][1]:.2f} % → {pts[-1][1]:.2f} %)")
        out.append(_entry(name, f"monotone/{family}", not rises, detail, curve=[list(p) for p in pts]))
    if ev.checks.enabled:
        checks = {k: attack_fields(s, ev.loss) for k, s in ev.check_attacks(params.curve_attack()).items()}
        # unbounded ε
        r = res.find(kind="whitebox", eps=tm.unbounded_eps, **checks["unbounded"])
        if r is not None:
            acc = res.accuracy(r)
            out.append(_entry(name, "unbounded", acc <= tol.unbounded_max,
                              f"{label(r)} at ε {r.eps:g} (covers the image box), {r.n} images: {acc:.2f} % robust "
                              f"(must be ≤ {tol.unbounded_max:g} %)", accuracy=acc, eps=r.eps))
        # more steps / restarts never help the model
        base = res.find(kind="whitebox", eps=tm.headline_eps, **curve)
        for check in ("more_steps", "more_restarts"):
            strong = res.find(kind="whitebox", eps=tm.headline_eps, **checks[check])
            if base is None or strong is None or strong == base:
                continue
            out.append(_compare(name, f"more_attack/{check}", res, base, strong, tol, gain_tol=tol.more_attack_gain_tol))
    # Table 1's white-box PGD pairs: more steps (same restarts), more restarts (same steps)
    table1 = [attack_fields(params.attacks[r.attack], ev.loss) | {"eps": r.eps} for r in params.table1.whitebox_rows(name)]
    pgd = [r for f in table1 if f["attack"] == "pgd" for r in res.select(kind="whitebox", **f)]
    for a in pgd:
        for b in pgd:
            same = a.matches(eps=b.eps, loss=b.loss, step_factor=b.step_factor, clean_start=b.clean_start)
            more_steps = b.steps > a.steps and b.restarts == a.restarts
            more_restarts = b.steps == a.steps and b.restarts > a.restarts
            if same and (more_steps or more_restarts):
                out.append(_compare(name, "more_attack/table1", res, a, b, tol))
    # transfer not stronger than white-box, on the images the transfer sets cover (a subset
    # white-box run, e.g. a check on checks.limit images, is not compared with a full set)
    for eps in res.eps_values():
        tr = [(res.accuracy(r), r) for r in res.select(kind="transfer", eps=eps)]
        if not tr:
            continue
        ta, ti = min(tr, key=lambda t: t[0])
        rows = res.ran(ti)
        wbs = [(res.accuracy_on(r, rows), r) for r in res.select(kind="whitebox", eps=eps) if bool(res.ran(r)[rows].all())]
        if not wbs:
            continue
        wa, wi = min(wbs, key=lambda t: t[0])
        out.append(_entry(name, "transfer_vs_whitebox", ta >= wa - tol.transfer_tol,
                          f"ε {eps:g}, {int(rows.sum())} images: strongest transfer {label(ti)} {ta:.2f} % vs strongest "
                          f"white-box {label(wi)} {wa:.2f} %" + (" — transfer is stronger: possible gradient masking"
                                                                 if ta < wa - tol.transfer_tol else ""),
                          transfer_accuracy=ta, whitebox_accuracy=wa, eps=eps))
    return out


def _compare(name, check, res: Results, base, strong, tol, *, gain_tol=None) -> dict:
    """The stronger attack must not leave the model more robust than the base one (more than
    ``tol.more_attack_tol``) nor, with ``gain_tol``, find more than ``gain_tol`` % points
    more than it (the base has not converged).  Compared on the examples both covered and
    both attacked: an example a cumulative cascade skipped in either (broken earlier) is left out."""
    skipped = res.clean_correct & ((res.survived[base] == NOT_RUN) | (res.survived[strong] == NOT_RUN))
    rows = res.ran(base) & res.ran(strong) & ~skipped
    a, b = res.accuracy_on(base, rows), res.accuracy_on(strong, rows)
    weaker = b > a + tol.more_attack_tol
    gains = gain_tol is not None and b < a - gain_tol
    detail = f"ε {base.eps:g}, {int(rows.sum())} images: {label(base)} {a:.2f} % vs {label(strong)} {b:.2f} %"
    if weaker:
        detail += " — the stronger attack left the model more robust (an unreliable attack)"
    if gains:
        detail += (f" — the stronger attack breaks {a - b:.2f} % points more than the base (> {gain_tol:g}): the base "
                   "has not converged (masked gradients, too few steps or restarts) and overstates robustness")
    return _entry(name, check, not (weaker or gains), detail, base_accuracy=a, stronger_accuracy=b, eps=base.eps)


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
            out.append(_entry(f"paper {role} model", "transfer_vs_whitebox", ok,
                              f"paper Table 1, ε {eps:g}: transfer {t['attack']}-{t['steps'] or ''}×{t['restarts'] or ''} "
                              f"from {t['source']} {t[role]:.2f} % vs white-box {w['attack']}-{w['steps'] or ''}×"
                              f"{w['restarts'] or ''} {w[role]:.2f} %", transfer_accuracy=t[role],
                              whitebox_accuracy=w[role], eps=eps))
    return out
