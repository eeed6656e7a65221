"""The evaluate stage: every attack of the protocol on one target model.

One member (model NAME trained with seed S):

    results/eval/NAME/seedS/metrics.json    clean accuracy, every record's robust accuracy (by its
                                      key, with its fields), worst case per ε, margins
                                      summary, settings used (timings: MLflow's timings_s/*)
    results/eval/NAME/seedS/per_example.pt  per-example outcomes (``mma.evaluation.results``):
                                      the report takes its numbers from these
    results/metrics/NAME/seedS.json         the DVC metrics: a few headline numbers (percent), see ``headline``
    results/plots/robust_vs_eps/NAME/seedS.tsv  robust accuracy vs ε (DVC plots): curve attack, worst case

What it reads besides the model and the data is ``CONTRACT``'s record (the evaluation
settings and the sources whose transfer sets it is evaluated on) and those sets: DVC depends
on results/specs/NAME/seedS.evaluate.json, the record and the hash of every set it reads (its
sources' seed-S sets), so a changed set of another threat model or seed reruns nothing here.
per_example.pt carries the sha256 of the record, which the report checks.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from .. import paths
from .contract import MODEL_RUNTIME, Bookkeeping, Contract, output_identity


def transfer_sources(params, name: str, seed: int) -> dict:
    """The source models whose transfer sets member (``name``, ``seed``) is evaluated on: those
    of its threat model (``table1.sources_for``, which also reads the models' dataset and norm)."""
    return {"transfer_sources": params.table1.sources_for(name, params.models.values())}


def transfer_folders(params, name: str, seed: int) -> list[Path]:
    """The folders of the sets member (``name``, ``seed``) reads: its sources' seed-``seed`` sets."""
    return [
        paths.transfer_dir(params.role_of(source), seed)
        for source in params.table1.sources_for(name, params.models.values())
    ]


FILES = ("per_example.pt", "metrics.json")  # results/eval/NAME/seedS/, replaced whole

CONTRACT = Contract(
    stage="evaluate",
    target="model",
    reads=("attacks", "table1", "evaluate", "seed", "compute"),
    derived=transfer_sources,
    derived_from=("models",),  # which sources: by the models' dataset and norm
    code=("mma/stages/evaluate.py", "mma/evaluation", "mma/config/evaluation.py", *MODEL_RUNTIME),
    inputs=lambda params, name, seed: [paths.model_file(name, seed), Path(params.data.root)],
    outputs=lambda params, name, seed: [
        paths.eval_dir(name, seed),
        paths.plot_file("robust_vs_eps", name, seed),
        paths.metrics_file(name, seed),
    ],
    swapped=paths.eval_dir,
    # dvc.yaml cannot name the sets of a target's threat model: their hashes are in its file
    bookkeeping=Bookkeeping(
        "inputs", paths.eval_spec_file, chosen=transfer_folders, folders=(paths.RESULTS / "transfer",)
    ),
)


def load_transfer_sets(params, name: str, seed: int, x_u8, y) -> list:
    """(manifest entry, uint8 images) for every set of the seed-``seed`` member of every source
    of ``name``'s threat model, each checked (``transfer.load_sets``) against the test images evaluated."""
    from .transfer import load_sets

    return [
        item
        for source in params.table1.sources_for(name, params.models.values())
        for item in load_sets(params, source, seed, x_u8, y)
    ]


def ours(filename: str) -> bool:
    """A file this stage writes in its output folder (anything else there is the user's)."""
    return filename in FILES


def headline(res, name: str, params, tm) -> dict:
    """results/metrics/NAME/seedS.json, a few numbers (percent; margins in pixel units):
    clean accuracy; at the threat model's headline ε (its ``headline_eps``, a param: not repeated
    here, where it would be one more column of `dvc metrics show`), white-box robust accuracy
    (the worst case over the white-box attacks) and the worst case over every attack (white-box,
    transfer, AutoAttack, Boundary); the same at each other Table-1 ε for a Table-1 model
    (``whitebox@0.4``, ...); mean and median margin of the correctly classified test images."""
    from ..evaluation.results import eps_key

    out = {
        "clean": res.clean_accuracy(),
        "whitebox": res.worst_case_accuracy(tm.headline_eps, kinds=("whitebox",)),
        "worst": res.worst_case_accuracy(tm.headline_eps),
    }
    if name in params.table1.columns or name in {s.model for s in params.table1.sources.values()}:
        for e in sorted(set(params.table1.eps) - {tm.headline_eps}):
            out[f"whitebox@{eps_key(e)}"] = res.worst_case_accuracy(e, kinds=("whitebox",))
            out[f"worst@{eps_key(e)}"] = res.worst_case_accuracy(e)
    margins = res.summary.get("margins", {})
    for k in ("mean", "median"):
        if f"margin/{k}" in margins:
            out[f"margin_{k}"] = margins[f"margin/{k}"]
    return {k: round(v, 4) for k, v in out.items() if v == v}  # nan: not measured, left out


def robust_vs_eps(res, params) -> str:
    """TSV: eps, the curve attack's robust accuracy, the worst case over every record (percent)."""
    from ..evaluation.records import attack_fields

    fields = attack_fields(params.curve_attack(), params.evaluate.loss)
    lines = ["eps\tcurve_attack\tworst_case"]
    for e in res.eps_values():
        rec = res.find(kind="whitebox", eps=e, **fields)
        acc = float("nan") if rec is None else res.accuracy(rec)
        lines.append(f"{e:g}\t{acc:.4f}\t{res.worst_case_accuracy(e):.4f}")
    return "\n".join(lines) + "\n"


def summarize(res, name: str, spec, ev, extra: dict) -> dict:
    """metrics.json's content: every number the report prints, traceable to per_example.pt."""
    from ..evaluation.records import label, record_key
    from ..evaluation.results import eps_key

    records = {
        record_key(r): {
            **asdict(r),
            "label": label(r),
            "accuracy": res.accuracy(r),
            "n_attacked": int((res.survived[r] != -1).sum()),
        }
        for r in res.records
    }
    worst = {eps_key(e): res.worst_case_accuracy(e) for e in res.eps_values()}
    return {
        "model": name,
        "seed": spec.seed,
        "dataset": spec.dataset,
        "data": extra.pop("data", spec.dataset),
        "norm": spec.norm,
        "method": spec.method,
        "n": res.n,
        "clean_accuracy": res.clean_accuracy(),
        "loss": ev.loss,
        "cascade": ev.cascade,
        "records": records,
        "worst_case": worst,
        "margins": res.summary.get("margins", {}),
        **extra,
    }


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


def run(params, name: str, seed: int, *, device: str, tracker=None) -> dict[str, float]:
    from .. import compute
    from ..config.data import data_name
    from ..data import load_split, to_float
    from ..evaluation.finite import finite_logits, retrain_remedy
    from ..evaluation.protocol import evaluate_model, whitebox_attacks
    from ..io import save_tensors, write_json, write_text
    from .files import load_checked_model, swapped_in

    ev = params.evaluate
    spec = params.member(name, seed)
    tm = ev.threat_model(spec.dataset, spec.norm)  # present: the params loader checks every model has one
    model, _, _ = load_checked_model(params, name, seed, device)
    switches = compute.resolve(params.compute, device)
    model = finite_logits(compute.prepare(model, switches), name, retrain_remedy(name, seed))
    x_u8, y = load_split(
        data_name(params.data, spec.dataset),
        params.data.root,
        "test",
        val_size=params.data.val_size,
        limit=ev.test_limit,
    )
    transfer_sets = load_transfer_sets(params, name, seed, x_u8, y)  # checked before any attack runs
    x, y = to_float(x_u8, device), y.to(device)
    timings: dict = {}
    t0 = time.monotonic()
    with compute.attacks(switches):  # the attacks' gradient steps; every judging forward stays fp32
        res = evaluate_model(
            model,
            x,
            y,
            name=name,
            tm=tm,
            ev=ev,
            whitebox=whitebox_attacks(name, tm, params),
            curve=params.curve_attack(),
            seed=params.seed,
            transfer_sets=transfer_sets,
            timings=timings,
        )
    timings["total"] = time.monotonic() - t0
    # no timings in the files: equal results make byte-identical files (DVC reruns nothing after them)
    summary = summarize(
        res,
        name,
        spec,
        ev,
        {
            "data": data_name(params.data, spec.dataset),
            "threat_model": tm.model_dump(),
            "evaluate_params": ev.model_dump(mode="json"),
            "compute": switches.record(),
        },
    )
    out = paths.eval_dir(name, seed)
    with swapped_in(out, ours, "evaluate") as tmp:  # both files or neither: a kill leaves the previous pair
        who = output_identity(CONTRACT, params, name, seed)
        save_tensors(tmp / "per_example.pt", {**res.to_tensors(), "identity": who})
        write_json(tmp / "metrics.json", summary)
    write_json(paths.metrics_file(name, seed), headline(res, name, params, tm))
    write_text(paths.plot_file("robust_vs_eps", name, seed), robust_vs_eps(res, params))
    metrics = {**flat_metrics(summary), **{f"timings_s/{k}": v for k, v in timings.items()}}
    if tracker is not None:
        tracker.log_metrics(metrics)
        tracker.log_artifact(out / "metrics.json", "eval")
    return metrics
