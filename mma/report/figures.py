"""Figure 3 (robust accuracy vs ε, four panels) and the margin distributions, as PNG.

With several training seeds, Figure 3 draws each model's mean over seeds with a band from the
lowest to the highest seed (min–max, said in the legend and the title); the margin CDFs pool
the correctly classified test images of every seed."""

from __future__ import annotations

from pathlib import Path

import torch

from ..attacks.core import NORM_LABELS
from ..evaluation.records import attack_fields
from ..evaluation.results import Results
from ..io import atomic_path
from .format import PANELS, panel_title
from .reference import anchors, table1_rows


def _scale(dataset: str, norm: str) -> tuple[float, str]:
    """x-axis scale and label: CIFAR10 Linf in units of 1/255, the rest in pixel units of [0, 1]."""
    if dataset == "cifar10" and norm == "linf":
        return 255.0, "ε (Linf, ×1/255 of the pixel range)"
    return 1.0, f"ε ({NORM_LABELS[norm]}, pixel units of [0, 1])"


def margin_label(model: str, estimate: str, v, scale: float) -> str:
    """A margin CDF's legend entry, in the units of its x-axis (``v`` already × ``scale``):
    CIFAR10 Linf reads "mean 28.6/255" on its ×1/255 axis, the rest pixel units."""
    unit = "/255" if scale == 255.0 else ""
    return f"{model}: {estimate}, mean {float(v.mean()):.3g}{unit}, median {float(v.median()):.3g}{unit}"


def seed_curves(
    by_seed: dict[int, Results], curve_eps: list[float], **fields
) -> list[tuple[float, float, float, float]]:
    """(ε, mean, min, max over seeds) at each curve ε that every seed's results hold."""
    per_seed = [dict(curve_points(res, curve_eps, **fields)) for res in by_seed.values()]
    common = sorted(set.intersection(*(set(p) for p in per_seed))) if per_seed else []
    return [
        (e, sum(p[e] for p in per_seed) / len(per_seed), min(p[e] for p in per_seed), max(p[e] for p in per_seed))
        for e in common
    ]


def _draw(ax, pts, scale: float, label: str, n_seeds: int, **style) -> None:
    """The mean curve and, with several seeds, its min–max band in the same colour."""
    if not pts:
        return
    xs = [e * scale for e, *_ in pts]
    if n_seeds > 1:
        label += f"; mean of {n_seeds} seeds, band: min–max"
    (line,) = ax.plot(xs, [m for _, m, _, _ in pts], label=label, **style)
    if n_seeds > 1:
        ax.fill_between(
            xs, [lo for _, _, lo, _ in pts], [hi for *_, hi in pts], color=line.get_color(), alpha=0.2, linewidth=0
        )


def curve_points(res: Results, curve_eps: list[float], **fields) -> list[tuple[float, float]]:
    """(ε, robust accuracy %) of the record with ``fields`` at each curve ε that has one."""
    points = []
    for e in curve_eps:
        r = res.find(eps=e, **fields)
        if r is not None:
            points.append((r.eps, res.accuracy(r)))
    return sorted(points)


def _save(fig, path: Path, dpi: int) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")


def figure3(results: dict[str, dict[int, Results]], specs: dict, params, path: Path, *, dpi: int = 150) -> dict:
    """Four panels (``results``: model → seed → results); returns {panel: [model names plotted]}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    plotted = {}
    for ax, (dataset, norm, title) in zip(axes.flat, PANELS):
        scale, xlabel = _scale(dataset, norm)
        names = [n for n in results if (specs[n].dataset, specs[n].norm) == (dataset, norm)]
        title = panel_title(title, params)
        plotted[title] = names
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("robust accuracy (%)")
        if not names:
            ax.text(0.5, 0.5, "not in this grid", ha="center", va="center", transform=ax.transAxes, color="gray")
            ax.set_xticks([])
            continue
        tm = params.evaluate.threat_model(dataset, norm)
        fields = attack_fields(params.curve_attack(), params.evaluate.loss)
        for n in names:
            _draw_model_curves(ax, n, results[n], tm, fields, scale, params)
        if (dataset, norm) == ("mnist", "linf"):
            _draw_paper_points(ax)
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    k = len(params.seeds)
    over = f"; lines: mean over {k} training seeds, bands: min–max over seeds" if k > 1 else "; one training seed"
    fig.suptitle(f"Figure 3: robust accuracy vs ε (white-box PGD; Boundary attack on MNIST L2){over}")
    fig.tight_layout()
    _save(fig, path, dpi)
    plt.close(fig)
    return plotted


def _draw_model_curves(ax, n: str, by_seed: dict[int, Results], tm, fields: dict, scale: float, params) -> None:
    """Model ``n``'s white-box curve (the curve attack, ``fields``) and, where it ran, its Boundary curve."""
    k = len(by_seed)
    _draw(
        ax,
        seed_curves(by_seed, tm.curve_eps, kind="whitebox", **fields),
        scale,
        f"{n}: white-box {params.curve_attack().label()} ({params.evaluate.loss})",
        k,
        marker="o",
        ms=3,
    )
    first = next(iter(by_seed.values()))
    boundary = first.select(kind="boundary")
    if boundary:
        r = boundary[0]
        lim = "all" if not first.is_subset(r) else f"first {r.n}"
        _draw(
            ax,
            seed_curves(by_seed, tm.curve_eps, kind="boundary"),
            scale,
            f"{n}: Boundary attack ({r.steps} steps, {lim} test images)",
            k,
            ls="--",
            marker="s",
            ms=3,
        )


