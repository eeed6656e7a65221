"""The summary beside Table 1: AutoAttack next to PGD and the published anchors, margins,
the Boundary attack and the gradient-masking checks (``summary.json`` and ``summary.md``)."""

from __future__ import annotations

import torch

from ..evaluation.records import attack_fields, record_key
from ..evaluation.results import eps_key
from .checks import masking_checks, paper_table1_transfer_check
from ..attacks.core import NORM_LABELS
from .format import DATASET_LABELS, fmt
from .reference import anchors
from ..params import data_name


def build_summary(results, specs, params, *, table: dict, figure3_panels: dict, margin_panels: list) -> dict:
    """Everything summary.json holds; every number traces to the models' evaluation results."""
    ev = params.evaluate
    checks = [c for name, res in results.items()
              for c in masking_checks(name, res, ev.threat_model(specs[name].dataset, specs[name].norm), params)]
    return {
        "loss": ev.loss, "cascade": ev.cascade,
        "data": {n: DATASET_LABELS[data_name(params, specs[n].dataset)] for n in results},
        "models": {n: {"clean": r.clean_accuracy(), "n": r.n,
                       "worst_case": {eps_key(e): r.worst_case_accuracy(e) for e in r.eps_values()}}
                   for n, r in results.items()},
        "autoattack": autoattack_rows(results, specs, params),
        "margins": {n: r.summary.get("margins", {}) for n, r in results.items() if r.summary.get("margins")},
        "boundary": boundary_summary(results),
        "checks": checks, "paper_checks": paper_table1_transfer_check(params.report),
        "checks_flagged": sum(c["status"] == "flag" for c in checks),
        "figure3_panels": figure3_panels, "margin_panels": margin_panels,
        "table1": table,
    }


def flat_metrics(summary: dict) -> dict[str, float]:
    """The report's numbers to log (MLflow-safe names)."""
    flat = {"checks_flagged": float(summary["checks_flagged"]), "checks_total": float(len(summary["checks"]))}
    for n, m in summary["models"].items():
        flat[f"{n}/clean"] = m["clean"]
        for e, v in m["worst_case"].items():
            flat[f"{n}/worst_case/{e}"] = v
    for r in summary["autoattack"]:
        flat[f"{r['model']}/autoattack"] = r["autoattack"]
    return {k: float(v) for k, v in flat.items() if v == v}


ANCHOR_MODEL = {"mma": "MMA", "pgd": "PGD"}  # our method → the anchors' model prefix


def autoattack_rows(results, specs, params) -> list[dict]:
    """Per model: AutoAttack at the headline ε beside white-box PGD there, the worst case,
    and the published anchors of the same dataset × norm × method."""
    ev = params.evaluate
    curve = params.curve_attack()
    out = []
    for name, res in results.items():
        spec = specs[name]
        tm = ev.threat_model(spec.dataset, spec.norm)
        aa = res.select(kind="autoattack")
        if tm is None or not aa:
            continue
        pgd = res.find(kind="whitebox", eps=tm.headline_eps, **attack_fields(curve, ev.loss))
        # a synthetic stand-in's label matches no published anchor: it is never compared with the paper
        ds, nm = DATASET_LABELS[data_name(params, spec.dataset)], NORM_LABELS[spec.norm]
        prefix = ANCHOR_MODEL.get(spec.method)
        anc = [a for a in anchors() if prefix and a["dataset"] == ds and a["norm"] == nm and a["model"].startswith(prefix)
               and a["metric"] in ("autoattack", "clean") and (a["metric"] == "clean" or abs(a["eps"] - tm.headline_eps) < 2e-4)]
        out.append({
            "model": name, "eps": tm.headline_eps, "clean": res.clean_accuracy(),
            "autoattack": res.accuracy(aa[0]), "autoattack_n": aa[0].n, "autoattack_key": record_key(aa[0]),
            "autoattack_version": f"AutoAttack ({ev.autoattack.version}: {aa[0].attack.replace('_', ', ')})",
            "reduced": bool(ev.autoattack.reduced),
            "pgd": None if pgd is None else res.accuracy(pgd), "pgd_label": curve.label(),
            "worst_case": res.worst_case_accuracy(tm.headline_eps),
            "anchors": [{"model": a["model"], "metric": a["metric"], "value": a["value_percent"], "source": a["source"]}
                        for a in anc],
        })
    return out


