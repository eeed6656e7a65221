"""The summary beside Table 1: AutoAttack next to PGD and the published anchors, margins,
the Boundary attack, the gradient-masking checks and which differences between models lie
within the seed spread (``summary.json`` and ``summary.md``).

Every number is over the grid's training seeds (mean ± sample sd, ``mma.report.spread``) and
carries ``n``, the test images it counts (the first n).  A number measured on a subset
(AutoAttack: ``evaluate.autoattack.limit``) is shown beside the clean and PGD accuracy of the
same rows, so it is never compared with numbers of other images.
"""

from __future__ import annotations

import torch

from ..attacks.core import NORM_LABELS
from ..config.data import data_name
from ..evaluation.records import attack_fields, record_key
from ..evaluation.results import Results, eps_key
from .checks import masking_checks, paper_table1_transfer_check
from .format import DATASET_LABELS, fmt, fmt_spread, seeds_note
from .reference import anchors
from .spread import RULE, Spread, over_seeds, verdict


def _accuracy(res: Results, record) -> float:
    return float("nan") if record is None else res.accuracy(record)


def clean_accuracy_on(res: Results, rows: torch.Tensor) -> float:
    """Clean accuracy (%) over ``rows`` only (the rows another number was measured on)."""
    if rows.sum() == 0:
        return float("nan")
    return 100.0 * int((res.clean_correct & rows).sum()) / int(rows.sum())


def same_rows(by_seed: dict[int, Results], record_of, *, curve_fields: dict, eps: float) -> dict:
    """A subset record (``record_of(results)``) over seeds, beside the clean and the PGD (curve
    attack at ``eps``) accuracy of exactly its rows: {n, value, clean, pgd} (Spreads as JSON)."""
    value, clean, pgd, ns = {}, {}, {}, set()
    for seed, res in by_seed.items():
        r = record_of(res)
        if r is None:
            continue
        rows = res.ran(r)
        ns.add(int(rows.sum()))
        value[seed] = res.accuracy(r)
        clean[seed] = clean_accuracy_on(res, rows)
        base = res.find(kind="whitebox", eps=eps, **curve_fields)  # a full-set record: it covers these rows
        pgd[seed] = float("nan") if base is None else res.accuracy_on(base, rows & res.ran(base))
    return {
        "n": sorted(ns),
        "value": Spread(value).to_json(),
        "clean": Spread(clean).to_json(),
        "pgd": Spread(pgd).to_json(),
    }


def build_summary(results, specs, params, *, table: dict, figure3_panels: dict, margin_panels: list) -> dict:
    """Everything summary.json holds (``results``: model → seed → results); every number traces
    to the members' evaluation results."""
    ev = params.evaluate
    checks = [
        {**c, "seed": seed}
        for name, by_seed in results.items()
        for seed, res in by_seed.items()
        for c in masking_checks(name, res, ev.threat_model(specs[name].dataset, specs[name].norm), params)
    ]
    return {
        "loss": ev.loss,
        "cascade": ev.cascade,
        "seeds": list(params.seeds),
        "data": {n: DATASET_LABELS[data_name(params.data, specs[n].dataset)] for n in results},
        "models": {n: model_summary(by_seed) for n, by_seed in results.items()},
        "autoattack": autoattack_rows(results, specs, params),
        "margins": margins_summary(results),
        "boundary": boundary_summary(results),
        "comparisons": comparisons(results, specs),
        "comparison_rule": RULE,
        "checks": checks,
        "paper_checks": paper_table1_transfer_check(params.report),
        "checks_flagged": sum(c["status"] == "flag" for c in checks),
        "figure3_panels": figure3_panels,
        "margin_panels": margin_panels,
        "table1": table,
    }


