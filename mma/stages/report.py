"""The report stage: everything printed traces to results/eval/NAME/ (metrics.json,
per_example.pt); the only other numbers are the paper's, from
mma/evaluation/reference/ (with their source).

    results/report/table1.md, table1.csv   Table 1 with our numbers beside the paper's + worst case
    results/report/figure3.png             Figure 3, four panels
    results/report/margins.png             margin distributions (CDFs) per threat model
    results/report/summary.json            AutoAttack beside PGD and the anchors, margins, checks (pass/flag)
    results/report/summary.md              the same, for reading
"""

from __future__ import annotations

import json
import math

from .. import paths
from ..evaluation.results import eps_key


def load_results(params) -> tuple[dict, dict, dict]:
    """(Results by model, metrics.json by model, ModelSpec by model) for every model of the grid."""
    from ..evaluation.results import Results
    from ..io import load_tensors

    results, metrics, specs = {}, {}, {}
    for spec in params.models:
        folder = paths.eval_dir(spec.name)
        try:
            results[spec.name] = Results.from_tensors(load_tensors(folder / "per_example.pt"))
            metrics[spec.name] = json.loads((folder / "metrics.json").read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{folder}: no evaluation of {spec.name}; run `mma evaluate {spec.name}` first") from None
        specs[spec.name] = spec
    return results, metrics, specs


ANCHOR_MODEL = {"mma": "MMA", "pgd": "PGD"}  # our method → the anchors' model prefix


def autoattack_rows(results, metrics, specs, ev) -> list[dict]:
    """Per model: AutoAttack at the headline ε beside white-box PGD there, the worst case,
    and the published anchors of the same dataset × norm × method."""
    from ..evaluation.reference import anchors

    out = []
    for name, res in results.items():
        spec = specs[name]
        tm = ev.threat_model(spec.dataset, spec.norm)
        aa = [k for k, i in res.infos.items() if i.kind == "autoattack"]
        if tm is None or not aa:
            continue
        info = res.infos[aa[0]]
        pgd_key = f"wb/{ev.curve_setting}/{eps_key(tm.headline_eps)}"
        ds, nm = {"mnist": "MNIST", "cifar10": "CIFAR10"}[spec.dataset], {"linf": "Linf", "l2": "L2"}[spec.norm]
        prefix = ANCHOR_MODEL.get(spec.method)
        anc = [a for a in anchors() if prefix and a["dataset"] == ds and a["norm"] == nm and a["model"].startswith(prefix)
               and a["metric"] in ("autoattack", "clean") and (a["metric"] == "clean" or abs(a["eps"] - tm.headline_eps) < 2e-4)]
        out.append({
            "model": name, "eps": tm.headline_eps, "clean": res.clean_accuracy(),
            "autoattack": res.accuracy(aa[0]), "autoattack_n": int((res.survived[aa[0]] != -1).sum()),
            "autoattack_version": info.label, "reduced": bool(ev.autoattack.reduced),
            "pgd": res.accuracy(pgd_key) if pgd_key in res.infos else None, "pgd_label": ev.settings[ev.curve_setting].label(),
            "worst_case": res.worst_case_accuracy(tm.headline_eps),
            "anchors": [{"model": a["model"], "metric": a["metric"], "value": a["value_percent"], "source": a["source"]}
                        for a in anc],
        })
    return out


def boundary_summary(results) -> dict:
    """Per model with a Boundary run: how many images, the median L2 distance found, and
    its median ratio to the margin estimate (a decision-based attack overshoots; > 1)."""
    import torch

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


def _fmt(v):
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"


def summary_markdown(summary: dict) -> str:
    lines = ["# Robustness summary", "", f"White-box loss: {summary['whitebox_loss']}; transfer loss: "
             f"{summary['transfer_loss']}; cascade: {summary['cascade']}.", "", "## AutoAttack at the headline ε", "",
             "| model | ε | clean | PGD | AutoAttack | worst case | anchors (published) |", "|---|---|---|---|---|---|---|"]
    for r in summary["autoattack"]:
        anc = "; ".join(f"{a['model']} {a['metric']} {a['value']:.2f}" for a in r["anchors"]) or "—"
        red = " (reduced: not the standard version)" if r["reduced"] else ""
        lines.append(f"| {r['model']} | {r['eps']:.4g} | {_fmt(r['clean'])} | {_fmt(r['pgd'])} ({r['pgd_label']}) | "
                     f"{_fmt(r['autoattack'])} on {r['autoattack_n']} images{red} | {_fmt(r['worst_case'])} | {anc} |")
    lines += ["", "## Margins (correctly classified test images)", "",
              "| model | mean | median | AN-PGD mean | FAB mean | AN-PGD above a PGD-breaking ε (%) | AN-PGD vs FAB disagree (%) |",
              "|---|---|---|---|---|---|---|"]
    for name, m in summary["margins"].items():
        lines.append(f"| {name} | {_fmt(m.get('margin/mean'))} | {_fmt(m.get('margin/median'))} | "
                     f"{_fmt(m.get('anpgd/mean'))} | {_fmt(m.get('fab/mean'))} | {_fmt(m.get('over_sweep/anpgd'))} | "
                     f"{_fmt(m.get('disagree/anpgd_vs_fab'))} |")
    if summary.get("boundary"):
        lines += ["", "## Boundary attack (foolbox; Figure 3b)", "", "| model | images | found | median L2 | median ratio to margin |",
                  "|---|---|---|---|---|"]
        for name, b in summary["boundary"].items():
            lines.append(f"| {name} | {b['n']} | {b['found']} | {_fmt(b.get('median_l2'))} | "
                         f"{_fmt(b.get('median_ratio_to_margin'))} |")
    lines += ["", "## Gradient-masking checks", ""]
    for c in summary["checks"]:
        lines.append(f"- **{c['status'].upper()}** {c['model']} · {c['check']}: {c['detail']}")
    lines += ["", "The same transfer check on the paper's own Table 1:", ""]
    for c in summary["paper_checks"]:
        lines.append(f"- **{c['status'].upper()}** {c['model']}: {c['detail']}")
    return "\n".join(lines) + "\n"


def run(params, *, tracker=None) -> dict[str, float]:
    from ..evaluation.checks import masking_checks, paper_table1_transfer_check
    from ..evaluation.figures import figure3, margins_figure
    from ..evaluation.table1 import build_table1, table1_csv, table1_markdown
    from ..io import write_json, write_text

    ev, tr, rp = params.evaluate, params.transfer, params.report
    results, metrics, specs = load_results(params)
    out = paths.report_dir()

    table = build_table1(results, ev, tr)
    n_eval = sorted({r.n for r in results.values()})
    aa_note = "standard" if not ev.autoattack.reduced else (
        f"REDUCED ({ev.autoattack.version}, n_iter={ev.autoattack.n_iter}, n_queries={ev.autoattack.n_queries})")
    notes = [f"White-box loss: **{ev.loss}**" + (" (restarts alternate cross-entropy and CW)" if ev.loss == "mixed" else "")
             + f"; transfer loss: **{tr.loss}**; cascade: {ev.cascade}.",
             f"Test images evaluated: {', '.join(map(str, n_eval))} (evaluate.test_limit = {ev.test_limit}).",
             "Our attack settings are in the 'Ours ran' column; the paper's steps × restarts in the first column.",
             f"AutoAttack: {aa_note}; Boundary attack: "
             + (f"first {ev.boundary.limit} images, {ev.boundary.steps} steps."
                if any(t.boundary for t in ev.threat_models) else "not run (no threat model asks for it).")]
    write_text(out / "table1.md", table1_markdown(table, notes=notes))
    write_text(out / "table1.csv", table1_csv(table))
    plotted = figure3(results, specs, ev, out / "figure3.png", dpi=rp.dpi)
    margin_panels = margins_figure(results, specs, out / "margins.png", dpi=rp.dpi)

    checks = [c for name, res in results.items() for c in masking_checks(name, res, rp)]
    summary = {
        "whitebox_loss": ev.loss, "transfer_loss": tr.loss, "cascade": ev.cascade,
        "models": {n: {"clean": r.clean_accuracy(), "n": r.n,
                       "worst_case": {eps_key(e): r.worst_case_accuracy(e) for e in r.eps_values()}}
                   for n, r in results.items()},
        "autoattack": autoattack_rows(results, metrics, specs, ev),
        "margins": {n: r.summary.get("margins", {}) for n, r in results.items() if r.summary.get("margins")},
        "boundary": boundary_summary(results),
        "checks": checks, "paper_checks": paper_table1_transfer_check(rp),
        "checks_flagged": sum(c["status"] == "flag" for c in checks),
        "figure3_panels": plotted, "margin_panels": margin_panels,
        "table1": table,
    }
    write_json(out / "summary.json", summary)
    write_text(out / "summary.md", summary_markdown(summary))

    flat = {"checks_flagged": float(summary["checks_flagged"]), "checks_total": float(len(checks))}
    for n, m in summary["models"].items():
        flat[f"{n}/clean"] = m["clean"]
        for e, v in m["worst_case"].items():
            flat[f"{n}/worst_case/{e}"] = v
    for r in summary["autoattack"]:
        flat[f"{r['model']}/autoattack"] = r["autoattack"]
    flat = {k: float(v) for k, v in flat.items() if v == v}
    if tracker is not None:
        tracker.log_metrics(flat)
        for f in ("table1.md", "table1.csv", "figure3.png", "margins.png", "summary.json", "summary.md"):
            tracker.log_artifact(out / f, "report")
    return flat
