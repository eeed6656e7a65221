"""Figure 3 (robust accuracy vs ε, four panels) and the margin distributions, as PNG."""

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


def figure3(results: dict[str, Results], specs: dict, params, path: Path, *, dpi: int = 150) -> dict:
    """Four panels; returns {panel: [model names plotted]}."""
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
            res = results[n]
            pts = curve_points(res, tm.curve_eps, kind="whitebox", **fields)
            if pts:
                ax.plot([e * scale for e, _ in pts], [a for _, a in pts], marker="o", ms=3,
                        label=f"{n}: white-box {params.curve_attack().label()} ({params.evaluate.loss})")
            boundary = res.select(kind="boundary")
            if boundary:
                bpts = curve_points(res, tm.curve_eps, kind="boundary")
                r = boundary[0]
                lim = "all" if not res.is_subset(r) else f"first {r.n}"
                ax.plot([e * scale for e, _ in bpts], [a for _, a in bpts], ls="--", marker="s", ms=3,
                        label=f"{n}: Boundary attack ({r.steps} steps, {lim} test images)")
        if (dataset, norm) == ("mnist", "linf"):
            fin = [a for a in anchors() if a["dataset"] == "MNIST" and a["norm"] == "Linf" and a["model"] == "MMA-0.45"
                   and a["metric"] == "robust_all_attacks"]
            if fin:
                ax.plot([a["eps"] for a in fin], [a["value_percent"] for a in fin], "k*", ms=9, ls="none",
                        label="final paper MMA-0.45 (all attacks, authors' rebuttal)")
            for role, marker in (("MMA", "D"), ("PGD", "^")):
                v1 = [r for r in table1_rows() if r["source"] == role and r["steps"] == 100 and r["restarts"] == 1]
                ax.plot([r["eps"] for r in v1], [r[role] for r in v1], marker=marker, mfc="none", mec="k", ls="none",
                        ms=7, label=f"arXiv v1 Table 1: {role} model, white-box PGD-100×1")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle("Figure 3: robust accuracy vs ε (white-box PGD; Boundary attack on MNIST L2)")
    fig.tight_layout()
    _save(fig, path, dpi)
    plt.close(fig)
    return plotted


def margins_figure(results: dict[str, Results], specs: dict, path: Path, *, dpi: int = 150, params=None) -> list[str]:
    """Per threat model with margins: the CDF of each model's margin (the smallest of the
    estimates) and, dotted, AN-PGD's alone, over correctly classified examples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = [p for p in PANELS if any((specs[n].dataset, specs[n].norm) == p[:2] and "margin" in results[n].values
                                        for n in results)]
    cols = min(2, max(1, len(present)))
    rows = (max(1, len(present)) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(7 * cols, 4.8 * rows), squeeze=False)
    for ax in axes.flat[len(present):]:
        ax.axis("off")
    if not present:
        axes[0, 0].axis("on")
        axes[0, 0].text(0.5, 0.5, "no margins evaluated", ha="center", va="center", transform=axes[0, 0].transAxes)
    for ax, (dataset, norm, title) in zip(axes.flat, present):
        scale, _ = _scale(dataset, norm)
        for n in results:
            r = results[n]
            if (specs[n].dataset, specs[n].norm) != (dataset, norm) or "margin" not in r.values:
                continue
            color = None
            for key, style in (("margin", "-"), ("margin_anpgd", ":")):
                v = r.values.get(key)
                if v is None:
                    continue
                v = v[r.clean_correct & ~torch.isnan(v)].double().sort().values * scale
                if not len(v):
                    continue
                frac = torch.arange(1, len(v) + 1, dtype=torch.float64) / len(v)
                name = "margin (min of estimates)" if key == "margin" else "AN-PGD alone"
                (line,) = ax.step(v.numpy(), frac.numpy(), ls=style, where="post", color=color,
                                  label=margin_label(n, name, v, scale))
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