def model_summary(by_seed: dict[int, Results]) -> dict:
    """Clean and worst-case accuracy at every ε over seeds; n: the test images each counts."""
    first = next(iter(by_seed.values()))
    clean = over_seeds(by_seed, Results.clean_accuracy)
    worst = {e: over_seeds(by_seed, lambda r, e=e: r.worst_case_accuracy(e)) for e in first.eps_values()}
    return {
        "n": first.n,
        "clean": clean.mean,
        "clean_sd": clean.sd,
        "n_seeds": clean.n,
        "worst_case": {eps_key(e): s.mean for e, s in worst.items()},
        "worst_case_sd": {eps_key(e): s.sd for e, s in worst.items()},
        "worst_case_n": {eps_key(e): int(first.covered(e).sum()) for e in worst},
        "per_seed": {
            str(seed): {
                "clean": r.clean_accuracy(),
                "worst_case": {eps_key(e): r.worst_case_accuracy(e) for e in worst},
            }
            for seed, r in by_seed.items()
        },
    }


def comparisons(results, specs) -> list[dict]:
    """Every pair of models of one threat model at every ε both were evaluated at: their
    worst-case robust accuracy over seeds and the verdict of ``spread.verdict``; only numbers on
    the same rows (the same first n test images) are compared."""
    out = []
    names = list(results)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if (specs[a].dataset, specs[a].norm) != (specs[b].dataset, specs[b].norm):
                continue
            ra, rb = results[a], results[b]
            eps_a = set.intersection(*(set(r.eps_values()) for r in ra.values()))
            eps_b = set.intersection(*(set(r.eps_values()) for r in rb.values()))
            for e in sorted(eps_a & eps_b):
                rows = {int(r.covered(e).sum()) for r in [*ra.values(), *rb.values()]}
                sa = over_seeds(ra, lambda r, e=e: r.worst_case_accuracy(e))
                sb = over_seeds(rb, lambda r, e=e: r.worst_case_accuracy(e))
                entry = {
                    "eps": e,
                    "a": a,
                    "b": b,
                    "metric": "worst_case",
                    "a_value": sa.to_json(),
                    "b_value": sb.to_json(),
                    "n": sorted(rows),
                }
                entry["verdict"] = verdict(sa, sb) if len(rows) == 1 else f"not compared: other rows (n {sorted(rows)})"
                out.append(entry)
    return out


def flat_metrics(summary: dict) -> dict[str, float]:
    """The report's numbers to log (MLflow-safe names): means over seeds, and their sd where known."""
    flat = {"checks_flagged": float(summary["checks_flagged"]), "checks_total": float(len(summary["checks"]))}
    for n, m in summary["models"].items():
        flat[f"{n}/clean"] = m["clean"]
        if m["clean_sd"] is not None:
            flat[f"{n}/clean_sd"] = m["clean_sd"]
        for e, v in m["worst_case"].items():
            flat[f"{n}/worst_case/{e}"] = v
            if m["worst_case_sd"][e] is not None:
                flat[f"{n}/worst_case_sd/{e}"] = m["worst_case_sd"][e]
    for r in summary["autoattack"]:
        flat[f"{r['model']}/autoattack"] = r["autoattack"]["mean"]
    return {k: float(v) for k, v in flat.items() if v == v}


ANCHOR_MODEL = {"mma": "MMA", "pgd": "PGD"}  # our method → the anchors' model prefix


