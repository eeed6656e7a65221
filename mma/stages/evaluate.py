"""The evaluate stage: every attack of the protocol on one target model.

    results/eval/NAME/metrics.json    clean accuracy, every record's robust accuracy (by its
                                      key, with its fields), worst case per ε, margins
                                      summary, timings, settings used
    results/eval/NAME/per_example.pt  per-example outcomes (``mma.evaluation.results``):
                                      the report takes its numbers from these
"""

from __future__ import annotations

import time
from dataclasses import asdict

from .. import paths


def load_transfer_sets(params, name: str, x_u8, y) -> list:
    """(manifest entry, uint8 images) for every set of every source of ``name``'s threat
    model, each checked (``transfer.load_sets``) against the test images evaluated."""
    from .transfer import load_sets

    return [item for source in params.table1.sources_for(name, params.models)
            for item in load_sets(params, source, x_u8, y)]


def summarize(res, name: str, spec, ev, extra: dict) -> dict:
    """metrics.json's content: every number the report prints, traceable to per_example.pt."""
    from ..evaluation.records import label, record_key
    from ..evaluation.results import eps_key

    records = {record_key(r): {**asdict(r), "label": label(r), "accuracy": res.accuracy(r),
                               "n_attacked": int((res.survived[r] != -1).sum())} for r in res.records}
    worst = {eps_key(e): res.worst_case_accuracy(e) for e in res.eps_values()}
    return {"model": name, "dataset": spec.dataset, "data": extra.pop("data", spec.dataset), "norm": spec.norm, "method": spec.method, "n": res.n,
            "clean_accuracy": res.clean_accuracy(), "loss": ev.loss, "cascade": ev.cascade,
            "records": records, "worst_case": worst, "margins": res.summary.get("margins", {}), **extra}


def flat_metrics(summary: dict) -> dict[str, float]:
    """The numbers to log (MLflow-safe names: record keys use only letters, digits, - . _ : /)."""
    m = {"clean_accuracy": summary["clean_accuracy"]}
    for key, r in summary["records"].items():
        m[f"robust/{key}"] = r["accuracy"]
    for e, v in summary["worst_case"].items():
        m[f"worst_case/{e}"] = v
    for k, v in summary["margins"].items():
        m[f"margins/{k}"] = v
    return {k: float(v) for k, v in m.items() if v == v}  # drop nan


def run(params, name: str, *, device: str, tracker=None) -> dict[str, float]:
    from .. import compute
    from ..data import load_split, to_float
    from ..evaluation.protocol import evaluate_model, whitebox_attacks
    from ..io import save_tensors, write_json
    from ..params import data_name, identity
    from .files import load_checked_model, swapped_in

    ev = params.evaluate
    spec = params.model(name)
    tm = ev.threat_model(spec.dataset, spec.norm)  # present: the params loader checks every model has one
    model, _, _ = load_checked_model(params, name, device)
    switches = compute.resolve(params.compute, device)
    model = compute.prepare(model, switches)
    x_u8, y = load_split(data_name(params, spec.dataset), params.data.root, "test", val_size=params.data.val_size,
                         limit=ev.test_limit)
    transfer_sets = load_transfer_sets(params, name, x_u8, y)  # checked before any attack runs
    x, y = to_float(x_u8, device), y.to(device)
    timings: dict = {}
    t0 = time.monotonic()
    with compute.attacks(switches):  # the attacks' gradient steps; every judging forward stays fp32
        res = evaluate_model(model, x, y, name=name, tm=tm, ev=ev, whitebox=whitebox_attacks(name, tm, params),
                             curve=params.curve_attack(), seed=params.seed,
                             transfer_sets=transfer_sets, timings=timings)
    timings["total"] = time.monotonic() - t0
    summary = summarize(res, name, spec, ev, {"data": data_name(params, spec.dataset), "threat_model": tm.model_dump(),
                                              "timings_s": timings, "evaluate_params": ev.model_dump(mode="json"),
                                              "compute": switches.record()})
    out = paths.eval_dir(name)
    with swapped_in(out) as tmp:  # both files or neither: a kill leaves the previous pair
        save_tensors(tmp / "per_example.pt", {**res.to_tensors(), "identity": identity(params, name, "evaluate")})
        write_json(tmp / "metrics.json", summary)
    metrics = flat_metrics(summary)
    if tracker is not None:
        tracker.log_metrics(metrics)
        tracker.log_artifact(out / "metrics.json", "eval")
    return metrics