def _draw_paper_points(ax) -> None:
    """The published MNIST Linf numbers: the final paper's MMA-0.45 over all attacks (the authors'
    rebuttal) and arXiv v1 Table 1's white-box PGD-100×1 of its MMA and PGD models."""
    fin = [
        a
        for a in anchors()
        if a["dataset"] == "MNIST"
        and a["norm"] == "Linf"
        and a["model"] == "MMA-0.45"
        and a["metric"] == "robust_all_attacks"
    ]
    if fin:
        ax.plot(
            [a["eps"] for a in fin],
            [a["value_percent"] for a in fin],
            "k*",
            ms=9,
            ls="none",
            label="final paper MMA-0.45 (all attacks, authors' rebuttal)",
        )
    for role, marker in (("MMA", "D"), ("PGD", "^")):
        v1 = [r for r in table1_rows() if r["source"] == role and r["steps"] == 100 and r["restarts"] == 1]
        ax.plot(
            [r["eps"] for r in v1],
            [r[role] for r in v1],
            marker=marker,
            mfc="none",
            mec="k",
            ls="none",
            ms=7,
            label=f"arXiv v1 Table 1: {role} model, white-box PGD-100×1",
        )


def margins_figure(
    results: dict[str, dict[int, Results]], specs: dict, path: Path, *, dpi: int = 150, params=None
) -> list[str]:
    """Per threat model with margins: the CDF of each model's margin (the smallest of the
    estimates) and, dotted, AN-PGD's alone, over correctly classified examples (of every seed,
    pooled: ``results`` is model → seed → results)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = [
        p
        for p in PANELS
        if any(
            (specs[n].dataset, specs[n].norm) == p[:2] and all("margin" in r.values for r in results[n].values())
            for n in results
        )
    ]
    cols = min(2, max(1, len(present)))
    rows = (max(1, len(present)) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(7 * cols, 4.8 * rows), squeeze=False)
    for ax in axes.flat[len(present) :]:
        ax.axis("off")
    if not present:
        axes[0, 0].axis("on")
        axes[0, 0].text(0.5, 0.5, "no margins evaluated", ha="center", va="center", transform=axes[0, 0].transAxes)
    for ax, (dataset, norm, title) in zip(axes.flat, present):
        scale, _ = _scale(dataset, norm)
        for n in results:
            members = list(results[n].values())
            if (specs[n].dataset, specs[n].norm) != (dataset, norm) or not all("margin" in r.values for r in members):
                continue
            color = None
            for key, style in (("margin", "-"), ("margin_anpgd", ":")):
                if any(r.values.get(key) is None for r in members):
                    continue
                v = torch.cat([r.values[key][r.clean_correct & ~torch.isnan(r.values[key])].double() for r in members])
                v = v.sort().values * scale
                if not len(v):
                    continue
                frac = torch.arange(1, len(v) + 1, dtype=torch.float64) / len(v)
                name = "margin (min of estimates)" if key == "margin" else "AN-PGD alone"
                if len(members) > 1:
                    name += f", {len(members)} seeds pooled"
                (line,) = ax.step(
                    v.numpy(), frac.numpy(), ls=style, where="post", color=color, label=margin_label(n, name, v, scale)
                )
                color = line.get_color()
        ax.set_title(f"{panel_title(title, params) if params is not None else title}: margin distribution")
        ax.set_xlabel(_scale(dataset, norm)[1].replace("ε", "margin (shortest adversarial perturbation)"))
        ax.set_ylabel("fraction of correctly classified test images ≤ x")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    _save(fig, path, dpi)
    plt.close(fig)
    return [p[2] for p in present]
