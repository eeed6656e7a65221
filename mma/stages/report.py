"""The report stage: reads every model's evaluation, calls ``mma.report``, writes the files.
Everything printed traces to results/eval/NAME/per_example.pt; the only other numbers are
the paper's, from mma/report/reference/ (with their source).

    results/report/table1.md, table1.csv   Table 1 with our numbers beside the paper's + worst case
    results/report/figure3.png             Figure 3, four panels
    results/report/margins.png             margin distributions (CDFs) per threat model
    results/report/summary.json            AutoAttack beside PGD and the anchors, margins, checks (pass/flag)
    results/report/summary.md              the same, for reading
"""

from __future__ import annotations

from .. import paths

FILES = ("table1.md", "table1.csv", "figure3.png", "margins.png", "summary.json", "summary.md")


def load_results(params) -> dict:
    """Results by model, for every model of the grid."""
    from ..evaluation.results import Results
    from ..io import load_tensors

    results = {}
    for spec in params.models.values():
        folder = paths.eval_dir(spec.name)
        try:
            results[spec.name] = Results.from_tensors(load_tensors(folder / "per_example.pt"))
        except FileNotFoundError:
            raise FileNotFoundError(f"{folder}: no evaluation of {spec.name}; run `mma evaluate {spec.name}` first") from None
    return results


def run(params, *, tracker=None) -> dict[str, float]:
    from ..io import write_json, write_text
    from ..report.figures import figure3, margins_figure
    from ..report.summary import build_summary, flat_metrics, summary_markdown
    from ..report.table1 import build_table1, table1_csv, table1_markdown, table1_notes

    results = load_results(params)
    specs = dict(params.models)
    out, dpi = paths.report_dir(), params.report.dpi

    table = build_table1(results, params)
    write_text(out / "table1.md", table1_markdown(table, notes=table1_notes(results, params)))
    write_text(out / "table1.csv", table1_csv(table))
    panels = figure3(results, specs, params, out / "figure3.png", dpi=dpi)
    margin_panels = margins_figure(results, specs, out / "margins.png", dpi=dpi)
    summary = build_summary(results, specs, params, table=table, figure3_panels=panels, margin_panels=margin_panels)
    write_json(out / "summary.json", summary)
    write_text(out / "summary.md", summary_markdown(summary))

    flat = flat_metrics(summary)
    if tracker is not None:
        tracker.log_metrics(flat)
        for f in FILES:
            tracker.log_artifact(out / f, "report")
    return flat