def autoattack_rows(results, specs, params) -> list[dict]:
    """Per model: AutoAttack at the headline ε over seeds with its n and, on the same rows, clean
    and white-box PGD accuracy; the full-set clean, PGD and worst case with their n; the
    published anchors of the same dataset × norm × method."""
    ev = params.evaluate
    curve = params.curve_attack()
    fields = attack_fields(curve, ev.loss)
    out = []
    for name, by_seed in results.items():
        spec = specs[name]
        tm = ev.threat_model(spec.dataset, spec.norm)
        first = next(iter(by_seed.values()))
        aa = first.select(kind="autoattack")
        if tm is None or not aa:
            continue
        eps = tm.headline_eps
        rows = same_rows(by_seed, lambda r: next(iter(r.select(kind="autoattack")), None), curve_fields=fields, eps=eps)
        pgd_full = over_seeds(by_seed, lambda r: _accuracy(r, r.find(kind="whitebox", eps=eps, **fields)))
        pgd_rec = first.find(kind="whitebox", eps=eps, **fields)
        worst = over_seeds(by_seed, lambda r: r.worst_case_accuracy(eps))
        clean = over_seeds(by_seed, Results.clean_accuracy)
        # a synthetic stand-in's label matches no published anchor: it is never compared with the paper
        ds, nm = DATASET_LABELS[data_name(params.data, spec.dataset)], NORM_LABELS[spec.norm]
        prefix = ANCHOR_MODEL.get(spec.method)
        anc = [
            a
            for a in anchors()
            if prefix
            and a["dataset"] == ds
            and a["norm"] == nm
            and a["model"].startswith(prefix)
            and a["metric"] in ("autoattack", "clean")
            and (a["metric"] == "clean" or abs(a["eps"] - eps) < 2e-4)
        ]
        out.append(
            {
                "model": name,
                "eps": eps,
                "n_seeds": clean.n,
                "clean": clean.to_json(),
                "clean_n": first.n,
                "autoattack": rows["value"],
                "autoattack_n": rows["n"][0] if len(rows["n"]) == 1 else rows["n"],
                "same_rows_clean": rows["clean"],
                "same_rows_pgd": rows["pgd"],
                "autoattack_key": record_key(aa[0]),
                "autoattack_version": f"AutoAttack ({ev.autoattack.version}: {aa[0].attack.replace('_', ', ')})",
                "reduced": bool(ev.autoattack.reduced),
                "pgd": pgd_full.to_json(),
                "pgd_n": None if pgd_rec is None else pgd_rec.n,
                "pgd_label": curve.label(),
                "worst_case": worst.to_json(),
                "worst_case_n": int(first.covered(eps).sum()),
                "anchors": [
                    {"model": a["model"], "metric": a["metric"], "value": a["value_percent"], "source": a["source"]}
                    for a in anc
                ],
            }
        )
    return out


def margins_summary(results) -> dict:
    """Per model with margins: each summary number (mean, median, ...) over seeds."""
    out = {}
    for name, by_seed in results.items():
        members = [r.summary.get("margins", {}) for r in by_seed.values()]
        if not all(members):
            continue
        keys = [k for k in members[0] if all(k in m for m in members)]
        out[name] = {
            k: Spread({seed: float(r.summary["margins"][k]) for seed, r in by_seed.items()}).to_json() for k in keys
        }
    return out


def boundary_summary(results) -> dict:
    """Per model with a Boundary run, per seed: how many images, the median L2 distance found,
    and its median ratio to the margin estimate (a decision-based attack overshoots; > 1)."""
    out = {}
    for name, by_seed in results.items():
        for seed, res in by_seed.items():
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
            out.setdefault(name, {})[str(seed)] = entry
    return out


def _spread(s: dict) -> str:
    return fmt_spread(s["mean"], s["sd"])


def summary_markdown(summary: dict) -> str:
    """summary.md: the seeds, data and attack loss, then one section per part of ``summary`` (``build_summary``)."""
    lines = [
        *_intro_lines(summary),
        *_autoattack_lines(summary["autoattack"]),
        *_comparison_lines(summary),
        *_margin_lines(summary["margins"]),
        *_boundary_lines(summary.get("boundary")),
        *_check_lines(summary),
    ]
    return "\n".join(lines) + "\n"


def _intro_lines(summary: dict) -> list[str]:
    return [
        "# Robustness summary",
        "",
        seeds_note(summary["seeds"]),
        "",
        f"Attack loss (white-box and transfer sets): {summary['loss']}; cascade: {summary['cascade']}.",
        "",
        "Data: " + "; ".join(f"{n}: {d}" for n, d in summary.get("data", {}).items()) + ".",
        "",
        "Every robust accuracy (%) carries n, the test images it counts (the first n). AutoAttack runs on a "
        "subset: beside it, the clean and PGD accuracy of the same rows.",
        "",
    ]