def boundary_summary(results) -> dict:
    """Per model with a Boundary run: how many images, the median L2 distance found, and
    its median ratio to the margin estimate (a decision-based attack overshoots; > 1)."""
    out = {}
    for name, res in results.items():
        d = res.values.get("boundary_l2")
        if d is None:
            continue
        ran = ~torch.isnan(d) & res.clean_correct
        entry = {"n": int(ran.sum()), "found": int((ran & torch.isfinite(d)).sum())}
        if entry["found"]:
            entry["median_l2"] = float(d[ran & torch.isfinite(d)].median())
            m = res.values.get("margin")
            if m is not None:
                both = ran & torch.isfinite(d) & ~torch.isnan(m) & (m > 0)
                if both.any():
                    entry["median_ratio_to_margin"] = float((d[both] / m[both]).median())
        out[name] = entry
    return out


def summary_markdown(summary: dict) -> str:
    lines = ["# Robustness summary", "", f"Attack loss (white-box and transfer sets): {summary['loss']}; "
             f"cascade: {summary['cascade']}.", "",
             "Data: " + "; ".join(f"{n}: {d}" for n, d in summary.get("data", {}).items()) + ".", "", "## AutoAttack at the headline ε", "",
             "| model | ε | clean | PGD | AutoAttack | worst case | anchors (published) |", "|---|---|---|---|---|---|---|"]
    for r in summary["autoattack"]:
        anc = "; ".join(f"{a['model']} {a['metric']} {a['value']:.2f}" for a in r["anchors"]) or "—"
        red = " (reduced: not the standard version)" if r["reduced"] else ""
        lines.append(f"| {r['model']} | {r['eps']:.4g} | {fmt(r['clean'])} | {fmt(r['pgd'])} ({r['pgd_label']}) | "
                     f"{fmt(r['autoattack'])} on {r['autoattack_n']} images{red} | {fmt(r['worst_case'])} | {anc} |")
    lines += ["", "## Margins (correctly classified test images)", "",
              "| model | mean | median | AN-PGD mean | FAB mean | AN-PGD above a PGD-breaking ε (%) | AN-PGD vs FAB disagree (%) |",
              "|---|---|---|---|---|---|---|"]
    for name, m in summary["margins"].items():
        lines.append(f"| {name} | {fmt(m.get('margin/mean'))} | {fmt(m.get('margin/median'))} | "
                     f"{fmt(m.get('anpgd/mean'))} | {fmt(m.get('fab/mean'))} | {fmt(m.get('over_sweep/anpgd'))} | "
                     f"{fmt(m.get('disagree/anpgd_vs_fab'))} |")
    if summary.get("boundary"):
        lines += ["", "## Boundary attack (foolbox; Figure 3b)", "", "| model | images | found | median L2 | median ratio to margin |",
                  "|---|---|---|---|---|"]
        for name, b in summary["boundary"].items():
            lines.append(f"| {name} | {b['n']} | {b['found']} | {fmt(b.get('median_l2'))} | "
                         f"{fmt(b.get('median_ratio_to_margin'))} |")
    lines += ["", "## Gradient-masking checks", ""]
    for c in summary["checks"]:
        lines.append(f"- **{c['status'].upper()}** {c['model']} · {c['check']}: {c['detail']}")
    lines += ["", "The same transfer check on the paper's own Table 1:", ""]
    for c in summary["paper_checks"]:
        lines.append(f"- **{c['status'].upper()}** {c['model']}: {c['detail']}")
    return "\n".join(lines) + "\n"
