"""The report stage: reads every model's evaluation, calls ``mma.report``, writes the files.
Everything printed traces to results/eval/NAME/seedS/per_example.pt; the only other numbers are
the paper's, from mma/report/reference/ (with their source).  It reads ``seeds``, ``attacks``,
``table1``, ``evaluate`` and ``report`` (``CONTRACT``), and refuses a per_example.pt whose
identity is not the evaluate stage's record of the params.

    results/report/table1.md, table1.csv   Table 1 with our numbers (mean ± sd over seeds; the CSV also
                                           each seed's) beside the paper's + worst case
    results/report/figure3.png             Figure 3, four panels (mean over seeds, min–max band)
    results/report/margins.png             margin distributions (CDFs) per threat model
    results/report/summary.json            AutoAttack beside PGD (same rows) and the anchors, margins, checks
                                           (pass/flag), which differences lie within the seed spread
    results/report/summary.md              the same, for reading
"""

from __future__ import annotations

from .. import paths
from .contract import Contract, output_identity

FILES = ("table1.md", "table1.csv", "figure3.png", "margins.png", "summary.json", "summary.md")

CONTRACT = Contract(
    stage="report",
    target=None,
    # what per_example.pt files were made under (the members' settings, the evaluation's) is
    # checked through their identity (the evaluate stage's record), not read again here
    reads=("seeds", "attacks", "table1", "evaluate", "report"),
    code=(
        "mma/stages/report.py",
        "mma/report",
        "mma/evaluation/records.py",
        "mma/evaluation/results.py",
        "mma/config/evaluation.py",
    ),
    inputs=lambda params, target, seed: [paths.RESULTS / "eval"],
    outputs=lambda params, target, seed: [paths.report_dir() / f for f in FILES],
    swapped=lambda target, seed: paths.report_dir(),
)


def ours(filename: str) -> bool:
    """A file this stage writes in results/report/ (anything else there is the user's)."""
    return filename in FILES


def load_results(params) -> dict:
    """Results by model, then by seed, for every member of the grid, each per_example.pt
    checked: intact, readable, and evaluated for exactly this params entry, seed and
    evaluation settings (``contract.output_identity`` of the evaluate stage)."""
    from ..evaluation.results import Results
    from ..io import BadFileError, load_tensors
    from .evaluate import CONTRACT as EVALUATE
    from .files import check_identity

    results = {}
    for name, seed in params.members():
        path = paths.eval_dir(name, seed) / "per_example.pt"
        remedy = f"rerun `mma evaluate {name} --seed {seed}`"
        obj = load_tensors(path, remedy=remedy)
        check_identity(
            path,
            obj.get("identity") if isinstance(obj, dict) else None,
            output_identity(EVALUATE, params, name, seed),
            remedy,
        )
        try:
            results.setdefault(name, {})[seed] = Results.from_tensors(obj)
        except Exception as e:  # noqa: BLE001 - a damaged or foreign record, whatever the exception
            raise BadFileError(
                f"{path}: not per-example results ({type(e).__name__}: {str(e)[:120]}); {remedy}"
            ) from None
    return results


def run(params, *, tracker=None) -> dict[str, float]:
    from ..io import write_json, write_text
    from ..report.figures import figure3, margins_figure
    from ..report.summary import build_summary, flat_metrics, summary_markdown
    from ..report.table1 import build_table1, table1_csv, table1_markdown, table1_notes
    from .files import swapped_in

    results = load_results(params)  # model → seed → results: every number is over the grid's seeds
    specs = dict(params.models)
    final, dpi = paths.report_dir(), params.report.dpi

    with swapped_in(final, ours, "report") as out:  # every file of one run, or the previous run's: never a mix
        table = build_table1(results, params)
        write_text(out / "table1.md", table1_markdown(table, notes=table1_notes(results, params)))
        write_text(out / "table1.csv", table1_csv(table))
        panels = figure3(results, specs, params, out / "figure3.png", dpi=dpi)
        margin_panels = margins_figure(results, specs, out / "margins.png", dpi=dpi, params=params)
        summary = build_summary(results, specs, params, table=table, figure3_panels=panels, margin_panels=margin_panels)
        write_json(out / "summary.json", summary)
        write_text(out / "summary.md", summary_markdown(summary))

    flat = flat_metrics(summary)
    if tracker is not None:
        tracker.log_metrics(flat)
        for f in FILES:
            tracker.log_artifact(final / f, "report")
    return flat