def _autoattack_lines(rows: list[dict]) -> list[str]:
    lines = [
        "## AutoAttack at the headline ε",
        "",
        "| model | ε | clean | PGD | AutoAttack (same rows: clean, PGD) | worst case | anchors (published) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        anc = "; ".join(f"{a['model']} {a['metric']} {a['value']:.2f}" for a in r["anchors"]) or "—"
        red = " (reduced: not the standard version)" if r["reduced"] else ""
        aa = (
            f"{_spread(r['autoattack'])} (n={r['autoattack_n']}; same rows: clean {_spread(r['same_rows_clean'])}, "
            f"PGD {_spread(r['same_rows_pgd'])}){red}"
        )
        lines.append(
            f"| {r['model']} | {r['eps']:.4g} | {_spread(r['clean'])} (n={r['clean_n']}) | "
            f"{_spread(r['pgd'])} (n={r['pgd_n']}; {r['pgd_label']}) | {aa} | "
            f"{_spread(r['worst_case'])} (n={r['worst_case_n']}) | {anc} |"
        )
    return lines


def _comparison_lines(summary: dict) -> list[str]:
    lines = [
        "",
        "## Differences between models within the seed spread",
        "",
        f"Worst-case robust accuracy (%) of two models of one threat model at the same ε, on the same rows. "
        f'Rule: {summary["comparison_rule"]}; with one seed: "1 seed: spread unknown".',
        "",
        "| ε | model a | model b | a | b | n | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in summary["comparisons"]:
        n = c["n"][0] if len(c["n"]) == 1 else c["n"]
        lines.append(
            f"| {c['eps']:g} | {c['a']} | {c['b']} | {_spread(c['a_value'])} | {_spread(c['b_value'])} | "
            f"{n} | {c['verdict']} |"
        )
    return lines


def _margin_lines(margins: dict) -> list[str]:
    lines = [
        "",
        "## Margins (correctly classified test images)",
        "",
        "| model | mean | median | AN-PGD mean | FAB mean | AN-PGD above a PGD-breaking ε (%) "
        "| AN-PGD vs FAB disagree (%) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in margins.items():
        cells = [
            _spread(m[k]) if k in m else fmt(None)
            for k in (
                "margin/mean",
                "margin/median",
                "anpgd/mean",
                "fab/mean",
                "over_sweep/anpgd",
                "disagree/anpgd_vs_fab",
            )
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _boundary_lines(boundary: dict | None) -> list[str]:
    """The Boundary attack's section, only where it ran."""
    if not boundary:
        return []
    lines = [
        "",
        "## Boundary attack (foolbox; Figure 3b)",
        "",
        "| model | seed | images (n) | found | median L2 | median ratio to margin |",
        "|---|---|---|---|---|---|",
    ]
    for name, by_seed in boundary.items():
        for seed, b in by_seed.items():
            lines.append(
                f"| {name} | {seed} | {b['n']} | {b['found']} | {fmt(b.get('median_l2'))} | "
                f"{fmt(b.get('median_ratio_to_margin'))} |"
            )
    return lines


def _check_lines(summary: dict) -> list[str]:
    """The gradient-masking checks of our models, then the same transfer check on the paper's Table 1."""
    lines = ["", "## Gradient-masking checks", ""]
    for c in summary["checks"]:
        lines.append(f"- **{c['status'].upper()}** {c['model']} (seed {c['seed']}) · {c['check']}: {c['detail']}")
    lines += ["", "The same transfer check on the paper's own Table 1:", ""]
    for c in summary["paper_checks"]:
        lines.append(f"- **{c['status'].upper()}** {c['model']}: {c['detail']}")
    return lines
