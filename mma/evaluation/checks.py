"""Gradient-masking checks (Carlini et al. 2019, "On Evaluating Adversarial Robustness"),
each a pass/flag with its numbers, computed from one model's evaluation results.

* monotone: robust accuracy never rises with ε (white-box curve, Boundary curve).
* unbounded: PGD at an ε covering the whole image box reaches ~0 %.
* more_attack: more steps or more restarts never leave the model *more* robust.
* transfer: no transfer set is stronger than the strongest white-box attack of its ε
  (the paper's own Table 1 fails this for MMA: transfer from the PGD model 92.86 % vs
  white-box PGD-100×50 93.64 % at 0.3 — a sign of masked gradients; we flag, never hide).
"""

from __future__ import annotations

from .config import ReportParams
from .results import Results


def _entry(model, check, ok, detail, **numbers) -> dict:
    return {"model": model, "check": check, "status": "pass" if ok else "flag", "detail": detail, **numbers}


def masking_checks(name: str, res: Results, tol: ReportParams) -> list[dict]:
    out = []
    # monotone in ε, per curve family
    for family, kinds in (("white-box curve", ("whitebox",)), ("Boundary curve", ("boundary",))):
        pts = sorted((i.eps, res.accuracy(k)) for k, i in res.infos.items()
                     if i.kind in kinds and i.extra.get("curve"))
        if len(pts) < 2:
            continue
        rises = [(a, b, x, y) for (a, x), (b, y) in zip(pts, pts[1:]) if y > x + tol.monotone_tol]
        detail = (f"{family}: accuracy rises with ε at " + ", ".join(f"ε {a:g}→{b:g}: {x:.2f}→{y:.2f} %" for a, b, x, y in rises)
                  if rises else f"{family}: non-increasing over {len(pts)} ε ({pts[0][1]:.2f} % → {pts[-1][1]:.2f} %)")
        out.append(_entry(name, f"monotone/{family}", not rises, detail, curve=[list(p) for p in pts]))
    # unbounded ε
    for k, i in res.infos.items():
        if i.extra.get("check") == "unbounded":
            acc = res.accuracy(k)
            out.append(_entry(name, "unbounded", acc <= tol.unbounded_max,
                              f"{i.label} at ε {i.eps:g} (covers the image box): {acc:.2f} % robust "
                              f"(must be ≤ {tol.unbounded_max:g} %)", accuracy=acc, eps=i.eps))
    # more steps / restarts never help the model
    for k, i in res.infos.items():
        check = i.extra.get("check")
        if check in ("more_steps", "more_restarts"):
            base = f"wb/{i.extra['base']}/{k.rsplit('/', 1)[1]}"
            if base not in res.infos:
                continue
            rows = res.ran(base) & res.ran(k)  # compare on the same examples
            a, b = res.accuracy_on(base, rows), res.accuracy_on(k, rows)
            out.append(_entry(name, f"more_attack/{check}", b <= a + tol.more_attack_tol,
                              f"ε {i.eps:g}, {int(rows.sum())} images: {res.infos[base].label} {a:.2f} % vs "
                              f"{i.label} {b:.2f} %", base_accuracy=a, stronger_accuracy=b, eps=i.eps))
    # Table-1 white-box pairs: PGD with more steps (same restarts) and more restarts (same steps)
    wb = [(k, i) for k, i in res.infos.items() if i.kind == "whitebox" and i.extra.get("table1") and i.label.startswith("PGD")]
    steps_of = {k: int(i.label.split("-")[1].split("×")[0]) for k, i in wb}
    for k1, i1 in wb:
        for k2, i2 in wb:
            if k1 == k2 or i1.eps != i2.eps:
                continue
            more_steps = steps_of[k2] > steps_of[k1] and i2.restarts == i1.restarts
            more_restarts = steps_of[k2] == steps_of[k1] and i2.restarts > i1.restarts
            if more_steps or more_restarts:
                a, b = res.accuracy(k1), res.accuracy(k2)
                out.append(_entry(name, "more_attack/table1", b <= a + tol.more_attack_tol,
                                  f"ε {i1.eps:g}: {i1.label} {a:.2f} % vs {i2.label} {b:.2f} %",
                                  base_accuracy=a, stronger_accuracy=b, eps=i1.eps))
    # transfer not stronger than white-box
    for eps in res.eps_values():
        tr = [(res.accuracy(k), i) for k, i in res.infos.items() if i.kind == "transfer" and i.eps == eps]
        wbs = [(res.accuracy(k), i) for k, i in res.infos.items() if i.kind == "whitebox" and i.eps == eps]
        if not tr or not wbs:
            continue
        (ta, ti), (wa, wi) = min(tr, key=lambda t: t[0]), min(wbs, key=lambda t: t[0])
        out.append(_entry(name, "transfer_vs_whitebox", ta >= wa - tol.transfer_tol,
                          f"ε {eps:g}: strongest transfer {ti.label} from {ti.source} {ta:.2f} % vs strongest "
                          f"white-box {wi.label} {wa:.2f} %" + (" — transfer is stronger: possible gradient masking"
                                                                 if ta < wa - tol.transfer_tol else ""),
                          transfer_accuracy=ta, whitebox_accuracy=wa, eps=eps))
    return out


def paper_table1_transfer_check(tol: ReportParams) -> list[dict]:
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
